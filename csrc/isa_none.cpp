// Builds without x86-64 kernels (arm64 and others): only the portable tables exist.
#include "fast.h"
#include "isa.h"

namespace openharmony {
const IsaKernels* avx2_kernels() { return nullptr; }
const IsaKernels* avx512_kernels() { return nullptr; }
const FastKernels* fast_avx2_kernels() { return nullptr; }
const FastKernels* fast_avx512_kernels() { return nullptr; }
}  // namespace openharmony
