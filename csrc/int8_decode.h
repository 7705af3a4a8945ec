// One MXFP4 block (16 bytes of codes) -> its 32 int8 values (fast.h) and their sum, with SSE
// shuffles: shared by fast_avx2.cpp and fast_avx512.cpp, each compiling its own `static` copy
// for its ISA (as mxfp4_values.h).
#pragma once

#include <immintrin.h>

#include "mxfp4_values.h"

namespace openharmony {

static inline int32_t mxfp4_block_to_int8(const uint8_t* codes, int8_t* out) {
  const __m128i table = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kInt8Values));
  const __m128i nibble = _mm_set1_epi8(0x0F);
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
  const __m128i lo = _mm_shuffle_epi8(table, _mm_and_si128(b, nibble));
  const __m128i hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(b, 4), nibble));
  // Block-split order (isa.h): the low nibbles' values, then the high ones'.
  const __m128i first = lo, second = hi;
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), first);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), second);
  // The sum through unsigned sums of absolute differences: each value + 12 is in [0, 24].
  const __m128i twelve = _mm_set1_epi8(12), zero = _mm_setzero_si128();
  const __m128i sums = _mm_add_epi64(_mm_sad_epu8(_mm_add_epi8(first, twelve), zero),
                                     _mm_sad_epu8(_mm_add_epi8(second, twelve), zero));
  return int32_t(_mm_cvtsi128_si64(sums) + _mm_extract_epi64(sums, 1)) - 12 * 32;
}

static inline void mxfp4_to_int8_sse(const uint8_t* w, const uint8_t* scales, int64_t K,
                                     int64_t n0, int64_t n1, int8_t* values, float* tile_scales,
                                     int32_t* corrections) {
  const int64_t groups = K / 32;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t t = (n - n0) * groups + g;
      corrections[t] = -128 * mxfp4_block_to_int8(w + n * (K / 2) + g * 16,
                                                  values + (n - n0) * K + g * 32);
      tile_scales[t] = int8_scale_value(scales[n * groups + g]);
    }
}

}  // namespace openharmony
