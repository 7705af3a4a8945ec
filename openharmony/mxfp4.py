"""MXFP4 (OCP Microscaling Formats v1.0) exactly as gpt-oss stores it, and the bridge to MLX.

Storage layout: 32 consecutive elements along the last axis form a block. Each element is an
FP4 E2M1 code (sign in bit 3, values `FP4_VALUES`); byte j of a block holds element 2j in its
low nibble and element 2j+1 in its high nibble, so `blocks` is uint8 `[..., G, 16]`. Each block
has one E8M0 scale byte s (value `2**(s - 127)`, s = 255 is NaN), so `scales` is uint8 `[..., G]`.

`encode` follows the spec (and its reference implementation, microsoft/microxcaling):

* shared exponent `floor(log2(max|x|)) - 2` (2 is E2M1's largest exponent), read exactly from
  the float32 exponent field of `max|x|` rather than from a float `log2`;
* the exponent is clamped below at -127, E8M0's smallest: blocks whose largest magnitude is under
  2**-125 (subnormals included) get scale byte 0, and an all-zero block gets scale byte 0 too
  (log2(0) = -inf, clamped), so it decodes to exact (signed) zeros. Finite float32 never needs
  the upper end: the largest shared exponent is 125 (byte 252);
* elements `x / 2**shared` are rounded to the nearest E2M1 value, ties to the even code, and
  saturated at ±6. The sign bit is always kept, so -0.0 and small negatives that round to zero
  encode as code 8 (-0);
* a block holding an Inf or NaN gets the NaN scale (byte 255), as the reference implementation
  does; its element codes then carry no meaning.

`decode` maps scale byte 255 to NaN for every element of the block. Decoding is done in float32
(products of an E2M1 value and a power of two are exact there, scale byte 0 giving float32
subnormals; values beyond float32's range, e.g. 2 * 2**127, become ±inf) and then cast to `dtype`.

MLX (`mode="mxfp4"`, group_size 32, bits 4) packs the same bytes: `to_mlx` views `[..., G, 16]`
uint8 as `[..., G*4]` uint32 (little-endian, so element i of a word sits at bits 4i) and passes
the scales through. Measured against mlx 0.32.4 on the CPU (tests/test_mxfp4.py):

* `mx.dequantize(..., dtype=mx.float32)` equals `decode` bit for bit, except that MLX decodes
  scale byte 255 as +inf (so codes ±0 give NaN and others ±inf) where `decode` gives NaN.
* `mx.quantize` does not follow the spec's exponent rule. It takes the smallest power of two
  that avoids saturation, `ceil(log2(max|x| / 6))`: the spec's exponent + 1 exactly when max|x|
  has a significand above 1.5 (30% of the blocks of a Gaussian matrix), the same otherwise
  (tested for blocks with max|x| >= 2**-120). It then rounds the elements as the spec does
  (nearest, ties to even) at its own scale, but drops the sign of elements that round to zero
  (code 0 where the spec keeps 8). On a Gaussian matrix both rules give the same error (RMS
  0.1150 for the spec, 0.1154 for MLX, relative to the RMS value). Outside normal blocks MLX
  also differs: an all-zero block gets scale byte 127, not 0; a block with max|x| <= 1.5 *
  2**-126 gets a wrapped-around scale byte (255 for max|x| = 2**-126: NaN) instead of the
  clamped byte 0; a block holding Inf or NaN gets scale byte 128 and zero codes instead of the
  NaN scale. Checkpoints are therefore written with `encode`, not with `mx.quantize`.
"""

from __future__ import annotations

import functools

import mlx.core as mx
import numpy as np

from .errors import OpenHarmonyError

BLOCK_SIZE = 32  # elements per block (and per scale)
BYTES_PER_BLOCK = BLOCK_SIZE // 2
SCALE_BIAS = 127
SCALE_NAN = 255  # the E8M0 NaN

# The E2M1 value of each 4-bit code (OCP MX v1.0, table of FP4 E2M1 values).
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)

# The midpoints between neighbouring E2M1 magnitudes, ascending, each with whether a value
# exactly on it rounds up: round-to-nearest-even sends a tie to the neighbour with the even
# code (0.25 -> 0, 0.75 -> 1.0, 1.25 -> 1.0, ..., 5 -> 4). A magnitude's code is the number of
# midpoints it passes; anything above 5 gets code 7 (6.0), which is the saturation.
_MIDPOINTS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True),
              (2.5, False), (3.5, True), (5.0, False))

