// Builds without x86-64 kernels (arm64 and others): only the portable attention tiles exist.
#include "attention_isa.h"

namespace openharmony {
const AttentionKernels* attention_avx2_kernels() { return nullptr; }
const AttentionKernels* attention_avx512_kernels() { return nullptr; }
}  // namespace openharmony
