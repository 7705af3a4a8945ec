// Portable fast-precision kernels: plain loops, the reference the SIMD tables must match bit
// for bit (fast.h gives the arithmetic).
#include <cmath>

#include "fast.h"
#include "isa.h"
#include "mxfp4_values.h"

namespace openharmony {
namespace {

void mxfp4_to_int8(const uint8_t* w, const uint8_t* scales, int64_t K, int64_t n0, int64_t n1,
                   int8_t* values, float* tile_scales, int32_t* corrections) {
  const int64_t groups = K / kBlock;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* bytes = w + n * (K / 2) + g * (kBlock / 2);
      int8_t* out = values + (n - n0) * K + g * kBlock;
      int32_t sum = 0;
      for (int i = 0; i < kBlock / 2; ++i) {
        out[i] = kInt8Values[bytes[i] & 0xF];
        out[kBlock / 2 + i] = kInt8Values[bytes[i] >> 4];
        sum += out[i] + out[kBlock / 2 + i];
      }
      tile_scales[(n - n0) * groups + g] = int8_scale_value(scales[n * groups + g]);
      corrections[(n - n0) * groups + g] = -128 * sum;
    }
  }
}

void panel_dot(const uint8_t* panel, const float* panel_scales, int m, const int8_t* values,
               const float* tile_scales, const int32_t* corrections, int64_t K, int64_t cols,
               float* const* y) {
  const int64_t groups = K / kBlock;
  for (int64_t j = 0; j < cols; ++j) {
    for (int r = 0; r < m; ++r) {
      float acc = 0.0f;
      for (int64_t g = 0; g < groups; ++g) {
        int32_t dot = corrections[j * groups + g];
        for (int64_t k = g * kBlock; k < (g + 1) * kBlock; ++k)
          dot += int32_t(panel[(k / 4) * 4 * kInt8PanelRows + r * 4 + k % 4]) * values[j * K + k];
        acc = std::fma(float(dot), panel_scales[g * kInt8PanelRows + r] * tile_scales[j * groups + g],
                       acc);
      }
      y[r][j] = acc;
    }
  }
}

const FastKernels kKernels = {"portable", mxfp4_to_int8, panel_dot, nullptr};

}  // namespace

const FastKernels* fast_portable_kernels() { return &kKernels; }

}  // namespace openharmony
