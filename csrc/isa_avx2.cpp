// AVX2 + FMA kernels (8 float32 lanes). Compiled with -mavx2 -mfma, used only where the CPU
// reports both (kernels.cpp).
#include <immintrin.h>

#include "isa.h"
#include "mxfp4_values.h"

namespace openharmony {
namespace {

// The 8 E2M1 magnitudes, indexed by the low 3 bits of a code through vpermps; the sign (bit 3
// of the code) is moved to bit 31 and xor-ed in.
inline __m256 magnitude_table() { return _mm256_loadu_ps(kFp4Values); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 bytes of a block (bytes 8h..8h+7) -> the values of their low and their high nibbles.
inline void decode_half(const uint8_t* bytes, __m256 table, __m256& low, __m256& high) {
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes)));
  const __m256i sign = _mm256_set1_epi32(int(0x80000000u));
  const __m256 low_sign = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(b, 28), sign));
  const __m256 high_sign = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(b, 24), sign));
  low = _mm256_xor_ps(_mm256_permutevar8x32_ps(table, b), low_sign);
  high = _mm256_xor_ps(_mm256_permutevar8x32_ps(table, _mm256_srli_epi32(b, 4)), high_sign);
}

// In block-split order the block's values are [low(bytes 0-7), low(8-15), high(0-7), high(8-15)].
inline void decode_block(const uint8_t* bytes, __m256 table, __m256 v[4]) {
  decode_half(bytes, table, v[0], v[2]);
  decode_half(bytes + 8, table, v[1], v[3]);
}

template <int R, int C>
void mxfp4_tile(const float* const* x, const uint8_t* w, const uint8_t* scales, int64_t K,
                int64_t n, int64_t j, float* const* y) {
  const int64_t groups = K / kBlock;
  const __m256 table = magnitude_table();
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    for (int c = 0; c < C; ++c) {
      __m256 v[4];
      decode_block(w + (n + c) * (K / 2) + g * 16, table, v);
      const __m256 scale = _mm256_set1_ps(scale_value(scales[(n + c) * groups + g]));
      for (int r = 0; r < R; ++r) {
        const float* xg = x[r] + g * kBlock;
        __m256 block = _mm256_mul_ps(_mm256_loadu_ps(xg), v[0]);
        block = _mm256_fmadd_ps(_mm256_loadu_ps(xg + 8), v[1], block);
        block = _mm256_fmadd_ps(_mm256_loadu_ps(xg + 16), v[2], block);
        block = _mm256_fmadd_ps(_mm256_loadu_ps(xg + 24), v[3], block);
        acc[r][c] = _mm256_fmadd_ps(block, scale, acc[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) y[r][j + c] = hsum(acc[r][c]);
}

template <int R>
void mxfp4_rows(const float* const* x, const uint8_t* w, const uint8_t* scales, int64_t K,
                int64_t n0, int64_t n1, float* const* y) {
  constexpr int C = R == 1 ? 4 : R == 2 ? 2 : 1;
  int64_t n = n0;
  for (; n + C <= n1; n += C) mxfp4_tile<R, C>(x, w, scales, K, n, n - n0, y);
  for (; n < n1; ++n) mxfp4_tile<R, 1>(x, w, scales, K, n, n - n0, y);
}

void mxfp4_dot(const float* const* x, int rows, const uint8_t* w, const uint8_t* scales,
               int64_t K, int64_t n0, int64_t n1, float* const* y) {
  switch (rows) {
    case 1: return mxfp4_rows<1>(x, w, scales, K, n0, n1, y);
    case 2: return mxfp4_rows<2>(x, w, scales, K, n0, n1, y);
    case 3: return mxfp4_rows<3>(x, w, scales, K, n0, n1, y);
    default: return mxfp4_rows<4>(x, w, scales, K, n0, n1, y);
  }
}

inline __m256 widen8(const uint16_t* p) {
  const __m256i bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(bits, 16));
}

template <typename W, int R, int C>
void dense_tile(const float* const* x, const W* w, int64_t K, int64_t j, float* const* y) {
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[C];
    for (int c = 0; c < C; ++c) {
      const W* p = w + (j + c) * K + k;
      if constexpr (sizeof(W) == 2) wv[c] = widen8(reinterpret_cast<const uint16_t*>(p));
      else wv[c] = _mm256_loadu_ps(reinterpret_cast<const float*>(p));
    }
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(x[r] + k);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float sum = hsum(acc[r][c]);
      for (int64_t t = k; t < K; ++t) {
        const W v = w[(j + c) * K + t];
        float wt;
        if constexpr (sizeof(W) == 2) wt = bf16_value(v);
        else wt = v;
        sum += x[r][t] * wt;
      }
      y[r][j + c] = sum;
    }
  }
}

