// One thread's rate of the one-row (decode) kernels, with the weights in L2 and from DRAM:
// the fastest of many runs, so load on a shared machine moves it little (docs/speed.md,
// "Decode at the bandwidth limit"). AVX-512 machines only; build and run from the repository:
//
//   g++ -O3 -std=c++20 -mavx512f -mfma -Icsrc scripts/bench_decode_kernels.cpp \
//       csrc/isa_avx512.cpp csrc/decode_avx512.cpp -o /tmp/bench_decode_kernels
//   /tmp/bench_decode_kernels
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "decode_kernels.h"
#include "isa.h"

using namespace openharmony;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

template <typename Run>
double best_gbs(Run run, double bytes, int reps) {
  double best = 1e9;
  for (int r = 0; r < reps; ++r) {
    const double t = now();
    run();
    best = std::min(best, now() - t);
  }
  return bytes / best / 1e9;
}

void measure(const char* where, int64_t N, int64_t copies, int reps) {
  const int64_t K = 2880;
  std::mt19937 rng(1);
  std::vector<uint8_t> w(size_t(N * K / 2 * copies)), s(size_t(N * K / 32 * copies));
  std::vector<uint16_t> wb(size_t(N * K * copies));
  for (auto& v : w) v = uint8_t(rng());
  for (auto& v : s) v = uint8_t(120 + rng() % 10);
  for (auto& v : wb) v = uint16_t(0x3f80 | (rng() & 0x7f));
  std::vector<float> x(K), split(K), arranged(K), y(static_cast<size_t>(N));
  for (auto& v : x) v = float(rng() % 1000) / 500 - 1;
  for (int64_t g = 0; g < K; g += kBlock)
    for (int i = 0; i < kBlock / 2; ++i) {
      split[g + i] = x[g + 2 * i];
      split[g + kBlock / 2 + i] = x[g + 2 * i + 1];
    }
  const IsaKernels* isa = avx512_kernels();
  const DecodeKernels* decode = avx512_decode_kernels();
  decode->arrange(x.data(), K, arranged.data());
  const double mxfp4_bytes = double(N) * K * 17 / 32 * copies;
  const double bf16_bytes = double(N) * K * 2 * copies;
  const double shared = best_gbs([&] {
    const float* xr[1] = {split.data()};
    for (int64_t c = 0; c < copies; ++c)
      for (int64_t n = 0; n < N; n += 64) {
        float* yr[1] = {y.data() + n};
        isa->mxfp4_dot(xr, 1, w.data() + c * N * K / 2, s.data() + c * N * K / 32, K, n,
                       std::min(N, n + 64), yr);
      }
  }, mxfp4_bytes, reps);
  const double own = best_gbs([&] {
    for (int64_t c = 0; c < copies; ++c)
      for (int64_t n = 0; n < N; n += 64)
        decode->mxfp4_gemv(arranged.data(), w.data() + c * N * K / 2, s.data() + c * N * K / 32,
                           K, n, std::min(N, n + 64), y.data() + n);
  }, mxfp4_bytes, reps);
  const double dense = best_gbs([&] {
    const float* xr[1] = {x.data()};
    for (int64_t c = 0; c < copies; ++c)
      for (int64_t n = 0; n < N; n += 64) {
        float* yr[1] = {y.data() + n};
        isa->bf16_dot(xr, 1, wb.data() + c * N * K, K, n, std::min(N, n + 64), yr);
      }
  }, bf16_bytes, reps);
  std::printf("%s: MXFP4 isa_avx512 mxfp4_dot %.1f GB/s, decode_avx512 %.1f GB/s; bf16_dot %.1f "
              "GB/s (one thread, weight bytes)\n", where, shared, own, dense);
}

}  // namespace

int main() {
  measure("in L2 (128 rows x 2880)", 128, 1, 5000);
  measure("from DRAM (8 x 5760 rows x 2880)", 5760, 8, 5);
}
