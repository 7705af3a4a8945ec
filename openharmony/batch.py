"""Batched decoding: one forward of the model steps several requests, each on its own caches.

    batch = Batch(model)
    batch.join(decoding)                  # prefilled alone, then in the next step
    for decoding, chunk in batch.step():  # one forward for all; the tokens read back
        ...                               # a finished decoding has left the batch
    batch.leave(decoding)                 # e.g. its client went away

Why: decoding is bound by reading the weights, and a forward over B rows reads each weight
once, not B times (on MLX's CPU backend this holds for the dense layers, attention
projections and lm_head; its gather_qmm still costs per row, so the MXFP4 experts do not get
cheaper: docs/server.md has the figures).

Each request keeps its own per-layer caches (`PromptCache.caches`, any storage: float, bf16,
quantized) at its own position. `BatchCache` presents one layer's caches of the B requests as
the one cache the model's attention expects: `offset` is a list of the B positions (RoPE
rotates row i by offset[i]: the model's `rope` takes one host int per row), and `attend` runs each
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

from .decoding import Decoding, GenerationChunk


class BatchCache:
    """One layer's caches of B requests, as one cache of batch B for a forward of T=1 tokens
    per row. A view built for one step (`step`): the rows' own caches hold the state."""

    def __init__(self, rows: Sequence, offset: list[int]) -> None:
        self.rows = list(rows)
        self.offset = offset  # B host ints: each row's position, what RoPE rotates it by

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
    offsets = [caches[0].offset for caches in rows]  # host ints: RoPE computes angles there
    return [BatchCache(layer, offsets) for layer in zip(*rows)]


def step(model, decodings: Sequence[Decoding]) -> None:
    """One forward of every decoding's `next_input` at once; each samples its next token from
    its row of the logits (its own sampler, penalties, seed, logprobs). Queued with
    `mx.async_eval`, so the caller reads the previous tokens while this step computes."""
    inputs = mx.concatenate([d.next_input for d in decodings]).reshape(len(decodings), 1)
    # Every input was sampled from vocab_size logits: no range check (and no host sync).
    logits = model(inputs, cache=batch_caches([d.caches for d in decodings]),
                   check_ids=False)[:, -1, :]
    pending = []
    for i, decoding in enumerate(decodings):
        pending += decoding.sample(logits[i:i + 1])
        pending += decoding.prompt_cache.state
    mx.async_eval(pending)


class Batch:
    """Decodings stepped together, joining and leaving between steps (continuous batching).

    Pipelined as `stream_decoding`: each `step` queues the forward that feeds every row's last
    sampled token before reading that token back, so the device computes while the caller
    parses tokens and posts events. A row that just joined has nothing to read until its first
    step ran. A row that leaves keeps consistent caches: they hold exactly the tokens read.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.rows: list[Decoding] = []
        self.largest = 0  # the most rows one forward has run

    def join(self, decoding: Decoding) -> None:
        """Prefill the decoding's prompt alone (on its own prompt cache); it is in the next
        step. Raises what the prefill raises, the batch unchanged."""
        decoding.prefill()
        self.rows.append(decoding)

    def leave(self, decoding: Decoding) -> None:
        if decoding in self.rows:
            self.rows.remove(decoding)

    def step(self) -> list[tuple[Decoding, GenerationChunk]]:
        """One batched forward of the rows that want another token, then the tokens that are
        ready, read back: (decoding, chunk) pairs. A row whose chunk has a finish_reason has
        left the batch."""
        stepped = [d for d in self.rows if d.needs_step]
        if stepped:
            step(self.model, stepped)
            self.largest = max(self.largest, len(stepped))
        ready = []
        for decoding in list(self.rows):
            if decoding.queued > 1 or (decoding.queued and decoding not in stepped):
                chunk = decoding.read()
                ready.append((decoding, chunk))
                if chunk.finish_reason is not None:
                    self.rows.remove(decoding)
        return ready

    def __len__(self) -> int:
        return len(self.rows)
