// AVX2 + FMA attention tiles: 8 query rows per panel, one per float32 lane. Compiled with
// -mavx2 -mfma, used only where the CPU reports both (attention.cpp).
#include <immintrin.h>

#include "attention_isa.h"
#include "attention_scalar.h"

namespace openharmony {
namespace {

constexpr int kLanes = 8;

// exp(x) lane-wise, 0 below -87.3 (-inf included): as the AVX-512 form, with 2^n built in the
// exponent bits (n is within [-126, 127] after the clamp).
inline __m256 exp8(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  const __m256i power = _mm256_slli_epi32(biased, 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(power)));
}

void decode(const KvSource* src, int64_t j0, int n, int D, float* out) {
  const int vectors = src->format == kKvF32 ? 0 : D / 8;  // whole vectors; the rest scalar
  for (int j = 0; j < n; ++j) {
    const int64_t pos = j0 + j;
    const uint8_t* row = src->data + pos * src->row_bytes;
    float* o = out + j * D;
    for (int c = 0; c < vectors; ++c) {
      const int d = 8 * c;
      if (src->format == kKvBF16) {
        const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * d));
        const __m256i widened = _mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16);
        _mm256_storeu_ps(o + d, _mm256_castsi256_ps(widened));
        continue;
      }
      const int g = d / src->group_size;
      const __m256 scale = _mm256_set1_ps(src->scales[pos * src->group_stride + g]);
      const __m256 bias = _mm256_set1_ps(src->biases[pos * src->group_stride + g]);
      __m128i codes;
      if (src->bits == 8) {
        codes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + d));
      } else {  // 4 bytes -> 8 nibbles, low nibble first
        int32_t word;
        __builtin_memcpy(&word, row + d / 2, sizeof word);
        const __m128i b = _mm_cvtsi32_si128(word);
        const __m128i low = _mm_and_si128(b, _mm_set1_epi8(0x0F));
        const __m128i high = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
        codes = _mm_unpacklo_epi8(low, high);
      }
      const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(codes));
      _mm256_storeu_ps(o + d, _mm256_fmadd_ps(q, scale, bias));
    }
    for (int d = 8 * vectors; d < D; ++d) o[d] = kv_value(src, pos, d);
  }
}

// 8 keys at a time: 8 independent FMA chains over d, each key entry a broadcast.
void scores(const float* qt, const float* k, int64_t ldk, int n, int D, float* s) {
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 acc[8];
    for (int t = 0; t < 8; ++t) acc[t] = _mm256_setzero_ps();
    const float* kj = k + j * ldk;
    for (int d = 0; d < D; ++d) {
      const __m256 q = _mm256_loadu_ps(qt + d * kLanes);
      for (int t = 0; t < 8; ++t)
        acc[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(kj + t * ldk + d), q, acc[t]);
    }
    for (int t = 0; t < 8; ++t) _mm256_storeu_ps(s + (j + t) * kLanes, acc[t]);
  }
  for (; j < n; ++j) {
    __m256 acc = _mm256_setzero_ps();
    for (int d = 0; d < D; ++d)
      acc = _mm256_fmadd_ps(_mm256_broadcast_ss(k + j * ldk + d), _mm256_loadu_ps(qt + d * kLanes),
                            acc);
    _mm256_storeu_ps(s + j * kLanes, acc);
  }
}

void softmax(float* s, int n, float* m, float* l, float* alpha) {
  const __m256 old = _mm256_loadu_ps(m);
  __m256 top = old;
  for (int j = 0; j < n; ++j) top = _mm256_max_ps(top, _mm256_loadu_ps(s + j * kLanes));
  const __m256 a = exp8(_mm256_sub_ps(old, top));
  __m256 sum = _mm256_setzero_ps();
  for (int j = 0; j < n; ++j) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j * kLanes), top));
    _mm256_storeu_ps(s + j * kLanes, e);
    sum = _mm256_add_ps(sum, e);
  }
  _mm256_storeu_ps(alpha, a);
  _mm256_storeu_ps(l, _mm256_fmadd_ps(_mm256_loadu_ps(l), a, sum));
  _mm256_storeu_ps(m, top);
}

// R rows x up to 4 vectors of D (masked past D) per pass over the n values.
template <int R>
void accumulate_rows(const float* p, const float* v, int64_t ldv, int n, int D, int i0,
                     const float* alpha, float* o) {
  for (int d0 = 0; d0 < D; d0 += 32) {
    __m256i mask[4];
    for (int c = 0; c < 4; ++c) {
      const int left = D - d0 - 8 * c;
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      mask[c] = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lane);
    }
    __m256 acc[R][4];
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_set1_ps(alpha[i0 + r]);
      for (int c = 0; c < 4; ++c)
        acc[r][c] = _mm256_mul_ps(a, _mm256_maskload_ps(o + (i0 + r) * D + d0 + 8 * c, mask[c]));
    }
    for (int j = 0; j < n; ++j) {
      __m256 vj[4];
      for (int c = 0; c < 4; ++c) vj[c] = _mm256_maskload_ps(v + j * ldv + d0 + 8 * c, mask[c]);
      for (int r = 0; r < R; ++r) {
        const __m256 w = _mm256_broadcast_ss(p + j * kLanes + i0 + r);
        for (int c = 0; c < 4; ++c) acc[r][c] = _mm256_fmadd_ps(w, vj[c], acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c)
        _mm256_maskstore_ps(o + (i0 + r) * D + d0 + 8 * c, mask[c], acc[r][c]);
  }
}

void accumulate(const float* p, const float* v, int64_t ldv, int n, int D, int rows,
                const float* alpha, float* o) {
  int i = 0;
  for (; i + 2 <= rows; i += 2) accumulate_rows<2>(p, v, ldv, n, D, i, alpha, o);
  for (; i < rows; ++i) accumulate_rows<1>(p, v, ldv, n, D, i, alpha, o);
}

const AttentionKernels kKernels = {"avx2", kLanes, decode, scores, softmax, accumulate};

}  // namespace

const AttentionKernels* attention_avx2_kernels() { return &kKernels; }

}  // namespace openharmony
