"""MXFP4 codec against the OCP MX v1.0 spec, a scalar reference encoder, and MLX's mxfp4 mode."""

import math
from fractions import Fraction

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openharmony import OpenHarmonyError
from openharmony.mxfp4 import FP4_VALUES, decode, encode, from_mlx, to_mlx

# The FP4 E2M1 table of the OCP Microscaling spec v1.0, written out by hand: code -> value.
SPEC_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
             -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
F32_MAX = float(np.finfo(np.float32).max)

HYPOTHESIS = settings(max_examples=40, deadline=None)


# -- an independent scalar encoder, straight from the spec's definitions ---------------------

def reference_encode_block(values, shared_exp=None):
    """(codes, scale byte) of one block of 32 floats; shared_exp=None: the spec's exponent."""
    values = [float(v) for v in values]
    if not all(math.isfinite(v) for v in values):
        return None, 255
    if shared_exp is None:
        amax = max(abs(v) for v in values)
        # frexp: amax = m * 2**e with 0.5 <= m < 1, so floor(log2(amax)) = e - 1.
        floor_log2 = math.frexp(amax)[1] - 1 if amax else -math.inf
        shared_exp = max(floor_log2 - 2, -127)  # 2: the largest E2M1 exponent; E8M0 >= -127
    scale = Fraction(2) ** shared_exp
    codes = []
    for v in values:
        q = Fraction(abs(v)) / scale
        # The nearest E2M1 magnitude (beyond 6 that is 6: saturation); a tie goes to the even
        # code, the one with mantissa bit 0.
        code = min(range(8), key=lambda c: (abs(q - Fraction(SPEC_E2M1[c])), c % 2))
        codes.append(code | (8 if math.copysign(1.0, v) < 0 else 0))
    return codes, shared_exp + 127


