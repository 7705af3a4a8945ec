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
  where attention is allowed; None means every key is visible.
"""

from __future__ import annotations

import mlx.core as mx


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
    """A plain cache that keeps every position (simple concatenation)."""

    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0
        self._last_t = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            self.keys = mx.concatenate([self.keys, keys], axis=2)
            self.values = mx.concatenate([self.values, values], axis=2)
        self._last_t = keys.shape[2]
        self.offset += self._last_t
        return self.keys, self.values

    def make_mask(self, num_queries: int, window: int | None):
        if num_queries == 1 and (window is None or self.offset <= window):
            return None
        start = self.offset - num_queries
        return attention_mask(mx.arange(start, self.offset), mx.arange(self.offset), window)
