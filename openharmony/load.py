"""`load_model`: a checkpoint folder -> a ready `Model`, one layer at a time."""

from __future__ import annotations

import re
from pathlib import Path

import mlx.core as mx

from . import loader, parallel
from .loader import open_checkpoint
from .model import Model


def load_model(path: str | Path, dtype: mx.Dtype | str | None = None, *,
               quantized_lm_head: bool = False,
               group: mx.distributed.Group | None = None) -> Model:
    """Load a checkpoint folder of either layout (HF or `original/`) into a `Model`.

    `dtype` is the compute dtype (default: `default_dtype()`). Weights are read and converted
    once here; MXFP4 experts stay packed. `quantized_lm_head` (opt-in, changes the logits)
    quantizes the output head to MXFP4: faster decoding on CPU, see docs/speed.md.

    `group`: an `mx.distributed` group of N > 1 ranks (e.g. `openharmony.parallel.init_group()`
    under `mlx.launch`) makes this rank hold, and read from the checkpoint, only its share of
    every layer's experts (docs/distributed.md). Every rank must call this; it returns once
    all of them have loaded.
    """
    checkpoint = open_checkpoint(path)
    model = Model(checkpoint.config, dtype, quantized_lm_head, group=group)
    experts = model.local_experts  # None: all of them
    params = model.sanitize(checkpoint.weights(experts=experts))
    # Evaluated one group (a layer, or a top-level tensor) at a time: once the checkpoint is
    # gone each stored tensor is referenced only by the lazy graph of its converted parameter,
    # so every stored (e.g. bf16) copy is freed right after its conversion and the peak stays
    # near the final weights plus the largest tensor (the bf16 lm_head), not plus all of them.
    # (A share of the experts is read by `weights` already, so it is not read ahead.)
    groups: dict[str, list[mx.array]] = {}
    for name, value in params.items():
        groups.setdefault(_load_group(name), []).append(value)
    byte_ranges: dict[str, list] = {key: [] for key in groups}
    for name in checkpoint.names():
        if experts is None or not loader.is_expert_tensor(name):
            byte_ranges[_load_group(name)].append(checkpoint.byte_range(name))
    del checkpoint
    with loader.ReadAhead([byte_ranges[key] for key in groups]) as read_ahead:
        for index, group_params in enumerate(groups.values()):
            read_ahead.reached(index)
            mx.eval(group_params)
    model.load_weights(list(params.items()), strict=True)
    model.freeze()
    model.eval()
    if model.group is not None:
        # Every rank has loaded (a rank that failed has exited, which fails this barrier).
        parallel.evaluate(mx.distributed.all_sum(mx.array([1]), group=model.group),
                          model.group, "waiting for the other ranks to load", start=True)
    return model


def _load_group(name: str) -> str:
    """The unit `load_model` evaluates at once: a layer, or a top-level module."""
    layer = re.match(r"layers\.\d+\.", name)
    return layer.group(0) if layer else name.split(".")[0]