def reference_encode(x):
    """reference_encode_block over a float32 numpy array [R, K]: (blocks, scales) as numpy."""
    rows, k = x.shape
    blocks = np.zeros((rows, k // 32, 16), np.uint8)
    scales = np.zeros((rows, k // 32), np.uint8)
    for r in range(rows):
        for g in range(k // 32):
            codes, scales[r, g] = reference_encode_block(x[r, 32 * g:32 * (g + 1)])
            if codes is not None:
                blocks[r, g] = [codes[2 * j] | codes[2 * j + 1] << 4 for j in range(16)]
    return blocks, scales


def f32_bits(a):
    return np.array(a).astype(np.float32).view(np.uint32)


# -- input strategies -------------------------------------------------------------------------

def _scaled_block_matrix(draw, min_exp, max_exp):
    rows = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    out = np.zeros((rows, 32 * groups), np.float64)
    for r in range(rows):
        for g in range(groups):
            exponent = draw(st.integers(min_exp, max_exp))
            unit = draw(st.lists(st.floats(-1, 1, width=32), min_size=32, max_size=32))
            out[r, 32 * g:32 * (g + 1)] = np.array(unit) * 2.0 ** exponent
    return np.clip(out, -F32_MAX, F32_MAX).astype(np.float32)


@st.composite
def block_matrices(draw, min_exp=-160, max_exp=128):
    """Float32 [R, 32*G]: each block has its own magnitude, from underflow to float32's max."""
    return _scaled_block_matrix(draw, min_exp, max_exp)


@st.composite
def wild_matrices(draw):
    """Float32 [R, 32*G] with any finite float32 anywhere (subnormals, ±0, huge)."""
    rows, groups = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    values = draw(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32),
                           min_size=rows * 32 * groups, max_size=rows * 32 * groups))
    return np.array(values, np.float32).reshape(rows, 32 * groups)


def edge_values():
    """Ties, midpoints ± 1 ulp, powers of two across the whole range, subnormals, extremes."""
    out = [0.0, -0.0, F32_MAX, -F32_MAX, 2.0 ** -149, -(2.0 ** -149), 2.0 ** -127, 2.0 ** -126]
    for m in (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0, 1.5):
        m32 = np.float32(m)
        out += [m, -m, float(np.nextafter(m32, np.float32(0))),
                float(np.nextafter(m32, np.float32(9)))]
    out += [2.0 ** e for e in range(-149, 128, 7)]
    return out


# -- the spec's tables ------------------------------------------------------------------------

def test_fp4_value_table_is_the_spec_table():
    assert len(FP4_VALUES) == 16
    assert f32_bits(FP4_VALUES).tolist() == f32_bits(SPEC_E2M1).tolist()  # -0.0 included


@pytest.mark.parametrize("scale_byte", [0, 1, 127, 254])
def test_every_code_decodes_to_its_spec_value(scale_byte):
    # Block element i (i < 16) holds code i; the others hold code 0.
    codes = list(range(16)) + [0] * 16
    blocks = mx.array([[[codes[2 * j] | codes[2 * j + 1] << 4 for j in range(16)]]], mx.uint8)
    scales = mx.array([[scale_byte]], mx.uint8)
    got = np.array(decode(blocks, scales))[0, :16]
    # Exact in float64; the float32 cast makes 2**-128 a subnormal and 2 * 2**127 overflow.
    with np.errstate(over="ignore"):
        expected = np.array([v * 2.0 ** (scale_byte - 127) for v in SPEC_E2M1]).astype(np.float32)
    assert got.view(np.uint32).tolist() == expected.view(np.uint32).tolist()


def test_scale_extremes_decode_to_their_values():
    codes_one = mx.full((1, 5, 16), 0x22, mx.uint8)  # every element 1.0
    scales = mx.array([[0, 1, 127, 254, 255]], mx.uint8)
    got = np.array(decode(codes_one, scales)).reshape(5, 32)
    assert (got[0] == np.float32(2.0 ** -127)).all()  # a float32 subnormal, not flushed
    assert (got[1] == np.float32(2.0 ** -126)).all()
    assert (got[2] == 1.0).all()
    assert (got[3] == np.float32(2.0 ** 127)).all()
    assert np.isnan(got[4]).all()  # 255 is E8M0's NaN


def test_scale_255_makes_every_element_nan_even_zero():
    blocks = mx.array(np.arange(16, dtype=np.uint8)[None, None] * 0x11)  # each code, twice
    assert np.isnan(np.array(decode(blocks, mx.array([[255]], mx.uint8)))).all()


def test_nibble_order_low_nibble_is_the_even_element():
    raw = np.zeros((1, 1, 16), np.uint8)
    raw[0, 0, 0] = 0x72  # element 0: code 2 (1.0), element 1: code 7 (6.0)
    raw[0, 0, 5] = 0x9F  # element 10: code 0xF (-6.0), element 11: code 9 (-0.5)
    got = np.array(decode(mx.array(raw), mx.array([[128]], mx.uint8)))[0]  # scale 2
    expected = np.zeros(32, np.float32)
    expected[[0, 1, 10, 11]] = [2.0, 12.0, -12.0, -1.0]
    assert got.tolist() == expected.tolist()


def test_decode_output_dtype_and_shape():
    blocks = mx.full((2, 3, 4, 16), 0x31, mx.uint8)  # elements 0.5, 1.5, ...
    scales = mx.full((2, 3, 4), 126, mx.uint8)  # 0.5
    out = decode(blocks, scales, dtype=mx.bfloat16)
    assert out.dtype == mx.bfloat16 and out.shape == (2, 3, 128)
    assert np.array(out.astype(mx.float32))[0, 0, :2].tolist() == [0.25, 0.75]


# -- encode: exactly the spec -----------------------------------------------------------------

@HYPOTHESIS
@given(st.one_of(block_matrices(), wild_matrices()))
def test_encode_matches_the_scalar_reference(x):
    blocks, scales = encode(mx.array(x))
    ref_blocks, ref_scales = reference_encode(x)
    assert np.array(scales).tolist() == ref_scales.tolist()
    assert np.array(blocks).tolist() == ref_blocks.tolist()


def test_encode_matches_the_scalar_reference_on_edge_values():
    values = edge_values()
    values += [0.0] * (-len(values) % 32)
    x = np.array(values, np.float32).reshape(-1, 32)
    # Each edge value alone, and next to a block maximum of 1 and of 6.
    alone = np.zeros((len(values), 32), np.float32)
    alone[:, 0] = values
    for peak in (None, 1.0, 6.0):
        batch = alone.copy()
        if peak is not None:
            batch[:, 31] = peak
        for m in (x, batch):
            blocks, scales = encode(mx.array(m))
            ref_blocks, ref_scales = reference_encode(m)
            assert np.array(scales).tolist() == ref_scales.tolist()
            assert np.array(blocks).tolist() == ref_blocks.tolist()


def test_encode_rounds_ties_to_even_and_saturates():
    # At scale 1 (block max 4): each value and the E2M1 value it must become.
    cases = {0.25: 0.0, 0.75: 1.0, 1.25: 1.0, 1.75: 2.0, 2.5: 2.0, 3.5: 4.0, 5.0: 4.0,
             0.2500001: 0.5, 5.0000005: 6.0, 7.5: 6.0, -2.5: -2.0, -3.5: -4.0}
    x = np.full((1, 32), 4.0, np.float32)
    x[0, :len(cases)] = list(cases)
    blocks, scales = encode(mx.array(x))
    assert np.array(scales).tolist() == [[127]]
    got = np.array(decode(blocks, scales))[0, :len(cases)]
    assert got.tolist() == [np.float32(v) for v in cases.values()]


def _block_scales(scales):
    """The decoded scale 2**(s - 127) of each element's block, as float64 [R, K]."""
    return np.repeat(2.0 ** (np.array(scales).astype(np.float64) - 127), 32, axis=-1)


def _half_step(q):
    """Half the spacing of the E2M1 grid around magnitude q (in units of the block scale)."""
    return np.where(q < 2, 0.25, np.where(q < 4, 0.5, 1.0))


@HYPOTHESIS
@given(st.one_of(block_matrices(), wild_matrices()))
def test_round_trip_error_is_at_most_half_a_step(x):
    """|decode(encode(x)) - x| <= S * h(|x|/S), S the block's scale, h half the E2M1 spacing
    there (0.25 below 2, 0.5 below 4, 1 up to 6); beyond 6 S the value saturates to ±6 S."""
    blocks, scales = encode(mx.array(x))
    decoded = np.array(decode(blocks, scales)).astype(np.float64)
    x64 = x.astype(np.float64)
    scale = _block_scales(scales)
    q = np.abs(x64) / scale
    in_range = q <= 6
    err = np.abs(decoded - x64)
    assert (err[in_range] <= scale[in_range] * _half_step(q[in_range])).all()
    assert (decoded[~in_range] == np.sign(x64[~in_range]) * 6 * scale[~in_range]).all()
    # The shared exponent keeps every block's maximum below 8 S.
    assert (q < 8).all()


@HYPOTHESIS
@given(block_matrices(min_exp=-100, max_exp=100), st.floats(1.5, 2, width=32, exclude_min=True,
                                                            exclude_max=True))
def test_block_maximum_with_significand_above_1_5_saturates_to_6_scale(x, significand):
    # Put m * 2**e (m in (1.5, 2)) in every block: with scale 2**(e-2) it is 4m > 6.
    exponent = np.floor(np.log2(np.abs(x).max(axis=1, keepdims=True) + 1e-30)) + 1
    x = x.copy()
    x[:, ::32] = (-significand * 2.0 ** exponent).astype(np.float32)
    blocks, scales = encode(mx.array(x))
    decoded = np.array(decode(blocks, scales)).astype(np.float64)
    scale = _block_scales(scales)
    assert (np.array(scales).astype(int) - 127 == exponent - 2).all()
    assert (decoded[:, ::32] == -6 * scale[:, ::32]).all()
    assert (np.abs(decoded) <= 6 * scale).all()


@HYPOTHESIS
@given(st.one_of(block_matrices(), wild_matrices()))
def test_signs_are_kept_including_zeros(x):
    blocks, scales = encode(mx.array(x))
    decoded = np.array(decode(blocks, scales))
    assert (np.signbit(decoded) == np.signbit(x)).all()


def test_signed_zeros_and_small_negatives_round_to_negative_zero():
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = [4.0, -0.0, -0.1, 0.1]  # scale 1: ±0.1 round to zero
    decoded = np.array(decode(*encode(mx.array(x))))[0, :4]
    assert decoded.tolist() == [4.0, 0.0, 0.0, 0.0]
    assert np.signbit(decoded).tolist() == [False, True, True, False]


def test_all_zero_blocks_get_the_smallest_scale_and_decode_to_signed_zeros():
    x = np.zeros((2, 64), np.float32)
    x[1, 32:] = -0.0
    blocks, scales = encode(mx.array(x))
    assert np.array(scales).tolist() == [[0, 0], [0, 0]]  # shared exponent clamped to -127
    assert (np.array(blocks)[1, 1] == 0x88).all() and (np.array(blocks)[0] == 0).all()
    decoded = np.array(decode(blocks, scales))
    assert (decoded == 0).all() and np.signbit(decoded).tolist() == np.signbit(x).tolist()


def test_huge_and_tiny_magnitudes_clamp_the_exponent():
    x = np.zeros((5, 32), np.float32)
    x[0, :2] = [F32_MAX, 2.0 ** 127]  # floor(log2) = 127: exponent 125, max saturates
    x[1, :2] = [2.0 ** -126, 2.0 ** -127]  # exponent would be -128: clamped to -127
    x[2, :2] = [2.0 ** -149, -(2.0 ** -140)]  # subnormals, far below the smallest scale
    x[3, :2] = [2.0 ** -125, 2.0 ** -127]  # exponent exactly -127: no clamping needed
    x[4, :2] = [1.5 * 2.0 ** -126, 0.75 * 2.0 ** -126]  # subnormal 0.75 * 2**-126 -> 1.5 * S
    blocks, scales = encode(mx.array(x))
    decoded = np.array(decode(blocks, scales))
    assert np.array(scales)[:, 0].tolist() == [252, 0, 0, 0, 0]
    assert decoded[0, :2].tolist() == [np.float32(1.5 * 2.0 ** 127), np.float32(2.0 ** 127)]
    assert decoded[1, :2].tolist() == [np.float32(2.0 ** -126), np.float32(2.0 ** -127)]
    assert decoded[2, :2].tolist() == [0.0, 0.0] and np.signbit(decoded[2, 1])
    assert decoded[3, :2].tolist() == [np.float32(2.0 ** -125), np.float32(2.0 ** -127)]
    assert decoded[4, :2].tolist() == [np.float32(1.5 * 2.0 ** -126),
                                       np.float32(0.75 * 2.0 ** -126)]


def test_blocks_with_inf_or_nan_get_the_nan_scale():
    x = np.ones((3, 64), np.float32)
    x[0, 3], x[1, 40], x[2, 0] = np.inf, np.nan, -np.inf
    blocks, scales = encode(mx.array(x))
    assert np.array(scales).tolist() == [[255, 125], [125, 255], [255, 125]]  # 1 = 4 * 2**-2
    decoded = np.array(decode(blocks, scales))
    assert np.isnan(decoded[[0, 2], :32]).all() and np.isnan(decoded[1, 32:]).all()
    assert (decoded[[0, 2], 32:] == 1).all() and (decoded[1, :32] == 1).all()


def test_encode_accepts_half_precision_exactly():
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    for dtype in (mx.bfloat16, mx.float16):
        low = mx.array(x).astype(dtype)
        blocks, scales = encode(low)
        ref_blocks, ref_scales = reference_encode(np.array(low.astype(mx.float32)))
        assert np.array(blocks).tolist() == ref_blocks.tolist()
        assert np.array(scales).tolist() == ref_scales.tolist()


def test_encode_works_on_any_leading_shape():
    x = np.random.default_rng(1).standard_normal((2, 3, 96)).astype(np.float32)
    blocks, scales = encode(mx.array(x))
    assert blocks.shape == (2, 3, 3, 16) and scales.shape == (2, 3, 3)
    ref_blocks, ref_scales = reference_encode(x.reshape(6, 96))
    assert np.array(blocks).reshape(6, 3, 16).tolist() == ref_blocks.tolist()
    assert np.array(scales).reshape(6, 3).tolist() == ref_scales.tolist()


# -- MLX's mode="mxfp4" -----------------------------------------------------------------------

def _random_storage(rng, shape, max_scale=254):
    blocks = rng.integers(0, 256, (*shape, 16), dtype=np.uint8)
    scales = rng.integers(0, max_scale + 1, shape, dtype=np.uint8)
    return mx.array(blocks), mx.array(scales)


def test_decode_equals_mx_dequantize_bit_for_bit():
    rng = np.random.default_rng(2)
    for shape in [(64, 90), (3, 5, 7)]:
        blocks, scales = _random_storage(rng, shape)
        w, s = to_mlx(blocks, scales)
        theirs = mx.dequantize(w, s, mode="mxfp4", group_size=32, bits=4, dtype=mx.float32)
        ours = decode(blocks, scales)
        assert f32_bits(ours).tolist() == f32_bits(theirs).tolist()


def test_mx_dequantize_gives_inf_where_decode_gives_nan_for_scale_255():
    blocks = mx.array(np.arange(16, dtype=np.uint8)[None, None] * 0x11)
    scales = mx.array([[255]], mx.uint8)
    theirs = np.array(mx.dequantize(*to_mlx(blocks, scales), mode="mxfp4", group_size=32, bits=4,
                                    dtype=mx.float32))[0]
    codes = np.arange(32) // 2  # byte j holds code j twice
    assert np.isnan(theirs[codes % 8 == 0]).all()  # 0 * inf
    assert np.isinf(theirs[codes % 8 != 0]).all()
    assert np.isnan(np.array(decode(blocks, scales))).all()


def test_to_mlx_feeds_quantized_matmul():
    rng = np.random.default_rng(3)
    blocks, _ = _random_storage(rng, (48, 4))
    scales = mx.array(rng.integers(120, 132, (48, 4), dtype=np.uint8))
    x = mx.array(rng.standard_normal((5, 128)).astype(np.float32))
    w, s = to_mlx(blocks, scales)
    got = mx.quantized_matmul(x, w, s, transpose=True, group_size=32, bits=4, mode="mxfp4")
    weights = np.array(decode(blocks, scales)).astype(np.float64)
    expected = np.array(x).astype(np.float64) @ weights.T
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-3)


def test_to_mlx_and_from_mlx_share_memory_and_invert():
    blocks, scales = _random_storage(np.random.default_rng(4), (8, 3))
    mx.eval(blocks)
    w, s = to_mlx(blocks, scales)
    assert w.dtype == mx.uint32 and w.shape == (8, 12) and s is scales
    mx.eval(w)
    assert np.shares_memory(np.asarray(blocks), np.asarray(w))  # a view, no copy
    # Element 8i+n of the MLX word stream sits at bits 4n of word i.
    word = int(np.array(w)[0, 0])
    raw = np.array(blocks)[0, 0]
    assert [(word >> 4 * n) & 0xF for n in range(8)] == [
        (raw[n // 2] >> (4 * (n % 2))) & 0xF for n in range(8)]
    back, s2 = from_mlx(w, s)
    mx.eval(back)
    assert back.dtype == mx.uint8 and np.array(back).tolist() == np.array(blocks).tolist()
    assert np.shares_memory(np.asarray(back), np.asarray(w))


def test_from_mlx_accepts_mx_quantize_output():
    x = mx.array(np.random.default_rng(5).standard_normal((4, 64)).astype(np.float32))
    w, s = mx.quantize(x, mode="mxfp4", group_size=32, bits=4)
    blocks, scales = from_mlx(w, s)
    theirs = mx.dequantize(w, s, mode="mxfp4", group_size=32, bits=4, dtype=mx.float32)
    assert f32_bits(decode(blocks, scales)).tolist() == f32_bits(theirs).tolist()


def _mlx_quantize_expected(x):
    """What mx.quantize(mode="mxfp4") writes, derived from the scalar reference: exponent
    ceil(log2(max|x| / 6)) = the spec's + 1 when max|x| has significand > 1.5, the same
    rounding at that scale, and no sign on elements that round to zero."""
    rows, k = x.shape
    blocks = np.zeros((rows, k // 32, 16), np.uint8)
    scales = np.zeros((rows, k // 32), np.uint8)
    for r in range(rows):
        for g in range(k // 32):
            block = x[r, 32 * g:32 * (g + 1)]
            significand, e = math.frexp(float(np.abs(block).max()))  # significand in [0.5, 1)
            shared_exp = (e - 1) - 2 + (significand > 0.75)
            codes, scales[r, g] = reference_encode_block(block, shared_exp)
            codes = [0 if c == 8 else c for c in codes]
            blocks[r, g] = [codes[2 * j] | codes[2 * j + 1] << 4 for j in range(16)]
    return blocks, scales


@HYPOTHESIS
@given(block_matrices(min_exp=-100, max_exp=127))
def test_mx_quantize_differs_from_the_spec_only_as_documented(x):
    """Blocks with max|x| >= 2**-120 (so neither exponent rule is clamped) and no Inf/NaN."""
    amax = np.abs(x).reshape(x.shape[0], -1, 32).max(axis=-1)
    x = np.where(np.repeat(amax, 32, axis=-1) >= 2.0 ** -120, x, np.float32(1.0))
    w, s = mx.quantize(mx.array(x), mode="mxfp4", group_size=32, bits=4)
    theirs_blocks, theirs_scales = from_mlx(w, s)
    expected_blocks, expected_scales = _mlx_quantize_expected(x)
    assert np.array(theirs_scales).tolist() == expected_scales.tolist()
    assert np.array(theirs_blocks).tolist() == expected_blocks.tolist()


def test_mx_quantize_at_the_significand_1_5_boundary():
    below_or_at = [1.5, float(np.nextafter(np.float32(1.5), np.float32(0))), 1.0]
    above = [float(np.nextafter(np.float32(1.5), np.float32(2))), 1.75, 1.9999999]
    rows = []
    for e in (-100, -3, 0, 7, 100):
        for m in below_or_at + above:
            row = np.full(32, 0.3 * 2.0 ** e, np.float32)
            row[5] = m * 2.0 ** e
            rows.append(row)
    x = np.array(rows, np.float32)
    _, spec_scales = encode(mx.array(x))
    _, mlx_scales = mx.quantize(mx.array(x), mode="mxfp4", group_size=32, bits=4)
    step = (np.array(mlx_scales).astype(int) - np.array(spec_scales).astype(int)).reshape(5, 6)
    assert step.tolist() == [[0, 0, 0, 1, 1, 1]] * 5


def test_mx_quantize_scale_disagreement_rate_on_gaussian_weights():
    x = mx.array(np.random.default_rng(6).standard_normal((256, 2880)).astype(np.float32))
    _, spec_scales = encode(x)
    _, mlx_scales = mx.quantize(x, mode="mxfp4", group_size=32, bits=4)
    diff = np.array(mlx_scales).astype(int) - np.array(spec_scales).astype(int)
    assert set(np.unique(diff)) == {0, 1}
    assert 0.27 < (diff == 1).mean() < 0.33  # measured: 0.297 on 4096 x 2880


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(), (31,), (4, 48), (2, 0, 33)])
def test_encode_rejects_a_last_dimension_not_a_multiple_of_32(shape):
    with pytest.raises(OpenHarmonyError, match="multiple of 32"):
        encode(mx.zeros(shape))


def test_encode_rejects_integers():
    with pytest.raises(OpenHarmonyError, match="floating-point"):
        encode(mx.zeros((2, 32), mx.int32))


@pytest.mark.parametrize("blocks_shape, blocks_dtype, scales_shape, scales_dtype, message", [
    ((4, 16), mx.uint32, (4,), mx.uint8, "uint8"),
    ((4, 16), mx.uint8, (4,), mx.float32, "uint8"),
    ((4, 15), mx.uint8, (4,), mx.uint8, r"\[..., G, 16\]"),
    ((16,), mx.uint8, (), mx.uint8, r"\[..., G, 16\]"),
    ((2, 4, 16), mx.uint8, (2, 3), mx.uint8, r"scales must have shape \(2, 4\)"),
])
def test_decode_and_to_mlx_reject_bad_storage(blocks_shape, blocks_dtype, scales_shape,
                                              scales_dtype, message):
    blocks, scales = mx.zeros(blocks_shape, blocks_dtype), mx.zeros(scales_shape, scales_dtype)
    for function in (decode, to_mlx):
        with pytest.raises(OpenHarmonyError, match=message):
            function(blocks, scales)


@pytest.mark.parametrize("w_shape, w_dtype, scales_shape, scales_dtype, message", [
    ((4, 8), mx.uint8, (4, 2), mx.uint8, "uint32"),
    ((4, 8), mx.uint32, (4, 2), mx.int32, "uint8"),
    ((4, 8), mx.uint32, (4, 3), mx.uint8, r"need scales of shape \(4, 2\), got \(4, 3\)"),
    ((4, 6), mx.uint32, (4, 1), mx.uint8, "multiple of 4"),
    ((3, 8), mx.uint32, (4, 2), mx.uint8, r"need scales of shape \(3, 2\)"),
])
def test_from_mlx_rejects_mismatched_arrays(w_shape, w_dtype, scales_shape, scales_dtype, message):
    with pytest.raises(OpenHarmonyError, match=message):
        from_mlx(mx.zeros(w_shape, w_dtype), mx.zeros(scales_shape, scales_dtype))


# -- NumPy input (issue 13): accepted, or a message that says what is expected -------------


def test_numpy_arrays_are_accepted_everywhere():
    x = np.random.default_rng(5).normal(size=(3, 64)).astype(np.float32)
    blocks, scales = reference_encode(x)  # NumPy, from the scalar spec encoder
    got_blocks, got_scales = encode(x)
    assert np.array_equal(np.array(got_blocks), blocks)
    assert np.array_equal(np.array(got_scales), scales)
    expected = np.array([[SPEC_E2M1[(b >> s) & 0xF] * 2.0 ** (int(scales[r, g]) - 127)
                          for g in range(2) for b in blocks[r, g] for s in (0, 4)]
                         for r in range(3)], np.float32)
    assert np.array_equal(np.array(decode(blocks, scales)), expected)
    w, w_scales = to_mlx(blocks, scales)
    back_blocks, back_scales = from_mlx(np.array(w), np.array(w_scales))
    assert np.array_equal(np.array(back_blocks), blocks)
    assert np.array_equal(np.array(back_scales), scales)


@pytest.mark.parametrize("call, message", [
    (lambda: decode(np.zeros((1, 16), np.int8), np.zeros(1, np.uint8)),
     "blocks and scales must be uint8, got mlx.core.int8 and mlx.core.uint8"),
    (lambda: decode([[0] * 16], [0]), "blocks must be an mx.array (or a NumPy array), got list"),
    (lambda: to_mlx(mx.zeros((1, 16), mx.uint8), (0,)),
     "scales must be an mx.array (or a NumPy array), got tuple"),
    (lambda: from_mlx(np.zeros((1, 4), np.uint8), np.zeros(1, np.uint8)),
     "MLX mxfp4 weights must be a uint32 array, got mlx.core.uint8"),
    (lambda: encode("0.5"), "x must be an mx.array (or a NumPy array), got str"),
    (lambda: encode(np.zeros((1, 32), np.int32)), "floating-point array, got mlx.core.int32"),
])
def test_bad_input_messages_say_what_is_expected(call, message):
    with pytest.raises(OpenHarmonyError) as raised:
        call()
    assert message in str(raised.value)
