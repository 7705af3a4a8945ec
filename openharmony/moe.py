"""The mixture-of-experts MLP: the router and the MXFP4 experts.

    indices, weights = router(x)                      # top-k experts per token, softmax over k
    y = sum_j weights[:, j] * expert_{indices[:, j]}(x)
    expert(x) = down(swiglu(gate_up(x)))              # MXFP4 weights, float biases

`MXFP4SwitchLinear.__call__` is the one dispatch point for the expert matmuls: on the CPU
with the native kernels built (`native.use_native()`, the backend switch), openharmony's own
MXFP4 kernel, which groups rows by expert and dequantizes tiles once for prefill; otherwise
`mx.gather_qmm(mode="mxfp4")`. Decode gathers each token's k experts directly; prefill sorts
the (token, expert) pairs by expert, and on the CPU without the native kernels multiplies the
experts with many rows densely after decoding them once (`prefill_dequantizes_experts`).
Under expert parallelism (openharmony/parallel) `Experts` holds one rank's share of the
experts and `MLP` hands it to the layer's `ExpertShard`, which feeds it the pairs routed to
those experts and sums the ranks' results.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import native
from .config import MXFP4_BLOCK, ModelConfig
from .mxfp4 import decode, from_mlx

# Token-expert pairs at or above which the expert matmuls run on tokens sorted by expert
# (few large matmuls over contiguous rows); below it a plain gather is cheaper.
SORT_THRESHOLD = 64

# On the CPU, an expert with at least this many rows in a prefill chunk is dequantized once and
# multiplied as a dense float matrix (BLAS), instead of through gather_qmm: MLX's CPU mxfp4
# kernel re-decodes the weights for every row (4.7 ms per row of a 5760x2880 expert, so 305 ms
# for 64 rows), while dequantizing costs 72 ms once and the GEMM ~10 ms (docs/speed.md). The
# break-even is ~15 rows. GPUs' gather_qmm is a real GEMM, so they never take this path.
DEQUANTIZE_MIN_ROWS = 16


def prefill_dequantizes_experts() -> bool:
    """Dense prefill experts on the CPU when the native kernels (which do better) are off."""
    return mx.default_device() == mx.cpu and not native.use_native()


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
    """`num_experts` linear layers with MXFP4 weights (MLX's packed uint32 form) and biases.

    The weights may instead be the checkpoint's `blocks` and `scales` used in place
    (`native.MappedTensor`s, openharmony/load.py), which only the native kernels read.
    """

    # "exact" or "fast" (native.precision_choice; load_model sets it): the native kernel's.
    precision = "exact"

    def __init__(self, num_experts: int, in_dims: int, out_dims: int):
        super().__init__()
        groups = in_dims // MXFP4_BLOCK
        self.weight = mx.zeros((num_experts, out_dims, groups * MXFP4_BLOCK // 8), dtype=mx.uint32)
        self.scales = mx.zeros((num_experts, out_dims, groups), dtype=mx.uint8)
        self.bias = mx.zeros((num_experts, out_dims))

    @property
    def runs_native(self) -> bool:
        return native.is_mapped(self.weight) or native.use_native()

    def __call__(self, x: mx.array, expert: mx.array, sorted_indices: bool) -> mx.array:
        """x [..., 1, in] and expert ids [...] -> [..., 1, out]: row r goes through expert[r]."""
        if self.runs_native:
            rows = mx.broadcast_to(x, (*expert.shape, 1, x.shape[-1])).reshape(-1, x.shape[-1])
            y = native.gather_mxfp4_matmul(rows, self.weight, self.scales, expert.reshape(-1),
                                           precision=self.precision)
            y = y.reshape(*expert.shape, 1, -1).astype(x.dtype)
            return y + mx.expand_dims(self.bias[expert], -2)
        y = mx.gather_qmm(x, self.weight, self.scales, None, rhs_indices=expert, transpose=True,
                          group_size=MXFP4_BLOCK, bits=4, mode="mxfp4",
                          sorted_indices=sorted_indices)
        return y + mx.expand_dims(self.bias[expert], -2)

    def dense(self, x: mx.array, expert: int) -> mx.array:
        """x [M, in] -> [M, out] through one expert, its weights dequantized (exactly) first."""
        weight = decode(*from_mlx(self.weight[expert], self.scales[expert]), x.dtype)
        return x @ weight.T + self.bias[expert]


class Experts(nn.Module):
    """`num_experts` experts (default: all of the config's), indexed from 0."""

    def __init__(self, config: ModelConfig, num_experts: int | None = None):
        super().__init__()
        E = config.num_local_experts if num_experts is None else num_experts
        H, I = config.hidden_size, config.intermediate_size
        # gate_up rows stay interleaved as stored (row 2i: gate unit i, row 2i+1: up unit i):
        # one matmul for both halves, split by strided slices.
        self.gate_up_proj = MXFP4SwitchLinear(E, H, 2 * I)
        self.down_proj = MXFP4SwitchLinear(E, I, H)
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

    def sorted_mlp(self, x: mx.array, expert: mx.array) -> mx.array:
        """x [M, H] sorted by expert ids [M] -> [M, H]: each expert with at least
        DEQUANTIZE_MIN_ROWS rows as one dense matmul, the runs of rows between them through
        gather_qmm."""
        if not prefill_dequantizes_experts():
            return self.mlp(x[:, None, :], expert, sorted_indices=True)[:, 0]
        # The segment sizes decide the graph, so they are read on the host (one sync per layer
        # of a prefill chunk, nothing next to its seconds of work).
        counts = np.bincount(np.array(expert), minlength=self.gate_up_proj.weight.shape[0])
        segments = []  # (begin, end, the expert to dequantize or None for gather_qmm)
        begin = run_begin = 0
        for e, count in enumerate(counts.tolist()):
            if count >= DEQUANTIZE_MIN_ROWS:
                segments += [(run_begin, begin, None), (begin, begin + count, e)]
                run_begin = begin + count
            begin += count
        segments.append((run_begin, begin, None))
        pieces = [self.dense_mlp(x[b:end], e) if e is not None
                  else self.mlp(x[b:end, None, :], expert[b:end], sorted_indices=True)[:, 0]
                  for b, end, e in segments if b < end]
        return mx.concatenate(pieces)

    def __call__(self, x: mx.array, indices: mx.array, weights: mx.array) -> mx.array:
        """x [N, H], indices and routing weights [N, k] -> sum_j weights[:, j] * expert_j(x)."""
        N, k = indices.shape
        H = x.shape[-1]
        # The native kernel groups the rows by expert itself (a counting sort in C++), so on
        # its path prefill skips the sort, the gather and the inverse permutation here; the
        # sort serves gather_qmm and the dequantized experts of sorted_mlp.
        if N * k >= SORT_THRESHOLD and not self.gate_up_proj.runs_native:
            # Prefill: sort the N*k (token, expert) pairs by expert so each expert's rows are
            # contiguous and run as one large matmul per expert (sorted_mlp).
            flat = indices.reshape(-1)
            order = mx.argsort(flat)
            y = self.sorted_mlp(x[order // k], flat[order])
            y = y[mx.argsort(order)].reshape(N, k, H)
        else:
            # Decode (and the native kernels' prefill): each row gathers its k experts directly.
            y = self.mlp(x[:, None, None, :], indices, sorted_indices=False).reshape(N, k, H)
        # The down bias is already in y: it is added per expert, before the routing weight.
        return (y * weights[..., None].astype(y.dtype)).sum(axis=1)


class MLP(nn.Module):
    """The router and the experts; with a `shard` (openharmony.parallel.ExpertShard), only
    that rank's share of the experts, their results summed over the ranks."""

    def __init__(self, config: ModelConfig, shard=None):
        super().__init__()
        self.router = Router(config)
        self.shard = shard
        self.experts = Experts(config, None if shard is None else len(shard.experts))

    def __call__(self, x: mx.array) -> mx.array:
        B, T, H = x.shape
        x = x.reshape(B * T, H)
        indices, weights = self.router(x)
        if self.shard is not None:
            return self.shard(self.experts, x, indices, weights).reshape(B, T, H)
        return self.experts(x, indices, weights).reshape(B, T, H)
