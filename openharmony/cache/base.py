"""The cache protocol the model relies on, and the masks every cache builds.

A per-layer cache owns that layer's attention: one call stores the new keys and values and
computes the attention of the new queries over everything they may see, with the mask built
from the cache's own state in the same call. There is no call-order contract between fetching
keys and building a mask, and a cache whose keys are not plain float arrays (quantized) can
compute attention its own way while the sink logit still joins the softmax unquantized.

`Cache` (every cache class in this package implements it):

* `offset`: the position of the next token (the number of positions processed so far when the
  cache started at 0). The model rotates the new queries and keys by it. A batched cache with
  one offset per row makes this a list of B ints (openharmony/batch.py), which RoPE accepts.
* `attend(queries, keys, values, *, scale, sinks, window) -> [B, n_heads, T, head_dim]`:
  `queries` `[B, n_heads, T, D]`, `keys`/`values` `[B, n_kv_heads, T, D]` of the T new
  positions `offset .. offset+T-1` (already rotated); appends them, advances `offset` by T and
  returns softmax([q.k * scale over the visible keys, sink]) @ v, where query head h uses kv
  head h // (n_heads / n_kv_heads), `sinks` `[n_heads]` is one logit per head added to the
  softmax (unscaled, never masked) and dropped after it, and a query at position t sees keys
  t-window+1 .. t (`window=None`: 0 .. t).
* `can_trim_to(n)` / `trim_to(n)`: go back to the state after the first `n` positions, when
  that is exact (the prefix reuse of `PromptCache`).
* `copy()`: an independent cache in the same state (O(1): MLX arrays are values).
* `nbytes`: the bytes of the arrays the cache holds (allocated buffers, spare capacity
  included). `state`: those arrays, to evaluate.
* `bounded`: True when the cache forgets old positions (a sliding window): `PromptCache`
  snapshots those, as trimming cannot bring old positions back.

A `Storage` is how a cache holds keys and values: `encode(x)` turns new keys or values
`[B, H, T, D]` into a tuple of arrays that all have the positions on axis 2 (the caches slice,
gather and write them along that axis, whatever they are), and `attention(queries, keys, values,
*, scale, sinks, mask)` computes attention over such tuples, with which keys each query sees
given as a `Visible` (positions, no mask array). `FloatStorage` (kv.py) and
`QuantizedStorage` (quantized.py) are the two. They attend with the kernels the model's
runtime gives them (`Model.make_cache`: `Kernels.attention`, `Kernels.packed_attention`): on
the CPU openharmony's native kernel (csrc/attention.cpp: flash style, reading the cache as
stored), elsewhere MLX's; `make_caches` alone defaults to MLX's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import mlx.core as mx


@dataclass(frozen=True)
class Visible:
    """Which keys each query sees, without a mask array: query t (of T) sits at key index
    `first + t` of the keys given to the storage, and sees the keys up to there (causal), and
    with `window` only the last `window` of them. A cache builds it from its own state; the
    native kernel reads it as is, MLX's attention as `mlx_mask` spells it."""

    first: int
    window: int | None = None


Mask = Visible  # what a storage's attention is given


class Cache(Protocol):
    offset: int
    bounded: bool

    def attend(self, queries: mx.array, keys: mx.array, values: mx.array, *, scale: float,
               sinks: mx.array, window: int | None) -> mx.array: ...

    def can_trim_to(self, n: int) -> bool: ...

    def trim_to(self, n: int) -> None: ...

    def copy(self) -> "Cache": ...

    @property
    def nbytes(self) -> int: ...

    @property
    def state(self) -> list[mx.array]: ...


class Storage(Protocol):
    def encode(self, x: mx.array) -> tuple[mx.array, ...]: ...

    def attention(self, queries: mx.array, keys: tuple[mx.array, ...],
                  values: tuple[mx.array, ...], *, scale: float, sinks: mx.array,
                  mask: Mask) -> mx.array: ...


def attention_mask(query_positions: mx.array, key_positions: mx.array,
                   window: int | None) -> mx.array:
    """Causal (and, with `window`, sliding-window) mask: [T] queries x [S] keys -> bool [T, S]."""
    q = query_positions[:, None]
    k = key_positions[None, :]
    allowed = k <= q
    if window is not None:
        allowed = allowed & (k > q - window)
    return allowed


def mlx_mask(mask: Visible, num_queries: int, num_keys: int) -> None | str | mx.array:
    """`mask` as mx.fast.scaled_dot_product_attention takes it: None (every key visible),
    "causal" (aligned to the last key), or a bool array [T, S] where a window cuts keys."""
    T, S, first = num_queries, num_keys, mask.first
    if mask.window is None or first + T - 1 < mask.window:  # the window cuts no key
        if first >= S - 1:
            return None
        if first + T == S:
            return "causal"
    return attention_mask(mx.arange(first, first + T), mx.arange(S), mask.window)


def explicit_mask(mask: Visible, num_queries: int, num_keys: int) -> mx.array | None:
    """`mask` as None (every key visible) or a bool array [T, S]."""
    spelled = mlx_mask(mask, num_queries, num_keys)
    if isinstance(spelled, str):
        return attention_mask(mx.arange(num_keys - num_queries, num_keys), mx.arange(num_keys),
                              None)
    return spelled


def float_attention(queries: mx.array, keys: mx.array, values: mx.array, *, scale: float,
                    sinks: mx.array, mask: Visible) -> mx.array:
    """The attention on float keys and values (held narrower, they are computed in the
    queries' dtype). GQA without tiling k/v: query head h reads kv head
    h // (n_heads/n_kv_heads). The sink is a per-head logit appended to the softmax, unscaled
    and never masked. MLX's attention (`MLXKernels.attention`, and the default of the
    storages); on the CPU the native kernel takes its place (`NativeKernels.attention`)."""
    if keys.dtype != queries.dtype:
        keys, values = keys.astype(queries.dtype), values.astype(queries.dtype)
    return mx.fast.scaled_dot_product_attention(
        queries, keys, values, scale=scale, sinks=sinks,
        mask=mlx_mask(mask, queries.shape[2], keys.shape[2]))
