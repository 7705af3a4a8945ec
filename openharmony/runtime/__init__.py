"""The runtime seam: which kernels multiply the model's weights, chosen once when it loads.

    kernels = select()                  # load_model calls this once and hands it to the Model
    model = Model(config, dtype, kernels=kernels)

`select(device, env)` reads `OPENHARMONY_KERNELS` (`auto`, the default; `native`; `mlx`),
the only place in the package that does, and returns a `Kernels`:

* `NativeKernels` (native.py): openharmony's own CPU kernels (csrc/, `openharmony.native`),
  which multiply the MXFP4 experts and the bfloat16 dense weights as stored, and read
  checkpoint tensors in place from the file's mapping. `auto` picks them when the device is
  the CPU and the extension is built for the installed MLX; `native` insists (an error where
  it cannot).
* `MLXKernels` (mlx.py): MLX's own (`mx.addmm`, `mx.gather_qmm`, and on the CPU the
  dequantize-once path for prefill experts). Every GPU (Metal, CUDA), `mlx`, and `auto` where
  the extension is missing (with one warning) get them.

The layers (openharmony/model.py, moe.py, linear.py) hold the `Kernels` they were built with
and call it for every matmul; they never ask which backend runs. How each checkpoint tensor is
held for a given `Kernels` (dtype, in place or copied, packed) is the table in placement.py.
"""

from __future__ import annotations

import os
import warnings
from typing import Mapping

import mlx.core as mx

from .. import native as extension  # the C++ extension (runtime.native is its Kernels)
from ..native import NativeKernelsError
from .kernels import Kernels
from .mlx import MLXKernels
from .native import NativeKernels

ENV_VAR = "OPENHARMONY_KERNELS"
CHOICES = ("auto", "native", "mlx")

__all__ = ["select", "choice", "why", "Kernels", "MLXKernels", "NativeKernels", "NativeKernelsError",
           "ENV_VAR", "CHOICES"]

_warned = False


def choice(env: Mapping[str, str] | None = None) -> str:
    """The kernels asked for in `env` (default: the process's environment), checked."""
    env = os.environ if env is None else env
    asked = env.get(ENV_VAR, "auto").strip().lower() or "auto"
    if asked not in CHOICES:
        raise NativeKernelsError(f"{ENV_VAR} must be one of {', '.join(CHOICES)}, got {asked!r}")
    return asked


def select(device: mx.Device | None = None,
           env: Mapping[str, str] | None = None) -> Kernels:
    """The kernels a model on `device` (default: MLX's default device) runs on, as `env`
    (default: the process's environment) asks. Called once per model, by `load_model`."""
    global _warned
    device = mx.default_device() if device is None else device
    asked = choice(env)
    if asked == "mlx" or device != mx.cpu:
        return MLXKernels(device)  # asked for, or a GPU, where MLX's kernels are the fast ones
    if extension.available:
        return NativeKernels()
    if asked == "native":
        raise NativeKernelsError(f"{ENV_VAR}=native, but {extension.unavailable_reason}")
    if not _warned:
        _warned = True
        warnings.warn(f"{extension.unavailable_reason}; running on MLX's kernels (slower on the "
                      "CPU)", stacklevel=2)
    return MLXKernels(device)


def why(kernels: Kernels, env: Mapping[str, str] | None = None) -> str:
    """Why `select` gave `kernels` (for messages)."""
    if isinstance(kernels, NativeKernels):
        return "the CPU, with the extension built"
    if choice(env) == "mlx":
        return f"{ENV_VAR}=mlx"
    if kernels.dequantize_min_rows is None:
        return "a GPU"
    return extension.unavailable_reason or "MLX's kernels were asked for"
