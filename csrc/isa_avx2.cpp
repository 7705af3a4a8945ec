// AVX2 + FMA kernels (8 float32 lanes). Compiled with -mavx2 -mfma, used only where the CPU
// reports both (kernels.cpp).
#include <immintrin.h>

#include "isa.h"
#include "mxfp4_values.h"

namespace openharmony {
namespace {

// The 8 E2M1 magnitudes, indexed by the low 3 bits of a code through vpermps.
inline __m256 magnitude_table() { return _mm256_loadu_ps(kFp4Values); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The sign of a code (bit 3) is applied by xor-ing the code shifted left by 28 into the looked-up
// value: that moves bit 3 to the float's sign bit, but also bits 0-2 (the magnitude index) onto
// bits 28-30. A table whose entry m is pre-xored with m << 28 cancels those, so the decode needs
// no masking: value = table'[c & 7] ^ (c << 28).
inline __m256i index_bits() { return _mm256_slli_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), 28); }

// The magnitude table times a block's scale, pre-xored for the sign trick above. E2M1 value x
// power-of-two scale is exact in float32 (it overflows to inf only above FLT_MAX, scale bytes
// >= 253, as a float32 dequantization does).
inline __m256 scaled_table(__m256 table, __m256i index, uint8_t scale) {
  const __m256 scaled = _mm256_mul_ps(table, _mm256_set1_ps(scale_value(scale)));
  return _mm256_xor_ps(scaled, _mm256_castsi256_ps(index));
}

// 8 bytes of a block (bytes 8h..8h+7) -> the values of their low and their high nibbles.
inline void decode_half(const uint8_t* bytes, __m256 table, __m256& low, __m256& high) {
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes)));
  const __m256i h = _mm256_srli_epi32(b, 4);
  low = _mm256_xor_ps(_mm256_permutevar8x32_ps(table, b), _mm256_castsi256_ps(_mm256_slli_epi32(b, 28)));
  high = _mm256_xor_ps(_mm256_permutevar8x32_ps(table, h), _mm256_castsi256_ps(_mm256_slli_epi32(h, 28)));
}

// In block-split order the block's values are [low(bytes 0-7), low(8-15), high(0-7), high(8-15)].
inline void decode_block(const uint8_t* bytes, __m256 table, __m256 v[4]) {
  decode_half(bytes, table, v[0], v[2]);
  decode_half(bytes + 8, table, v[1], v[3]);
}

// R activation rows times C weight rows. The block's scale is folded into the table, so each
// product goes straight into one of two accumulators per output (two short FMA chains instead
// of a block sum followed by a scale multiply: the kernel was bound by that chain's latency).
template <int R, int C>
void mxfp4_tile(const float* const* x, const uint8_t* w, const uint8_t* scales, int64_t K,
                int64_t n, int64_t j, float* const* y) {
  const int64_t groups = K / kBlock;
  const __m256 table = magnitude_table();
  const __m256i index = index_bits();
  __m256 acc[R][C][2];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c][0] = acc[r][c][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    // Software prefetch of the next C weight rows, one cache line per 4 blocks: the hardware
    // prefetchers alone left this kernel at 2.5 GB/s per core from DRAM (3.7 with it; 3.8 with
    // the weights in L3). A prefetch past the end of the weights is a hint, never a fault.
    if (g % 4 == 0)
      for (int c = 0; c < C; ++c)
        _mm_prefetch(reinterpret_cast<const char*>(w + (n + C + c) * (K / 2) + g * 16),
                     _MM_HINT_T0);
    for (int c = 0; c < C; ++c) {
      __m256 v[4];
      decode_block(w + (n + c) * (K / 2) + g * 16,
                   scaled_table(table, index, scales[(n + c) * groups + g]), v);
      for (int r = 0; r < R; ++r) {
        const float* xg = x[r] + g * kBlock;
        acc[r][c][0] = _mm256_fmadd_ps(_mm256_loadu_ps(xg), v[0], acc[r][c][0]);
        acc[r][c][1] = _mm256_fmadd_ps(_mm256_loadu_ps(xg + 8), v[1], acc[r][c][1]);
        acc[r][c][0] = _mm256_fmadd_ps(_mm256_loadu_ps(xg + 16), v[2], acc[r][c][0]);
        acc[r][c][1] = _mm256_fmadd_ps(_mm256_loadu_ps(xg + 24), v[3], acc[r][c][1]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) y[r][j + c] = hsum(_mm256_add_ps(acc[r][c][0], acc[r][c][1]));
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
  const __m256i index = index_bits();
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      __m256 v[4];
      decode_block(w + n * (K / 2) + g * 16, scaled_table(table, index, scales[n * groups + g]), v);
      float* o = out + (n - n0) * K + g * kBlock;
      for (int q = 0; q < 4; ++q) _mm256_storeu_ps(o + 8 * q, v[q]);
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

// NR weight rows x V vectors of 8 panel rows: per k, V panel loads, NR broadcasts of a weight and
// NR*V FMAs into NR*V accumulators (12: enough independent chains for two FMA pipes, within
// the 16 ymm registers). The sum over k is taken in pieces of kPiece, each added to the total
// (a float32 sum of 2880 terms in one chain would carry up to 2880 roundings; in pieces, ~100).
constexpr int64_t kPiece = 256;

template <int NR, int V>
void panel_tile(const float* panel, int m, const float* w, int64_t K, int64_t j,
                float* const* y) {
  alignas(32) float total[NR][8 * V] = {};  // in memory: the accumulators take the registers
  for (int64_t k0 = 0; k0 < K; k0 += kPiece) {
    const int64_t k1 = k0 + kPiece < K ? k0 + kPiece : K;
    __m256 acc[NR][V];
    for (int i = 0; i < NR; ++i)
      for (int v = 0; v < V; ++v) acc[i][v] = _mm256_setzero_ps();
    for (int64_t k = k0; k < k1; ++k) {
      __m256 a[V];
      for (int v = 0; v < V; ++v) a[v] = _mm256_loadu_ps(panel + k * kPanelRows + 8 * v);
      for (int i = 0; i < NR; ++i) {
        const __m256 b = _mm256_broadcast_ss(w + (j + i) * K + k);
        for (int v = 0; v < V; ++v) acc[i][v] = _mm256_fmadd_ps(b, a[v], acc[i][v]);
      }
    }
    for (int i = 0; i < NR; ++i)
      for (int v = 0; v < V; ++v)
        _mm256_store_ps(total[i] + 8 * v, _mm256_add_ps(_mm256_load_ps(total[i] + 8 * v), acc[i][v]));
  }
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < m; ++r) y[r][j + i] = total[i][r];
}

template <int NR, int V>
void panel_rows(const float* panel, int m, const float* w, int64_t K, int64_t cols,
                float* const* y) {
  int64_t j = 0;
  for (; j + NR <= cols; j += NR) panel_tile<NR, V>(panel, m, w, K, j, y);
  for (; j < cols; ++j) panel_tile<1, V>(panel, m, w, K, j, y);
}

void panel_dot(const float* panel, int m, const float* w, int64_t K, int64_t cols,
               float* const* y) {
  if (m <= 8) return panel_rows<12, 1>(panel, m, w, K, cols, y);
  panel_rows<6, 2>(panel, m, w, K, cols, y);
}

const IsaKernels kKernels = {"avx2", mxfp4_dot, bf16_dot, mxfp4_dequantize, bf16_widen, f32_dot,
                             panel_dot};

}  // namespace

const IsaKernels* avx2_kernels() { return &kKernels; }

}  // namespace openharmony