_FLOAT32_BIAS = 127
_FLOAT32_MANTISSA_BITS = 23
_E2M1_MAX_EXPONENT = 2  # 6 = 1.5 * 2**2


class MXFP4Error(OpenHarmonyError, ValueError):
    """MXFP4 data (or data to encode) with the wrong shape or dtype."""


def _as_mx(x, name: str) -> mx.array:
    """`x` as an mx.array: NumPy arrays are accepted (and copied); anything else is refused,
    so a dtype message never compares a NumPy dtype with an MLX one of the same name."""
    if isinstance(x, mx.array):
        return x
    if isinstance(x, np.ndarray):
        try:
            return mx.array(x)
        except (TypeError, ValueError) as e:
            raise MXFP4Error(f"{name}: NumPy {x.dtype} has no MLX equivalent ({e})") from None
    raise MXFP4Error(f"{name} must be an mx.array (or a NumPy array), got {type(x).__name__}")


def encode(x: mx.array) -> tuple[mx.array, mx.array]:
    """Quantize `x` [..., K] (K a multiple of 32) to `blocks` [..., K/32, 16], `scales` [..., K/32].

    Floating inputs are converted to float32 first (exact for float16 and bfloat16). NumPy
    arrays are accepted, here and in `decode`, `to_mlx` and `from_mlx`.
    """
    x = _as_mx(x, "x")
    if x.ndim == 0 or x.shape[-1] % BLOCK_SIZE:
        raise MXFP4Error(f"MXFP4 encode needs a last dimension that is a multiple of "
                         f"{BLOCK_SIZE}, got shape {tuple(x.shape)}")
    if not mx.issubdtype(x.dtype, mx.floating):
        raise MXFP4Error(f"MXFP4 encode needs a floating-point array, got {x.dtype}")
    *lead, k = x.shape
    bits = x.astype(mx.float32).view(mx.uint32).reshape(*lead, k // BLOCK_SIZE, BLOCK_SIZE)
    sign = (bits >> 31).astype(mx.uint8)
    magnitude = bits & 0x7FFFFFFF  # the bits of |x|; ordered as the values are
    exponent_field = (magnitude >> _FLOAT32_MANTISSA_BITS).astype(mx.int32)

    # floor(log2(max|x|)) is the exponent field of max|x| minus the bias. Zero and subnormals
    # (field 0) land below E8M0's range and are clamped with everything else that does.
    block_field = exponent_field.max(axis=-1)
    shared_exp = mx.maximum(block_field - _FLOAT32_BIAS - _E2M1_MAX_EXPONENT, -SCALE_BIAS)
    scales = mx.where(block_field == 0xFF, SCALE_NAN, shared_exp + SCALE_BIAS).astype(mx.uint8)

    # |x| = significand * 2**(max(field, 1) - 150) with an integer significand < 2**24, so
    # |x| / 2**shared_exp = significand * 2**-shift exactly, with shift >= 21. Computing it this
    # way never touches a subnormal, so it is exact even where the hardware flushes them.
    significand = (magnitude & 0x7FFFFF) | (exponent_field > 0).astype(mx.uint32) << 23
    shift = (_FLOAT32_BIAS + _FLOAT32_MANTISSA_BITS + shared_exp[..., None]
             - mx.maximum(exponent_field, 1))
    # A shift beyond 64 leaves a value under 2**-40, far below the first midpoint (0.25), so
    # capping it changes no code and keeps 2**-shift a normal float.
    scaled = significand.astype(mx.float32) * _exp2(-mx.minimum(shift, 64))

    codes = mx.zeros(scaled.shape, dtype=mx.uint8)
    for midpoint, tie_rounds_up in _MIDPOINTS:
        passed = scaled >= midpoint if tie_rounds_up else scaled > midpoint
        codes = codes + passed.astype(mx.uint8)
    codes = codes | (sign << 3)

    pairs = codes.reshape(*lead, k // BLOCK_SIZE, BYTES_PER_BLOCK, 2)
    blocks = pairs[..., 0] | (pairs[..., 1] << 4)
    return blocks, scales


def decode(blocks: mx.array, scales: mx.array, dtype: mx.Dtype = mx.float32) -> mx.array:
    """Dequantize (`blocks` [..., G, 16], `scales` [..., G]) to `dtype` [..., G*32]; mx or
    NumPy arrays."""
    blocks, scales = _check_storage(blocks, scales)
    *lead, groups, _ = blocks.shape
    # Two bytes (four codes) per table lookup: one gather of 1/4 of the elements and one
    # multiply is the cheapest dequantization MLX's ops give; it runs 2.4x faster on the CPU
    # than mx.dequantize (docs/speed.md), which matters where prefill dequantizes experts.
    pairs = blocks.view(mx.uint16).reshape(*lead, groups, BYTES_PER_BLOCK // 2)
    values = _code_quads()[pairs].reshape(*lead, groups, BLOCK_SIZE)
    out = values * scale_values(scales)[..., None]
    return out.reshape(*lead, groups * BLOCK_SIZE).astype(dtype)


@functools.cache
def _code_quads() -> mx.array:
    """float32 [65536, 4]: the E2M1 values of the four codes in two little-endian bytes."""
    byte = np.arange(256)
    values = np.array(FP4_VALUES, dtype=np.float32)
    pair = np.stack([values[byte & 0xF], values[byte >> 4]], axis=-1)  # [byte, 2]
    high, low = np.divmod(np.arange(1 << 16), 256)  # little-endian: the low byte comes first
    return mx.array(np.concatenate([pair[low], pair[high]], axis=-1))


def scale_values(scales: mx.array) -> mx.array:
    """The float32 value of E8M0 scale bytes: 2**(s - 127), NaN for 255."""
    s = scales.astype(mx.uint32)
    # Byte s >= 1 is a float32 with exponent field s; byte 0 is 2**-127, a float32 subnormal.
    bits = mx.where(s == 0, 1 << 22, s << _FLOAT32_MANTISSA_BITS)
    bits = mx.where(s == SCALE_NAN, 0x7FC00000, bits)
    return bits.astype(mx.uint32).view(mx.float32)


def to_mlx(blocks: mx.array, scales: mx.array) -> tuple[mx.array, mx.array]:
    """The storage layout as MLX's packed `mode="mxfp4"` weight: (uint32 [..., G*4], scales).

    A reshape and a view of the same bytes: no value is copied (for a contiguous `blocks`).
    """
    blocks, scales = _check_storage(blocks, scales)
    *lead, groups, _ = blocks.shape
    return blocks.reshape(*lead, groups * BYTES_PER_BLOCK).view(mx.uint32), scales


def from_mlx(w: mx.array, scales: mx.array) -> tuple[mx.array, mx.array]:
    """The inverse of `to_mlx`: (uint32 [..., G*4], scales [..., G]) -> (blocks, scales)."""
    w, scales = _as_mx(w, "w"), _as_mx(scales, "scales")
    if w.dtype != mx.uint32 or w.ndim == 0:
        raise MXFP4Error(f"MLX mxfp4 weights must be a uint32 array, got {w.dtype} with shape "
                         f"{tuple(w.shape)}")
    if scales.dtype != mx.uint8:
        raise MXFP4Error(f"MXFP4 scales must be uint8, got {scales.dtype}")
    words_per_block = BYTES_PER_BLOCK // 4
    *lead, words = w.shape
    if words % words_per_block:
        raise MXFP4Error(f"MLX mxfp4 weights need a last dimension that is a multiple of "
                         f"{words_per_block} (one block), got shape {tuple(w.shape)}")
    expected_scales = (*lead, words // words_per_block)
    if tuple(scales.shape) != expected_scales:
        raise MXFP4Error(f"MLX mxfp4 weights of shape {tuple(w.shape)} need scales of shape "
                         f"{expected_scales}, got {tuple(scales.shape)}")
    blocks = w.view(mx.uint8).reshape(*lead, words // words_per_block, BYTES_PER_BLOCK)
    return blocks, scales


def _check_storage(blocks, scales) -> tuple[mx.array, mx.array]:
    blocks, scales = _as_mx(blocks, "blocks"), _as_mx(scales, "scales")
    if blocks.dtype != mx.uint8 or scales.dtype != mx.uint8:
        raise MXFP4Error(f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and "
                         f"{scales.dtype}")
    if blocks.ndim < 2 or blocks.shape[-1] != BYTES_PER_BLOCK:
        raise MXFP4Error(f"MXFP4 blocks must have shape [..., G, {BYTES_PER_BLOCK}], got "
                         f"{tuple(blocks.shape)}")
    if tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise MXFP4Error(f"MXFP4 scales must have shape {tuple(blocks.shape[:-1])} for blocks "
                         f"{tuple(blocks.shape)}, got {tuple(scales.shape)}")
    return blocks, scales


def _exp2(n: mx.array) -> mx.array:
    """2.0**n as float32 for integer n in [-126, 127] (normal floats), built from the bits."""
    return ((n + _FLOAT32_BIAS).astype(mx.uint32) << _FLOAT32_MANTISSA_BITS).view(mx.float32)
