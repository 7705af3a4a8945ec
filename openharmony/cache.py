"""Per-layer key/value caches.

The protocol the model relies on (every cache class here implements it):

* `offset`: the number of positions processed so far (the position of the next token).
* `update_and_fetch(keys, values) -> (keys, values)`: append `T` new entries
  (`[B, n_kv_heads, T, head_dim]`) and return every key/value the new queries may attend to,
  `[B, n_kv_heads, S, head_dim]`; advances `offset` by `T`.
* `make_mask(num_queries, window) -> None | "causal" | mx.array`: called right after
  `update_and_fetch`, the attention mask for those `num_queries` queries over the `S` keys it
  returned, in the order it returned them. `window` is the sliding window W (a query at
  position t sees keys t-W+1 .. t) or None for full attention. A bool array `[T, S]` is True
  where attention is allowed; None means every key is visible; "causal" is the causal mask
  aligned to the last key (query i sees keys 0 .. S-T+i), as `mx.fast.scaled_dot_product_attention`
  reads it.

For prefix reuse the caches here also have `can_trim_to(n)` / `trim_to(n)` (go back to the
state after the first `n` positions, when that is exact) and `PromptCache` keeps the caches of
one conversation across calls.
"""

from __future__ import annotations

from typing import Sequence

import mlx.core as mx

from .config import ModelConfig


def attention_mask(query_positions: mx.array, key_positions: mx.array,
                   window: int | None) -> mx.array:
    """Causal (and, with `window`, sliding-window) mask: [T] queries x [S] keys -> bool [T, S]."""
    q = query_positions[:, None]
    k = key_positions[None, :]
    allowed = k <= q
    if window is not None:
        allowed = allowed & (k > q - window)
    return allowed


