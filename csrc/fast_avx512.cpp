// Fast-precision kernels with AVX-512 VNNI (vpdpbusd: 64 unsigned x signed byte products into 16
// int32 sums per instruction, 4x the multiply-adds of a float32 FMA) and BF16 (vdpbf16ps: 32
// bf16 products, 2x). Compiled with -mavx512f -mavx512bw -mavx512vnni -mavx512bf16, used only
// where the CPU reports all four (kernels.cpp).
#include <cstring>

#include "fast.h"
#include "int8_decode.h"
#include "isa.h"

namespace openharmony {
namespace {

inline int32_t word(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// mxfp4_to_int8 four blocks at a time (int8_decode.h's SSE form for the rest): a zmm holds the
// 64 code bytes of 4 consecutive blocks of a row, one per 128-bit lane; vpshufb maps its low and
// high nibbles to values, and two permutes put each block's 16 low-nibble values before its 16
// high-nibble ones (block-split order). The blocks' sums come from vpdpbusd with ones.
void mxfp4_to_int8(const uint8_t* w, const uint8_t* scales, int64_t K, int64_t n0, int64_t n1,
                   int8_t* values, float* tile_scales, int32_t* corrections) {
  const int64_t groups = K / kBlock;
  const __m512i table = _mm512_broadcast_i32x4(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(kInt8Values)));
  const __m512i nibble = _mm512_set1_epi8(0x0F), ones = _mm512_set1_epi8(1);
  const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
  const __m512i second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* codes = w + n * (K / 2);
    int8_t* out = values + (n - n0) * K;
    const int64_t t0 = (n - n0) * groups;
    int64_t g = 0;
    for (; g + 4 <= groups; g += 4) {
      const __m512i b = _mm512_loadu_si512(codes + g * 16);
      const __m512i lo = _mm512_shuffle_epi8(table, _mm512_and_si512(b, nibble));
      const __m512i hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(b, 4), nibble));
      _mm512_storeu_si512(out + g * kBlock, _mm512_permutex2var_epi64(lo, first, hi));
      _mm512_storeu_si512(out + g * kBlock + 64, _mm512_permutex2var_epi64(lo, second, hi));
      __m512i sums = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, lo),
                                         ones, hi);
      sums = _mm512_add_epi32(sums, _mm512_shuffle_epi32(sums, _MM_PERM_BADC));
      sums = _mm512_add_epi32(sums, _mm512_shuffle_epi32(sums, _MM_PERM_CDAB));
      alignas(64) int32_t lane[16];
      _mm512_store_si512(lane, sums);
      for (int i = 0; i < 4; ++i) {
        corrections[t0 + g + i] = -128 * lane[4 * i];
        tile_scales[t0 + g + i] = int8_scale_value(scales[n * groups + g + i]);
      }
    }
    for (; g < groups; ++g) {
      corrections[t0 + g] = -128 * mxfp4_block_to_int8(codes + g * 16, out + g * kBlock);
      tile_scales[t0 + g] = int8_scale_value(scales[n * groups + g]);
    }
  }
}

// NR tile rows against a 16-row panel (one zmm per k quad): per block, NR int32 accumulators
// start at the tile rows' corrections, take 8 vpdpbusd each (the panel quad in a register, the
// tile row's 4 bytes as an embedded broadcast), then go into NR float accumulators scaled by
// the rows' activation scales times the tile row's block scale.
template <int NR>
void panel_tile(const uint8_t* panel, const float* panel_scales, int m, const int8_t* values,
                const float* tile_scales, const int32_t* corrections, int64_t K, int64_t j,
                float* const* y) {
  const int64_t groups = K / kBlock;
  __m512 f[NR];
  for (int i = 0; i < NR; ++i) f[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i acc[NR];
    for (int i = 0; i < NR; ++i) acc[i] = _mm512_set1_epi32(corrections[(j + i) * groups + g]);
    for (int t = 0; t < kBlock / 4; ++t) {
      const __m512i a = _mm512_loadu_si512(panel + (g * (kBlock / 4) + t) * 4 * kInt8PanelRows);
      for (int i = 0; i < NR; ++i)
        acc[i] = _mm512_dpbusd_epi32(acc[i], a,
                                     _mm512_set1_epi32(word(values + (j + i) * K + g * kBlock + 4 * t)));
    }
    const __m512 dx = _mm512_loadu_ps(panel_scales + g * kInt8PanelRows);
    for (int i = 0; i < NR; ++i)
      f[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i]),
                             _mm512_mul_ps(dx, _mm512_set1_ps(tile_scales[(j + i) * groups + g])),
                             f[i]);
  }
  for (int i = 0; i < NR; ++i) {
    alignas(64) float out[16];
    _mm512_store_ps(out, f[i]);
    for (int r = 0; r < m; ++r) y[r][j + i] = out[r];
  }
}

