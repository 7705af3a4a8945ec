"""`load_model`: a checkpoint folder -> a ready `Model`, one layer at a time."""

from __future__ import annotations

import re
from pathlib import Path

import mlx.core as mx

from . import loader, parallel, runtime
from .loader import open_checkpoint
from .model import Model
from .runtime import placement


def load_model(path: str | Path, dtype: mx.Dtype | str | None = None, *,
               quantized_lm_head: bool = False,
               group: mx.distributed.Group | None = None,
               in_place: bool | None = None) -> Model:
    """Load a checkpoint folder of either layout (HF or `original/`) into a `Model`.

    `dtype` is the compute dtype (default: `default_dtype()`). The kernels are chosen here,
    once (`runtime.select()`: `OPENHARMONY_KERNELS`, the device), and handed to the model.
    With the native CPU kernels the experts, embedding, attention and lm_head weights are used
    in place from the checkpoint's files, mapped read-only and shared (runtime/placement.py):
    nothing of them is read or copied here, their pages are the page cache's, and processes
    that load the same checkpoint share them. Everything else (and, on MLX's kernels, every
    tensor) is read and converted once here; MXFP4 experts stay packed. `quantized_lm_head`
    (opt-in, changes the logits) quantizes the output head to MXFP4, see docs/speed.md.
    `in_place=False` reads those weights into MLX's memory instead (what the page cache holds
    is then copied once, e.g. for a file system where page faults are slow); `True` insists
    on the mapping (an error where the native kernels do not run).

    `group`: an `mx.distributed` group of N > 1 ranks (e.g. `openharmony.parallel.init_group()`
    under `mlx.launch`) makes this rank hold, and read from the checkpoint, only its share of
    every layer's experts (docs/distributed.md). Every rank must call this; it returns once
    all of them have loaded.
    """
    kernels = runtime.select()
    if in_place and not kernels.reads_mapped:
        raise runtime.NativeKernelsError("in_place=True needs the native CPU kernels, the only "
                                         f"ones that read mapped weights; {kernels} were "
                                         f"selected ({runtime.why(kernels)})")
    checkpoint = open_checkpoint(path)
    model = Model(checkpoint.config, dtype, quantized_lm_head, group=group, kernels=kernels)
    experts = model.local_experts  # None: all of them
    held = placement.table(checkpoint, model.dtype, kernels, quantized_lm_head=quantized_lm_head,
                           in_place=in_place is not False)

    params = model.sanitize(checkpoint.weights(
        experts=experts, in_place=lambda name, stored: held[name].in_place))
    # Tensors used in place are not parameters: they go into their modules as they are.
    for name in [name for name, value in params.items() if kernels.is_mapped(value)]:
        _place(model, name, params.pop(name))
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
        read_here = not held[name].in_place
        if read_here and (experts is None or not loader.is_expert_tensor(name)):
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


def _place(model: Model, name: str, tensor) -> None:
    """Put a mapped tensor where parameter `name` is (replacing its placeholder array), as an
    entry of its module that MLX's parameter functions skip (it is not an mx.array)."""
    *path, key = name.split(".")
    module = model
    for part in path:
        module = module[int(part)] if isinstance(module, list) else module[part]
    if key not in module or not isinstance(module[key], mx.array):
        raise KeyError(f"{name} is not a parameter of the model")
    module[key] = tensor


def _load_group(name: str) -> str:
    """The unit `load_model` evaluates at once: a layer, or a top-level module."""
    layer = re.match(r"layers\.\d+\.", name)
    return layer.group(0) if layer else name.split(".")[0]
