// Fast-precision kernels with AVX2 (vpmaddubsw: unsigned x signed byte pairs into int16, then
// vpmaddwd into int32; no pair sum can saturate: 2 * 255 * 12 < 32767). Compiled with
// -mavx2 -mfma, used only where the CPU reports both (kernels.cpp).
#include <cstring>

#include "fast.h"
#include "int8_decode.h"
#include "isa.h"

namespace openharmony {
namespace {

inline int32_t word(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// NR tile rows against a 16-row panel held as two ymm (rows 0-7, 8-15) per k quad.
template <int NR>
void panel_tile(const uint8_t* panel, const float* panel_scales, int m, const int8_t* values,
                const float* tile_scales, const int32_t* corrections, int64_t K, int64_t j,
                float* const* y) {
  const int64_t groups = K / kBlock;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 f[NR][2];
  for (int i = 0; i < NR; ++i) f[i][0] = f[i][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i acc[NR][2];
    for (int i = 0; i < NR; ++i)
      acc[i][0] = acc[i][1] = _mm256_set1_epi32(corrections[(j + i) * groups + g]);
    for (int t = 0; t < kBlock / 4; ++t) {
      const uint8_t* quad = panel + (g * (kBlock / 4) + t) * 4 * kInt8PanelRows;
      const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(quad));
      const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(quad + 32));
      for (int i = 0; i < NR; ++i) {
        const __m256i b = _mm256_set1_epi32(word(values + (j + i) * K + g * kBlock + 4 * t));
        acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(a0, b), ones));
        acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(a1, b), ones));
      }
    }
    for (int v = 0; v < 2; ++v) {
      const __m256 dx = _mm256_loadu_ps(panel_scales + g * kInt8PanelRows + 8 * v);
      for (int i = 0; i < NR; ++i)
        f[i][v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][v]),
                                  _mm256_mul_ps(dx, _mm256_set1_ps(tile_scales[(j + i) * groups + g])),
                                  f[i][v]);
    }
  }
  for (int i = 0; i < NR; ++i) {
    alignas(32) float out[16];
    _mm256_store_ps(out, f[i][0]);
    _mm256_store_ps(out + 8, f[i][1]);
    for (int r = 0; r < m; ++r) y[r][j + i] = out[r];
  }
}

void panel_dot(const uint8_t* panel, const float* panel_scales, int m, const int8_t* values,
               const float* tile_scales, const int32_t* corrections, int64_t K, int64_t cols,
               float* const* y) {
  constexpr int NR = 2;
  int64_t j = 0;
  for (; j + NR <= cols; j += NR)
    panel_tile<NR>(panel, panel_scales, m, values, tile_scales, corrections, K, j, y);
  for (; j < cols; ++j)
    panel_tile<1>(panel, panel_scales, m, values, tile_scales, corrections, K, j, y);
}

const FastKernels kKernels = {"avx2", mxfp4_to_int8_sse, panel_dot, nullptr};

}  // namespace

const FastKernels* fast_avx2_kernels() { return &kKernels; }

}  // namespace openharmony
