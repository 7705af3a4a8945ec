// The attention kernel's per-instruction-set inner loops, behind one table of plain function
// pointers (the style of isa.h: each ISA in its own translation unit with its own flags, C
// types only). attention.cpp plans the work and calls these on small tiles.
//
// The tiles put query rows in the vector lanes: a "panel" is `lanes` query rows (query heads x
// query positions of one kv head), and
//   qt     [D][lanes]      the panel's queries, transposed and pre-scaled,
//   s      [n][lanes]      the scores of n keys (then the probabilities),
//   o      [lanes][D]      the running output, m/l [lanes] the running max and sum.
// So the softmax's max, exp and sum run lane-wise with no horizontal reductions, and a key's
// value is a broadcast scalar in the score loop: keys need no transposition.
#pragma once

#include <cstdint>

namespace openharmony {

// How keys or values are stored (openharmony/cache/): float32, bfloat16 bits, or MLX's affine
// quantization (`mx.quantize`: per group of `group_size` entries along head_dim, a float32
// scale and bias; `bits` 4 or 8 bits per entry packed little-endian into uint32 words, entry
// i of a row at bits [bits*i, bits*(i+1)) of the row's bytes; value = scale * q + bias).
enum KvFormat : int { kKvF32 = 0, kKvBF16 = 1, kKvAffine = 2 };

// One (batch, kv head)'s keys or values: position j's row starts at data + j * row_bytes; for
// kKvAffine its scales and biases at scales/biases + j * group_stride (floats).
struct KvSource {
  int format;
  const uint8_t* data;
  int64_t row_bytes;
  const float* scales;
  const float* biases;
  int64_t group_stride;
  int bits;
  int group_size;
};

struct AttentionKernels {
  const char* name;
  int lanes;  // query rows per panel: the float32 lanes of one vector register
  // out[j * D + d] = the float value of entry d of position j0 + j, for j < n (bf16, affine).
  void (*decode)(const KvSource* src, int64_t j0, int n, int D, float* out);
  // s[j * lanes + i] = sum_d k[j * ldk + d] * qt[d * lanes + i], for j < n.
  void (*scores)(const float* qt, const float* k, int64_t ldk, int n, int D, float* s);
  // The online softmax's step over n keys, per lane i: m' = max(m[i], max_j s[j][i]);
  // alpha[i] = exp(m[i] - m'); s[j][i] = exp(s[j][i] - m') (0 for -inf); l[i] = l[i] *
  // alpha[i] + sum_j s[j][i]; m[i] = m'.
  void (*softmax)(float* s, int n, float* m, float* l, float* alpha);
  // o[i * D + d] = o[i * D + d] * alpha[i] + sum_j p[j * lanes + i] * v[j * ldv + d], i < rows.
  void (*accumulate)(const float* p, const float* v, int64_t ldv, int n, int D, int rows,
                     const float* alpha, float* o);
};

const AttentionKernels* attention_portable_kernels();
const AttentionKernels* attention_avx2_kernels();    // nullptr where the build has no x86-64
const AttentionKernels* attention_avx512_kernels();  // nullptr where the build has no x86-64

}  // namespace openharmony
