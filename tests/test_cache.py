"""KV caches: what each query may see, bounded sliding caches, growth, trimming, snapshots.

The caches are fed keys whose value *is* their position, so the test can read back which
positions a fetch returned and compare the (query, key) pairs the mask allows with the
definition: a query at t sees keys t-W+1 .. t (all keys <= t for full attention).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from openharmony.cache import KVCache, PromptCache, RotatingKVCache, attention_mask, make_caches
from openharmony.config import FULL, SLIDING, ModelConfig

W = 8


def positions_kv(start: int, count: int) -> tuple[mx.array, mx.array]:
    """Keys/values [1, 1, count, 2] whose entries are their positions (values negated)."""
    p = mx.arange(start, start + count, dtype=mx.float32)
    keys = mx.stack([p, p], axis=-1)[None, None]
    return keys, -keys


def visible_pairs(cache, num_queries: int, window: int | None, fetched_keys: mx.array) -> set:
    """The (query position, key position) pairs the cache's mask lets attention use."""
    key_positions = [int(p) for p in np.array(fetched_keys[0, 0, :, 0])]
    mask = cache.make_mask(num_queries, window)
    S, T = len(key_positions), num_queries
    if mask is None:
        allowed = np.ones((T, S), bool)
    elif isinstance(mask, str):
        assert mask == "causal"
        allowed = np.arange(S)[None, :] <= np.arange(S - T, S)[:, None]  # aligned to the end
    else:
        allowed = np.array(mask)
        assert allowed.shape == (T, S)
    first_query = cache.offset - T
    return {(first_query + i, key_positions[j]) for i in range(T) for j in range(S)
            if allowed[i, j]}


def expected_pairs(first_query: int, num_queries: int, window: int | None) -> set:
    return {(t, k) for t in range(first_query, first_query + num_queries) for k in range(t + 1)
            if window is None or t - k < window}


def feed_and_check(cache, chunk_sizes, window):
    for T in chunk_sizes:
        first = cache.offset
        keys, values = cache.update_and_fetch(*positions_kv(first, T))
        assert mx.array_equal(values, -keys)
        assert visible_pairs(cache, T, window, keys) == expected_pairs(first, T, window), \
            f"chunk of {T} at position {first}"


def test_attention_mask_against_a_loop():
    q, k = np.arange(5, 9), np.arange(0, 9)
    for window in (None, 1, 3, 8, 20):
        expected = [[kk <= qq and (window is None or qq - kk < window) for kk in k] for qq in q]
        got = attention_mask(mx.array(q), mx.array(k), window)
        assert np.array(got).tolist() == expected


# Chunks shorter than, equal to and longer than the window, first and later, and single tokens
# before and after the window wrapped.
CHUNKINGS = {
    "tokens": [1] * 20,
    "mixed": [3, 1, 1, 8, 1, 13, 2, 1, 1, 7, 30, 1],
    "long first": [19, 1, 1, 9, 1],
    "window sized": [8, 8, 1, 8],
}


@pytest.mark.parametrize("chunks", CHUNKINGS.values(), ids=CHUNKINGS.keys())
def test_rotating_cache_shows_each_query_exactly_its_window(chunks):
    cache = RotatingKVCache(W)
    feed_and_check(cache, chunks, W)
    assert cache.offset == sum(chunks)


@pytest.mark.parametrize("chunks", CHUNKINGS.values(), ids=CHUNKINGS.keys())
@pytest.mark.parametrize("window", [None, W])
def test_growing_cache_mask_full_and_windowed(chunks, window):
    cache = KVCache(step=16)
    feed_and_check(cache, chunks, window)


def test_rotating_cache_mask_matches_reference_attention_output():
    # The same check through the attention kernel the model uses (sinks included): a rotating
    # cache fed in chunks gives every query the output of attention over its explicit window.
    rng = np.random.default_rng(0)
    n, heads, dim = 40, 2, 4
    q_all, k_all, v_all = (rng.normal(size=(1, heads, n, dim)).astype(np.float32)
                           for _ in range(3))
    sinks = rng.normal(size=(heads,)).astype(np.float32)
    cache, outputs, start = RotatingKVCache(W), [], 0
    for T in [5, 1, 12, 1, 1, 9, 1, 10]:
        sl = slice(start, start + T)
        k, v = cache.update_and_fetch(mx.array(k_all[:, :, sl]), mx.array(v_all[:, :, sl]))
        outputs.append(mx.fast.scaled_dot_product_attention(
            mx.array(q_all[:, :, sl]), k, v, scale=0.5, mask=cache.make_mask(T, W),
            sinks=mx.array(sinks)))
        start += T
    got = np.array(mx.concatenate(outputs, axis=2))

    expected = np.zeros_like(got)
    for t in range(n):
        lo = max(0, t - W + 1)
        scores = 0.5 * np.einsum("hd,hkd->hk", q_all[0, :, t], k_all[0, :, lo:t + 1])
        weights = np.exp(np.concatenate([scores, sinks[:, None]], axis=1))
        weights /= weights.sum(axis=1, keepdims=True)
        expected[0, :, t] = np.einsum("hk,hkd->hd", weights[:, :-1], v_all[0, :, lo:t + 1])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_sliding_cache_stays_at_window_size_over_a_4096_token_context():
    window = 128
    cache = RotatingKVCache(window)
    chunks = [512] * 4 + [300, 1, 129, 7] + [1] * 1611
    assert sum(chunks) == 4096
    for i, T in enumerate(chunks):
        start = cache.offset
        keys, _ = cache.update_and_fetch(*positions_kv(start, T))
        assert cache.keys.shape[2] == window and cache.values.shape[2] == window
        assert keys.shape[2] == min(start, window - 1) + T if T > 1 else min(start + 1, window)
        if i % 200 == 0:
            mx.eval(cache.state)
    assert cache.offset == 4096
    held = sorted(int(p) for p in np.array(cache.keys[0, 0, :, 0]))
    assert held == list(range(4096 - window, 4096))


