#!/usr/bin/env python
"""Write a random-weight gpt-oss checkpoint (real file format and shapes, random values).

    scripts/make_random_checkpoint.py OUT_DIR --preset tiny|tiny-vocab|20b|120b
        [--layout hf|original|both] [--seed 0] [--shards N | --max-shard-size 5GB]
        [--rope-spelling rope_scaling|rope_parameters] [--layers N]
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path

import typer

from openharmony.testing import PRESETS, checkpoint_nbytes, preset_config, write_random_checkpoint

Preset = Enum("Preset", {name: name for name in PRESETS}, type=str)


class Layout(str, Enum):
    hf = "hf"
    original = "original"
    both = "both"


class RopeSpelling(str, Enum):
    rope_scaling = "rope_scaling"
    rope_parameters = "rope_parameters"


def parse_size(text: str) -> int:
    """'5GB', '500MB', '1.5GiB', '123' (bytes) -> bytes."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not match:
        raise typer.BadParameter(f"not a size: {text!r} (e.g. 5GB, 500MB)")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** " KMGT".index(unit.upper() or " "))


def main(
    out_dir: Path = typer.Argument(..., help="Folder to write (created if needed)."),
    preset: Preset = typer.Option("tiny", help="Model shapes."),
    layout: Layout = typer.Option(Layout.hf, help="hf, original (in OUT_DIR/original) or both."),
    seed: int = typer.Option(0, help="Weights are a function of the seed and tensor name."),
    shards: int = typer.Option(1, min=1, help="Number of HF safetensors files."),
    max_shard_size: str = typer.Option(None, help="Largest HF shard, e.g. 5GB (adds shards)."),
    rope_spelling: RopeSpelling = typer.Option(RopeSpelling.rope_scaling,
                                               help="config.json RoPE spelling."),
    layers: int = typer.Option(None, min=1, help="Keep only the first N layers (a smaller "
                                                 "checkpoint with the preset's widths)."),
) -> None:
    try:
        config = preset_config(preset.value, layers)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--layers") from None
    size = parse_size(max_shard_size) if max_shard_size else None
    layouts = ["hf", "original"] if layout == Layout.both else [layout.value]
    total = sum(checkpoint_nbytes(config, lay) for lay in layouts)
    typer.echo(f"writing the {preset.value} preset ({total / 1e9:.2f} GB) to {out_dir}")
    write_random_checkpoint(out_dir, config, seed=seed, layout=layout.value, shards=shards,
                            max_shard_size=size, rope_spelling=rope_spelling.value,
                            progress=total > 100_000_000)
    typer.echo(f"done: {out_dir}")


if __name__ == "__main__":
    typer.run(main)
