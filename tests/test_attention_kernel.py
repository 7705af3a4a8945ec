"""The native CPU attention kernel (csrc/attention*.cpp, `native.attention`) against NumPy
float64 attention written from the math: softmax over [q.k * scale for the visible keys, the
head's sink logit (unscaled, never masked)], then the probabilities of the keys times the
values; query head h reads kv head h // (n_heads / n_kv_heads); query t sits at key index
first + t and sees the keys up to there, with a window only the last `window` of them.

Every instruction set this CPU runs (`isa=`), every storage the caches use (float32, bf16,
8-bit and 4-bit affine as `mx.quantize` packs it), decode steps (1 query: split-K) and prefill
chunks, positions inside and past the window, GQA, MQA and MHA, odd head sizes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from openharmony import native
from openharmony.cache import FloatStorage, KVCache, QuantizedStorage, RotatingKVCache
from openharmony.runtime import MLXKernels, NativeKernels

pytestmark = pytest.mark.skipif(not native.available, reason="native kernels not built")

ISAS = native.isas() if native.available else []
TOLERANCE = 2e-5  # float32 sums and exp against float64 (measured: ~6e-7)


def reference(q, k, v, *, scale, sinks, first, window):
    """float64 attention, one query row at a time, from the definition."""
    B, H, T, D = q.shape
    repeats = H // k.shape[1]
    out = np.zeros((B, H, T, D))
    for b in range(B):
        for h in range(H):
            kv = h // repeats
            for t in range(T):
                position = first + t
                visible = [j for j in range(k.shape[2])
                           if j <= position and (window is None or j > position - window)]
                logits = np.array([q[b, h, t] @ k[b, kv, j] * scale for j in visible]
                                  + ([sinks[h]] if sinks is not None else []))
                p = np.exp(logits - logits.max())
                p /= p.sum()
                out[b, h, t] = p[:len(visible)] @ v[b, kv, visible] if visible else 0.0
    return out


def stored(x: np.ndarray, storage: str):
    """(the arrays the kernel is given, bits, group size, the values they hold in float64)."""
    a = mx.array(x.astype(np.float32))
    if storage == "float32":
        return (a,), 0, 0, x.astype(np.float32).astype(np.float64)
    if storage == "bfloat16":
        b = a.astype(mx.bfloat16)
        return (b,), 0, 0, np.array(b.astype(mx.float32)).astype(np.float64)
    bits = {"8-bit": 8, "4-bit": 4}[storage]
    group = 32 if x.shape[-1] % 64 else 64
    parts = mx.quantize(a, group_size=group, bits=bits)
    held = mx.dequantize(*parts, group_size=group, bits=bits)
    return tuple(parts), bits, group, np.array(held).astype(np.float64)


def run(q, k, v, sinks, *, first, window, storage="float32", isa="auto", splits=0, scale=None):
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    keys, bits, group, k_held = stored(k, storage)
    values, _, _, v_held = stored(v, storage)
    got = native.attention(mx.array(q.astype(np.float32)), keys, values, scale=scale,
                           sinks=None if sinks is None else mx.array(sinks.astype(np.float32)),
                           first=first, window=window, bits=bits, group_size=group, isa=isa,
                           splits=splits)
    want = reference(q.astype(np.float32).astype(np.float64), k_held, v_held, scale=scale,
                     sinks=None if sinks is None else sinks.astype(np.float32), first=first,
                     window=window)
    return np.array(got), want


# (B, heads, kv heads, T, S, head_dim, first, window): decode steps and prefill chunks, before
# and past the window, GQA 8:1 as gpt-oss, MQA, MHA, 3:1, head sizes 8, 16, 32, 64.
CASES = {
    "decode, gpt-oss heads": (1, 16, 2, 1, 700, 64, 699, None),
    "decode inside the window": (1, 8, 2, 1, 50, 64, 49, 128),
    "decode past the window": (1, 8, 2, 1, 300, 64, 299, 128),
    "decode, rotated window (all visible)": (2, 6, 2, 1, 8, 16, 7, None),
    "prefill chunk from 0": (1, 16, 2, 70, 70, 64, 0, None),
    "prefill chunk after a prefix": (1, 8, 2, 33, 200, 32, 167, None),
    "prefill chunk across the window": (1, 8, 1, 40, 180, 64, 140, 64),
    "prefill chunk longer than the window": (2, 6, 2, 37, 45, 16, 8, 8),
    "prefill, MHA, head_dim 8": (1, 4, 4, 19, 19, 8, 0, 5),
    "three queries (below a panel)": (1, 4, 2, 3, 90, 32, 87, 16),
}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CASES)
def test_float32_against_the_math(isa, case):
    B, H, Hkv, T, S, D, first, window = CASES[case]
    rng = np.random.default_rng(len(case))
    q, k, v = (rng.standard_normal(shape) for shape in
               ((B, H, T, D), (B, Hkv, S, D), (B, Hkv, S, D)))
    sinks = rng.standard_normal(H) * 2
    got, want = run(q, k, v, sinks, first=first, window=window, isa=isa)
    assert np.abs(got - want).max() < TOLERANCE


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("storage", ["bfloat16", "8-bit", "4-bit"])
@pytest.mark.parametrize("case", ["decode, gpt-oss heads", "decode past the window",
                                  "prefill chunk after a prefix",
                                  "prefill chunk across the window"])
def test_stored_formats_read_in_place(isa, storage, case):
    """The kernel decodes bf16 and quantized blocks itself: it must give the attention of the
    values the storage holds (as MLX's astype / mx.dequantize read them back)."""
    B, H, Hkv, T, S, D, first, window = CASES[case]
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal(shape) for shape in
               ((B, H, T, D), (B, Hkv, S, D), (B, Hkv, S, D)))
    got, want = run(q, k, v, rng.standard_normal(H), first=first, window=window,
                    storage=storage, isa=isa)
    assert np.abs(got - want).max() < TOLERANCE


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("splits", [1, 2, 3, 7])
def test_split_keys_combine_exactly(isa, splits):
    """Flash-decoding: the keys in `splits` ranges, partial softmax states combined, the sink
    counted once."""
    rng = np.random.default_rng(splits)
    q, k, v = (rng.standard_normal(s) for s in ((1, 8, 1, 64), (1, 1, 1000, 64), (1, 1, 1000, 64)))
    sinks = rng.standard_normal(8) + 3  # a sink that carries weight
    got, want = run(q, k, v, sinks, first=999, window=None, storage="8-bit", isa=isa,
                    splits=splits)
    assert np.abs(got - want).max() < TOLERANCE