template <typename W, int R>
void dense_rows(const float* const* x, const W* w, int64_t K, int64_t j0, int64_t j1,
                float* const* y, int64_t y_offset) {
  // R*C accumulators + C weights + 1 activation within the 16 ymm registers.
  constexpr int C = R == 1 ? 4 : R == 2 ? 4 : R == 3 ? 3 : 2;
  float* yr[4];
  for (int r = 0; r < R; ++r) yr[r] = y[r] - y_offset;
  int64_t j = j0;
  for (; j + C <= j1; j += C) dense_tile<W, R, C>(x, w, K, j, yr);
  for (; j < j1; ++j) dense_tile<W, R, 1>(x, w, K, j, yr);
}

template <typename W>
void dense_dot(const float* const* x, int rows, const W* w, int64_t K, int64_t j0, int64_t j1,
               float* const* y, int64_t y_offset) {
  switch (rows) {
    case 1: return dense_rows<W, 1>(x, w, K, j0, j1, y, y_offset);
    case 2: return dense_rows<W, 2>(x, w, K, j0, j1, y, y_offset);
    case 3: return dense_rows<W, 3>(x, w, K, j0, j1, y, y_offset);
    default: return dense_rows<W, 4>(x, w, K, j0, j1, y, y_offset);
  }
}

void bf16_dot(const float* const* x, int rows, const uint16_t* w, int64_t K, int64_t n0,
              int64_t n1, float* const* y) {
  dense_dot<uint16_t>(x, rows, w, K, n0, n1, y, n0);
}

void f32_dot(const float* const* x, int rows, const float* w, int64_t K, int64_t cols,
             float* const* y) {
  dense_dot<float>(x, rows, w, K, 0, cols, y, 0);
}

void mxfp4_dequantize(const uint8_t* w, const uint8_t* scales, int64_t K, int64_t n0,
                      int64_t n1, float* out) {
  const int64_t groups = K / kBlock;
  const __m256 table = magnitude_table();
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      __m256 v[4];
      decode_block(w + n * (K / 2) + g * 16, table, v);
      const __m256 scale = _mm256_set1_ps(scale_value(scales[n * groups + g]));
      float* o = out + (n - n0) * K + g * kBlock;
      for (int q = 0; q < 4; ++q) _mm256_storeu_ps(o + 8 * q, _mm256_mul_ps(v[q], scale));
    }
  }
}

void bf16_widen(const uint16_t* w, int64_t K, int64_t n0, int64_t n1, float* out) {
  const int64_t count = (n1 - n0) * K;
  const uint16_t* src = w + n0 * K;
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) _mm256_storeu_ps(out + i, widen8(src + i));
  for (; i < count; ++i) out[i] = bf16_value(src[i]);
}

const IsaKernels kKernels = {"avx2", mxfp4_dot, bf16_dot, mxfp4_dequantize, bf16_widen, f32_dot};

}  // namespace

const IsaKernels* avx2_kernels() { return &kKernels; }

}  // namespace openharmony
