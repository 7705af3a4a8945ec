// Decode-only kernels (one activation row) that need an activation layout of their own, per
// instruction set, behind a table of plain function pointers (as isa.h's, for the same reason).
#pragma once

#include <cstdint>

namespace openharmony {

struct DecodeKernels {
  const char* name;
  // out [K] = x [K] (natural order) rearranged into the order mxfp4_gemv reads.
  void (*arrange)(const float* x, int64_t K, float* out);
  // y[n - n0] = dot(x, W[n]) for n in [n0, n1): one arranged activation row times MXFP4
  // weights (codes [N, K/2] bytes, E8M0 scales [N, K/32]). K must be a multiple of 32.
  void (*mxfp4_gemv)(const float* x, const uint8_t* w, const uint8_t* scales, int64_t K,
                     int64_t n0, int64_t n1, float* y);
};

// nullptr where the build has no x86-64 kernels; callers check the CPU (the ISA chosen).
const DecodeKernels* avx512_decode_kernels();

}  // namespace openharmony
