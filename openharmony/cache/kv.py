"""The two cache layouts (which positions are held, where, and what each query sees) and the
float storage.

`KVCache` keeps every position (full attention); `RotatingKVCache` keeps the last `window`
(sliding-window attention). Both hold keys and values through a `Storage` (base.py): float
arrays here, `QuantizedStorage` (quantized.py) for a quantized cache. They only ever slice,
gather and write the storage's arrays along the position axis, so one layout serves both.
"""

from __future__ import annotations

import mlx.core as mx

from .base import Mask, Storage, attention_mask, float_attention

Parts = tuple  # a storage's encoded keys (or values): arrays with the positions on axis 2


class FloatStorage:
    """Keys and values as float arrays, in `dtype` (None: the compute dtype they come in).

    A narrower dtype than the compute dtype (bfloat16 with float32 compute) halves the memory;
    attention casts the held keys and values back to the queries' dtype first.
    """

    def __init__(self, dtype: mx.Dtype | None = None, attention=None) -> None:
        self.dtype = dtype
        # The attention kernel (`Kernels.attention`, from the model; default MLX's sdpa).
        self.float_attention = attention or float_attention

    def encode(self, x: mx.array) -> Parts:
        return (x if self.dtype is None else x.astype(self.dtype),)

    def attention(self, queries: mx.array, keys: Parts, values: Parts, *, scale: float,
                  sinks: mx.array, mask: Mask) -> mx.array:
        (k,), (v,) = keys, values
        return self.float_attention(queries, k, v, scale=scale, sinks=sinks, mask=mask)

    def __repr__(self) -> str:
        return f"FloatStorage({self.dtype})"


def _zeros_like_parts(parts: Parts, positions: int) -> Parts:
    """Empty buffers shaped as `parts` but holding `positions` positions."""
    return tuple(mx.zeros(p.shape[:2] + (positions,) + p.shape[3:], p.dtype) for p in parts)


class _Buffers:
    """What both layouts share: a storage, key and value buffers (None until the first
    tokens), the first position `start` and the next one `offset`."""

    def __init__(self, storage: Storage | None, start: int) -> None:
        self.storage = storage if storage is not None else FloatStorage()
        self.start = start
        self.offset = start
        self.keys: Parts | None = None
        self.values: Parts | None = None

    def _copy_buffers_to(self, twin: "_Buffers") -> None:
        """Slicing gives new array objects (O(1): MLX arrays are values), so later slice
        assignments into either cache do not show in the other."""
        if self.keys is not None:
            twin.keys = tuple(p[:] for p in self.keys)
            twin.values = tuple(p[:] for p in self.values)
        twin.offset = self.offset

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for parts in (self.keys, self.values) if parts is not None
                   for p in parts)

    @property
    def state(self) -> list[mx.array]:
        """The arrays to evaluate to materialize the cache."""
        return [] if self.keys is None else [*self.keys, *self.values]


