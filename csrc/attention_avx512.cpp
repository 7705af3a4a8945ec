// AVX-512F attention tiles: 16 query rows per panel, one per float32 lane. Compiled with
// -mavx512f -mfma, used only where the CPU reports AVX-512F (attention.cpp).
#include <immintrin.h>

#include "attention_isa.h"
#include "attention_scalar.h"

namespace openharmony {
namespace {

constexpr int kLanes = 16;

// exp(x) lane-wise, 0 below -87.3 (where float32's exp underflows; -inf included): x = n ln2 + r
// with |r| <= ln2/2, exp(r) by Cephes' expf polynomial (about 1 ulp), times 2^n by scalef.
inline __m512 exp16(__m512 x) {
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(~underflow, _mm512_scalef_ps(p, n));
}

// 16 entries from 16 quantized codes (as int32 lanes): scale * q + bias.
inline __m512 affine16(__m512i q, float scale, float bias) {
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(scale), _mm512_set1_ps(bias));
}

void decode(const KvSource* src, int64_t j0, int n, int D, float* out) {
  const int vectors = src->format == kKvF32 ? 0 : D / 16;  // whole vectors; the rest scalar
  for (int j = 0; j < n; ++j) {
    const int64_t pos = j0 + j;
    const uint8_t* row = src->data + pos * src->row_bytes;
    float* o = out + j * D;
    for (int c = 0; c < vectors; ++c) {
      const int d = 16 * c;
      if (src->format == kKvBF16) {
        const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * d));
        const __m512i widened = _mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16);
        _mm512_storeu_ps(o + d, _mm512_castsi512_ps(widened));
        continue;
      }
      const int g = d / src->group_size;
      const float scale = src->scales[pos * src->group_stride + g];
      const float bias = src->biases[pos * src->group_stride + g];
      __m128i codes;
      if (src->bits == 8) {
        codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + d));
      } else {  // 8 bytes -> 16 nibbles, low nibble first
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + d / 2));
        const __m128i low = _mm_and_si128(b, _mm_set1_epi8(0x0F));
        const __m128i high = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
        codes = _mm_unpacklo_epi8(low, high);
      }
      _mm512_storeu_ps(o + d, affine16(_mm512_cvtepu8_epi32(codes), scale, bias));
    }
    for (int d = 16 * vectors; d < D; ++d) o[d] = kv_value(src, pos, d);
  }
}

// 8 keys at a time: 8 independent FMA chains over d, each key entry a broadcast.
void scores(const float* qt, const float* k, int64_t ldk, int n, int D, float* s) {
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    __m512 acc[8];
    for (int t = 0; t < 8; ++t) acc[t] = _mm512_setzero_ps();
    const float* kj = k + j * ldk;
    for (int d = 0; d < D; ++d) {
      const __m512 q = _mm512_loadu_ps(qt + d * kLanes);
      for (int t = 0; t < 8; ++t)
        acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(kj[t * ldk + d]), q, acc[t]);
    }
    for (int t = 0; t < 8; ++t) _mm512_storeu_ps(s + (j + t) * kLanes, acc[t]);
  }
  for (; j < n; ++j) {
    __m512 acc = _mm512_setzero_ps();
    for (int d = 0; d < D; ++d)
      acc = _mm512_fmadd_ps(_mm512_set1_ps(k[j * ldk + d]), _mm512_loadu_ps(qt + d * kLanes), acc);
    _mm512_storeu_ps(s + j * kLanes, acc);
  }
}

void softmax(float* s, int n, float* m, float* l, float* alpha) {
  const __m512 old = _mm512_loadu_ps(m);
  __m512 top = old;
  for (int j = 0; j < n; ++j) top = _mm512_max_ps(top, _mm512_loadu_ps(s + j * kLanes));
  const __m512 a = exp16(_mm512_sub_ps(old, top));
  __m512 sum = _mm512_setzero_ps();
  for (int j = 0; j < n; ++j) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j * kLanes), top));
    _mm512_storeu_ps(s + j * kLanes, e);
    sum = _mm512_add_ps(sum, e);
  }
  _mm512_storeu_ps(alpha, a);
  _mm512_storeu_ps(l, _mm512_fmadd_ps(_mm512_loadu_ps(l), a, sum));
  _mm512_storeu_ps(m, top);
}

// R rows x up to 4 vectors of D (masked past D) per pass over the n values.
template <int R>
void accumulate_rows(const float* p, const float* v, int64_t ldv, int n, int D, int i0,
                     const float* alpha, float* o) {
  for (int d0 = 0; d0 < D; d0 += 64) {
    __mmask16 mask[4];
    for (int c = 0; c < 4; ++c) {
      const int left = D - d0 - 16 * c;
      mask[c] = left >= 16 ? 0xFFFF : left <= 0 ? 0 : __mmask16((1u << left) - 1);
    }
    __m512 acc[R][4];
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(alpha[i0 + r]);
      for (int c = 0; c < 4; ++c)
        acc[r][c] =
            _mm512_mul_ps(a, _mm512_maskz_loadu_ps(mask[c], o + (i0 + r) * D + d0 + 16 * c));
    }
    for (int j = 0; j < n; ++j) {
      __m512 vj[4];
      for (int c = 0; c < 4; ++c) vj[c] = _mm512_maskz_loadu_ps(mask[c], v + j * ldv + d0 + 16 * c);
      for (int r = 0; r < R; ++r) {
        const __m512 w = _mm512_set1_ps(p[j * kLanes + i0 + r]);
        for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_fmadd_ps(w, vj[c], acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c)
        _mm512_mask_storeu_ps(o + (i0 + r) * D + d0 + 16 * c, mask[c], acc[r][c]);
  }
}

void accumulate(const float* p, const float* v, int64_t ldv, int n, int D, int rows,
                const float* alpha, float* o) {
  int i = 0;
  for (; i + 4 <= rows; i += 4) accumulate_rows<4>(p, v, ldv, n, D, i, alpha, o);
  for (; i < rows; ++i) accumulate_rows<1>(p, v, ldv, n, D, i, alpha, o);
}

const AttentionKernels kKernels = {"avx512", kLanes, decode, scores, softmax, accumulate};

}  // namespace

const AttentionKernels* attention_avx512_kernels() { return &kKernels; }

}  // namespace openharmony
