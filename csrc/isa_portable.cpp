// Portable kernels: plain loops, correct on any CPU (the compiler vectorizes what it can).
#include "isa.h"
#include "mxfp4_values.h"

namespace openharmony {
namespace {

void mxfp4_dot(const float* const* x, int rows, const uint8_t* w, const uint8_t* scales,
               int64_t K, int64_t n0, int64_t n1, float* const* y) {
  const int64_t groups = K / kBlock;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* codes = w + n * (K / 2);
    const uint8_t* row_scales = scales + n * groups;
    for (int r = 0; r < rows; ++r) {
      float acc = 0.0f;
      for (int64_t g = 0; g < groups; ++g) {
        const float* xg = x[r] + g * kBlock;
        const uint8_t* bytes = codes + g * (kBlock / 2);
        float block = 0.0f;
        for (int i = 0; i < kBlock / 2; ++i) {
          block += xg[i] * kFp4Values[bytes[i] & 0xF];
          block += xg[kBlock / 2 + i] * kFp4Values[bytes[i] >> 4];
        }
        acc += block * scale_value(row_scales[g]);
      }
      y[r][n - n0] = acc;
    }
  }
}

void bf16_dot(const float* const* x, int rows, const uint16_t* w, int64_t K, int64_t n0,
              int64_t n1, float* const* y) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* row = w + n * K;
    for (int r = 0; r < rows; ++r) {
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += x[r][k] * bf16_value(row[k]);
      y[r][n - n0] = acc;
    }
  }
}

void mxfp4_dequantize(const uint8_t* w, const uint8_t* scales, int64_t K, int64_t n0,
                      int64_t n1, float* out) {
  const int64_t groups = K / kBlock;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* bytes = w + n * (K / 2) + g * (kBlock / 2);
      const float scale = scale_value(scales[n * groups + g]);
      float* o = out + (n - n0) * K + g * kBlock;
      for (int i = 0; i < kBlock / 2; ++i) {
        o[i] = kFp4Values[bytes[i] & 0xF] * scale;
        o[kBlock / 2 + i] = kFp4Values[bytes[i] >> 4] * scale;
      }
    }
  }
}

void bf16_widen(const uint16_t* w, int64_t K, int64_t n0, int64_t n1, float* out) {
  for (int64_t i = n0 * K; i < n1 * K; ++i) out[i - n0 * K] = bf16_value(w[i]);
}

void f32_dot(const float* const* x, int rows, const float* w, int64_t K, int64_t cols,
             float* const* y) {
  for (int64_t j = 0; j < cols; ++j) {
    for (int r = 0; r < rows; ++r) {
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += x[r][k] * w[j * K + k];
      y[r][j] = acc;
    }
  }
}

void panel_dot(const float* panel, int m, const float* w, int64_t K, int64_t cols,
               float* const* y) {
  for (int64_t j = 0; j < cols; ++j) {
    for (int r = 0; r < m; ++r) {
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += panel[k * kPanelRows + r] * w[j * K + k];
      y[r][j] = acc;
    }
  }
}

const IsaKernels kKernels = {"portable", mxfp4_dot, bf16_dot, mxfp4_dequantize, bf16_widen,
                             f32_dot, panel_dot};

}  // namespace

const IsaKernels* portable_kernels() { return &kKernels; }

}  // namespace openharmony
