"""KV caches: each cache's attention against a plain NumPy softmax-with-sink attention, bounded
sliding caches, growth, trimming, copies, nbytes, snapshots; quantized and bf16 caches in the
model against transformers; prefix reuse with a quantized cache; positions far into the context.

The reference attention is written out here (scores, a sink column, softmax, the window as
"query t sees keys t-W+1 .. t"), so the caches are checked against the definition, not against
MLX's attention kernel. A quantized cache is checked twice: exactly (1e-5) against the reference
fed the keys and values as MLX's `mx.dequantize` rounds them (this checks the attention math:
GQA, mask, sink), and loosely against the reference on the exact keys and values (this checks
the quantization is what was asked for).
"""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest

from openharmony.cache import (FloatStorage, KVCache, PromptCache, QuantizedStorage,
                               RotatingKVCache, attention_mask, make_caches)
from openharmony.cache.quantized import DEQUANTIZE_FROM
from openharmony.config import FULL, SLIDING, ModelConfig
from openharmony.errors import ConfigError
from openharmony import native
from openharmony.runtime import NativeKernels

W = 8
HEADS, KV_HEADS, DIM = 4, 2, 64  # gpt-oss has head_dim 64
SCALE = 0.3


# -- the reference ------------------------------------------------------------------------


def reference_attention(q, k, v, sinks, window, first_position=0):
    """Attention of every query over keys/values of the same positions, [B, H, N, D] each
    (k and v with KV_HEADS heads); query i sits at position first_position + i."""
    B, n_heads, N, D = q.shape
    repeats = n_heads // k.shape[1]
    out = np.zeros(q.shape, np.float64)
    for h in range(n_heads):
        kv = h // repeats
        for t in range(N):
            lo = 0 if window is None else max(0, t - window + 1)
            scores = SCALE * np.einsum("bd,bkd->bk", q[:, h, t], k[:, kv, lo:t + 1])
            logits = np.concatenate([scores, np.full((B, 1), sinks[h])], axis=1)
            weights = np.exp(logits - logits.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            out[:, h, t] = np.einsum("bk,bkd->bd", weights[:, :-1], v[:, kv, lo:t + 1])
    return out


def random_qkv(n, seed=0, batch=1, dim=DIM):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, HEADS, n, dim)).astype(np.float32)
    k = rng.normal(size=(batch, KV_HEADS, n, dim)).astype(np.float32)
    v = rng.normal(size=(batch, KV_HEADS, n, dim)).astype(np.float32)
    sinks = rng.normal(size=(HEADS,)).astype(np.float32)
    return q, k, v, sinks


def feed(cache, q, k, v, sinks, chunks, window, begin=0):
    """Attend chunk by chunk from position `begin` of the arrays; the outputs concatenated."""
    outputs = []
    for T in chunks:
        sl = slice(begin, begin + T)
        outputs.append(cache.attend(mx.array(q[:, :, sl]), mx.array(k[:, :, sl]),
                                    mx.array(v[:, :, sl]), scale=SCALE, sinks=mx.array(sinks),
                                    window=window))
        begin += T
    return np.array(mx.concatenate(outputs, axis=2))


STORAGES = {  # on MLX's attention (make_caches' default), and on the native kernel (issue 20)
    "float": FloatStorage(),
    "bf16": FloatStorage(mx.bfloat16),
    "8-bit": QuantizedStorage(8, 64),  # make_caches' default group for head_dim 64
    "4-bit": QuantizedStorage(4, 64),
    "8-bit g32": QuantizedStorage(8, 32),
}
if native.available:
    _native = NativeKernels()
    STORAGES.update({
        "float, native": FloatStorage(None, _native.attention),
        "bf16, native": FloatStorage(mx.bfloat16, _native.attention),
        "8-bit, native": QuantizedStorage(8, 64, _native.attention, _native.packed_attention),
        "4-bit, native": QuantizedStorage(4, 64, _native.attention, _native.packed_attention),
        "8-bit g32, native": QuantizedStorage(8, 32, _native.attention,
                                              _native.packed_attention),
    })
