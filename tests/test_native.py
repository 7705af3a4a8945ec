"""The native CPU kernels (csrc/, openharmony.native) against MLX's ops and the OCP MX spec.

Every kernel runs on every instruction-set path this CPU has (AVX-512, AVX2, portable), on
shapes that are not multiples of the kernels' tiles (64-row chunks, 32- and 24-row tiles,
4-row groups, 16-row panels split into near-equal parts, 6- and 12-column kernels, 256-column
pieces, 16- and 8-lane vectors), with few rows per expert (decode: blocks decoded per row
group) and many (prefill: tiles dequantized once). The model's parity with transformers on
both kernel paths is in tests/test_model.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from openharmony import native
from openharmony.native import build

ISAS = ("avx512", "avx2", "portable")
REPO = Path(__file__).resolve().parents[1]

# The FP4 E2M1 values of the OCP Microscaling spec v1.0 by code, written out by hand.
SPEC_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                      -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])

needs_native = pytest.mark.skipif(not native.available,
                                  reason=f"native kernels unavailable: {native.unavailable_reason}")


def isa_or_skip(isa: str) -> str:
    if not native.available:
        pytest.skip(f"native kernels unavailable: {native.unavailable_reason}")
    if isa not in native.isas():
        pytest.skip(f"this CPU or build has no {isa} path")
    return isa


def spec_decode(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Blocks as stored (uint8 [..., G, 16]: element 2j in the low nibble of byte j) and E8M0
    scales [..., G] -> float64 [..., G*32], straight from the spec (scale 255: NaN)."""
    elements = np.stack([codes & 0xF, codes >> 4], axis=-1).reshape(*codes.shape[:-1], 32)
    scale = np.where(scales == 255, np.nan, np.exp2(scales.astype(np.float64) - 127))
    values = SPEC_E2M1[elements] * scale[..., None]
    return values.reshape(*codes.shape[:-2], -1)


