"""openharmony's own CPU kernels (the C++ extension, `openharmony.native`), where they apply,
and MLX's for the rest.

* Dense layers: a bfloat16 weight is multiplied as stored by the bf16 x float32 kernel
  (float32 products and sums: the values of MLX's float32 matmul on the widened weight, from
  half the bytes); a float32 weight goes through MLX's matmul.
* Experts: the MXFP4 kernel, which groups the rows by expert itself (a counting sort in C++)
  and for many rows dequantizes a tile once and multiplies it densely, so the pairs are never
  sorted here and no expert is decoded whole.
* Attention: the native flash-attention kernel (csrc/attention.cpp, issue 20):
  `NativeKernels.attention` (float32 or bfloat16 keys and values read as stored) and
  `packed_attention` (a quantized cache read as stored, block by block), with the mask
  computed from positions (`cache.Visible`). The caches get them from `Model.make_cache`
  (docs/architecture.md, runtime; docs/cache.md).

`precision` "fast" (runtime.precision_choice): prefill chunks (8 or more rows on a weight) take
int8 products for the experts, the activations quantized per 32-element block, and bf16
products for the bf16 dense weights, the activations rounded to bf16 (csrc/fast.h); decode
stays exact.

Tensors used in place from a checkpoint's mapping (`MappedTensor`s: the experts' blocks and
scales, the bfloat16 embedding, attention projections and lm_head) are read by these kernels
only; this is the one module that handles them.
"""

from __future__ import annotations

import mlx.core as mx

from .. import native as extension
from ..errors import CheckpointError
from .mlx import MLXKernels


# (token, expert) pairs up to which the MoE MLP runs as one fused call (`fused_moe`): a decode
# step's 4, or a small batch's; beyond it an expert likely gets 8+ rows, which the tiled
# prefill path of gather_mxfp4_matmul multiplies faster than the fused op's row groups of 4.
FUSED_MOE_MAX_PAIRS = 32


class NativeKernels(MLXKernels):
    name = "native"
    reads_bf16 = True
    reads_mapped = True
    materializes_scores = False  # csrc/attention*: key blocks with an online softmax

    def __init__(self, precision: str = "exact"):
        super().__init__(mx.cpu, why="the CPU, with the native kernels built")
        self.precision = precision

    def linear(self, x: mx.array, weight, bias: mx.array | None = None) -> mx.array:
        if not (extension.is_mapped(weight) or weight.dtype == mx.bfloat16):
            return super().linear(x, weight, bias)
        rows = x.reshape(-1, x.shape[-1])
        y = extension.bf16_matmul(rows, weight, precision=self.precision)
        y = y.reshape(*x.shape[:-1], -1).astype(x.dtype)
        return y + bias.astype(x.dtype) if bias is not None else y

    def embed(self, table, tokens: mx.array) -> mx.array:
        if extension.is_mapped(table):
            return extension.take_rows(table, tokens.reshape(-1)).reshape(*tokens.shape, -1)
        return table[tokens]

    def gather_mxfp4(self, x: mx.array, weight, scales, experts: mx.array,
                     sorted_indices: bool) -> mx.array:
        rows = mx.broadcast_to(x, (*experts.shape, 1, x.shape[-1])).reshape(-1, x.shape[-1])
        y = extension.gather_mxfp4_matmul(rows, weight, scales, experts.reshape(-1),
                                          precision=self.precision)
        return y.reshape(*experts.shape, 1, -1).astype(x.dtype)

    def expert_pairs(self, experts, x: mx.array, indices: mx.array) -> mx.array:
        # Decode and prefill alike: each row gathers its k experts, the kernel groups them.
        # The gate_up's bias and the SwiGLU run in the kernel's epilogue (no [pairs, 2I]
        # intermediate, no single-threaded elementwise passes over it).
        N, k = indices.shape
        flat = indices.reshape(-1)
        rows = mx.broadcast_to(x[:, None, :], (N, k, x.shape[-1])).reshape(-1, x.shape[-1])
        gate_up, down = experts.gate_up_proj, experts.down_proj
        h = extension.gather_mxfp4_swiglu(rows, gate_up.weight, gate_up.scales, flat,
                                          gate_up.bias, experts.limit, experts.alpha,
                                          precision=self.precision)
        y = extension.gather_mxfp4_matmul(h, down.weight, down.scales, flat,
                                          precision=self.precision)
        return (y + down.bias[flat]).reshape(N, k, -1).astype(x.dtype)

    def fused_moe(self, mlp, x: mx.array) -> mx.array | None:
        # Decode: router, top-k, softmax, both expert matmuls, SwiGLU, biases and the weighted
        # sum in one native call (csrc/moe_decode.h) instead of ~20 MLX ops, each a node and a
        # dispatch on MLX's stream thread. Prefill (more pairs) keeps the tiled kernel.
        router, experts = mlp.router, mlp.experts
        if x.shape[0] * router.top_k > FUSED_MOE_MAX_PAIRS:
            return None
        gate_up, down = experts.gate_up_proj, experts.down_proj
        y = extension.moe_decode(x, router.weight, router.bias, gate_up.weight, gate_up.scales,
                                 gate_up.bias, down.weight, down.scales, down.bias,
                                 router.top_k, experts.limit, experts.alpha)
        return y.astype(x.dtype)

    def pack_mxfp4(self, blocks, scales) -> tuple:
        if extension.is_mapped(blocks) != extension.is_mapped(scales):
            raise CheckpointError("MXFP4 blocks and scales must both be mapped or both be "
                                  "arrays")
        if extension.is_mapped(blocks):
            return blocks, scales  # the checkpoint's own bytes: [E, N, K/32, 16] and scales
        return super().pack_mxfp4(blocks, scales)

    def is_mapped(self, value) -> bool:
        return extension.is_mapped(value)

    # -- attention (issue 20): the cache read as stored, the mask from positions ------------

    def attention(self, queries: mx.array, keys: mx.array, values: mx.array, *, scale: float,
                  sinks: mx.array, mask) -> mx.array:
        if keys.dtype not in (mx.float32, mx.bfloat16):  # float16 storage: MLX's
            return super().attention(queries, keys, values, scale=scale, sinks=sinks, mask=mask)
        out = extension.attention(queries, (keys,), (values,), scale=scale, sinks=sinks,
                                  first=mask.first, window=mask.window)
        return out.astype(queries.dtype)

    def packed_attention(self, queries: mx.array, keys: tuple, values: tuple, *, scale: float,
                         sinks: mx.array, mask, bits: int, group_size: int) -> mx.array:
        out = extension.attention(queries, keys, values, scale=scale, sinks=sinks,
                                  first=mask.first, window=mask.window, bits=bits,
                                  group_size=group_size)
        return out.astype(queries.dtype)