def test_without_sinks_and_with_a_dominant_sink():
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal(s) for s in ((1, 4, 5, 32), (1, 2, 60, 32), (1, 2, 60, 32)))
    got, want = run(q, k, v, None, first=55, window=None)
    assert np.abs(got - want).max() < TOLERANCE
    got, want = run(q, k, v, np.full(4, 60.0), first=55, window=None)  # sink takes ~all mass
    assert np.abs(got).max() < 1e-10 + np.abs(want).max() * 10 and np.abs(got - want).max() < 1e-6


def test_cache_buffers_are_read_as_views():
    """A cache hands the kernel its buffer sliced to the positions held (strided): the kernel
    reads it in place, as a contiguous copy would read."""
    rng = np.random.default_rng(5)
    buffer_k = mx.array(rng.standard_normal((2, 2, 256, 64)).astype(np.float32))
    buffer_v = mx.array(rng.standard_normal((2, 2, 256, 64)).astype(np.float32))
    q = mx.array(rng.standard_normal((2, 8, 1, 64)).astype(np.float32))
    sinks = mx.zeros((8,))
    view = native.attention(q, (buffer_k[:, :, :100],), (buffer_v[:, :, :100],), scale=0.125,
                            sinks=sinks, first=99)
    copied = native.attention(q, (mx.array(np.array(buffer_k[:, :, :100])),),
                              (mx.array(np.array(buffer_v[:, :, :100])),), scale=0.125,
                              sinks=sinks, first=99)
    want = reference(np.array(q, np.float64), np.array(buffer_k[:, :, :100], np.float64),
                     np.array(buffer_v[:, :, :100], np.float64), scale=0.125,
                     sinks=np.zeros(8), first=99, window=None)
    assert np.array_equal(np.array(view), np.array(copied))
    assert np.abs(np.array(view) - want).max() < TOLERANCE