class KVCache:
    """Full attention: keeps every position.

    The keys and values live in a buffer that grows `step` positions at a time and is written
    with slice assignment, so decoding a token neither reallocates nor copies the cache.
    """

    def __init__(self, step: int = 256) -> None:
        self.step = step
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    @property
    def capacity(self) -> int:
        """Positions the current buffer holds before it must grow."""
        return 0 if self.keys is None else self.keys.shape[2]

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        end = self.offset + keys.shape[2]
        if end > self.capacity:
            self._grow(keys, values, end)
        self.keys[..., self.offset:end, :] = keys
        self.values[..., self.offset:end, :] = values
        self.offset = end
        return self.keys[..., :end, :], self.values[..., :end, :]

    def _grow(self, keys: mx.array, values: mx.array, needed: int) -> None:
        capacity = -(-needed // self.step) * self.step
        B, n_kv_heads, _, _ = keys.shape
        new_keys = mx.zeros((B, n_kv_heads, capacity, keys.shape[3]), keys.dtype)
        new_values = mx.zeros((B, n_kv_heads, capacity, values.shape[3]), values.dtype)
        if self.offset:
            new_keys[..., :self.offset, :] = self.keys[..., :self.offset, :]
            new_values[..., :self.offset, :] = self.values[..., :self.offset, :]
        self.keys, self.values = new_keys, new_values

    def make_mask(self, num_queries: int, window: int | None):
        if window is None or self.offset <= window:  # no key is outside any query's window
            return None if num_queries == 1 else "causal"
        return attention_mask(mx.arange(self.offset - num_queries, self.offset),
                              mx.arange(self.offset), window)

    def can_trim_to(self, n: int) -> bool:
        return 0 <= n <= self.offset

    def trim_to(self, n: int) -> None:
        """Forget every position from `n` on (the buffer past `n` is overwritten later)."""
        if not self.can_trim_to(n):
            raise ValueError(f"cannot trim a cache holding {self.offset} positions to {n}")
        self.offset = n

    @property
    def state(self) -> list[mx.array]:
        """The arrays to evaluate to materialize the cache."""
        return [] if self.keys is None else [self.keys, self.values]


class RotatingKVCache:
    """Sliding-window attention: holds at most the last `window` positions.

    Position p lives in slot `p % window` of a `window`-long buffer. Decoding one token writes
    one slot (slice assignment, no copy) and returns the whole buffer: its entries are exactly
    the new query's window, in rotated order, which attention does not care about (mask None).
    A chunk of T > 1 tokens needs the previous `window - 1` keys as well: those are gathered in
    position order, the chunk appended, and the `window - 1 + T` keys returned with an explicit
    mask (right for any T, also T > window); afterwards only the last `window` are kept.
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"the sliding window must be at least 1, got {window}")
        self.window = window
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0
        # Positions [_oldest, offset) are intact in the buffer; older slots were overwritten.
        self._oldest = 0
        # Position of the first key the last chunk's update_and_fetch returned (for make_mask).
        self._fetched_from = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        if self.keys is None:
            B, n_kv_heads, _, _ = keys.shape
            self.keys = mx.zeros((B, n_kv_heads, self.window, keys.shape[3]), keys.dtype)
            self.values = mx.zeros((B, n_kv_heads, self.window, values.shape[3]), values.dtype)
        if keys.shape[2] == 1:
            return self._append_token(keys, values)
        return self._append_chunk(keys, values)

    def _history_start(self) -> int:
        """The first position the next query (at `offset`) attends to."""
        start = max(0, self.offset - self.window + 1)
        assert start >= self._oldest, "the cache lost positions the next query needs"
        return start

    def _append_token(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self._history_start()  # asserts the positions this query needs are all held
        slot = self.offset % self.window
        self.keys[..., slot:slot + 1, :] = keys
        self.values[..., slot:slot + 1, :] = values
        self.offset += 1
        self._oldest = max(self._oldest, self.offset - self.window)
        held = min(self.offset, self.window)  # before the first wrap, slots 0..held-1
        return self.keys[..., :held, :], self.values[..., :held, :]

    def _append_chunk(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        start, end = self._history_start(), self.offset + keys.shape[2]
        if start < self.offset:
            slots = mx.arange(start, self.offset) % self.window
            keys = mx.concatenate([mx.take(self.keys, slots, axis=2), keys], axis=2)
            values = mx.concatenate([mx.take(self.values, slots, axis=2), values], axis=2)
        kept = min(self.window, end - start)
        slots = mx.arange(end - kept, end) % self.window
        self.keys[:, :, slots, :] = keys[..., -kept:, :]
        self.values[:, :, slots, :] = values[..., -kept:, :]
        self.offset = end
        self._oldest = max(self._oldest, end - self.window)
        self._fetched_from = start
        return keys, values

    def make_mask(self, num_queries: int, window: int | None):
        if window != self.window:
            raise ValueError(f"a rotating cache of window {self.window} was asked for a mask "
                             f"with window {window}")
        if num_queries == 1:
            return None  # the keys returned are exactly this query's window
        return attention_mask(mx.arange(self.offset - num_queries, self.offset),
                              mx.arange(self._fetched_from, self.offset), window)

    def can_trim_to(self, n: int) -> bool:
        """Exact only while the positions the query at `n` needs are still in the buffer."""
        return 0 <= n <= self.offset and self._oldest <= max(0, n - self.window + 1)

    def trim_to(self, n: int) -> None:
        if not self.can_trim_to(n):
            raise ValueError(f"cannot trim a sliding-window cache at position {self.offset} "
                             f"(window {self.window}) back to {n}: those keys were overwritten")
        self.offset = n

    def copy(self) -> "RotatingKVCache":
        """An independent copy (O(1): MLX arrays are values; slicing gives new array objects,
        so later slice assignments into either cache do not show in the other)."""
        twin = RotatingKVCache(self.window)
        if self.keys is not None:
            twin.keys, twin.values = self.keys[:], self.values[:]
        twin.offset, twin._oldest = self.offset, self._oldest
        return twin

    @property
    def state(self) -> list[mx.array]:
        return [] if self.keys is None else [self.keys, self.values]


def make_caches(config: ModelConfig) -> list:
    """One cache per layer: rotating on sliding-window layers, growing on full-attention ones.

    `Model.make_cache()` returns this.
    """
    return [RotatingKVCache(config.sliding_window) if config.is_sliding(layer) else KVCache()
            for layer in range(config.num_hidden_layers)]


class PromptCache:
    """The caches of one conversation and the tokens they hold, reused across calls.

    `generate(..., prompt_cache=pc)` calls `reuse(prompt)`: the caches go back to the longest
    common prefix of the tokens they hold and the new prompt, and only the rest is computed.

    Why this stays exact after a sliding-window cache has wrapped: the full-attention caches
    keep every position, so trimming them is always exact. A rotating cache at position m only
    holds positions m-W .. m-1, so it can go back to n < m - 1 only if it never wrapped past
    what n needs. Re-prefilling the last W tokens of the prefix into the sliding layers would
    NOT be exact: the sliding layers' keys at those positions depend on the residual stream,
    which depends (through the sliding layers below) on positions further back than W, so the
    recomputed keys would differ from a cold run's. Instead every call records a snapshot of
    the rotating caches when its prompt is prefilled (a snapshot is W entries per sliding
    layer, and costs no copy: MLX arrays are immutable values). To go back to n, the caches
    use the latest state at s <= n that they hold exactly, i.e. the live caches themselves when
    they can trim to n, else a snapshot at s <= n (with the full caches trimmed to s), else an
    empty cache (s = 0), and recompute the prompt from s. A state at s is literally what a cold
    run has after the same s tokens, so the continuation is a cold run's. In a chat, the next
    turn's prompt starts with the previous prompt, so at most the previous reply is recomputed.
    """

    def __init__(self, model, max_snapshots: int = 8) -> None:
        self.model = model
        self.caches: list = model.make_cache()
        self.tokens: list[int] = []  # the tokens whose keys and values the caches hold
        self.max_snapshots = max_snapshots
        self._snapshots: list[tuple[int, list]] = []  # (position, rotating-cache copies)

    def reuse(self, prompt: Sequence[int]) -> int:
        """Rewind the caches to the longest reusable prefix of `prompt`; returns its length.

        At least the last prompt token is always left to compute (its logits start decoding).
        """
        common = 0
        for cached, new in zip(self.tokens, prompt):
            if cached != new:
                break
            common += 1
        target = min(common, len(prompt) - 1)
        if any(cache.offset != len(self.tokens) for cache in self.caches):
            start, self.caches, self._snapshots = 0, self.model.make_cache(), []  # interrupted
        elif all(cache.can_trim_to(target) for cache in self.caches):
            start = target
        else:
            start, saved = next(((p, s) for p, s in reversed(self._snapshots) if p <= target),
                                (0, None))
            if saved is None:
                self.caches = self.model.make_cache()
            else:
                self.caches = [saved_cache.copy() if saved_cache is not None else cache
                               for saved_cache, cache in zip(saved, self.caches)]
        for cache in self.caches:
            cache.trim_to(start)
        del self.tokens[start:]
        self._snapshots = [(p, s) for p, s in self._snapshots if p <= start]
        return start

    def add_tokens(self, tokens: Sequence[int]) -> None:
        """Record tokens just fed through the model with these caches."""
        self.tokens.extend(tokens)

    def snapshot(self) -> None:
        """Remember the rotating caches' state at the current position."""
        position = len(self.tokens)
        assert all(cache.offset == position for cache in self.caches)
        saved = [cache.copy() if isinstance(cache, RotatingKVCache) else None
                 for cache in self.caches]
        self._snapshots = [(p, s) for p, s in self._snapshots if p != position]
        self._snapshots.append((position, saved))
        while len(self._snapshots) > self.max_snapshots:
            self._snapshots.pop(0)

    @property
    def state(self) -> list[mx.array]:
        return [array for cache in self.caches for array in cache.state]
