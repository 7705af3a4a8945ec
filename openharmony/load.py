"""`load_model`: a checkpoint folder -> a ready `Model`, one layer at a time."""

from __future__ import annotations

import re
from pathlib import Path

import mlx.core as mx

from . import loader
from .loader import open_checkpoint
from .model import Model


def load_model(path: str | Path, dtype: mx.Dtype | str | None = None, *,
               quantized_lm_head: bool = False) -> Model:
    """Load a checkpoint folder of either layout (HF or `original/`) into a `Model`.

    `dtype` is the compute dtype (default: `default_dtype()`). Weights are read and converted
    once here; MXFP4 experts stay packed. `quantized_lm_head` (opt-in, changes the logits)
    quantizes the output head to MXFP4: faster decoding on CPU, see docs/speed.md.
    """
    checkpoint = open_checkpoint(path)
    model = Model(checkpoint.config, dtype, quantized_lm_head)
    params = model.sanitize(checkpoint.weights())
    # Evaluated one group (a layer, or a top-level tensor) at a time: once the checkpoint is
    # gone each stored tensor is referenced only by the lazy graph of its converted parameter,
    # so every stored (e.g. bf16) copy is freed right after its conversion and the peak stays
    # near the final weights plus the largest tensor (the bf16 lm_head), not plus all of them.
    groups: dict[str, list[mx.array]] = {}
    for name, value in params.items():
        groups.setdefault(_load_group(name), []).append(value)
    byte_ranges: dict[str, list] = {}
    for name in checkpoint.names():
        byte_ranges.setdefault(_load_group(name), []).append(checkpoint.byte_range(name))
    del checkpoint
    with loader.ReadAhead([byte_ranges[key] for key in groups]) as read_ahead:
        for index, group in enumerate(groups.values()):
            read_ahead.reached(index)
            mx.eval(group)
    model.load_weights(list(params.items()), strict=True)
    model.freeze()
    model.eval()
    return model


def _load_group(name: str) -> str:
    """The unit `load_model` evaluates at once: a layer, or a top-level module."""
    layer = re.match(r"layers\.\d+\.", name)
    return layer.group(0) if layer else name.split(".")[0]
