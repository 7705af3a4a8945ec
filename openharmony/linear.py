"""The dense layers: `Linear` (attention projections, lm_head) and `Embedding`.

The parameters are nn.Linear's and nn.Embedding's (`weight` [out, in], optional `bias` [out]);
the multiplication (or lookup) is the `Kernels`' the layer was built with
(openharmony/runtime): which dtype the weight is held in, and whether it is the checkpoint's
bytes used in place, is the placement table's business (runtime/placement.py), not the layer's.
A weight used in place is not a parameter (MLX never holds it): the kernels read it.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .runtime import Kernels


class Linear(nn.Module):
    def __init__(self, kernels: Kernels, in_dims: int, out_dims: int, bias: bool = True):
        super().__init__()
        self.kernels = kernels
        self.weight = mx.zeros((out_dims, in_dims))
        if bias:
            self.bias = mx.zeros((out_dims,))

    def __call__(self, x: mx.array) -> mx.array:
        return self.kernels.linear(x, self.weight, self.bias if "bias" in self else None)


class Embedding(nn.Module):
    """`weight` [vocab, dims]; tokens [...] -> their rows [..., dims] in the table's dtype."""

    def __init__(self, kernels: Kernels, num_embeddings: int, dims: int):
        super().__init__()
        self.kernels = kernels
        self.weight = mx.zeros((num_embeddings, dims))

    def __call__(self, tokens: mx.array) -> mx.array:
        return self.kernels.embed(self.weight, tokens)
