// Fast-precision kernels with AVX-512 VNNI (vpdpbusd: 64 unsigned x signed byte products into 16
// int32 sums per instruction, 4x the multiply-adds of a float32 FMA). Compiled with
// -mavx512f -mavx512bw -mavx512vnni, used only where the CPU reports all three (int8_matmul.cpp).
#include <cstring>

#include "int8.h"
#include "int8_decode.h"
#include "isa.h"

namespace openharmony {
namespace {

inline int32_t word(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// NR tile rows against a 16-row panel (one zmm per k quad): per block, NR int32 accumulators
// start at the tile rows' corrections, take 8 vpdpbusd each (the panel quad in a register, the
// tile row's 4 bytes as an embedded broadcast), then go into NR float accumulators scaled by
// the rows' activation scales times the tile row's block scale.
template <int NR>
void panel_tile(const uint8_t* panel, const float* panel_scales, int m, const int8_t* values,
                const float* tile_scales, const int32_t* corrections, int64_t K, int64_t j,
                float* const* y) {
  const int64_t groups = K / kBlock;
  __m512 f[NR];
  for (int i = 0; i < NR; ++i) f[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i acc[NR];
    for (int i = 0; i < NR; ++i) acc[i] = _mm512_set1_epi32(corrections[(j + i) * groups + g]);
    for (int t = 0; t < kBlock / 4; ++t) {
      const __m512i a = _mm512_loadu_si512(panel + (g * (kBlock / 4) + t) * 4 * kInt8PanelRows);
      for (int i = 0; i < NR; ++i)
        acc[i] = _mm512_dpbusd_epi32(acc[i], a,
                                     _mm512_set1_epi32(word(values + (j + i) * K + g * kBlock + 4 * t)));
    }
    const __m512 dx = _mm512_loadu_ps(panel_scales + g * kInt8PanelRows);
    for (int i = 0; i < NR; ++i)
      f[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i]),
                             _mm512_mul_ps(dx, _mm512_set1_ps(tile_scales[(j + i) * groups + g])),
                             f[i]);
  }
  for (int i = 0; i < NR; ++i) {
    alignas(64) float out[16];
    _mm512_store_ps(out, f[i]);
    for (int r = 0; r < m; ++r) y[r][j + i] = out[r];
  }
}

void panel_dot(const uint8_t* panel, const float* panel_scales, int m, const int8_t* values,
               const float* tile_scales, const int32_t* corrections, int64_t K, int64_t cols,
               float* const* y) {
  constexpr int NR = 12;
  int64_t j = 0;
  for (; j + NR <= cols; j += NR)
    panel_tile<NR>(panel, panel_scales, m, values, tile_scales, corrections, K, j, y);
  for (; j < cols; ++j)
    panel_tile<1>(panel, panel_scales, m, values, tile_scales, corrections, K, j, y);
}

const Int8Kernels kKernels = {"avx512", mxfp4_to_int8_sse, panel_dot};

}  // namespace

const Int8Kernels* int8_avx512_kernels() { return &kKernels; }

}  // namespace openharmony
