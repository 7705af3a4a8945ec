"""The compute dtype: what a model computes in when none is asked for, and the ones it can."""

from __future__ import annotations

import mlx.core as mx

from ..errors import ConfigError


def default_dtype() -> mx.Dtype:
    """The compute dtype when none is asked for.

    MLX's CPU backend runs bfloat16 arithmetic many times slower than float32 (it has no bf16
    kernels), so float32 there; bfloat16 on a GPU (Metal or CUDA), where it halves the memory
    traffic that bounds decoding.
    """
    return mx.float32 if mx.default_device() == mx.cpu else mx.bfloat16


COMPUTE_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16}


def compute_dtype(dtype: mx.Dtype | str | None) -> mx.Dtype:
    """The compute dtype for `dtype` (an mx dtype, its name, or None for the default)."""
    if dtype is None:
        return default_dtype()
    if isinstance(dtype, str) and dtype in COMPUTE_DTYPES:
        return COMPUTE_DTYPES[dtype]
    if isinstance(dtype, mx.Dtype) and dtype in COMPUTE_DTYPES.values():
        return dtype
    raise ConfigError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {dtype!r}")
