// AVX-512F kernels (16 float32 lanes). Compiled with -mavx512f -mfma, used only where the CPU
// reports AVX-512F (kernels.cpp).
#include <immintrin.h>

#include "isa.h"
#include "mxfp4_values.h"

namespace openharmony {
namespace {

// The 16 E2M1 values, indexed by code through vpermps (which reads the low 4 index bits).
inline __m512 fp4_table() { return _mm512_loadu_ps(kFp4Values); }

// One block's 16 bytes -> its even (low nibble) and odd (high nibble) element values.
inline void decode_block(const uint8_t* bytes, __m512 table, __m512& even, __m512& odd) {
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
  even = _mm512_permutexvar_ps(b, table);
  odd = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), table);
}

// R activation rows times C weight rows at once: R*C independent accumulators hide the FMA
// latency when decoding one token (R = 1) and reuse each decoded block R times otherwise.
template <int R, int C>
void mxfp4_tile(const float* const* x, const uint8_t* w, const uint8_t* scales, int64_t K,
                int64_t n, int64_t j, float* const* y) {
  const int64_t groups = K / kBlock;
  const __m512 table = fp4_table();
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 xe[R], xo[R];
    for (int r = 0; r < R; ++r) {
      xe[r] = _mm512_loadu_ps(x[r] + g * kBlock);
      xo[r] = _mm512_loadu_ps(x[r] + g * kBlock + 16);
    }
    for (int c = 0; c < C; ++c) {
      __m512 even, odd;
      decode_block(w + (n + c) * (K / 2) + g * 16, table, even, odd);
      const __m512 scale = _mm512_set1_ps(scale_value(scales[(n + c) * groups + g]));
      for (int r = 0; r < R; ++r) {
        const __m512 block = _mm512_fmadd_ps(xo[r], odd, _mm512_mul_ps(xe[r], even));
        acc[r][c] = _mm512_fmadd_ps(block, scale, acc[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) y[r][j + c] = _mm512_reduce_add_ps(acc[r][c]);
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

inline __m512 widen16(const uint16_t* p) {
  const __m512i bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(bits, 16));
}

// Dot products of R activation rows with C weight rows of type W (float or bf16 bits).
template <typename W, int R, int C>
void dense_tile(const float* const* x, const W* w, int64_t K, int64_t j, float* const* y) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[C];
    for (int c = 0; c < C; ++c) {
      const W* p = w + (j + c) * K + k;
      if constexpr (sizeof(W) == 2) wv[c] = widen16(reinterpret_cast<const uint16_t*>(p));
      else wv[c] = _mm512_loadu_ps(reinterpret_cast<const float*>(p));
    }
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_loadu_ps(x[r] + k);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float sum = _mm512_reduce_add_ps(acc[r][c]);
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
  constexpr int C = 4;  // R*C <= 16 accumulators of the 32 zmm registers
  // y rows are shifted so that column j of the weights lands at y[r][j - y_offset].
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
  const __m512 table = fp4_table();
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      __m512 even, odd;
      decode_block(w + n * (K / 2) + g * 16, table, even, odd);
      const __m512 scale = _mm512_set1_ps(scale_value(scales[n * groups + g]));
      float* o = out + (n - n0) * K + g * kBlock;
      _mm512_storeu_ps(o, _mm512_mul_ps(even, scale));
      _mm512_storeu_ps(o + 16, _mm512_mul_ps(odd, scale));
    }
  }
}

void bf16_widen(const uint16_t* w, int64_t K, int64_t n0, int64_t n1, float* out) {
  const int64_t count = (n1 - n0) * K;
  const uint16_t* src = w + n0 * K;
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) _mm512_storeu_ps(out + i, widen16(src + i));
  for (; i < count; ++i) out[i] = bf16_value(src[i]);
}

// The broadcast-form kernel over a 16-row panel (one zmm per column k): NR weight rows, per k
// one panel load and NR FMAs whose weight operand is an embedded broadcast from the tile, into
// NR independent accumulators (no horizontal sums). The sum over k is taken in pieces of kPiece
// (fewer roundings than one 2880-term chain; a piece of the panel and of NR tile rows, 8 + NR/2
// KB, stays in L1).
constexpr int64_t kPiece = 128;

template <int NR>
void panel_tile(const float* panel, int m, const float* w, int64_t K, int64_t j,
                float* const* y) {
  alignas(64) float total[NR][16] = {};  // in memory: the accumulators take the registers
  const float* wr[NR];
  for (int i = 0; i < NR; ++i) wr[i] = w + (j + i) * K;
  for (int64_t k0 = 0; k0 < K; k0 += kPiece) {
    const int64_t k1 = k0 + kPiece < K ? k0 + kPiece : K;
    __m512 acc[NR];
    for (int i = 0; i < NR; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t k = k0; k < k1; ++k) {
      const __m512 a = _mm512_loadu_ps(panel + k * kPanelRows);
      for (int i = 0; i < NR; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(wr[i][k]), a, acc[i]);
    }
    for (int i = 0; i < NR; ++i)
      _mm512_store_ps(total[i], _mm512_add_ps(_mm512_load_ps(total[i]), acc[i]));
  }
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < m; ++r) y[r][j + i] = total[i][r];
}

void panel_dot(const float* panel, int m, const float* w, int64_t K, int64_t cols,
               float* const* y) {
  constexpr int NR = 12;
  int64_t j = 0;
  for (; j + NR <= cols; j += NR) panel_tile<NR>(panel, m, w, K, j, y);
  for (; j < cols; ++j) panel_tile<1>(panel, m, w, K, j, y);
}

const IsaKernels kKernels = {"avx512", mxfp4_dot, bf16_dot, mxfp4_dequantize, bf16_widen,
                             f32_dot, panel_dot};

}  // namespace

const IsaKernels* avx512_kernels() { return &kKernels; }

}  // namespace openharmony
