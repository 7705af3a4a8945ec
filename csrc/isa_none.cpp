// Builds without x86-64 kernels (arm64 and others): only the portable table exists.
#include "isa.h"

namespace openharmony {
const IsaKernels* avx2_kernels() { return nullptr; }
const IsaKernels* avx512_kernels() { return nullptr; }
}  // namespace openharmony
