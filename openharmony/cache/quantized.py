"""Quantized key/value storage, with attention that keeps gpt-oss's sinks exact.

Keys and values are stored as MLX's affine quantization (`mx.quantize`): every `group_size`
consecutive entries of a head vector share a scale and a bias, `bits` bits per entry. Each
position is quantized on its own (groups run along head_dim), so a position's stored form does
not depend on how the sequence was chunked: trimming a quantized cache, or restoring a snapshot,
gives exactly what a cold run holds (prefix reuse stays exact).

A decode step multiplies the queries with the packed keys and the probabilities with the packed
values (`mx.quantized_matmul`, which dequantizes group by group, never the whole cache). The
scores and the softmax are float32, and the sink logit joins the softmax as one more column,
unquantized and unmasked, then is dropped: the same math as the float path's
`mx.fast.scaled_dot_product_attention(..., sinks=...)`. (mlx-lm's quantized cache has no sink
column, which is why it refuses gpt-oss.) A prefill chunk decodes the stored keys and values
to float once and runs exactly that float path on them (`float_attention`, `DEQUANTIZE_FROM`).
"""

from __future__ import annotations

import mlx.core as mx

from .base import Mask, explicit_mask, float_attention

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)  # what mx.quantize accepts

# From this many query positions on (a prefill chunk), the keys and values are decoded to float
# once and the float attention runs: decoding costs S x D per call, the attention T x heads x
# S x D, and MLX's quantized_matmul decodes again for every block of query rows (the 20b's
# 2304-token CPU prefill took 1.7x as long as float's; docs/cache.md). A decode step's few
# queries read the packed cache directly: 3.6x fewer bytes than float keys and values, and no
# float copy of them.
DEQUANTIZE_FROM = 4


class QuantizedStorage:
    def __init__(self, bits: int = 8, group_size: int = 64, attention=None) -> None:
        if bits not in BITS:
            raise ValueError(f"kv_bits must be one of {', '.join(map(str, BITS))}, got {bits!r}")
        if group_size not in GROUP_SIZES:
            raise ValueError(f"the kv group size must be one of "
                             f"{', '.join(map(str, GROUP_SIZES))}, got {group_size!r}")
        self.bits, self.group_size = bits, group_size
        self.dequantize_from = DEQUANTIZE_FROM  # scripts/measure_cache.py times both paths
        # The float path's kernel (`Kernels.attention`, from the model; default MLX's sdpa).
        self.float_attention = attention or float_attention

    def encode(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """[B, H, T, D] -> (packed uint32 [B, H, T, D*bits/32], scales, biases [B, H, T, D/g])."""
        return tuple(mx.quantize(x, group_size=self.group_size, bits=self.bits))

    def attention(self, queries: mx.array, keys: tuple, values: tuple, *, scale: float,
                  sinks: mx.array, mask: Mask) -> mx.array:
        B, n_heads, T, D = queries.shape
        if T >= self.dequantize_from:
            k, v = (mx.dequantize(*parts, group_size=self.group_size, bits=self.bits)
                    for parts in (keys, values))
            return self.float_attention(queries, k, v, scale=scale, sinks=sinks, mask=mask)
        n_kv_heads = keys[0].shape[1]
        repeats = n_heads // n_kv_heads
        # GQA: query head h = kv * repeats + r reads kv head kv. The repeats go into the rows
        # of one matmul per kv head ([repeats * T, D] x [S, D]^T), so each packed key is
        # decoded once per step, not once per query head (2x faster on the CPU at 32k keys
        # than broadcasting the keys over the repeats).
        q = (queries * scale).reshape(B, n_kv_heads, repeats * T, D)
        scores = mx.quantized_matmul(q, *keys, transpose=True, group_size=self.group_size,
                                     bits=self.bits).astype(mx.float32)
        S = scores.shape[-1]
        scores = scores.reshape(B, n_kv_heads, repeats, T, S)
        mask = explicit_mask(mask, T, S)
        if mask is not None:
            scores = mx.where(mask, scores, -mx.inf)
        sink = mx.broadcast_to(sinks.astype(mx.float32).reshape(1, n_kv_heads, repeats, 1, 1),
                               scores.shape[:-1] + (1,))
        probabilities = mx.softmax(mx.concatenate([scores, sink], axis=-1), axis=-1,
                                   precise=True)[..., :S]
        out = mx.quantized_matmul(
            probabilities.astype(queries.dtype).reshape(B, n_kv_heads, repeats * T, S),
            *values, transpose=False, group_size=self.group_size, bits=self.bits)
        return out.reshape(B, n_heads, T, D)

    def __repr__(self) -> str:
        return f"QuantizedStorage(bits={self.bits}, group_size={self.group_size})"
