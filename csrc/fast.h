// The fast-precision prefill kernels (OPENHARMONY_PRECISION=fast): int8 dot products on MXFP4
// weights expanded to int8, with activations quantized to int8 per 32-element block, and
// bfloat16 dot products on bfloat16 weights, with activations rounded to bfloat16. Behind a
// table of plain function pointers per instruction set, like isa.h (one file per ISA:
// fast_avx512.cpp with VNNI and BF16, fast_avx2.cpp, fast_portable.cpp).
//
// The MXFP4 arithmetic, which every table computes exactly (only FTZ/DAZ could differ):
//   activations: per row r and block b, d = max|x| / 127 (float32), q = round-half-even(x * (1/d))
//                (0 when d = 0), so x ~= d * q with q in [-127, 127];
//   weights:     E2M1 value times 2 (an integer in [-12, 12]) and the scale 2**(s - 128);
//   output:      y[r][n] = sum over blocks b, in order, of fma(float(I_b), d_rb * s_nb, acc),
//                I_b = the exact integer dot product of the block's q and int8 weights.
#pragma once

#include <cstdint>

namespace openharmony {

// A panel of up to kInt8PanelRows quantized rows (in block-split order), k-major in quads: byte
// panel[(k / 4) * 4 * kInt8PanelRows + r * 4 + k % 4] = q[r][k] + 128 (unsigned, for vpdpbusd),
// 128 (q = 0) past the last row; its scales [K/32][kInt8PanelRows], 0 past the last row.
constexpr int kInt8PanelRows = 16;

// The bfloat16 arithmetic: y[r][n] = sum over k of bf16(x[r][k]) * w[n][k] (round to nearest
// even; each product exact in float32), summed in float32. A bf16 panel holds up to
// kInt8PanelRows rows k-major in pairs: panel[((k / 2) * kInt8PanelRows + r) * 2 + k % 2] =
// bf16(x[r][k]) (bits), zero past the last row and, for odd K, in the last pair's second half.

struct FastKernels {
  const char* name;
  // Rows n0..n1 of an MXFP4 weight (codes [N, K/2], E8M0 scales [N, K/32]) into a tile:
  // int8 values [n1 - n0, K] in block-split order (isa.h, as the activations), float scales [n1 - n0, K/32] (2**(s - 128),
  // NaN for 255) and int32 corrections [n1 - n0, K/32] = -128 * (sum of the block's values),
  // which cancel the +128 of the panel's unsigned bytes.
  void (*mxfp4_to_int8)(const uint8_t* w, const uint8_t* scales, int64_t K, int64_t n0,
                        int64_t n1, int8_t* values, float* tile_scales, int32_t* corrections);
  // y[r][j] for r < m (<= kInt8PanelRows) and j < cols: a panel (above) times the tile's rows.
  void (*panel_dot)(const uint8_t* panel, const float* panel_scales, int m, const int8_t* values,
                    const float* tile_scales, const int32_t* corrections, int64_t K,
                    int64_t cols, float* const* y);
  // y[r][j] for r < m and j < cols: a bf16 panel (above) times bfloat16 weight rows w [cols, K].
  // nullptr where the ISA has no bf16 dot product: kernels.cpp then rounds the activations to
  // bf16 and runs the float32 panel kernel (the same sums, in another order).
  void (*bf16_panel_dot)(const uint16_t* panel, int m, const uint16_t* w, int64_t K,
                         int64_t cols, float* const* y);
};

const FastKernels* fast_portable_kernels();
const FastKernels* fast_avx2_kernels();    // nullptr where the build has no x86-64 kernels
const FastKernels* fast_avx512_kernels();  // nullptr where the build has no x86-64 kernels

}  // namespace openharmony