@pytest.mark.parametrize("bad, message", [
    (dict(isa="sse9"), "isa 'sse9'"),
    (dict(first=-1), "first"),
    (dict(bits=3, group_size=64), "bits must be 4 or 8"),
])
def test_bad_arguments_are_refused(bad, message):
    q, k = mx.zeros((1, 4, 1, 64)), mx.zeros((1, 2, 10, 64))
    args = dict(scale=1.0, sinks=None, first=9) | bad
    with pytest.raises(ValueError, match=message):
        native.attention(q, (k,), (k,), **args)


def test_mismatched_heads_are_refused():
    with pytest.raises(ValueError, match="kv_heads dividing"):
        native.attention(mx.zeros((1, 5, 1, 64)), (mx.zeros((1, 2, 10, 64)),),
                         (mx.zeros((1, 2, 10, 64)),), scale=1.0, sinks=None, first=9)


STORAGES = {
    "float32": lambda kernels: FloatStorage(None, kernels.attention),
    "bfloat16": lambda kernels: FloatStorage(mx.bfloat16, kernels.attention),
    "8-bit": lambda kernels: QuantizedStorage(8, 64, kernels.attention,
                                              kernels.packed_attention),
}


@pytest.mark.parametrize("storage", STORAGES)
def test_the_caches_attend_through_the_kernel(monkeypatch, storage):
    """With the native kernels (what `runtime.select()` gives on the CPU, and `Model.make_cache`
    hands the caches), every cache's attention is this kernel (decode steps and chunks, both
    layouts), and it agrees with MLX's attention on the same stored values."""
    calls = []
    kernel = native.attention
    monkeypatch.setattr(native, "attention", lambda *a, **kw: calls.append(kw) or kernel(*a, **kw))
    rng = np.random.default_rng(11)

    def attend_all(kernels):
        outs = []
        make = STORAGES[storage]
        for cache in (KVCache(make(kernels)), RotatingKVCache(16, make(kernels))):
            window = 16 if isinstance(cache, RotatingKVCache) else None
            for T in (20, 1, 1, 7, 1):
                q = mx.array(rng.standard_normal((1, 8, T, 64)).astype(np.float32))
                kv = mx.array(rng.standard_normal((2, 1, 2, T, 64)).astype(np.float32))
                outs.append(cache.attend(q, kv[0], kv[1], scale=0.125, sinks=mx.ones((8,)),
                                         window=window))
        return [np.array(o) for o in outs]

    state = rng.bit_generator.state
    native_outs = attend_all(NativeKernels())
    assert len(calls) == 10
    rng.bit_generator.state = state
    mlx_outs = attend_all(MLXKernels(mx.cpu))
    assert len(calls) == 10  # MLX's attention: the kernel is not called
    for a, b in zip(native_outs, mlx_outs):
        assert np.abs(a - b).max() < 1e-5


def test_scratch_does_not_grow_with_the_keys():
    """A prefill chunk of 256 queries over 32k keys: MLX's attention would hold 16 heads x 256
    x 32768 float32 scores (512 MiB); the kernel's scratch is per key block. Peak RSS of a
    fresh process running it grows by far less than the scores would take."""
    script = textwrap.dedent("""
        import resource, mlx.core as mx
        from openharmony import native
        q = mx.random.normal((1, 16, 256, 64)); k = mx.random.normal((1, 2, 32768, 64))
        v = mx.random.normal((1, 2, 32768, 64)); mx.eval(q, k, v)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        mx.eval(native.attention(q, (k,), (v,), scale=0.125, sinks=None, first=32768 - 256))
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    grown = int(done.stdout.split()[-1])
    assert grown < 64 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB"
