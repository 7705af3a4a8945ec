// Builds without x86-64 kernels (arm64 and others): only the portable tables exist.
#include "int8.h"
#include "isa.h"

namespace openharmony {
const IsaKernels* avx2_kernels() { return nullptr; }
const IsaKernels* avx512_kernels() { return nullptr; }
const Int8Kernels* int8_avx2_kernels() { return nullptr; }
const Int8Kernels* int8_avx512_kernels() { return nullptr; }
}  // namespace openharmony
