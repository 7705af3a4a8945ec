"""How much memory a checkpoint needs: its weights as loaded, and the KV cache for a context.

Computed from the config and the safetensors headers only (no weight is read), for
`openharmony info` and for the server's `/v1/models`.
"""

from __future__ import annotations

import math
from typing import Any

from . import runtime
from .cache import BITS, default_group_size
from .config import ModelConfig
from .runtime import placement


def kv_cache_bytes(config: ModelConfig, dtype_size: int, context: int,
                   kv_bits: int | None = None) -> int:
    """Bytes of the keys and values of `context` positions, in `dtype_size`-byte elements.

    Sliding-window layers hold at most `sliding_window` positions; full-attention layers all.
    `kv_bits`: the full-attention layers quantized as `make_caches(kv_bits=...)` stores them
    (`kv_vector_bytes`); the sliding ones stay float.
    """
    sliding_layers = sum(config.is_sliding(i) for i in range(config.num_hidden_layers))
    full_layers = config.num_hidden_layers - sliding_layers
    full = kv_vector_bytes(config.head_dim, dtype_size, kv_bits)
    sliding = config.head_dim * dtype_size
    return 2 * config.num_key_value_heads * (
        full_layers * context * full
        + sliding_layers * min(context, config.sliding_window) * sliding)


def kv_vector_bytes(head_dim: int, dtype_size: int, kv_bits: int | None = None) -> int:
    """Bytes one cached key (or value) vector of one kv head takes: head_dim entries of
    `dtype_size` bytes, or with `kv_bits` (openharmony/cache/quantized.py) head_dim entries of
    kv_bits bits plus a scale and a bias per group (the default group size), in the compute
    dtype (`dtype_size`), as `mx.quantize` returns them."""
    if kv_bits is None:
        return head_dim * dtype_size
    return head_dim * kv_bits // 8 + 2 * (head_dim // default_group_size(head_dim)) * dtype_size


def kv_cache_variants(config: ModelConfig, dtype: str, dtype_size: int,
                      context: int) -> dict[str, dict]:
    """Per KV-cache storage `info` reports: bytes per token (what each position past the
    sliding window adds: the full-attention layers) and bytes at `context`. The float cache
    as computed (named `dtype`, elements of `dtype_size` bytes), bf16 storage when that is
    narrower (`kv_dtype="bfloat16"`), and 8- and 4-bit full-attention layers (`kv_bits`,
    sliding layers float) when head_dim allows a quantized cache."""
    variants = {dtype: {"dtype_size": dtype_size}}
    if dtype_size > 2:
        variants["bfloat16"] = {"dtype_size": 2}
    if config.head_dim % 32 == 0:
        variants.update({f"{bits}-bit": {"dtype_size": dtype_size, "kv_bits": bits}
                         for bits in sorted(BITS, reverse=True)})
    full_layers = sum(not config.is_sliding(i) for i in range(config.num_hidden_layers))
    return {name: {"bytes_per_token": 2 * config.num_key_value_heads * full_layers
                   * kv_vector_bytes(config.head_dim, options["dtype_size"],
                                     options.get("kv_bits")),
                   "bytes": kv_cache_bytes(config, context=context, **options)}
            for name, options in variants.items()}


def checkpoint_summary(checkpoint, dtype: str, context: int,
                       kernels=None) -> dict[str, Any]:
    """Parameter counts, bytes on disk and the memory to run `checkpoint`, from its headers.

    Parameters count every weight once, MXFP4 expert weights included (two 4-bit values per
    stored byte; their scales are not parameters). Active parameters per token leave out the
    embedding table (a lookup) and count the experts at num_experts_per_tok / num_experts.
    Memory: every tensor as a model of compute `dtype` on `kernels` (default: what
    `runtime.select()` picks) holds it (the placement table, runtime/placement.py): dense
    weights in their held dtype, MXFP4 blocks and scales as stored, plus the KV cache for
    `context` positions (sliding window layers hold at most `sliding_window` of them). Of the
    weights, `weight_bytes_in_place` are used in place from the checkpoint's mapping (page
    cache, shared by every process of the checkpoint), the rest is the model's own memory.
    """
    from .model import compute_dtype

    c = checkpoint.config
    compute = compute_dtype(dtype)
    held = placement.table(checkpoint, compute, runtime.select() if kernels is None else kernels)
    total = experts = embedding = weight_bytes = in_place_bytes = 0
    for name in checkpoint.names():
        shape = checkpoint.shape(name)
        if held[name].in_place:
            in_place_bytes += checkpoint.nbytes(name)
        if name.endswith(".scales"):
            weight_bytes += checkpoint.nbytes(name)
            continue
        if name.endswith(".blocks"):
            count = math.prod(shape) * 2
            weight_bytes += checkpoint.nbytes(name)
        else:
            count = math.prod(shape)
            weight_bytes += count * held[name].dtype.size
        total += count
        if ".mlp.experts." in name:
            experts += count
        if name == "embed_tokens.weight":
            embedding += count
    active = total - embedding - experts + experts * c.num_experts_per_tok // c.num_local_experts
    sliding_layers = sum(c.is_sliding(i) for i in range(c.num_hidden_layers))
    kv_bytes = kv_cache_bytes(c, compute.size, context)
    return {
        "path": str(checkpoint.path),
        "layout": checkpoint.layout,
        "files": len(checkpoint.files),
        "layers": c.num_hidden_layers,
        "sliding_layers": sliding_layers,
        "sliding_window": c.sliding_window,
        "experts": c.num_local_experts,
        "experts_per_token": c.num_experts_per_tok,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "attention_heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_context": c.max_position_embeddings,
        "parameters": total,
        "active_parameters": active,
        "expert_parameters": experts,
        "bytes_on_disk": checkpoint.total_bytes,
        "dtype": dtype,
        "context": context,
        "weight_bytes": weight_bytes,
        "weight_bytes_in_place": in_place_bytes,
        "kv_cache_bytes": kv_bytes,
        "kv_cache": kv_cache_variants(c, dtype, compute.size, context),
        "memory_bytes": weight_bytes + kv_bytes,
    }
