// AVX-512F kernel for one activation row times MXFP4 weight rows (decode), compiled with
// -mavx512f -mfma and used only where the CPU reports AVX-512F (moe_decode.cpp).
//
// The shared kernel (isa_avx512.cpp's mxfp4_dot) expands each block's 16 bytes into 16 dword
// indices and looks up its even and odd values: about 11 instructions per 32 weights, which
// bounds it near 13 GB/s per core with the weights in L2 (docs/speed.md), below the memory's
// pace. Here one 64-byte load covers 4 blocks: as 16 dwords, nibble j of dword d (a shift by
// 4j, the low 4 bits index vpermps) is element 8*(d%4) + j of block d/4. The activations are
// arranged once per call to match (decode_arrange), the products of the 4 blocks are summed
// lane-wise and scaled by one vector of their 4 scales (lane d: block d/4's), and the scales
// of 16 blocks are decoded at once: about 7 instructions per 32 weights.
#include <immintrin.h>

#include "decode_kernels.h"
#include "isa.h"
#include "mxfp4_values.h"

namespace openharmony {
namespace {

constexpr int64_t kGroup = 4 * kBlock;    // weights per 64-byte load
constexpr int64_t kChunk = 4 * kGroup;    // weights per 16 scales (16 blocks)

// x in natural order -> the kernel's order: per 128-weight group, vector j (16 lanes) holds
// element 8*(d%4) + j of block d/4 in lane d; past the last whole 512-weight chunk, the
// blocks are block-split (isa.h) for the per-block tail.
void arrange(const float* x, int64_t K, float* out) {
  const int64_t main = K / kChunk * kChunk;
  for (int64_t g = 0; g < main; g += kGroup)
    for (int j = 0; j < 8; ++j)
      for (int d = 0; d < 16; ++d) out[g + 16 * j + d] = x[g + (d / 4) * kBlock + 8 * (d % 4) + j];
  for (int64_t b = main; b < K; b += kBlock)
    for (int i = 0; i < kBlock / 2; ++i) {
      out[b + i] = x[b + 2 * i];
      out[b + kBlock / 2 + i] = x[b + 2 * i + 1];
    }
}

// 16 E8M0 scale bytes -> their float32 values 2**(s - 127): the exponent field s, except that
// 0 (2**-127, a subnormal) and 255 (NaN) also set the mantissa's top bit.
inline __m512 scales16(const uint8_t* s) {
  const __m512i bytes =
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  const __m512i bits = _mm512_slli_epi32(bytes, 23);
  const __mmask16 normal = _mm512_cmplt_epu32_mask(
      _mm512_sub_epi32(bytes, _mm512_set1_epi32(1)), _mm512_set1_epi32(254));
  return _mm512_castsi512_ps(
      _mm512_mask_or_epi32(bits, _knot_mask16(normal), bits, _mm512_set1_epi32(0x400000)));
}

template <int C>
void gemv_rows(const float* x, const uint8_t* w, const uint8_t* scales, int64_t K, int64_t n,
               float* y) {
  const int64_t groups = K / kBlock, main = K / kChunk * kChunk;
  const __m512 table = _mm512_loadu_ps(kFp4Values);
  __m512 acc[C];
  for (int c = 0; c < C; ++c) acc[c] = _mm512_setzero_ps();
  for (int64_t k = 0; k < main; k += kChunk) {
    __m512 s[C];
    for (int c = 0; c < C; ++c) s[c] = scales16(scales + (n + c) * groups + k / kBlock);
    for (int q = 0; q < 4; ++q) {
      const int64_t g = k + q * kGroup;
      // Lane d of the scale vector: block 4q + d/4 of these 16.
      const __m512i lanes =
          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
      const __m512i pick =
          _mm512_add_epi32(_mm512_set1_epi32(4 * q), _mm512_srli_epi32(lanes, 2));
      __m512 xs[8];
      for (int j = 0; j < 8; ++j) xs[j] = _mm512_loadu_ps(x + g + 16 * j);
      for (int c = 0; c < C; ++c) {
        // 8 cache lines ahead in each of the C row streams (a hint: never faults past the end;
        // C = 4 streams and the prefetch kept DRAM reads level with isa_avx512's kernel,
        // which C = 2 without it did not).
        _mm_prefetch(reinterpret_cast<const char*>(w + (n + c) * (K / 2) + g / 2 + 512),
                     _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512(w + (n + c) * (K / 2) + g / 2);
        __m512 t = _mm512_mul_ps(xs[0], _mm512_permutexvar_ps(v, table));
        for (int j = 1; j < 8; ++j)
          t = _mm512_fmadd_ps(xs[j], _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4 * j), table),
                              t);
        acc[c] = _mm512_fmadd_ps(t, _mm512_permutexvar_ps(pick, s[c]), acc[c]);
      }
    }
  }
  // The blocks past the last whole chunk, block-split, one at a time.
  for (int c = 0; c < C; ++c) {
    __m512 tail = _mm512_setzero_ps();
    for (int64_t b = main; b < K; b += kBlock) {
      const uint8_t* bytes = w + (n + c) * (K / 2) + b / 2;
      const __m512i codes =
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
      const __m512 even = _mm512_permutexvar_ps(codes, table);
      const __m512 odd = _mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), table);
      const __m512 block = _mm512_fmadd_ps(_mm512_loadu_ps(x + b + 16), odd,
                                           _mm512_mul_ps(_mm512_loadu_ps(x + b), even));
      const float scale = scale_value(scales[(n + c) * groups + b / kBlock]);
      tail = _mm512_fmadd_ps(block, _mm512_set1_ps(scale), tail);
    }
    y[n + c] = _mm512_reduce_add_ps(_mm512_add_ps(acc[c], tail));
  }
}

void gemv(const float* x, const uint8_t* w, const uint8_t* scales, int64_t K, int64_t n0,
          int64_t n1, float* y) {
  constexpr int C = 4;
  int64_t n = n0;
  for (; n + C <= n1; n += C) gemv_rows<C>(x, w, scales, K, n, y - n0);
  for (; n < n1; ++n) gemv_rows<1>(x, w, scales, K, n, y - n0);
}

const DecodeKernels kKernels = {"avx512", arrange, gemv};

}  // namespace

const DecodeKernels* avx512_decode_kernels() { return &kKernels; }

}  // namespace openharmony