class KVCache(_Buffers):
    """Full attention: keeps every position from `start` on.

    The keys and values live in buffers that grow `step` positions at a time and are written
    with slice assignment, so decoding a token neither reallocates nor copies the cache.
    `start` > 0 makes a cache whose first token sits at that position with nothing before it
    (as a sequence given explicit position ids: the long-position parity checks).
    """

    bounded = False

    def __init__(self, storage: Storage | None = None, step: int = 256, start: int = 0) -> None:
        super().__init__(storage, start)  # buffer index i holds position start + i
        self.step = step

    @property
    def capacity(self) -> int:
        """Positions the current buffers hold before they must grow."""
        return 0 if self.keys is None else self.keys[0].shape[2]

    def attend(self, queries: mx.array, keys: mx.array, values: mx.array, *, scale: float,
               sinks: mx.array, window: int | None) -> mx.array:
        T = keys.shape[2]
        self.extend(keys, values)
        held = self.offset - self.start
        return self.storage.attention(
            queries, tuple(p[:, :, :held] for p in self.keys),
            tuple(p[:, :, :held] for p in self.values), scale=scale, sinks=sinks,
            mask=self._mask(T, window))

    def extend(self, keys: mx.array, values: mx.array) -> None:
        """Store positions without attending (what `attend` does first; on its own it fills a
        cache with known keys and values, as the benchmarks do)."""
        keys, values = self.storage.encode(keys), self.storage.encode(values)
        count = keys[0].shape[2]
        begin, end = self.offset - self.start, self.offset - self.start + count
        if end > self.capacity:
            self._grow(keys, values, end)
        for buffer, new in zip(self.keys + self.values, keys + values):
            buffer[:, :, begin:end] = new
        self.offset += count

    def _grow(self, keys: Parts, values: Parts, needed: int) -> None:
        capacity = -(-needed // self.step) * self.step
        new_keys = _zeros_like_parts(keys, capacity)
        new_values = _zeros_like_parts(values, capacity)
        held = self.offset - self.start
        if held:
            for new, old in zip(new_keys + new_values, self.keys + self.values):
                new[:, :, :held] = old[:, :, :held]
        self.keys, self.values = new_keys, new_values

    def _mask(self, num_queries: int, window: int | None) -> Mask:
        held = self.offset - self.start
        if window is None or held <= window:  # no key is outside any query's window
            return None if num_queries == 1 else "causal"
        return attention_mask(mx.arange(self.offset - num_queries, self.offset),
                              mx.arange(self.start, self.offset), window)

    def can_trim_to(self, n: int) -> bool:
        return self.start <= n <= self.offset

    def trim_to(self, n: int) -> None:
        """Forget every position from `n` on (the buffer past `n` is overwritten later)."""
        if not self.can_trim_to(n):
            raise ValueError(f"cannot trim a cache holding positions {self.start} .. "
                             f"{self.offset - 1} to {n}")
        self.offset = n

    def copy(self) -> "KVCache":
        """An independent copy. O(1): the buffers are shared until either cache writes (MLX
        then copies the buffer being written, once)."""
        twin = KVCache(self.storage, self.step, self.start)
        self._copy_buffers_to(twin)
        return twin


class RotatingKVCache(_Buffers):
    """Sliding-window attention: holds at most the last `window` positions.

    Position p lives in slot `p % window` of `window`-long buffers. Decoding one token writes
    one slot (slice assignment, no copy) and attends over the buffers as they are: their
    entries are exactly the new query's window, in rotated order, which attention does not care
    about (no mask). A chunk of T > 1 tokens needs the previous `window - 1` keys as well:
    those are gathered in position order, the chunk appended, and attention runs over the
    `window - 1 + T` keys with an explicit mask (right for any T, also T > window); afterwards
    only the last `window` are kept. `start` as for `KVCache`.
    """

    bounded = True

    def __init__(self, window: int, storage: Storage | None = None, start: int = 0) -> None:
        if window < 1:
            raise ValueError(f"the sliding window must be at least 1, got {window}")
        super().__init__(storage, start)
        self.window = window
        # Positions [_oldest, offset) are intact in the buffers; older slots were overwritten.
        self._oldest = start

    def attend(self, queries: mx.array, keys: mx.array, values: mx.array, *, scale: float,
               sinks: mx.array, window: int | None) -> mx.array:
        if window != self.window:
            raise ValueError(f"a rotating cache of window {self.window} was asked to attend "
                             f"with window {window}")
        T = keys.shape[2]
        keys, values = self.storage.encode(keys), self.storage.encode(values)
        if self.keys is None:
            self.keys = _zeros_like_parts(keys, self.window)
            self.values = _zeros_like_parts(values, self.window)
        history = self._history_start()
        if T == 1 and self.start == 0:  # held positions fill slots 0 .. held-1 (or all)
            keys, values, mask = self._append_token(keys, values)
        else:
            keys, values, mask = self._append_chunk(keys, values, T, history)
        return self.storage.attention(queries, keys, values, scale=scale, sinks=sinks,
                                      mask=mask)

    def _history_start(self) -> int:
        """The first position the next query (at `offset`) attends to."""
        start = max(self.start, self.offset - self.window + 1)
        assert start >= self._oldest, "the cache lost positions the next query needs"
        return start

    def _append_token(self, keys: Parts, values: Parts) -> tuple[Parts, Parts, Mask]:
        slot = self.offset % self.window
        for buffer, new in zip(self.keys + self.values, keys + values):
            buffer[:, :, slot:slot + 1] = new
        self.offset += 1
        self._oldest = max(self._oldest, self.offset - self.window)
        held = min(self.offset, self.window)  # before the first wrap, slots 0..held-1
        return (tuple(p[:, :, :held] for p in self.keys),
                tuple(p[:, :, :held] for p in self.values), None)

    def _append_chunk(self, keys: Parts, values: Parts, T: int,
                      history: int) -> tuple[Parts, Parts, Mask]:
        end = self.offset + T
        if history < self.offset:
            slots = mx.arange(history, self.offset) % self.window
            keys = tuple(mx.concatenate([mx.take(old, slots, axis=2), new], axis=2)
                         for old, new in zip(self.keys, keys))
            values = tuple(mx.concatenate([mx.take(old, slots, axis=2), new], axis=2)
                           for old, new in zip(self.values, values))
        kept = min(self.window, end - history)
        slots = mx.arange(end - kept, end) % self.window
        for buffer, new in zip(self.keys + self.values, keys + values):
            buffer[:, :, slots] = new[:, :, -kept:]
        mask = attention_mask(mx.arange(self.offset, end), mx.arange(history, end), self.window)
        self.offset = end
        self._oldest = max(self._oldest, end - self.window)
        return keys, values, mask

    def can_trim_to(self, n: int) -> bool:
        """Exact only while the positions the query at `n` needs are still in the buffer."""
        return (self.start <= n <= self.offset
                and self._oldest <= max(self.start, n - self.window + 1))

    def trim_to(self, n: int) -> None:
        if not self.can_trim_to(n):
            raise ValueError(f"cannot trim a sliding-window cache at position {self.offset} "
                             f"(window {self.window}) back to {n}: those keys were overwritten")
        self.offset = n

    def copy(self) -> "RotatingKVCache":
        """An independent copy (O(1): MLX arrays are values; slicing gives new array objects,
        so later slice assignments into either cache do not show in the other)."""
        twin = RotatingKVCache(self.window, self.storage, self.start)
        self._copy_buffers_to(twin)
        twin._oldest = self._oldest
        return twin
