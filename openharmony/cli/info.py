"""`openharmony info`: sizes and memory needs of a checkpoint, from its headers."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from ..download import DEFAULT_MODEL, resolve_model
from ..memory import checkpoint_summary
from .app import app
from .options import DTypeOption, one_of


@app.command()
def info(
    model: Annotated[Optional[str], typer.Argument(
        metavar="MODEL", show_default=False,
        help=f"A checkpoint folder or a hub id (in the cache). Default: {DEFAULT_MODEL}.")
    ] = None,
    model_option: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="The same, as an option (instead of MODEL).")] = None,
    dtype: DTypeOption = None,
    context: Annotated[int, typer.Option(min=1, help="Context length for the KV cache "
                                                     "estimate.")] = 8192,
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Parameter counts, size on disk and memory needs of a checkpoint.

    Reads only the config and the safetensors headers: no weights are loaded.
    """
    from ..weights import open_checkpoint

    model = one_of("MODEL", model, "--model", model_option, DEFAULT_MODEL)
    checkpoint = open_checkpoint(resolve_model(model, download=False))
    if dtype is None:
        from ..model import default_dtype

        dtype_name = str(default_dtype()).removeprefix("mlx.core.")
    else:
        dtype_name = dtype.value
    s = checkpoint_summary(checkpoint, dtype_name, context)
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    rows = [
        ("checkpoint", f"{s['path']} ({s['layout']} layout, {s['files']} file(s))"),
        ("layers", f"{s['layers']} ({s['sliding_layers']} with a sliding window of "
                   f"{s['sliding_window']})"),
        ("experts", f"{s['experts']} per layer, {s['experts_per_token']} per token"),
        ("sizes", f"hidden {s['hidden_size']}, intermediate {s['intermediate_size']}, "
                  f"vocabulary {s['vocab_size']}"),
        ("attention", f"{s['attention_heads']} query heads, {s['kv_heads']} key/value heads "
                      f"of {s['head_dim']}"),
        ("max context", f"{s['max_context']}"),
        ("parameters", f"{_count(s['parameters'])} total ({_count(s['expert_parameters'])} "
                       f"in MXFP4 experts), {_count(s['active_parameters'])} active per token"),
        ("on disk", _gb(s["bytes_on_disk"])),
        ("memory", f"{_gb(s['memory_bytes'])} = weights {_gb(s['weight_bytes'])} "
                   f"({s['dtype']}) + KV cache {_gb(s['kv_cache_bytes'])} "
                   f"({s['context']} tokens)"),
        ("KV cache", "per token " + ", ".join(
            f"{name} {v['bytes_per_token'] / 1024:.1f} KiB ({_gb(v['bytes'])} at "
            f"{s['context']})" for name, v in s["kv_cache"].items())),
    ]
    # Issue 20: the longest prompt each cache type fits in this process's memory, next to the
    # weights (memory.largest_context).
    rows.append(("fits here", ", ".join(f"{name} {v['largest_context']:,} tokens"
                                        for name, v in s["kv_cache"].items())
                 + f" ({_gb(s['memory_limit'])} {s['memory_limit_bound']} less the weights)"))
    if s["weight_bytes_in_place"]:
        rows.append(("in place", f"{_gb(s['weight_bytes_in_place'])} of the weights used from "
                                 "the checkpoint's files (page cache, shared between processes)"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        typer.echo(f"{label:<{width}}  {value}")


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit} ({n:,})"
    return str(n)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"
