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

`select(..., precision=)` also fixes the arithmetic (`precision_choice`: the argument, else
`OPENHARMONY_PRECISION`, else "exact"): "exact" keeps float32 products and sums everywhere;
"fast" lets the native kernels take int8 products for the experts and bf16 ones for the bf16
dense weights in prefill chunks (docs/speed.md gives its speed and accuracy). MLX's kernels
have no fast mode: they stay exact.

The layers (openharmony/model.py, moe.py, linear.py) hold the `Kernels` they were built with
and call it for every matmul; they never ask which backend runs. How each checkpoint tensor is
held for a given `Kernels` (dtype, in place or copied, packed) is the table in placement.py.
"""

from __future__ import annotations

import os
import warnings
from typing import Mapping

import mlx.core as mx

# The C++ extension (`runtime.native` is the submodule of its Kernels).
from .. import native as extension
from ..errors import OpenHarmonyError
from ..native import NativeKernelsError
from .kernels import Kernels
from .mlx import MLXKernels
from .native import NativeKernels

ENV_VAR = "OPENHARMONY_KERNELS"
CHOICES = ("auto", "native", "mlx")
PRECISION_ENV_VAR = "OPENHARMONY_PRECISION"
PRECISIONS = ("exact", "fast")

__all__ = ["select", "choice", "precision_choice", "Kernels", "MLXKernels", "NativeKernels",
           "NativeKernelsError", "ENV_VAR", "CHOICES", "PRECISION_ENV_VAR", "PRECISIONS"]

_warned = False


def choice(env: Mapping[str, str] | None = None) -> str:
    """The kernels asked for in `env` (default: the process's environment), checked."""
    env = os.environ if env is None else env
    asked = env.get(ENV_VAR, "auto").strip().lower() or "auto"
    if asked not in CHOICES:
        raise NativeKernelsError(f"{ENV_VAR} must be one of {', '.join(CHOICES)}, got {asked!r}")
    return asked


def precision_choice(precision: str | None = None,
                     env: Mapping[str, str] | None = None) -> str:
    """`precision` if given, else `OPENHARMONY_PRECISION` in `env` (default: the process's
    environment), else "exact"; checked by name."""
    env = os.environ if env is None else env
    value = precision if precision is not None else env.get(PRECISION_ENV_VAR, "")
    value = value.strip().lower() or "exact"
    if value not in PRECISIONS:
        source = "precision" if precision is not None else PRECISION_ENV_VAR
        raise OpenHarmonyError(f"{source} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


def select(device: mx.Device | None = None,
           env: Mapping[str, str] | None = None, precision: str | None = None) -> Kernels:
    """The kernels a model on `device` (default: MLX's default device) runs on, as `env`
    (default: the process's environment) asks, at `precision` (`precision_choice`). Called
    once per model, by `load_model`."""
    global _warned
    device = mx.default_device() if device is None else device
    asked = choice(env)
    precision = precision_choice(precision, env)
    if asked == "mlx":
        return MLXKernels(device, why=f"{ENV_VAR}=mlx")
    if device != mx.cpu:
        return MLXKernels(device, why="a GPU, where MLX's kernels are the fast ones")
    if extension.available:
        return NativeKernels(precision)
    if asked == "native":
        raise NativeKernelsError(f"{ENV_VAR}=native, but {extension.unavailable_reason}")
    if not _warned:
        _warned = True
        warnings.warn(f"{extension.unavailable_reason}; running on MLX's kernels (slower on the "
                      "CPU)", stacklevel=2)
    return MLXKernels(device, why=extension.unavailable_reason)
