"""MLX's own kernels: `mx.addmm` for the dense layers, `mx.gather_qmm(mode="mxfp4")` for the
experts, `mx.fast.scaled_dot_product_attention` for attention, and on the CPU the
dequantize-once path for prefill experts.

Experts: decode gathers each token's k experts directly; a prefill sorts the (token, expert)
pairs by expert so each expert's rows are contiguous (few large matmuls), and on the CPU
multiplies each expert with many rows densely after decoding its weights once.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from .. import mxfp4
from ..cache.base import float_attention
from ..config import MXFP4_BLOCK
from .kernels import Kernels

# Token-expert pairs at or above which the expert matmuls run on tokens sorted by expert
# (few large matmuls over contiguous rows); below it a plain gather is cheaper.
SORT_THRESHOLD = 64

# On the CPU, an expert with at least this many rows in a prefill chunk is dequantized once and
# multiplied as a dense float matrix (BLAS), instead of through gather_qmm: MLX's CPU mxfp4
# kernel re-decodes the weights for every row (4.7 ms per row of a 5760x2880 expert, so 305 ms
# for 64 rows), while dequantizing costs 72 ms once and the GEMM ~10 ms (docs/speed.md). The
# break-even is ~15 rows. GPUs' gather_qmm is a real GEMM, so they never take this path.
DEQUANTIZE_MIN_ROWS = 16


class MLXKernels(Kernels):
    name = "mlx"

    def __init__(self, device: mx.Device | None = None):
        device = mx.default_device() if device is None else device
        # Rows of one expert from which a prefill decodes it (None: never, on a GPU).
        self.dequantize_min_rows = DEQUANTIZE_MIN_ROWS if device == mx.cpu else None

    def linear(self, x: mx.array, weight, bias: mx.array | None = None) -> mx.array:
        weight = weight.astype(x.dtype)
        if bias is not None:
            return mx.addmm(bias.astype(x.dtype), x, weight.T)
        return x @ weight.T

    def embed(self, table, tokens: mx.array) -> mx.array:
        return table[tokens]

    def gather_mxfp4(self, x: mx.array, weight, scales, experts: mx.array,
                     sorted_indices: bool) -> mx.array:
        return mx.gather_qmm(x, weight, scales, None, rhs_indices=experts, transpose=True,
                             group_size=MXFP4_BLOCK, bits=4, mode="mxfp4",
                             sorted_indices=sorted_indices)

    def dequantized_matmul(self, x: mx.array, weight, scales) -> mx.array:
        return x @ mxfp4.decode(*mxfp4.from_mlx(weight, scales), x.dtype).T

    def expert_pairs(self, experts, x: mx.array, indices: mx.array) -> mx.array:
        N, k = indices.shape
        H = x.shape[-1]
        if N * k < SORT_THRESHOLD:  # decode: each row gathers its k experts directly
            return experts.mlp(x[:, None, None, :], indices, sorted_indices=False).reshape(N, k, H)
        # Prefill: sort the N*k (token, expert) pairs by expert so each expert's rows are
        # contiguous and run as one large matmul per expert.
        flat = indices.reshape(-1)
        order = mx.argsort(flat)
        y = self._sorted_pairs(experts, x[order // k], flat[order])
        return y[mx.argsort(order)].reshape(N, k, H)

    def _sorted_pairs(self, experts, x: mx.array, expert: mx.array) -> mx.array:
        """x [M, H] sorted by expert ids [M] -> [M, H]: each expert with at least
        `dequantize_min_rows` rows as one dense matmul, the runs of rows between them through
        gather_qmm."""
        if self.dequantize_min_rows is None:
            return experts.mlp(x[:, None, :], expert, sorted_indices=True)[:, 0]
        # The segment sizes decide the graph, so they are read on the host (one sync per layer
        # of a prefill chunk, nothing next to its seconds of work).
        counts = np.bincount(np.array(expert), minlength=experts.num_experts)
        segments = []  # (begin, end, the expert to dequantize or None for gather_qmm)
        begin = run_begin = 0
        for e, count in enumerate(counts.tolist()):
            if count >= self.dequantize_min_rows:
                segments += [(run_begin, begin, None), (begin, begin + count, e)]
                run_begin = begin + count
            begin += count
        segments.append((run_begin, begin, None))
        pieces = [experts.dense_mlp(x[b:end], e) if e is not None
                  else experts.mlp(x[b:end, None, :], expert[b:end], sorted_indices=True)[:, 0]
                  for b, end, e in segments if b < end]
        return mx.concatenate(pieces)

    def pack_mxfp4(self, blocks, scales) -> tuple:
        return mxfp4.to_mlx(blocks, scales)

    def attention(self, queries: mx.array, keys: mx.array, values: mx.array, *, scale: float,
                  sinks: mx.array, mask) -> mx.array:
        return float_attention(queries, keys, values, scale=scale, sinks=sinks, mask=mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'CPU' if self.dequantize_min_rows else 'GPU'})"
