// The per-instruction-set inner kernels, behind one table of plain function pointers.
//
// Each instruction set is compiled in its own translation unit with its own target flags
// (CMakeLists.txt); kernels.cpp picks a table at run time from what the CPU supports. The
// tables hold nothing but C types, and the ISA files use no C++ library templates, so no
// inline function compiled for AVX-512 can be merged into code that runs on a CPU without it.
#pragma once

#include <cstdint>

namespace openharmony {

// Activations are passed to the MXFP4 kernels in "block-split" order: within each block of 32
// elements, the 16 even-indexed elements first, then the 16 odd ones. Those are the low and
// the high nibbles of the block's 16 bytes, so the weights decode straight into registers
// without an interleave (kernels.cpp reorders each activation row once per call).
constexpr int kBlock = 32;

// Prefill's activation panels (kernels.cpp): up to kPanelRows activation rows stored k-major,
// panel[k * kPanelRows + r] = x[r][k], zero for rows past the last.
constexpr int kPanelRows = 16;

struct IsaKernels {
  const char* name;
  // y[r][n - n0] = dot(x[r], W[n]) for r < rows (<= 4) and n in [n0, n1): W is MXFP4 with
  // codes w [N, K/2] bytes and E8M0 scales [N, K/32]; x rows in block-split order.
  void (*mxfp4_dot)(const float* const* x, int rows, const uint8_t* w, const uint8_t* scales,
                    int64_t K, int64_t n0, int64_t n1, float* const* y);
  // The same for bfloat16 weights w [N, K] (raw bits) and x rows in natural order.
  void (*bf16_dot)(const float* const* x, int rows, const uint16_t* w, int64_t K, int64_t n0,
                   int64_t n1, float* const* y);
  // out [n1 - n0, K] = the float32 values of rows n0..n1 (MXFP4 ones in block-split order).
  void (*mxfp4_dequantize)(const uint8_t* w, const uint8_t* scales, int64_t K, int64_t n0,
                           int64_t n1, float* out);
  void (*bf16_widen)(const uint16_t* w, int64_t K, int64_t n0, int64_t n1, float* out);
  // y[r][j] = dot(x[r], w[j]) for r < rows (<= 4) and j < cols: w [cols, K] float32.
  void (*f32_dot)(const float* const* x, int rows, const float* w, int64_t K, int64_t cols,
                  float* const* y);
  // y[r][j] = dot(x[r], w[j]) for r < m (<= kPanelRows) and j < cols, with the x rows given as
  // a panel (above) and w [cols, K] float32: a broadcast-form kernel (no horizontal sums). May
  // be nullptr: kernels.cpp then runs the tiles through f32_dot instead.
  void (*panel_dot)(const float* panel, int m, const float* w, int64_t K, int64_t cols,
                    float* const* y);
};

const IsaKernels* portable_kernels();
const IsaKernels* avx2_kernels();    // nullptr where the build has no x86-64 kernels
const IsaKernels* avx512_kernels();  // nullptr where the build has no x86-64 kernels

}  // namespace openharmony
