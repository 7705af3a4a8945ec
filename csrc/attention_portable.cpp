// Portable attention tiles: plain loops, correct on any CPU (the compiler vectorizes what it
// can). 8 lanes per panel.
#include "attention_isa.h"
#include "attention_scalar.h"

namespace openharmony {
namespace {

constexpr int kLanes = 8;

void scores(const float* qt, const float* k, int64_t ldk, int n, int D, float* s) {
  scalar_scores<kLanes>(qt, k, ldk, n, D, s);
}

void softmax(float* s, int n, float* m, float* l, float* alpha) {
  scalar_softmax<kLanes>(s, n, m, l, alpha);
}

void accumulate(const float* p, const float* v, int64_t ldv, int n, int D, int rows,
                const float* alpha, float* o) {
  scalar_accumulate<kLanes>(p, v, ldv, n, D, rows, alpha, o);
}

const AttentionKernels kKernels = {"portable", kLanes, scalar_decode, scores, softmax,
                                   accumulate};

}  // namespace

const AttentionKernels* attention_portable_kernels() { return &kKernels; }

}  // namespace openharmony
