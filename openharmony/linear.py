"""The dense layers: `Linear` (attention projections, lm_head) and `Embedding`, each the one
dispatch point for its weight.

The parameters are nn.Linear's and nn.Embedding's (`weight` [out, in], optional `bias` [out]).
On the CPU with the native kernels (`native.use_native()`), a bfloat16 weight is multiplied
as it is stored by openharmony's bf16 x float32 kernel: float32 products and sums, so the same
values as MLX's float32 matmul on the widened weight, from half the bytes. Any other weight
(float32, or any weight on a GPU) goes through MLX's matmul in the activation's dtype, as
nn.Linear does.

A weight may also be a `native.MappedTensor`, the checkpoint's bytes used in place
(openharmony/load.py): then it is not a parameter (MLX never holds it) and only the native
kernels read it.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from . import native


class Linear(nn.Module):
    # "exact" or "fast" (native.precision_choice; load_model sets it): the native kernel's.
    precision = "exact"

    def __init__(self, in_dims: int, out_dims: int, bias: bool = True):
        super().__init__()
        self.weight = mx.zeros((out_dims, in_dims))
        if bias:
            self.bias = mx.zeros((out_dims,))

    def __call__(self, x: mx.array) -> mx.array:
        if native.is_mapped(self.weight) or (self.weight.dtype == mx.bfloat16
                                             and native.use_native()):
            rows = x.reshape(-1, x.shape[-1])
            y = native.bf16_matmul(rows, self.weight, precision=self.precision)
            y = y.reshape(*x.shape[:-1], -1).astype(x.dtype)
            return y + self.bias.astype(x.dtype) if "bias" in self else y
        weight = self.weight.astype(x.dtype)
        if "bias" in self:
            return mx.addmm(self.bias.astype(x.dtype), x, weight.T)
        return x @ weight.T


class Embedding(nn.Module):
    """`weight` [vocab, dims]; tokens [...] -> their rows [..., dims] in the table's dtype."""

    def __init__(self, num_embeddings: int, dims: int):
        super().__init__()
        self.weight = mx.zeros((num_embeddings, dims))

    def __call__(self, tokens: mx.array) -> mx.array:
        if native.is_mapped(self.weight):
            rows = native.take_rows(self.weight, tokens.reshape(-1))
            return rows.reshape(*tokens.shape, -1)
        return self.weight[tokens]
