"""Expert parallelism: each rank holds a contiguous share of every layer's experts.

    rank r of N holds experts expert_ranges(E, N)[r]      (sizes differ by at most one)
    y = all_sum over ranks of  sum over this rank's (token, expert) pairs of w * expert(x)

Everything else (attention, router, norms, embedding, lm_head) is replicated, so every rank
routes every token itself and all ranks agree on the routing; a rank computes only the pairs
routed to its experts and one `all_sum` per layer ([tokens, hidden] in the compute dtype)
adds the ranks' partial sums, which leaves the same full result on every rank (the ring's
sum is bit-identical on all of them). MLX has no all_to_all, so the tokens are not moved:
each rank has them all already.

A contiguous share keeps each stored expert tensor's slice one byte range, so a rank reads
only its own experts from the checkpoint (`Checkpoint.get(..., experts=)`).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..errors import ConfigError
from .group import evaluate


def expert_ranges(num_experts: int, num_ranks: int) -> list[range]:
    """The experts of each rank: contiguous, in rank order, sizes differing by at most one."""
    if num_ranks > num_experts:
        raise ConfigError(f"{num_ranks} ranks but only {num_experts} experts per layer: every "
                          "rank needs at least one expert")
    bounds = [r * num_experts // num_ranks for r in range(num_ranks + 1)]
    return [range(bounds[r], bounds[r + 1]) for r in range(num_ranks)]


class ExpertShard:
    """This rank's experts of one layer (the same for every layer) and their combined forward."""

    def __init__(self, num_experts: int, group: mx.distributed.Group):
        self.group = group
        self.experts = expert_ranges(num_experts, group.size())[group.rank()]
        self.bytes_sent = 0  # payload handed to all_sum since construction (for measurements)

    def __call__(self, experts, x: mx.array, indices: mx.array, weights: mx.array) -> mx.array:
        """x [N, H], global expert indices and routing weights [N, k] -> the full
        sum_j weights[:, j] * expert_{indices[:, j]}(x), identical on every rank.

        `experts(x, local_indices, weights)` is the module holding this rank's experts; it
        gets only the pairs routed here, one pair per row (k = 1).
        """
        N, k = indices.shape
        # Which pairs are routed here decides the shapes of the rest of the graph, so the
        # routing is read on the host (one sync per layer; the prefill path syncs anyway).
        flat = np.array(indices.reshape(-1))
        first, stop = self.experts.start, self.experts.stop
        pairs = np.flatnonzero((flat >= first) & (flat < stop))
        y = mx.zeros(x.shape, dtype=x.dtype)
        if pairs.size:
            tokens = mx.array((pairs // k).astype(np.uint32))
            local = mx.array((flat[pairs] - first).astype(np.uint32))[:, None]
            pair_weights = weights.reshape(-1)[mx.array(pairs.astype(np.uint32))][:, None]
            y = y.at[tokens].add(experts(x[tokens], local, pair_weights))
        y = mx.distributed.all_sum(y, group=self.group)
        self.bytes_sent += y.nbytes
        # Evaluated here, under the watchdog: the one place a forward waits for other ranks.
        evaluate(y, self.group, "an expert all_sum")
        return y
