"""openharmony's own CPU kernels (the C++ extension, `openharmony.native`), where they apply,
and MLX's for the rest.

* Dense layers: a bfloat16 weight is multiplied as stored by the bf16 x float32 kernel
  (float32 products and sums: the values of MLX's float32 matmul on the widened weight, from
  half the bytes); a float32 weight goes through MLX's matmul.
* Experts: the MXFP4 kernel, which groups the rows by expert itself (a counting sort in C++)
  and for many rows dequantizes a tile once and multiplies it densely, so the pairs are never
  sorted here and no expert is decoded whole.
* Attention: MLX's `mx.fast.scaled_dot_product_attention` for now; the native CPU attention
  kernel takes this slot (`NativeKernels.attention`) when it lands.

Tensors used in place from a checkpoint's mapping (`MappedTensor`s: the experts' blocks and
scales, the bfloat16 embedding, attention projections and lm_head) are read by these kernels
only; this is the one module that handles them.
"""

from __future__ import annotations

import mlx.core as mx

from .. import native as extension
from ..errors import CheckpointError
from .mlx import MLXKernels


class NativeKernels(MLXKernels):
    name = "native"
    reads_bf16 = True
    reads_mapped = True

    def __init__(self):
        super().__init__(mx.cpu)

    def linear(self, x: mx.array, weight, bias: mx.array | None = None) -> mx.array:
        if not (extension.is_mapped(weight) or weight.dtype == mx.bfloat16):
            return super().linear(x, weight, bias)
        rows = x.reshape(-1, x.shape[-1])
        y = extension.bf16_matmul(rows, weight).reshape(*x.shape[:-1], -1).astype(x.dtype)
        return y + bias.astype(x.dtype) if bias is not None else y

    def embed(self, table, tokens: mx.array) -> mx.array:
        if extension.is_mapped(table):
            return extension.take_rows(table, tokens.reshape(-1)).reshape(*tokens.shape, -1)
        return table[tokens]

    def gather_mxfp4(self, x: mx.array, weight, scales, experts: mx.array,
                     sorted_indices: bool) -> mx.array:
        rows = mx.broadcast_to(x, (*experts.shape, 1, x.shape[-1])).reshape(-1, x.shape[-1])
        y = extension.gather_mxfp4_matmul(rows, weight, scales, experts.reshape(-1))
        return y.reshape(*experts.shape, 1, -1).astype(x.dtype)

    def expert_pairs(self, experts, x: mx.array, indices: mx.array) -> mx.array:
        # Decode and prefill alike: each row gathers its k experts, the kernel groups them.
        N, k = indices.shape
        return experts.mlp(x[:, None, None, :], indices, sorted_indices=False).reshape(
            N, k, x.shape[-1])

    def pack_mxfp4(self, blocks, scales) -> tuple:
        if extension.is_mapped(blocks) != extension.is_mapped(scales):
            raise CheckpointError("MXFP4 blocks and scales must both be mapped or both be "
                                  "arrays")
        if extension.is_mapped(blocks):
            return blocks, scales  # the checkpoint's own bytes: [E, N, K/32, 16] and scales
        return super().pack_mxfp4(blocks, scales)

    def is_mapped(self, value) -> bool:
        return extension.is_mapped(value)
