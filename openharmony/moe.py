"""The mixture-of-experts MLP: the router and the MXFP4 experts.

    indices, weights = router(x)                      # top-k experts per token, softmax over k
    y = sum_j weights[:, j] * expert_{indices[:, j]}(x)
    expert(x) = down(swiglu(gate_up(x)))              # MXFP4 weights, float biases

The expert matmuls are the `Kernels`' the layers were built with (openharmony/runtime): how
the (token, expert) pairs are grouped (`Kernels.expert_pairs`: sorted by expert for a prefill
on MLX's kernels, some experts decoded once on the CPU; grouped inside the native kernel) and
how each matmul runs (`gather_mxfp4`, `dequantized_matmul`). This module holds the math that
is the same on every backend: the routing, the SwiGLU and the weighted sum.
Under expert parallelism (openharmony/parallel) `Experts` holds one rank's share of the
experts and `MLP` hands it to the layer's `ExpertShard`, which feeds it the pairs routed to
those experts and sums the ranks' results.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .config import MXFP4_BLOCK, ModelConfig
from .runtime import Kernels


class Router(nn.Module):
    """Picks `top_k` experts per token; their weights are a softmax over the chosen logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.weight = mx.zeros((config.num_local_experts, config.hidden_size), dtype=mx.float32)
        self.bias = mx.zeros((config.num_local_experts,), dtype=mx.float32)

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:
        # float32 whatever the compute dtype: a flipped top-k choice changes the output far
        # more than any rounding elsewhere, and this matmul is tiny.
        logits = x.astype(mx.float32) @ self.weight.T + self.bias
        indices = mx.argpartition(-logits, kth=self.top_k - 1, axis=-1)[..., :self.top_k]
        weights = mx.softmax(mx.take_along_axis(logits, indices, axis=-1), axis=-1)
        return indices, weights


class MXFP4SwitchLinear(nn.Module):
    """`num_experts` linear layers with MXFP4 weights and biases. The weights are held as the
    kernels take them (`Kernels.pack_mxfp4`: MLX's packed uint32 form, or the checkpoint's
    `blocks` and `scales` used in place)."""

    def __init__(self, kernels: Kernels, num_experts: int, in_dims: int, out_dims: int):
        super().__init__()
        self.kernels = kernels
        groups = in_dims // MXFP4_BLOCK
        self.weight = mx.zeros((num_experts, out_dims, groups * MXFP4_BLOCK // 8), dtype=mx.uint32)
        self.scales = mx.zeros((num_experts, out_dims, groups), dtype=mx.uint8)
        self.bias = mx.zeros((num_experts, out_dims))

    def __call__(self, x: mx.array, expert: mx.array, sorted_indices: bool) -> mx.array:
        """x [..., 1, in] and expert ids [...] -> [..., 1, out]: row r goes through expert[r]."""
        y = self.kernels.gather_mxfp4(x, self.weight, self.scales, expert, sorted_indices)
        return y + mx.expand_dims(self.bias[expert], -2)

    def dense(self, x: mx.array, expert: int) -> mx.array:
        """x [M, in] -> [M, out] through one expert, its weights dequantized (exactly) first."""
        return (self.kernels.dequantized_matmul(x, self.weight[expert], self.scales[expert])
                + self.bias[expert])


class Experts(nn.Module):
    """`num_experts` experts (default: all of the config's), indexed from 0."""

    def __init__(self, kernels: Kernels, config: ModelConfig, num_experts: int | None = None):
        super().__init__()
        self.kernels = kernels
        E = config.num_local_experts if num_experts is None else num_experts
        H, I = config.hidden_size, config.intermediate_size
        self.num_experts = E
        # gate_up rows stay interleaved as stored (row 2i: gate unit i, row 2i+1: up unit i):
        # one matmul for both halves, split by strided slices.
        self.gate_up_proj = MXFP4SwitchLinear(kernels, E, H, 2 * I)
        self.down_proj = MXFP4SwitchLinear(kernels, E, I, H)
        self.limit, self.alpha = config.swiglu_limit, config.swiglu_alpha

    def swiglu(self, gate_up: mx.array) -> mx.array:
        gate = mx.minimum(gate_up[..., ::2], self.limit)
        up = mx.clip(gate_up[..., 1::2], -self.limit, self.limit)
        return gate * mx.sigmoid(self.alpha * gate) * (up + 1)

    def mlp(self, x: mx.array, expert: mx.array, sorted_indices: bool) -> mx.array:
        h = self.swiglu(self.gate_up_proj(x, expert, sorted_indices))
        return self.down_proj(h, expert, sorted_indices)

    def dense_mlp(self, x: mx.array, expert: int) -> mx.array:
        return self.down_proj.dense(self.swiglu(self.gate_up_proj.dense(x, expert)), expert)

    def __call__(self, x: mx.array, indices: mx.array, weights: mx.array) -> mx.array:
        """x [N, H], indices and routing weights [N, k] -> sum_j weights[:, j] * expert_j(x)."""
        y = self.kernels.expert_pairs(self, x, indices)  # [N, k, H]
        # The down bias is already in y: it is added per expert, before the routing weight.
        return (y * weights[..., None].astype(y.dtype)).sum(axis=1)


class MLP(nn.Module):
    """The router and the experts; with a `shard` (openharmony.parallel.ExpertShard), only
    that rank's share of the experts, their results summed over the ranks."""

    def __init__(self, kernels: Kernels, config: ModelConfig, shard=None):
        super().__init__()
        self.router = Router(config)
        self.shard = shard
        self.experts = Experts(kernels, config, None if shard is None else len(shard.experts))

    def __call__(self, x: mx.array, report=None) -> mx.array:
        """x [B, T, H] -> [B, T, H]; `report(part, value)` (the model's forward hook, see
        `Model.__call__`) is given the "router" and "experts" outputs."""
        report = report or unreported
        B, T, H = x.shape
        x = x.reshape(B * T, H)
        indices, weights = report("router", self.router(x))
        if self.shard is not None:
            y = self.shard(self.experts, x, indices, weights)
        else:
            y = self.experts(x, indices, weights)
        return report("experts", y.reshape(B, T, H))


def unreported(part: str, value):
    """The forward hook's default: report nothing, pass the value on."""
    return value
