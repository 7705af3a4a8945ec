"""`PromptCache`: the caches of one conversation, reused across calls (exact prefix reuse)."""

from __future__ import annotations

from typing import Sequence

import mlx.core as mx


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
    run has after the same s tokens, so the continuation is a cold run's (for every storage:
    a quantized cache quantizes each position on its own, so its state at s is a cold run's
    too). `cache_options` go to `model.make_cache` (kv_bits, kv_dtype, ...). In a chat, the next
    turn's prompt starts with the previous prompt, so at most the previous reply is recomputed.
    """

    def __init__(self, model, max_snapshots: int = 8, **cache_options) -> None:
        self.model = model
        # What `model.make_cache` is given whenever the caches are made anew (kv_bits, ...).
        self.cache_options = {name: value for name, value in cache_options.items()
                              if value is not None}
        self.caches: list = self._new_caches()
        self.tokens: list[int] = []  # the tokens whose keys and values the caches hold
        self.max_snapshots = max_snapshots
        self._snapshots: list[tuple[int, list]] = []  # (position, bounded-cache copies)

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
            start, self.caches, self._snapshots = 0, self._new_caches(), []  # interrupted
        elif all(cache.can_trim_to(target) for cache in self.caches):
            start = target
        else:
            start, saved = next(((p, s) for p, s in reversed(self._snapshots) if p <= target),
                                (0, None))
            if saved is None:
                self.caches = self._new_caches()
            else:
                self.caches = [saved_cache.copy() if saved_cache is not None else cache
                               for saved_cache, cache in zip(saved, self.caches)]
        for cache in self.caches:
            cache.trim_to(start)
        del self.tokens[start:]
        self._snapshots = [(p, s) for p, s in self._snapshots if p <= start]
        return start

    def _new_caches(self) -> list:
        return self.model.make_cache(**self.cache_options)

    def add_tokens(self, tokens: Sequence[int]) -> None:
        """Record tokens just fed through the model with these caches."""
        self.tokens.extend(tokens)

    def snapshot(self) -> None:
        """Remember the bounded (sliding-window) caches' state at the current position."""
        position = len(self.tokens)
        assert all(cache.offset == position for cache in self.caches)
        saved = [cache.copy() if cache.bounded else None
                 for cache in self.caches]
        self._snapshots = [(p, s) for p, s in self._snapshots if p != position]
        self._snapshots.append((position, saved))
        while len(self._snapshots) > self.max_snapshots:
            self._snapshots.pop(0)

    @property
    def state(self) -> list[mx.array]:
        return [array for cache in self.caches for array in cache.state]