# Max |output - reference on the exact keys/values| for unit-normal inputs, as measured over
# the layouts and chunkings below (bf16 0.020, 8-bit 0.049, 8-bit g32 0.037, 4-bit 0.87), with
# a 1.5x margin.
LOOSE = {"float": 1e-5, "bf16": 0.03, "8-bit": 0.075, "4-bit": 1.3, "8-bit g32": 0.056}

LAYOUTS = {  # name -> (make(storage), the window the model would pass)
    "full": (lambda s: KVCache(s, step=16), None),
    "full, windowed": (lambda s: KVCache(s, step=16), W),  # a growing cache on a sliding layer
    "rotating": (lambda s: RotatingKVCache(W, s), W),
}

# Chunks shorter than, equal to and longer than the window, first and later, and single tokens
# before and after the window wrapped.
CHUNKINGS = {
    "tokens": [1] * 20,
    "mixed": [3, 1, 1, 8, 1, 13, 2, 1, 1, 7, 30, 1],
    "long first": [19, 1, 1, 9, 1],
    "window sized": [8, 8, 1, 8],
}


def test_attention_mask_against_a_loop():
    q, k = np.arange(5, 9), np.arange(0, 9)
    for window in (None, 1, 3, 8, 20):
        expected = [[kk <= qq and (window is None or qq - kk < window) for kk in k] for qq in q]
        got = attention_mask(mx.array(q), mx.array(k), window)
        assert np.array(got).tolist() == expected


@pytest.mark.parametrize("chunks", CHUNKINGS.values(), ids=CHUNKINGS.keys())
@pytest.mark.parametrize("storage", STORAGES, ids=STORAGES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUTS)
def test_attend_matches_the_reference(layout, storage, chunks):
    make, window = LAYOUTS[layout]
    n = sum(chunks)
    q, k, v, sinks = random_qkv(n, seed=len(chunks), batch=2)
    cache = make(STORAGES[storage])
    got = feed(cache, q, k, v, sinks, chunks, window)
    assert cache.offset == n
    stored = STORAGES[storage]
    exact = reference_attention(q, as_stored(stored, k), as_stored(stored, v), sinks, window)
    np.testing.assert_allclose(got, exact, atol=1e-5)
    loose = np.abs(got - reference_attention(q, k, v, sinks, window)).max()
    assert loose <= LOOSE[storage.removesuffix(", native")]


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_attention_is_the_same_math_decoded_or_packed(bits):
    """Chunks of DEQUANTIZE_FROM queries and more decode the keys and values and run the float
    attention; fewer read the packed cache. Both against the reference on the stored values."""
    storage = QuantizedStorage(bits, 64)
    below, at = DEQUANTIZE_FROM - 1, DEQUANTIZE_FROM
    chunks = [at + 5, 1, below, at, 1, below, at]
    q, k, v, sinks = random_qkv(sum(chunks), seed=bits)
    got = feed(KVCache(storage, step=16), q, k, v, sinks, chunks, None)
    exact = reference_attention(q, as_stored(storage, k), as_stored(storage, v), sinks, None)
    np.testing.assert_allclose(got, exact, atol=1e-5)


@pytest.mark.parametrize("layout", ["full", "rotating"])
def test_a_cache_started_far_into_the_context_sees_only_its_own_positions(layout):
    make = {"full": lambda: KVCache(step=16, start=100_000),
            "rotating": lambda: RotatingKVCache(W, start=100_000)}[layout]
    window = None if layout == "full" else W
    q, k, v, sinks = random_qkv(30, seed=5)
    cache = make()
    got = feed(cache, q, k, v, sinks, [1, 4, 1, 9, 1, 1, 13], window)
    assert cache.offset == 100_030
    np.testing.assert_allclose(got, reference_attention(q, k, v, sinks, window), atol=1e-5)
    assert cache.can_trim_to(100_029) and not cache.can_trim_to(99_999)


def test_a_rotating_cache_refuses_another_window():
    q, k, v, sinks = random_qkv(2)
    with pytest.raises(ValueError, match="window 8 .* window 4"):
        feed(RotatingKVCache(W), q, k, v, sinks, [2], 4)


# -- what the caches hold -------------------------------------------------------------------


def positions_kv(start: int, count: int, dim: int = 2) -> tuple[mx.array, mx.array]:
    """Keys/values [1, 1, count, dim] whose entries are their positions (values negated)."""
    p = mx.arange(start, start + count, dtype=mx.float32)
    keys = mx.broadcast_to(p[:, None], (count, dim))[None, None]
    return keys, -keys