def random_mxfp4(rng, experts, n, k, scale_range=(118, 130)):
    codes = rng.integers(0, 256, (experts, n, k // 32, 16), dtype=np.uint8)
    scales = rng.integers(*scale_range, (experts, n, k // 32), dtype=np.uint8)
    return codes, scales


def as_mlx(codes, scales):
    """The stored bytes as MLX's packed mxfp4 weight (uint32 words, little-endian)."""
    e, n, g, _ = codes.shape
    return mx.array(codes.reshape(e, n, g * 16).view(np.uint32)), mx.array(scales)


def assert_close(y, reference, bound):
    """|y - reference| <= 1e-5 * bound elementwise (bound: sum of |products| per output)."""
    y = np.array(y, dtype=np.float64)
    assert y.shape == reference.shape
    assert np.all(np.abs(y - reference) <= 1e-5 * bound + 1e-30), np.abs(y - reference).max()


# -- MXFP4 expert matmul ------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows", [1, 3, 7, 300])
@pytest.mark.parametrize("K", [96, 544])  # 544: tiles built in 256-column pieces, and a rest
def test_gather_mxfp4_matmul_matches_gather_qmm_and_the_spec(isa, rows, K):
    isa_or_skip(isa)
    rng = np.random.default_rng(rows)
    E, N = 5, 70
    codes, scales = random_mxfp4(rng, E, N, K)
    w, s = as_mlx(codes, scales)
    x = rng.standard_normal((rows, K)).astype(np.float32)
    # 300 rows: some experts have > 64 rows (tiles, several row blocks or more panels than one
    # item takes), 7 rows: some have 2+.
    experts = rng.integers(0, E, rows).astype(np.uint32)

    y = native.gather_mxfp4_matmul(mx.array(x), w, s, mx.array(experts), isa=isa)
    assert y.dtype == mx.float32 and y.shape == (rows, N)

    weights = spec_decode(codes, scales)[experts]  # [rows, N, K]
    reference = np.einsum("rk,rnk->rn", x.astype(np.float64), weights)
    bound = np.einsum("rk,rnk->rn", np.abs(x.astype(np.float64)), np.abs(weights))
    assert_close(y, reference, bound)

    qmm = mx.gather_qmm(mx.array(x)[:, None], w, s, None, rhs_indices=mx.array(experts),
                        transpose=True, group_size=32, bits=4, mode="mxfp4")[:, 0]
    assert_close(y, np.array(qmm, dtype=np.float64), bound)


@pytest.mark.parametrize("isa", ISAS)
def test_gather_mxfp4_matmul_decodes_extreme_scales_as_the_spec(isa):
    # Scale byte 0 (2**-127, a float32 subnormal), large scales, and 255 (NaN per the spec;
    # MLX decodes it as inf, so only the spec is the reference here).
    isa_or_skip(isa)
    rng = np.random.default_rng(5)
    E, N, K = 2, 9, 64
    codes, scales = random_mxfp4(rng, E, N, K)
    scales[0, 0, :] = 0
    scales[0, 1, 0] = 200
    scales[1, 2, 1] = 255
    w, s = as_mlx(codes, scales)
    x = np.ones((4, K), np.float32) * np.float32(2.0 ** 20)
    x[2:] = 1.0
    experts = np.array([0, 1, 0, 1], np.uint32)
    y = np.array(native.gather_mxfp4_matmul(mx.array(x), w, s, mx.array(experts), isa=isa))
    weights = spec_decode(codes, scales)[experts]
    reference = np.einsum("rk,rnk->rn", x.astype(np.float64), weights)
    assert np.array_equal(np.isnan(y), np.isnan(reference))
    assert np.isnan(y[1, 2]) and np.isnan(y[3, 2])
    finite = ~np.isnan(reference)
    bound = np.einsum("rk,rnk->rn", np.abs(x.astype(np.float64)), np.abs(np.nan_to_num(weights)))
    assert np.all(np.abs(y[finite] - reference[finite]) <= 1e-5 * bound[finite] + 1e-30)


# -- the expert gate_up fused with its bias and SwiGLU ---------------------------------------


def numpy_swiglu(z, limit, alpha):
    """gpt-oss's SwiGLU (transformers' GptOssExperts): gate = even columns, up = odd ones."""
    gate = np.minimum(z[:, ::2], limit)
    up = np.clip(z[:, 1::2], -limit, limit)
    return gate / (1 + np.exp(-alpha * gate)) * (up + 1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_gather_mxfp4_swiglu_is_the_matmul_plus_bias_then_swiglu(isa, rows, precision):
    isa_or_skip(isa)
    rng = np.random.default_rng(300 + rows)
    E, N, K = 5, 74, 96  # N/2 = 37 outputs: odd, and not a multiple of any tile
    codes, scales = random_mxfp4(rng, E, N, K, scale_range=(124, 128))
    w, s = as_mlx(codes, scales)
    x = rng.standard_normal((rows, K)).astype(np.float32)
    bias = rng.standard_normal((E, N)).astype(np.float32)
    experts = rng.integers(0, E, rows).astype(np.uint32)
    limit, alpha = 7.0, 1.702

    h = native.gather_mxfp4_swiglu(mx.array(x), w, s, mx.array(experts), mx.array(bias), limit,
                                   alpha, isa=isa, precision=precision)
    assert h.dtype == mx.float32 and h.shape == (rows, N // 2)
    # The same matmul unfused (so fast mode quantizes identically), then NumPy's bias and SwiGLU.
    z = np.array(native.gather_mxfp4_matmul(mx.array(x), w, s, mx.array(experts), isa=isa,
                                            precision=precision), np.float64) + bias[experts]
    assert np.abs(z).max() > 2 * limit  # the limit clamps somewhere
    assert np.allclose(np.array(h), numpy_swiglu(z, limit, alpha), rtol=1e-5, atol=1e-5)
    # And against MLX's ops on the exact matmul (as moe.Experts.swiglu).
    if precision == "exact":
        exact = np.einsum("rk,rnk->rn", x.astype(np.float64), spec_decode(codes, scales)[experts])
        assert np.allclose(np.array(h), numpy_swiglu(exact + bias[experts], limit, alpha),
                           rtol=1e-4, atol=1e-4)


@needs_native
def test_gather_mxfp4_swiglu_checks_its_bias():
    w, s = mx.zeros((2, 4, 4), dtype=mx.uint32), mx.zeros((2, 4, 1), dtype=mx.uint8)
    with pytest.raises(ValueError, match=r"bias must be \[experts, N\] = \(2, 4\)"):
        native.gather_mxfp4_swiglu(mx.ones((2, 32)), w, s, mx.zeros((2,), mx.uint32),
                                   mx.zeros((2, 3)), 7.0, 1.0)


# -- the fast precision: int8 products on MXFP4, activations quantized per 32-block -----------


def spec_fast_model(x, codes, scales, experts):
    """precision="fast" as csrc/int8.h states it, from the spec: per row and 32-block
    d = max|x| / 127 and q = rint(x / d) in float32; weights 2 * E2M1 (integers) times
    2**(s - 128); y = sum over blocks of the exact integer block dot product times d times the
    scale (float64 here). Returns y and the sum of the terms' magnitudes."""
    rows, K = x.shape
    blocks = x.reshape(rows, K // 32, 32)
    d = np.max(np.abs(blocks), axis=-1) / np.float32(127)
    inverse = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), np.float32(0))
    q = np.clip(np.rint(blocks * inverse[..., None]), -127, 127).astype(np.int64)
    elements = np.stack([codes & 0xF, codes >> 4], axis=-1).reshape(*codes.shape[:-1], 32)
    ints = (2 * SPEC_E2M1[elements]).astype(np.int64)[experts]       # [rows, N, G, 32]
    scale = np.where(scales == 255, np.nan, np.exp2(scales.astype(np.float64) - 128))[experts]
    dots = np.einsum("rgk,rngk->rng", q, ints).astype(np.float64)     # exact integers
    terms = dots * d.astype(np.float64)[:, None, :] * scale
    return terms.sum(-1), np.abs(terms).sum(-1), d


def fast_rows(experts):
    """Which rows the fast kernel multiplies in int8: those of experts with >= 8 rows."""
    counts = np.bincount(experts.astype(np.int64))
    return counts[experts] >= 8


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows", [1, 7, 8, 9, 37, 600])
@pytest.mark.parametrize("K", [96, 544])
def test_fast_mxfp4_matmul_matches_its_int8_model_and_stays_near_the_exact_result(isa, rows, K):
    isa_or_skip(isa)
    rng = np.random.default_rng(100 + rows)
    E, N = 5 if rows > 8 else 1, 70  # one expert for 8-9 rows: its rows take the int8 path
    codes, scales = random_mxfp4(rng, E, N, K)
    w, s = as_mlx(codes, scales)
    x = rng.standard_normal((rows, K)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block: scale 0, no contribution
    x[-1, 32:64] *= 1e4  # one large block beside ordinary ones
    experts = rng.integers(0, E, rows).astype(np.uint32)

    y = np.array(native.gather_mxfp4_matmul(mx.array(x), w, s, mx.array(experts), isa=isa,
                                            precision="fast"), dtype=np.float64)
    weights = spec_decode(codes, scales)[experts]
    exact = np.einsum("rk,rnk->rn", x.astype(np.float64), weights)
    bound = np.einsum("rk,rnk->rn", np.abs(x.astype(np.float64)), np.abs(weights))
    model, magnitude, d = spec_fast_model(x, codes, scales, experts)
    int8 = fast_rows(experts)
    # Rows on experts with few rows: the exact kernel.
    assert np.all(np.abs(y[~int8] - exact[~int8]) <= 1e-5 * bound[~int8] + 1e-30)
    # The others: the int8 model up to float32 summation, ...
    assert np.all(np.abs(y[int8] - model[int8]) <= 1e-5 * magnitude[int8] + 1e-30)
    # ... and within the quantization's own bound of the exact product: each activation moves
    # by at most half its block's step d (0.51: the float32 reciprocal's rounding).
    step = np.repeat(d.astype(np.float64), 32, axis=1)  # [rows, K]
    budget = np.einsum("rk,rnk->rn", 0.51 * step, np.abs(weights))
    assert np.all(np.abs(y[int8] - exact[int8]) <= budget[int8] + 1e-5 * bound[int8])
    # The same bound against MLX's own kernel.
    qmm = np.array(mx.gather_qmm(mx.array(x)[:, None], w, s, None,
                                 rhs_indices=mx.array(experts), transpose=True, group_size=32,
                                 bits=4, mode="mxfp4")[:, 0], dtype=np.float64)
    assert np.all(np.abs(y - qmm) <= budget + 2e-5 * bound)
    if int8.any():  # it did quantize: the int8 rows are not the exact ones
        assert not np.allclose(y[int8], exact[int8], rtol=1e-6, atol=0)


@needs_native
def test_fast_mxfp4_matmul_is_the_same_on_every_isa_and_keeps_nan_scales():
    # The int8 sums are exact and the float steps the same fma per block: identical bits.
    rng = np.random.default_rng(7)
    E, N, K, rows = 2, 30, 128, 40
    codes, scales = random_mxfp4(rng, E, N, K)
    scales[0, 3, 1] = 255  # NaN per the spec
    scales[1, 4, :] = 0  # 2**-128, a float32 subnormal
    w, s = as_mlx(codes, scales)
    x = mx.array(rng.standard_normal((rows, K)).astype(np.float32))
    experts = mx.array(rng.integers(0, E, rows).astype(np.uint32))
    outs = [np.array(native.gather_mxfp4_matmul(x, w, s, experts, isa=isa, precision="fast"))
            for isa in native.isas()]
    for other in outs[1:]:
        assert np.array_equal(outs[0], other, equal_nan=True)
    on_zero = np.array(experts) == 0
    assert np.isnan(outs[0][on_zero, 3]).all() and not np.isnan(outs[0][~on_zero, 3]).any()
    model, _, _ = spec_fast_model(np.array(x), codes, scales, np.array(experts))
    # Scale byte 0 is 2**-128 (not 0, not 2**-127); d * 2**-128 is a float32 subnormal, with
    # fewer significant bits, hence the looser tolerance.
    assert np.allclose(outs[0][:, 4], model[:, 4], rtol=1e-3, atol=0)


@needs_native
def test_an_unknown_precision_is_refused_by_name():
    w, s = mx.zeros((1, 4, 4), dtype=mx.uint32), mx.zeros((1, 4, 1), dtype=mx.uint8)
    with pytest.raises(ValueError, match="precision must be 'exact' or 'fast'"):
        native.gather_mxfp4_matmul(mx.ones((2, 32)), w, s, mx.zeros((2,)), precision="int4")


@needs_native
def test_an_out_of_range_expert_gives_nan_rows_and_leaves_the_others():
    rng = np.random.default_rng(2)
    codes, scales = random_mxfp4(rng, 3, 8, 32)
    w, s = as_mlx(codes, scales)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    y = np.array(native.gather_mxfp4_matmul(mx.array(x), w, s, mx.array([0, 3, 2], mx.uint32)))
    assert np.isnan(y[1]).all() and not np.isnan(y[[0, 2]]).any()


@needs_native
def test_the_native_ops_are_lazy_graph_nodes():
    # Built without computing anything; composed with MLX ops and evaluated once.
    rng = np.random.default_rng(3)
    codes, scales = random_mxfp4(rng, 2, 8, 32)
    w, s = as_mlx(codes, scales)
    x = mx.array(rng.standard_normal((2, 32)).astype(np.float32))
    y = native.gather_mxfp4_matmul(x * 2, w, s, mx.array([1, 0])) + 1
    z = native.bf16_matmul(y, mx.ones((3, 8), dtype=mx.bfloat16))
    expected = (np.array(native.gather_mxfp4_matmul(x * 2, w, s, mx.array([1, 0]))) + 1).sum(-1)
    assert np.allclose(np.array(z), expected[:, None].repeat(3, -1), rtol=1e-6, atol=1e-5)


@needs_native
@pytest.mark.parametrize("call, field", [
    (lambda w, s: native.gather_mxfp4_matmul(mx.ones((2, 48)), w, s, mx.zeros((2,))), "w"),
    (lambda w, s: native.gather_mxfp4_matmul(mx.ones((2, 32)), w, s[:, :, :0], mx.zeros((2,))),
     "scales"),
    (lambda w, s: native.gather_mxfp4_matmul(mx.ones((2, 32)), w, s, mx.zeros((3,))), "experts"),
    (lambda w, s: native.gather_mxfp4_matmul(mx.ones((32,)), w, s, mx.zeros((1,))), "x"),
    (lambda w, s: native.bf16_matmul(mx.ones((2, 5)), mx.ones((3, 5))), "w"),
    (lambda w, s: native.bf16_matmul(mx.ones((2, 5)), mx.ones((3, 4), dtype=mx.bfloat16)), "w"),
])
def test_bad_shapes_and_dtypes_name_the_argument(call, field):
    w, s = mx.zeros((2, 4, 4), dtype=mx.uint32), mx.zeros((2, 4, 1), dtype=mx.uint8)
    with pytest.raises(ValueError, match=f"{field} must|{field} "):
        call(w, s)


@needs_native
def test_an_unknown_isa_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="portable"):
        native.bf16_matmul(mx.ones((1, 4)), mx.ones((2, 4), dtype=mx.bfloat16), isa="sse9")


# -- bf16 x float32 dense matmul -------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows", [1, 3, 5, 8, 9, 130])  # 8: the 8-row panel kernel
@pytest.mark.parametrize("K", [77, 555])  # tails after 16 and 8 lanes; 555: 256-column pieces
def test_bf16_matmul_matches_mlx_and_float64(isa, rows, K):
    isa_or_skip(isa)
    rng = np.random.default_rng(rows)
    N = 70
    w = mx.array(rng.standard_normal((N, K)).astype(np.float32)).astype(mx.bfloat16)
    x = rng.standard_normal((rows, K)).astype(np.float32)
    y = native.bf16_matmul(mx.array(x), w, isa=isa)
    assert y.dtype == mx.float32 and y.shape == (rows, N)
    wide = np.array(w.astype(mx.float32), dtype=np.float64)
    reference = x.astype(np.float64) @ wide.T
    bound = np.abs(x.astype(np.float64)) @ np.abs(wide).T
    assert_close(y, reference, bound)
    assert_close(y, np.array(mx.array(x) @ w.astype(mx.float32).T, dtype=np.float64), bound)


def to_bf16(x):
    """float32 -> the nearest bfloat16 (ties to even), as float64: from the format's definition
    (a float32 with the low 16 bits of the significand rounded off)."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows", [1, 7, 8, 9, 130, 600])
@pytest.mark.parametrize("K", [77, 555])
def test_fast_bf16_matmul_rounds_the_activations_to_bf16(isa, rows, K):
    isa_or_skip(isa)
    rng = np.random.default_rng(200 + rows)
    N = 70
    w = mx.array(rng.standard_normal((N, K)).astype(np.float32)).astype(mx.bfloat16)
    x = rng.standard_normal((rows, K)).astype(np.float32)
    y = np.array(native.bf16_matmul(mx.array(x), w, isa=isa, precision="fast"), np.float64)
    wide = np.array(w.astype(mx.float32), dtype=np.float64)
    bound = np.abs(x.astype(np.float64)) @ np.abs(wide).T
    exact = x.astype(np.float64) @ wide.T
    if rows < 8:  # decode: exact
        assert_close(y, exact, bound)
        return
    model = to_bf16(x) @ wide.T  # bf16 activations, exact products, float32 sums
    assert_close(y, model, bound)
    rounded = mx.array(x).astype(mx.bfloat16).astype(mx.float32)  # MLX's own rounding
    assert_close(y, np.array(rounded @ w.astype(mx.float32).T, dtype=np.float64), bound)
    # Within bf16's rounding of the exact result (half an ulp: 2**-9 relative) ...
    assert np.all(np.abs(y - exact) <= 2.0 ** -9 * bound + 1e-5 * bound)
    assert not np.allclose(y, exact, rtol=1e-6, atol=0)  # ... and really rounded


@needs_native
def test_load_model_takes_the_precision_from_the_argument_or_the_environment(
        tiny_checkpoint, monkeypatch):
    from openharmony import load_model, runtime
    from openharmony.errors import OpenHarmonyError

    monkeypatch.delenv(runtime.PRECISION_ENV_VAR, raising=False)
    monkeypatch.setenv(runtime.ENV_VAR, "native")
    assert load_model(tiny_checkpoint).kernels.precision == "exact"
    assert load_model(tiny_checkpoint, precision="fast").kernels.precision == "fast"
    monkeypatch.setenv(runtime.PRECISION_ENV_VAR, "fast")
    assert load_model(tiny_checkpoint).kernels.precision == "fast"
    assert load_model(tiny_checkpoint, precision="exact").kernels.precision == "exact"
    monkeypatch.setenv(runtime.PRECISION_ENV_VAR, "half")
    with pytest.raises(OpenHarmonyError, match="OPENHARMONY_PRECISION must be one of exact, fast"):
        load_model(tiny_checkpoint)
    with pytest.raises(OpenHarmonyError, match="precision must be one of exact, fast, got 'int4'"):
        load_model(tiny_checkpoint, precision="int4")


@needs_native
def test_a_fast_model_stays_close_to_transformers_and_the_exact_one_matches_it(tiny_checkpoint):
    # 256 tokens, so that every expert gets the 8+ rows that take the int8 path. The stated
    # tolerance of the fast mode on this checkpoint (docs/speed.md has the measured figures):
    # top-1 agreement >= 0.97 and mean KL <= 5e-3; the exact mode keeps <= 1e-4.
    from openharmony import load_model
    from openharmony.testing.reference import load_reference, reference_logits

    tokens = np.random.default_rng(0).integers(0, 1024, (1, 256))
    reference = reference_logits(load_reference(tiny_checkpoint), tokens)[0].astype(np.float64)
    exact = np.array(load_model(tiny_checkpoint, precision="exact")(mx.array(tokens)))[0]
    fast = np.array(load_model(tiny_checkpoint, precision="fast")(mx.array(tokens)))[0]
    assert np.abs(exact - reference).max() <= 1e-4

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    p, q = log_softmax(reference), log_softmax(fast.astype(np.float64))
    kl = (np.exp(p) * (p - q)).sum(-1).mean()
    top1 = (fast.argmax(-1) == reference.argmax(-1)).mean()
    assert top1 >= 0.97 and kl <= 5e-3, (top1, kl)
    assert np.abs(fast - reference).max() > 1e-3  # the fast path did run


@needs_native
def test_results_do_not_depend_on_the_number_of_threads(tmp_path):
    # Each output element is computed by exactly one work item, in a fixed order: one thread
    # and the whole pool give the same bits, on the decode and on the tile paths.
    script = """
import sys, numpy as np, mlx.core as mx
from openharmony import native
rng = np.random.default_rng(0)
w = mx.array(rng.integers(0, 1 << 32, (4, 100, 12), dtype=np.uint32))
s = mx.array(rng.integers(118, 130, (4, 100, 3), dtype=np.uint8))
x = mx.array(rng.standard_normal((80, 96)).astype(np.float32))
experts = mx.array(rng.integers(0, 4, 80).astype(np.uint32))
wb = mx.array(rng.standard_normal((100, 96)).astype(np.float32)).astype(mx.bfloat16)
outs = [native.gather_mxfp4_matmul(x[:n], w, s, experts[:n]) for n in (1, 80)]
outs += [native.bf16_matmul(x[:n], wb) for n in (1, 80)]
outs += [native.gather_mxfp4_matmul(x, w, s, experts, precision="fast")]
outs += [native.bf16_matmul(x, wb, precision="fast")]
np.save(sys.argv[1], np.concatenate([np.array(o).ravel() for o in outs]))
print(native.threads())
"""
    results = {}
    for threads in ("1", "3"):
        out = tmp_path / f"{threads}.npy"
        done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True,
                              text=True, cwd=REPO, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(REPO),
                                       OPENHARMONY_THREADS=threads))
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == [threads]
        results[threads] = np.load(out)
    assert np.array_equal(results["1"], results["3"])


# -- the fallback and the build (the switch: tests/test_runtime.py) ----------------------------


def test_a_model_runs_on_mlx_kernels_with_one_warning_when_the_extension_is_absent(
        tiny_checkpoint):
    # A fresh interpreter in which the compiled module cannot be imported at all.
    script = f"""
import sys, warnings
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name == "openharmony.native._kernels":
            raise ImportError("hidden by the test")
sys.meta_path.insert(0, Absent())
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import mlx.core as mx
    from openharmony import load_model, native
    model = load_model({str(tiny_checkpoint)!r})
    logits = model(mx.array([[1, 2, 3]]))
    mx.eval(logits)
assert not native.available
assert model.lm_head.weight.dtype == mx.float32
messages = [str(w.message) for w in caught if "native kernels" in str(w.message)]
assert len(messages) == 1, messages
print("ok", logits.shape)
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENHARMONY_KERNELS="auto")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ok (1, 3," in done.stdout


@needs_native
def test_a_module_built_for_another_mlx_is_refused(monkeypatch):
    monkeypatch.setattr(mx, "__version__", "0.0.1")
    module, reason = native._load()
    assert module is None
    assert f"built for mlx {mx.__version__}" not in reason and "0.0.1 is installed" in reason


def test_the_build_is_redone_when_mlx_or_the_sources_change(monkeypatch):
    if not build.up_to_date():
        pytest.skip("no up-to-date build here to compare against")
    current = build.versions()
    for field in ("mlx", "nanobind", "sources"):
        monkeypatch.setattr(build, "versions", lambda f=field: {**current, f: "other"})
        assert not build.up_to_date()


def test_ci_builds_the_extension():
    # CI (.ci/run) sets OPENHARMONY_REQUIRE_NATIVE=1: there the suite fails without the
    # native path instead of skipping its tests.
    if os.environ.get("OPENHARMONY_REQUIRE_NATIVE") != "1":
        pytest.skip("OPENHARMONY_REQUIRE_NATIVE is not set")
    assert native.available, native.unavailable_reason
    assert "portable" in native.isas()