def test_growing_cache_grows_in_steps_not_per_token():
    cache = KVCache(step=256)
    buffers = []  # every distinct key buffer object the cache used
    for position in range(600):
        cache.update_and_fetch(*positions_kv(position, 1))
        if not buffers or buffers[-1] is not cache.keys:
            buffers.append(cache.keys)
            assert cache.offset in (1, 257, 513)
        assert cache.capacity == 256 * (position // 256 + 1)
    assert len(buffers) == 3
    assert np.array(cache.keys[0, 0, :600, 0]).tolist() == list(range(600))
    # A prefill chunk grows it straight to the next multiple of the step.
    cache.update_and_fetch(*positions_kv(600, 700))
    assert cache.capacity == 1536
    assert np.array(cache.keys[0, 0, :1300, 0]).tolist() == list(range(1300))


def test_rotating_cache_trims_only_when_exact():
    cache = RotatingKVCache(W)
    cache.update_and_fetch(*positions_kv(0, 6))
    assert all(cache.can_trim_to(n) for n in range(7))  # not wrapped: everything is held
    cache.trim_to(2)
    feed_and_check(cache, [1, 1, 9, 1], W)  # continues as if positions 2.. were never seen
    assert cache.offset == 14
    # Wrapped: positions 6..13 are held; the query at n needs n-7 .. n-1.
    assert [n for n in range(15) if cache.can_trim_to(n)] == [13, 14]
    with pytest.raises(ValueError, match="overwritten"):
        cache.trim_to(12)
    cache.trim_to(13)
    feed_and_check(cache, [1, 4, 1], W)


def test_rotating_cache_copy_is_independent():
    cache = RotatingKVCache(W)
    cache.update_and_fetch(*positions_kv(0, 11))
    saved = cache.copy()
    before = np.array(saved.keys)
    feed_and_check(cache, [1, 1, 5], W)  # writes into the original's buffer
    mx.eval(cache.state)
    assert np.array_equal(np.array(saved.keys), before)
    feed_and_check(saved, [1, 3], W)  # the copy continues from position 11 on its own
    assert saved.offset == 15 and cache.offset == 18


CONFIG = ModelConfig(num_hidden_layers=4, num_local_experts=2, num_experts_per_tok=1,
                     vocab_size=32, hidden_size=32, intermediate_size=32, head_dim=2,
                     num_attention_heads=1, num_key_value_heads=1, sliding_window=W,
                     layer_types=(SLIDING, FULL, SLIDING, FULL))


def test_make_caches_follows_layer_types():
    caches = make_caches(CONFIG)
    assert [type(c) for c in caches] == [RotatingKVCache, KVCache, RotatingKVCache, KVCache]
    assert all(c.window == W for c in caches[::2])


class PositionModel:
    """Feeds each layer keys equal to the positions (enough to follow what the caches hold)."""

    config = CONFIG

    def make_cache(self):
        return make_caches(CONFIG)

    def feed(self, caches, count):
        start = caches[0].offset
        for cache in caches:
            cache.update_and_fetch(*positions_kv(start, count))


def test_prompt_cache_rewinds_to_the_nearest_exact_state():
    model = PositionModel()
    pc = PromptCache(model)
    first = list(range(100, 120))
    assert pc.reuse(first) == 0
    model.feed(pc.caches, 19)
    pc.add_tokens(first[:19])
    pc.snapshot()  # at 19, as generate() does after the prefill
    model.feed(pc.caches, 11)
    pc.add_tokens(first[19:] + [7] * 10)  # the last prompt token and 10 generated
    assert pc.caches[0].offset == 30

    # Diverging at 30 or 29: the live caches trim exactly (the window still holds 22..29).
    assert pc.reuse(pc.tokens + [1, 2]) == 30
    assert pc.reuse(pc.tokens[:29] + [5, 6]) == 29
    # Diverging at 25: the sliding caches lost 18..21, so the snapshot at 19 is used.
    assert pc.reuse(pc.tokens[:25] + [9]) == 19
    assert [c.offset for c in pc.caches] == [19] * 4
    assert len(pc.tokens) == 19
    for T in (1, 6, 1):  # the restored caches continue exactly
        first = pc.caches[0].offset
        for cache in pc.caches:
            keys, _ = cache.update_and_fetch(*positions_kv(first, T))
            window = W if isinstance(cache, RotatingKVCache) else None
            assert visible_pairs(cache, T, window, keys) == expected_pairs(first, T, window)
    pc.add_tokens([3] * 8)
    # Diverging before every snapshot, after the window wrapped: fresh caches, nothing reused.
    assert pc.reuse([100, 5, 5]) == 0
    assert [c.offset for c in pc.caches] == [0] * 4 and pc.tokens == []


def test_prompt_cache_reuses_everything_but_the_last_token_of_a_repeated_prompt():
    model = PositionModel()
    pc = PromptCache(model)
    model.feed(pc.caches, 5)
    pc.add_tokens([1, 2, 3, 4, 5])
    assert pc.reuse([1, 2, 3, 4, 5]) == 4  # the last token is fed again for its logits
    assert [c.offset for c in pc.caches] == [4] * 4
