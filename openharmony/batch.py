"""Batched decoding: one forward of the model steps several requests, each on its own caches.

    step(model, [decoding_a, decoding_b, ...])   # queues one token for each (nothing is read)

Why: decoding is bound by reading the weights, and a forward over B rows reads each weight
once, not B times (on MLX's CPU backend this holds for the dense layers, attention
projections and lm_head; its gather_qmm still costs per row, so the MXFP4 experts do not get
cheaper: docs/server.md has the figures).

Each request keeps its own per-layer caches (`PromptCache.caches`, any storage: float, bf16,
quantized) at its own position. `BatchCache` presents one layer's caches of the B requests as
the one cache the model's attention expects: `offset` is an array of the B positions (RoPE
rotates row i by offset[i]: `mx.fast.rope` takes a vector of offsets), and `attend` runs each
row's attention through that row's own cache. Attention is cheap next to the weights at chat
lengths, and this keeps every cache type and `PromptCache`'s exact prefix reuse unchanged: a
row's caches end up exactly as if it had been decoded alone.

Requests join and leave between steps: a joining request is prefilled alone on its own prompt
cache (`Decoding.prefill`), then its next step is in the batch; one that is finished or whose
client went away is simply not stepped again.
"""

from __future__ import annotations

from typing import Sequence

import mlx.core as mx

from .generate import Decoding


class BatchCache:
    """One layer's caches of B requests, as one cache of batch B for a forward of T=1 tokens
    per row. A view built for one step (`step`): the rows' own caches hold the state."""

    def __init__(self, rows: Sequence, offset: mx.array) -> None:
        self.rows = list(rows)
        self.offset = offset  # [B] int: each row's position, what RoPE rotates it by

    def attend(self, queries: mx.array, keys: mx.array, values: mx.array, *, scale: float,
               sinks: mx.array, window: int | None) -> mx.array:
        """Row i's queries, keys and values through row i's cache (it stores them and advances
        its own offset); the outputs stacked back into [B, n_heads, T, head_dim]."""
        return mx.concatenate(
            [row.attend(queries[i:i + 1], keys[i:i + 1], values[i:i + 1], scale=scale,
                        sinks=sinks, window=window)
             for i, row in enumerate(self.rows)], axis=0)

    @property
    def nbytes(self) -> int:
        return sum(row.nbytes for row in self.rows)

    @property
    def state(self) -> list[mx.array]:
        return [array for row in self.rows for array in row.state]


def batch_caches(rows: Sequence[list]) -> list[BatchCache]:
    """Per-layer `BatchCache`s for B requests' per-layer cache lists (all at T=1 steps)."""
    offsets = mx.array([caches[0].offset for caches in rows])
    return [BatchCache(layer, offsets) for layer in zip(*rows)]


def step(model, decodings: Sequence[Decoding]) -> None:
    """One forward of every decoding's `next_input` at once; each samples its next token from
    its row of the logits (its own sampler, penalties, seed, logprobs). Queued with
    `mx.async_eval`, so the caller reads the previous tokens while this step computes."""
    inputs = mx.concatenate([d.next_input for d in decodings]).reshape(len(decodings), 1)
    logits = model(inputs, cache=batch_caches([d.caches for d in decodings]))[:, -1, :]
    pending = []
    for i, decoding in enumerate(decodings):
        pending += decoding.sample(logits[i:i + 1])
        pending += decoding.prompt_cache.state
    mx.async_eval(pending)
