// The matmuls the model needs, on raw row-major buffers, threaded and dispatched to an ISA.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fast.h"
#include "isa.h"

namespace openharmony {

// The instruction sets this build has and this CPU runs, fastest first ("portable" last).
std::vector<std::string> supported_isas();

// The kernel table for `name` ("auto": the fastest supported); throws std::invalid_argument
// naming the choices when this CPU or build cannot run it.
const IsaKernels& select_isa(const std::string& name);

// y [R, N] = row r of x [R, K] times expert experts[r] of w (MXFP4 codes [E, N, K/2] bytes,
// E8M0 scales [E, N, K/32]), transposed: y[r, n] = sum_k x[r, k] * W[experts[r], n, k].
// A row whose expert id is >= E gets NaN. K must be a multiple of 32. With `fast` (the
// fast-precision table, select_fast), experts with at least 8 rows are multiplied in int8
// (fast.h); the others, and every row without it, exactly in float32.
void run_gather_mxfp4_matmul(const IsaKernels& isa, const float* x, const uint8_t* w,
                         const uint8_t* scales, const uint32_t* experts, float* y, int64_t R,
                         int64_t E, int64_t N, int64_t K, const FastKernels* fast = nullptr);

// gpt-oss's expert gate_up with its bias and SwiGLU fused: with z = row r times expert e =
// experts[r] (as above) plus bias [E, N] row e, gate = min(z[2i], limit), up = clamp(z[2i + 1],
// -limit, limit): y [R, N/2], y[r, i] = gate * sigmoid(alpha * gate) * (up + 1). N even.
void run_gather_mxfp4_swiglu(const IsaKernels& isa, const float* x, const uint8_t* w,
                             const uint8_t* scales, const float* bias, const uint32_t* experts,
                             float* y, int64_t R, int64_t E, int64_t N, int64_t K, float limit,
                             float alpha, const FastKernels* fast = nullptr);

// The fast-precision table for the ISA `name` ("auto": the fastest supported): AVX-512 with
// VNNI, else AVX2's; throws as select_isa.
const FastKernels& select_fast(const std::string& name);

// y [R, N] = x [R, K] times w [N, K] (bfloat16 bits) transposed, accumulated in float32. With
// `fast` and at least 8 rows, the activations are rounded to bfloat16 first (fast.h).
void run_bf16_matmul(const IsaKernels& isa, const float* x, const uint16_t* w, float* y, int64_t R,
                 int64_t N, int64_t K, const FastKernels* fast = nullptr);

int thread_count();

}  // namespace openharmony
