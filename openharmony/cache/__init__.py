"""Per-layer key/value caches; each one owns its layer's attention (the protocol: base.py).

    caches = make_caches(config)                 # float, as the compute dtype (the default)
    caches = make_caches(config, kv_bits=8)      # full-attention layers 8-bit, sliding float
    caches = make_caches(config, kv_dtype=mx.bfloat16)   # bf16 storage, compute unchanged

`Model.make_cache(**options)` returns `make_caches(model.config, **options)`; `PromptCache`
keeps the caches of one conversation across calls.

base.py      the `Cache` and `Storage` protocols, masks
kv.py        `KVCache` (every position), `RotatingKVCache` (sliding window), `FloatStorage`
quantized.py `QuantizedStorage` (mx.quantize, sink-aware attention)
prompt.py    `PromptCache` (exact prefix reuse)
"""

from __future__ import annotations

import mlx.core as mx

from ..config import ModelConfig
from ..errors import ConfigError
from .base import Cache, Storage, attention_mask
from .kv import FloatStorage, KVCache, RotatingKVCache
from .prompt import PromptCache
from .quantized import BITS, QuantizedStorage

KV_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}

__all__ = ["Cache", "Storage", "attention_mask", "FloatStorage", "QuantizedStorage", "KVCache",
           "RotatingKVCache", "PromptCache", "make_caches", "kv_dtype_of", "default_group_size",
           "KV_DTYPES", "BITS"]


def make_caches(config: ModelConfig, *, kv_bits: int | None = None,
                kv_group_size: int | None = None, kv_dtype: mx.Dtype | str | None = None,
                quantize_sliding: bool = False, start: int = 0, attention=None) -> list:
    """One cache per layer: rotating on sliding-window layers, growing on full-attention ones.

    `kv_bits` (4 or 8): the full-attention layers store keys and values quantized (groups of
    `kv_group_size` entries per scale and bias; default 64, or 32 when head_dim is not a
    multiple of 64); the sliding layers too with `quantize_sliding` (they hold only `window`
    positions, so that saves little: docs/cache.md). `kv_dtype`: the float caches store in
    this dtype (e.g. bfloat16 under float32 compute); None keeps the compute dtype. `start`:
    the position of the first token (see `KVCache`). `attention`: the float attention kernel
    the storages call (`Kernels.attention`, which `Model.make_cache` passes; default MLX's
    `mx.fast.scaled_dot_product_attention`, base.py's `float_attention`).
    """
    float_storage = FloatStorage(kv_dtype_of(kv_dtype), attention)
    quantized = float_storage
    if kv_bits is not None:
        if isinstance(kv_bits, bool) or kv_bits not in BITS:
            raise ConfigError(f"kv_bits must be one of {', '.join(map(str, BITS))} (or None "
                              f"for a float cache), got {kv_bits!r}")
        group = kv_group_size or default_group_size(config.head_dim)
        if config.head_dim % group:
            raise ConfigError(f"a quantized KV cache needs head_dim ({config.head_dim}) to be a "
                              f"multiple of the kv group size ({group}; 32, 64 or 128)")
        try:
            quantized = QuantizedStorage(kv_bits, group, attention)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ConfigError(f"the cache start position must be a non-negative integer, got {start!r}")
    caches = []
    for layer in range(config.num_hidden_layers):
        if config.is_sliding(layer):
            storage = quantized if quantize_sliding else float_storage
            caches.append(RotatingKVCache(config.sliding_window, storage, start=start))
        else:
            caches.append(KVCache(quantized, start=start))
    return caches


def default_group_size(head_dim: int) -> int:
    """Entries per scale and bias when `kv_group_size` is not given."""
    return 64 if head_dim % 64 == 0 else 32


def kv_dtype_of(dtype: mx.Dtype | str | None) -> mx.Dtype | None:
    """The storage dtype for `kv_dtype` (an mx dtype, its name, or None: as computed)."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in KV_DTYPES:
        return KV_DTYPES[dtype]
    if isinstance(dtype, mx.Dtype) and dtype in KV_DTYPES.values():
        return dtype
    raise ConfigError(f"kv_dtype must be one of {', '.join(KV_DTYPES)} (or None), got {dtype!r}")