def append_positions(cache, start, count, window):
    keys, values = positions_kv(start, count)
    cache.attend(mx.zeros((1, 1, count, 2)), keys, values, scale=1.0, sinks=mx.zeros((1,)),
                 window=window)


def test_sliding_cache_stays_at_window_size_over_a_4096_token_context():
    window = 128
    cache = RotatingKVCache(window)
    chunks = [512] * 4 + [300, 1, 129, 7] + [1] * 1611
    assert sum(chunks) == 4096
    for i, T in enumerate(chunks):
        append_positions(cache, cache.offset, T, window)
        assert cache.keys[0].shape[2] == window and cache.values[0].shape[2] == window
        if i % 200 == 0:
            mx.eval(cache.state)
    assert cache.offset == 4096
    held = sorted(int(p) for p in np.array(cache.keys[0][0, 0, :, 0]))
    assert held == list(range(4096 - window, 4096))
    assert np.array_equal(np.array(cache.values[0]), -np.array(cache.keys[0]))


def test_growing_cache_grows_in_steps_not_per_token():
    cache = KVCache(step=256)
    buffers = []  # every distinct key buffer object the cache used
    for position in range(600):
        append_positions(cache, position, 1, None)
        if not buffers or buffers[-1] is not cache.keys[0]:
            buffers.append(cache.keys[0])
            assert cache.offset in (1, 257, 513)
        assert cache.capacity == 256 * (position // 256 + 1)
    assert len(buffers) == 3
    assert np.array(cache.keys[0][0, 0, :600, 0]).tolist() == list(range(600))
    # A prefill chunk grows it straight to the next multiple of the step.
    append_positions(cache, 600, 700, None)
    assert cache.capacity == 1536
    assert np.array(cache.keys[0][0, 0, :1300, 0]).tolist() == list(range(1300))


@pytest.mark.parametrize("storage", ["float", "8-bit"])
def test_rotating_cache_trims_only_when_exact(storage):
    q, k, v, sinks = random_qkv(40, seed=3)
    expected = reference_attention(q, *(as_stored(STORAGES[storage], x) for x in (k, v)),
                                   sinks, W)
    cache = RotatingKVCache(W, STORAGES[storage])
    feed(cache, q, k, v, sinks, [6], W)
    assert all(cache.can_trim_to(n) for n in range(7))  # not wrapped: everything is held
    cache.trim_to(2)
    got = feed(cache, q, k, v, sinks, [1, 1, 9, 1], W, begin=2)  # as if 2.. were never seen
    np.testing.assert_allclose(got, expected[:, :, 2:14], atol=1e-5)
    # Wrapped: positions 6..13 are held; the query at n needs n-7 .. n-1.
    assert [n for n in range(15) if cache.can_trim_to(n)] == [13, 14]
    with pytest.raises(ValueError, match="overwritten"):
        cache.trim_to(12)
    cache.trim_to(13)
    got = feed(cache, q, k, v, sinks, [1, 4, 1], W, begin=13)
    np.testing.assert_allclose(got, expected[:, :, 13:19], atol=1e-5)


@pytest.mark.parametrize("storage", ["float", "8-bit"])
@pytest.mark.parametrize("layout", ["full", "rotating"])
def test_copy_is_independent(layout, storage):
    make, window = LAYOUTS[layout]
    q, k, v, sinks = random_qkv(30, seed=4)
    expected = reference_attention(q, *(as_stored(STORAGES[storage], x) for x in (k, v)),
                                   sinks, window)
    cache = make(STORAGES[storage])
    feed(cache, q, k, v, sinks, [11], window)
    saved = cache.copy()
    before = [np.array(a) for a in saved.state]
    # The original continues on other keys (written into its buffers) ...
    q2, k2, v2, _ = random_qkv(30, seed=9)
    feed(cache, q2, k2, v2, sinks, [1, 1, 5], window, begin=11)
    mx.eval(cache.state)
    assert all(np.array_equal(np.array(a), b) for a, b in zip(saved.state, before))
    # ... and the copy from position 11 on its own.
    got = feed(saved, q, k, v, sinks, [1, 3], window, begin=11)
    np.testing.assert_allclose(got, expected[:, :, 11:15], atol=1e-5)
    assert saved.offset == 15 and cache.offset == 18


@pytest.mark.parametrize("storage", STORAGES, ids=STORAGES)
@pytest.mark.parametrize("layout", ["full", "rotating"])
def test_nbytes_is_the_bytes_of_the_arrays_held(layout, storage):
    make, window = LAYOUTS[layout]
    cache = make(STORAGES[storage])
    assert cache.nbytes == 0
    q, k, v, sinks = random_qkv(21, batch=2)
    feed(cache, q, k, v, sinks, [20, 1], window)
    mx.eval(cache.state)
    assert cache.nbytes == sum(a.nbytes for a in cache.state)
    # The same from the format's definition: per position and kv head, D entries of `bits`
    # bits (+ a float32 scale and bias per group), or D entries of the float dtype.
    positions = 32 if layout == "full" else W  # capacity: 2 steps of 16, or the window
    stored = STORAGES[storage]
    if isinstance(stored, QuantizedStorage):
        per_vector = DIM * stored.bits // 8 + 2 * 4 * (DIM // stored.group_size)
    else:
        per_vector = DIM * (2 if storage.startswith("bf16") else 4)
    assert cache.nbytes == 2 * 2 * KV_HEADS * positions * per_vector


# -- which caches a model gets ----------------------------------------------------------------

CONFIG = ModelConfig(num_hidden_layers=4, num_local_experts=2, num_experts_per_tok=1,
                     vocab_size=32, hidden_size=32, intermediate_size=32, head_dim=64,
                     num_attention_heads=1, num_key_value_heads=1, sliding_window=W,
                     layer_types=(SLIDING, FULL, SLIDING, FULL))


def storages(caches):
    return [c.storage for c in caches]


def test_make_caches_follows_layer_types_and_options():
    caches = make_caches(CONFIG)
    assert [type(c) for c in caches] == [RotatingKVCache, KVCache, RotatingKVCache, KVCache]
    assert all(c.window == W for c in caches[::2])
    assert all(isinstance(s, FloatStorage) and s.dtype is None for s in storages(caches))

    full_only = storages(make_caches(CONFIG, kv_bits=8))
    assert [type(s) for s in full_only] == [FloatStorage, QuantizedStorage] * 2
    assert (full_only[1].bits, full_only[1].group_size) == (8, 64)
    everywhere = storages(make_caches(CONFIG, kv_bits=4, quantize_sliding=True))
    assert all(isinstance(s, QuantizedStorage) and s.bits == 4 for s in everywhere)
    bf16 = storages(make_caches(CONFIG, kv_dtype="bfloat16"))
    assert all(s.dtype == mx.bfloat16 for s in bf16)
    small_heads = dataclasses.replace(CONFIG, head_dim=32)
    assert storages(make_caches(small_heads, kv_bits=8))[1].group_size == 32
    assert [c.offset for c in make_caches(CONFIG, start=7)] == [7] * 4


@pytest.mark.parametrize("options, message", [
    ({"kv_bits": 5}, "kv_bits must be one of 4, 8"),
    ({"kv_bits": True}, "kv_bits must be one of 4, 8"),
    ({"kv_bits": 8, "kv_group_size": 16}, "kv group size must be one of 32, 64, 128"),
    ({"kv_dtype": "int8"}, "kv_dtype must be one of float32, bfloat16, float16"),
    ({"start": -1}, "start position"),
])
def test_make_caches_rejects_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        make_caches(CONFIG, **options)


def test_a_quantized_cache_needs_head_dim_a_multiple_of_32():
    with pytest.raises(ConfigError, match=r"head_dim \(16\)"):
        make_caches(dataclasses.replace(CONFIG, head_dim=16), kv_bits=8)


# -- PromptCache on every storage -------------------------------------------------------------


class TableModel:
    """Feeds each layer keys/values looked up by position in a random table (with zero
    queries), enough to follow what the caches hold and check it against the reference."""

    def __init__(self, **cache_options):
        self.config = CONFIG
        rng = np.random.default_rng(7)
        self.q, self.k, self.v = (rng.normal(size=(1, 1, 200, 64)).astype(np.float32)
                                  for _ in range(3))
        self.options = cache_options

    def make_cache(self, **options):
        return make_caches(CONFIG, **options)

    def feed(self, caches, count):
        """The attention outputs of every layer for the next `count` positions."""
        start = caches[0].offset
        sl = slice(start, start + count)
        return [np.array(cache.attend(mx.array(self.q[:, :, sl]), mx.array(self.k[:, :, sl]),
                                      mx.array(self.v[:, :, sl]), scale=SCALE,
                                      sinks=mx.zeros((1,)), window=W if cache.bounded else None))
                for cache in caches]


@pytest.mark.parametrize("options", [{}, {"kv_bits": 8, "quantize_sliding": True},
                                     {"kv_bits": 4}, {"kv_dtype": "bfloat16"}],
                         ids=["float", "8-bit everywhere", "4-bit full", "bf16"])
def test_prompt_cache_rewinds_to_the_nearest_exact_state(options):
    model = TableModel()
    pc = PromptCache(model, **options)
    cold = model.make_cache(**options)
    expected = model.feed(cold, 40)  # a cold run over the same positions
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
    assert type(pc.caches[1].storage) is type(cold[1].storage)
    got = [np.concatenate(parts, axis=2) for parts in
           zip(*(model.feed(pc.caches, T) for T in (1, 6, 1)))]
    # The restored caches continue exactly: the same stored keys and values as the cold run's,
    # so the outputs differ only by the float32 summation order of other query blocks (1 and
    # 6 queries here, 40 there: up to 1.2e-6 with MKL as MLX's BLAS).
    for layer_got, layer_expected in zip(got, expected):
        np.testing.assert_allclose(layer_got, layer_expected[:, :, 19:27], atol=1e-5)
    pc.add_tokens([3] * 8)
    # Diverging before every snapshot, after the window wrapped: fresh caches, nothing reused.
    assert pc.reuse([100, 5, 5]) == 0
    assert [c.offset for c in pc.caches] == [0] * 4 and pc.tokens == []
    assert pc.cache_options == options


def test_prompt_cache_reuses_everything_but_the_last_token_of_a_repeated_prompt():
    model = TableModel()
    pc = PromptCache(model)
    model.feed(pc.caches, 5)
    pc.add_tokens([1, 2, 3, 4, 5])
    assert pc.reuse([1, 2, 3, 4, 5]) == 4  # the last token is fed again for its logits
    assert [c.offset for c in pc.caches] == [4] * 4


# -- in the model: quantized and bf16 caches against transformers -----------------------------

from openharmony.generate import GenerationError, generate  # noqa: E402
from openharmony.load import load_model  # noqa: E402
from openharmony.testing.random_checkpoint import write_random_checkpoint  # noqa: E402
from openharmony.testing.parity import (CONFIGS, QUANTIZABLE, as_stored,  # noqa: E402
                                        chunked_then_decoded)
from openharmony.testing.reference import (load_exact_reference, load_reference,  # noqa: E402
                                           reference_logits)

VARIANTS = {
    "8-bit full layers": {"kv_bits": 8},
    "8-bit all layers": {"kv_bits": 8, "quantize_sliding": True},
    "4-bit full layers": {"kv_bits": 4},
    "bf16": {"kv_dtype": "bfloat16"},
}
# Bounds on (the median over positions of max |logit - transformers'|, top-1 agreement with
# transformers, mean KL(transformers || cache) of the next-token distributions), from
# `scripts/measure_cache.py parity` (docs/cache.md) with a margin. Not the max |logit diff|: a
# perturbation that flips one router choice moves that position's logits by up to ~5 (seen
# once, 8-bit all layers), while every other position stays within 0.15.
BOUNDS = {
    "8-bit full layers": (0.045, 0.99, 6e-5),  # measured 0.028, 1.0, 3.7e-5
    "8-bit all layers": (0.1, 0.95, 0.04),  # 0.063, 0.967, 0.025 (the router flip)
    "4-bit full layers": (0.75, 0.88, 0.02),  # 0.50, 0.90, 0.012
    "bf16": (0.035, 0.99, 4e-5),  # 0.022, 1.0, 2.4e-5
}


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """name -> (model, tokens [2, 6 windows], checkpoint path, transformers' logits)."""
    built = {}

    def get(name):
        if name not in built:
            config, spelling = {**CONFIGS, **QUANTIZABLE}[name]
            path = write_random_checkpoint(tmp_path_factory.mktemp("parity"), config, seed=7,
                                           rope_spelling=spelling)
            tokens = np.random.default_rng(11).integers(0, config.vocab_size,
                                                        (2, 6 * config.sliding_window))
            built[name] = (load_model(path, mx.float32), tokens, path,
                           reference_logits(load_reference(path), tokens))
        return built[name]

    return get


def next_token_agreement(logits: np.ndarray, reference: np.ndarray) -> tuple[float, ...]:
    """(median position's max |diff|, top-1 agreement, mean KL(reference || logits))."""
    logits, reference = (x.reshape(-1, x.shape[-1]).astype(np.float64) for x in (logits, reference))
    log_q = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    log_p = reference - np.logaddexp.reduce(reference, axis=-1, keepdims=True)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    return (float(np.median(np.abs(logits - reference).max(axis=-1))),
            float(np.mean(logits.argmax(-1) == reference.argmax(-1))), float(kl.mean()))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", QUANTIZABLE)
def test_quantized_and_bf16_caches_stay_close_to_transformers(parity, name, variant):
    model, tokens, _, reference = parity(name)
    # The float cache on the same path, for scale: transformers' logits to 1e-4.
    float_cache = chunked_then_decoded(model, tokens, model.make_cache())
    assert np.abs(float_cache - reference).max() <= 1e-4
    got = chunked_then_decoded(model, tokens, model.make_cache(**VARIANTS[variant]))
    median_diff, top1, kl = next_token_agreement(got, reference)
    max_median_diff, min_top1, max_kl = BOUNDS[variant]
    assert median_diff <= max_median_diff and top1 >= min_top1 and kl <= max_kl, \
        (median_diff, top1, kl)


@pytest.mark.parametrize("name", CONFIGS)
def test_parity_with_the_exact_math_far_into_the_context(parity, name):
    """A sequence whose first token sits at position 100,000 (caches started there), against
    transformers in float64 with float64 RoPE angles (`load_exact_reference`) given the same
    position_ids: our float32 logits there are as close to the exact ones as at position 0.

    RoPE only sees position differences, so the exact logits at 100,000 are those at 0 (the
    reference shows it, to float64 rounding). Before the model computed its angles in float64
    (openharmony/model.py, `Attention.rope`) this was 0.4-3.8e-3 off, as transformers' own
    float32 is: the float32 rounding of position x inverse frequency (docs/cache.md).
    """
    import torch

    model, tokens, path, _ = parity(name)
    exact = load_exact_reference(path)
    logits = {}
    for start in (0, 100_000):
        with torch.no_grad():
            positions = torch.arange(start, start + tokens.shape[1])[None].expand(
                tokens.shape[0], -1)
            logits[start] = exact(input_ids=torch.from_numpy(tokens), position_ids=positions,
                                  use_cache=False).logits.numpy()
    assert np.abs(logits[100_000] - logits[0]).max() < 1e-9  # the reference is exact
    for start, expected in logits.items():
        got = chunked_then_decoded(model, tokens, model.make_cache(start=start))
        assert np.abs(got - expected).max() <= 1e-4, start


# -- generate with a quantized cache ------------------------------------------------------------

from vocab import VOCAB, requires_vocab  # noqa: E402


@pytest.fixture(scope="module")
def generation_model(tmp_path_factory, tiny_config):
    # Sliding below full below sliding (the case prefix reuse must get right), head_dim 32.
    config = dataclasses.replace(tiny_config, num_hidden_layers=4, head_dim=32,
                                 layer_types=(SLIDING, FULL, SLIDING, FULL))
    path = write_random_checkpoint(tmp_path_factory.mktemp("gen-kv") / "hf", config, seed=3)
    return load_model(path, mx.float32)


@pytest.fixture(scope="module")
def tokenizer():
    from openharmony.tokenizer import load_tokenizer

    return load_tokenizer(VOCAB)


def greedy(model, prompt, tokenizer, max_tokens, **kwargs):
    return generate(model, prompt, tokenizer=tokenizer, max_tokens=max_tokens, temperature=0,
                    ignore_eos=True, logprobs=True, **kwargs)


@requires_vocab
@pytest.mark.parametrize("options", [{"kv_bits": 8}, {"kv_bits": 4}, {"kv_dtype": "bfloat16"}],
                         ids=["8-bit", "4-bit", "bf16"])
def test_prefix_reuse_with_a_quantized_cache_after_the_window_wrapped(generation_model,
                                                                      tokenizer, options):
    model = generation_model
    first = [int(t) for t in np.random.default_rng(2).integers(3, 1024, 20)]
    generated = greedy(model, first, tokenizer, 12, **options).tokens
    for second, reused in [(first + generated[:4] + [5, 6, 7], 19),  # needs the snapshot
                           (first + generated[:10] + [5, 6], 30)]:  # trims directly
        cache = PromptCache(model, **options)
        assert greedy(model, first, tokenizer, 12, prompt_cache=cache).tokens == generated
        assert len(cache.tokens) == 31  # the sliding caches (window 8) have wrapped
        warm = greedy(model, second, tokenizer, 12, prompt_cache=cache, **options)
        cold = greedy(model, second, tokenizer, 12, **options)
        assert warm.stats.reused_prompt_tokens == reused
        assert warm.tokens == cold.tokens
        # The warm run prefills the few new tokens, the cold one all of them: the native
        # kernels block 3 rows and 23 rows differently (float32 sums in another order, ~1e-7
        # relative), and a key or value that then rounds to the other side of a bf16 or
        # quantization step moves a logprob by more than that (4e-5 measured with bf16 on the
        # native path's AVX2 kernels, 1.8e-4 with the AVX-512 panel kernel, whose sums run in
        # 128-column pieces; exact on MLX's kernels).
        np.testing.assert_allclose(warm.logprobs, cold.logprobs, atol=5e-4)
    assert type(cache.caches[1].storage) is type(model.make_cache(**options)[1].storage)


@requires_vocab
def test_generate_rejects_bad_and_mismatched_kv_options(generation_model, tokenizer):
    model = generation_model
    with pytest.raises(ConfigError, match="kv_bits must be one of 4, 8"):
        greedy(model, [1, 2, 3], tokenizer, 2, kv_bits=3)
    with pytest.raises(GenerationError, match="prompt_cache was made with"):
        greedy(model, [1, 2, 3], tokenizer, 2, kv_bits=4,
               prompt_cache=PromptCache(model, kv_bits=8))
    # Leaving the options out takes the prompt cache's.
    assert greedy(model, [1, 2, 3], tokenizer, 2,
                  prompt_cache=PromptCache(model, kv_bits=8)).tokens


@requires_vocab
def test_the_cli_passes_kv_bits_to_the_caches(tiny_vocab_checkpoint, monkeypatch):
    from typer.testing import CliRunner

    from openharmony.cli import app

    monkeypatch.setenv("OPENHARMONY_VOCAB", str(VOCAB))
    model = ["-m", str(tiny_vocab_checkpoint)]
    for command in (["generate", "hi", "--max-tokens", "2"],
                    ["generate", "--chat", "hi", "--max-tokens", "2"],
                    ["chat", "--max-tokens", "2"], ["serve", "--port", "1"]):
        refused = CliRunner().invoke(app, [*command, *model, "--kv-bits", "5"])
        assert refused.exit_code == 2 and "must be 4 or 8, got 5" in refused.output
        # The tiny preset's head_dim (16) cannot be quantized: the option reached make_caches.
        reached = CliRunner().invoke(app, [*command, *model, "--kv-bits", "8"], input="hello\n")
        assert "head_dim (16)" in reached.output, reached.output


def test_the_server_cache_pool_makes_caches_with_kv_bits(generation_model):
    from openharmony.server.engine import CachePool

    cache = CachePool(generation_model, 10**9, kv_bits=8).take([1, 2, 3])
    assert cache.cache_options == {"kv_bits": 8}
    assert isinstance(cache.caches[1].storage, QuantizedStorage)
    assert isinstance(CachePool(generation_model, 10**9).take([1]).caches[1].storage,
                      FloatStorage)