void panel_dot(const uint8_t* panel, const float* panel_scales, int m, const int8_t* values,
               const float* tile_scales, const int32_t* corrections, int64_t K, int64_t cols,
               float* const* y) {
  constexpr int NR = 12;
  int64_t j = 0;
  for (; j + NR <= cols; j += NR)
    panel_tile<NR>(panel, panel_scales, m, values, tile_scales, corrections, K, j, y);
  for (; j < cols; ++j)
    panel_tile<1>(panel, panel_scales, m, values, tile_scales, corrections, K, j, y);
}

// NR weight rows against a bf16 panel (one zmm per k pair): vdpbf16ps with the panel pair in a
// register and the weight row's pair as an embedded broadcast; the sums in pieces of kPiece pairs
// (as the float32 panel kernel, isa_avx512.cpp).
constexpr int64_t kPiece = 64;

template <int NR>
void bf16_tile(const uint16_t* panel, int m, const uint16_t* w, int64_t K, int64_t j,
               float* const* y) {
  const int64_t pairs = K / 2;
  alignas(64) float total[NR][16] = {};
  for (int64_t p0 = 0; p0 < pairs; p0 += kPiece) {
    const int64_t p1 = p0 + kPiece < pairs ? p0 + kPiece : pairs;
    __m512 acc[NR];
    for (int i = 0; i < NR; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t p = p0; p < p1; ++p) {
      const __m512bh a = (__m512bh)_mm512_loadu_si512(panel + p * 2 * kInt8PanelRows);
      for (int i = 0; i < NR; ++i) {
        int32_t pair;
        std::memcpy(&pair, w + (j + i) * K + 2 * p, sizeof pair);
        acc[i] = _mm512_dpbf16_ps(acc[i], a, (__m512bh)_mm512_set1_epi32(pair));
      }
    }
    for (int i = 0; i < NR; ++i)
      _mm512_store_ps(total[i], _mm512_add_ps(_mm512_load_ps(total[i]), acc[i]));
  }
  if (K % 2) {  // the last column: the pair (x, 0) against (w, 0)
    const __m512bh a = (__m512bh)_mm512_loadu_si512(panel + pairs * 2 * kInt8PanelRows);
    for (int i = 0; i < NR; ++i) {
      const __m512 last = _mm512_dpbf16_ps(_mm512_setzero_ps(), a,
                                           (__m512bh)_mm512_set1_epi32(w[(j + i) * K + K - 1]));
      _mm512_store_ps(total[i], _mm512_add_ps(_mm512_load_ps(total[i]), last));
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < m; ++r) y[r][j + i] = total[i][r];
}

void bf16_panel_dot(const uint16_t* panel, int m, const uint16_t* w, int64_t K, int64_t cols,
                    float* const* y) {
  constexpr int NR = 12;
  int64_t j = 0;
  for (; j + NR <= cols; j += NR) bf16_tile<NR>(panel, m, w, K, j, y);
  for (; j < cols; ++j) bf16_tile<1>(panel, m, w, K, j, y);
}

const FastKernels kKernels = {"avx512", mxfp4_to_int8, panel_dot, bf16_panel_dot};

}  // namespace

const FastKernels* fast_avx512_kernels() { return &kKernels; }

}  // namespace openharmony
