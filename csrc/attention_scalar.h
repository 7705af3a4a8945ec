// Scalar forms of the attention tiles, shared by every ISA file (the portable kernels, and the
// vector kernels' odd sizes). Everything is `static`: each translation unit compiles its own
// copy for its ISA, so no code built for AVX-512 can be picked for a CPU without it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "attention_isa.h"

namespace openharmony {

static inline float kv_bf16(uint16_t bits) {
  const uint32_t widened = uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof value);
  return value;
}

// Entry d of position j, as stored.
static inline float kv_value(const KvSource* src, int64_t j, int d) {
  const uint8_t* row = src->data + j * src->row_bytes;
  if (src->format == kKvF32) {
    float value;
    std::memcpy(&value, row + 4 * d, sizeof value);
    return value;
  }
  if (src->format == kKvBF16) {
    uint16_t bits;
    std::memcpy(&bits, row + 2 * d, sizeof bits);
    return kv_bf16(bits);
  }
  const int g = d / src->group_size;
  const float scale = src->scales[j * src->group_stride + g];
  const float bias = src->biases[j * src->group_stride + g];
  const uint32_t q = src->bits == 8 ? row[d] : (row[d / 2] >> (4 * (d & 1))) & 0xF;
  return std::fma(scale, float(q), bias);
}

static inline void scalar_decode(const KvSource* src, int64_t j0, int n, int D, float* out) {
  for (int j = 0; j < n; ++j)
    for (int d = 0; d < D; ++d) out[j * D + d] = kv_value(src, j0 + j, d);
}

template <int L>
static inline void scalar_scores(const float* qt, const float* k, int64_t ldk, int n, int D,
                                 float* s) {
  for (int j = 0; j < n; ++j) {
    float acc[L] = {};
    for (int d = 0; d < D; ++d)
      for (int i = 0; i < L; ++i) acc[i] += k[j * ldk + d] * qt[d * L + i];
    for (int i = 0; i < L; ++i) s[j * L + i] = acc[i];
  }
}

template <int L>
static inline void scalar_softmax(float* s, int n, float* m, float* l, float* alpha) {
  for (int i = 0; i < L; ++i) {
    float top = m[i];
    for (int j = 0; j < n; ++j) top = std::fmax(top, s[j * L + i]);
    alpha[i] = std::exp(m[i] - top);
    float sum = 0.0f;
    for (int j = 0; j < n; ++j) sum += s[j * L + i] = std::exp(s[j * L + i] - top);
    l[i] = l[i] * alpha[i] + sum;
    m[i] = top;
  }
}

template <int L>
static inline void scalar_accumulate(const float* p, const float* v, int64_t ldv, int n, int D,
                                     int rows, const float* alpha, float* o) {
  for (int i = 0; i < rows; ++i) {
    float* out = o + i * D;
    for (int d = 0; d < D; ++d) out[d] *= alpha[i];
    for (int j = 0; j < n; ++j) {
      const float w = p[j * L + i];
      for (int d = 0; d < D; ++d) out[d] += w * v[j * ldv + d];
    }
  }
}

}  // namespace openharmony
