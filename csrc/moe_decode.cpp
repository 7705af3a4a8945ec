#include "moe_decode.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "decode_kernels.h"
#include "isa.h"
#include "kernels.h"
#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "thread_pool.h"

namespace openharmony {

namespace {

// Weight rows per work item: a few tens of microseconds each, hundreds per matmul.
constexpr int64_t kChunk = 64;
constexpr int kRowsPerCall = 4;  // the ISA kernels' most activation rows per call

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument("moe_decode: " + message);
}

// Row-major MXFP4 weights of every expert: codes [E, N, K/2] bytes, scales [E, N, K/32].
struct Mxfp4 {
  const uint8_t* codes;
  const uint8_t* scales;
  int64_t N, K;
  const uint8_t* expert_codes(int64_t e) const { return codes + e * N * (K / 2); }
  const uint8_t* expert_scales(int64_t e) const { return scales + e * N * (K / kBlock); }
};

// x row -> the ISA kernels' block-split order (isa.h): per block, even elements then odd ones.
void block_split(const float* x, int64_t K, float* out) {
  for (int64_t g = 0; g < K; g += kBlock)
    for (int i = 0; i < kBlock / 2; ++i) {
      out[g + i] = x[g + 2 * i];
      out[g + kBlock / 2 + i] = x[g + 2 * i + 1];
    }
}

// The decode kernel of the ISA, where it has one (decode_kernels.h).
const DecodeKernels* decode_kernels_for(const IsaKernels& isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (std::string(isa.name) == "avx512") return avx512_decode_kernels();
#endif
  return nullptr;
}

// y[p] = W[expert[p]] x[p] for every pair p (x rows in natural order): the pairs on one expert
// share each decoded block (up to 4 at a time, the ISA's mxfp4_dot on block-split rows); a
// pair alone on its expert goes through the ISA's decode kernel where it has one. The output
// rows are cut into items for the pool.
void expert_matmul(const IsaKernels& isa, const Mxfp4& w, const std::vector<int64_t>& expert,
                   const float* x, float* y) {
  const int64_t P = int64_t(expert.size()), K = w.K;
  const DecodeKernels* decode = decode_kernels_for(isa);
  std::vector<float> split(static_cast<size_t>(P * K)), arranged;
  for (int64_t p = 0; p < P; ++p) block_split(x + p * K, K, split.data() + p * K);
  if (decode) {
    arranged.resize(static_cast<size_t>(P * K));
    for (int64_t p = 0; p < P; ++p) decode->arrange(x + p * K, K, arranged.data() + p * K);
  }
  std::vector<int64_t> order(static_cast<size_t>(P));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return expert[a] < expert[b]; });
  struct Item {
    const int64_t* pairs;
    int count;
    int64_t n0, n1;
  };
  std::vector<Item> items;
  for (int64_t begin = 0; begin < P;) {
    int64_t end = begin;
    while (end < P && end - begin < kRowsPerCall && expert[order[end]] == expert[order[begin]])
      ++end;
    for (int64_t n = 0; n < w.N; n += kChunk)
      items.push_back({order.data() + begin, int(end - begin), n, std::min(w.N, n + kChunk)});
    begin = end;
  }
  ThreadPool::global().parallel_for(int64_t(items.size()), [&](int64_t i) {
    const Item& item = items[i];
    const int64_t e = expert[item.pairs[0]];
    if (decode && item.count == 1) {
      const int64_t p = item.pairs[0];
      decode->mxfp4_gemv(arranged.data() + p * K, w.expert_codes(e), w.expert_scales(e), K,
                         item.n0, item.n1, y + p * w.N + item.n0);
      return;
    }
    const float* xr[kRowsPerCall];
    float* yr[kRowsPerCall];
    for (int r = 0; r < item.count; ++r) {
      xr[r] = split.data() + item.pairs[r] * K;
      yr[r] = y + item.pairs[r] * w.N + item.n0;
    }
    isa.mxfp4_dot(xr, item.count, w.expert_codes(e), w.expert_scales(e), K, item.n0, item.n1,
                  yr);
  });
}

struct Problem {
  const float *x, *router_w, *router_b, *gate_up_bias, *down_bias;
  Mxfp4 gate_up, down;
  int64_t T, H, E;
  int top_k;
  float limit, alpha;
};

void run_moe_decode(const IsaKernels& isa, const Problem& m, float* y) {
  const int64_t T = m.T, H = m.H, E = m.E, I = m.down.K, k = m.top_k, P = T * k;
  // The router: float32 logits, the top_k largest (lower index first on ties), softmax.
  std::vector<float> logits(static_cast<size_t>(E)), weight(static_cast<size_t>(P));
  std::vector<int64_t> expert(static_cast<size_t>(P)), ids(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* xr[1] = {m.x + t * H};
    float* lr[1] = {logits.data()};
    isa.f32_dot(xr, 1, m.router_w, H, E, lr);
    for (int64_t e = 0; e < E; ++e) logits[e] += m.router_b[e];
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int64_t a, int64_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    const float top = logits[ids[0]];
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      expert[t * k + j] = ids[j];
      sum += weight[t * k + j] = std::exp(logits[ids[j]] - top);
    }
    for (int64_t j = 0; j < k; ++j) weight[t * k + j] /= sum;
  }

  // gate_up for every (token, expert) pair.
  std::vector<float> x_pairs(static_cast<size_t>(P * H)), h(static_cast<size_t>(P * 2 * I));
  for (int64_t p = 0; p < P; ++p) std::copy(m.x + (p / k) * H, m.x + (p / k + 1) * H,
                                            x_pairs.data() + p * H);
  expert_matmul(isa, m.gate_up, expert, x_pairs.data(), h.data());

  // Bias and SwiGLU (gate and up rows interleaved).
  std::vector<float> a(static_cast<size_t>(P * I)), o(static_cast<size_t>(P * H));
  ThreadPool::global().parallel_for(P, [&](int64_t p) {
    const float* hp = h.data() + p * 2 * I;
    const float* bias = m.gate_up_bias + expert[p] * 2 * I;
    float* ap = a.data() + p * I;
    for (int64_t i = 0; i < I; ++i) {
      const float gate = std::min(hp[2 * i] + bias[2 * i], m.limit);
      const float up = std::clamp(hp[2 * i + 1] + bias[2 * i + 1], -m.limit, m.limit);
      ap[i] = gate / (1.0f + std::exp(-m.alpha * gate)) * (up + 1.0f);
    }
  });
  expert_matmul(isa, m.down, expert, a.data(), o.data());

  // The weighted sum over each token's experts, their down bias added first.
  for (int64_t t = 0; t < T; ++t) {
    float* yt = y + t * H;
    std::fill(yt, yt + H, 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t p = t * k + j;
      const float* op = o.data() + p * H;
      const float* bias = m.down_bias + expert[p] * H;
      for (int64_t n = 0; n < H; ++n) yt[n] += weight[p] * (op[n] + bias[n]);
    }
  }
}

const mx::array* array_of(const ExpertOperand& operand) {
  return std::get_if<mx::array>(&operand);
}

// (E, N, K) of an MXFP4 weight operand in either packing, checked against its scales.
std::tuple<int64_t, int64_t, int64_t> expert_shape(const ExpertOperand& w,
                                                    const ExpertOperand& scales,
                                                    const char* name) {
  const std::string what = name;
  require(w.index() == scales.index(),
          what + ": the weights and the scales must both be arrays or both be mapped");
  mx::Shape ws, ss;
  int64_t K;
  if (const mx::array* a = array_of(w)) {
    ws = a->shape(), ss = std::get<mx::array>(scales).shape();
    require(a->dtype() == mx::uint32 && ws.size() == 3,
            what + " must be uint32 [experts, N, K/8]");
    require(std::get<mx::array>(scales).dtype() == mx::uint8, what + " scales must be uint8");
    K = int64_t(ws[2]) * 8;
  } else {
    const auto& mw = std::get<MappedTensor>(w);
    const auto& ms = std::get<MappedTensor>(scales);
    ws = mw.shape, ss = ms.shape;
    require(mw.dtype == mx::uint8 && ws.size() == 4 && ws[3] == kBlock / 2 &&
                ms.dtype == mx::uint8,
            what + " must be mapped uint8 blocks [experts, N, K/32, 16] and uint8 scales");
    K = int64_t(ws[2]) * kBlock;
  }
  require(ss.size() == 3 && ss[0] == ws[0] && ss[1] == ws[1] && int64_t(ss[2]) * kBlock == K,
          what + " scales must be [experts, N, K/32]");
  return {ws[0], ws[1], K};
}

}  // namespace

mx::array moe_decode(const mx::array& x, const mx::array& router_w, const mx::array& router_b,
                     const ExpertOperand& gate_up, const ExpertOperand& gate_up_scales,
                     const mx::array& gate_up_bias, const ExpertOperand& down,
                     const ExpertOperand& down_scales, const mx::array& down_bias, int top_k,
                     float limit, float alpha, const std::string& isa) {
  select_isa(isa);  // an unknown or unsupported ISA fails here, not inside the graph
  require(x.ndim() == 2, "x must be [tokens, hidden]");
  const int64_t H = x.shape(1);
  auto [E, N2, K] = expert_shape(gate_up, gate_up_scales, "gate_up");
  auto [E2, Hd, I] = expert_shape(down, down_scales, "down");
  require(K == H && Hd == H && E2 == E && N2 == 2 * I,
          "gate_up must be [E, 2I, H] and down [E, H, I] for x [T, H]");
  require(H % kBlock == 0 && I % kBlock == 0, "H and I must be multiples of 32");
  require(router_w.ndim() == 2 && router_w.shape(0) == E && router_w.shape(1) == H &&
              router_b.ndim() == 1 && router_b.shape(0) == E,
          "the router must be weight [E, H] and bias [E]");
  require(gate_up_bias.shape() == mx::Shape{int(E), int(N2)} &&
              down_bias.shape() == mx::Shape{int(E), int(H)},
          "the biases must be gate_up [E, 2I] and down [E, H]");
  require(top_k >= 1 && top_k <= E, "top_k must be in [1, experts]");

  auto s = mx::default_stream(mx::Device::cpu);
  auto f32 = [&](const mx::array& a) {
    return mx::contiguous(mx::astype(a, mx::float32, s), false, s);
  };
  std::vector<mx::array> inputs = {f32(x), f32(router_w), f32(router_b), f32(gate_up_bias),
                                   f32(down_bias)};
  MoeDecode::Params params{isa, top_k, limit, alpha, {}, {}, {}, {}};
  if (array_of(gate_up)) {
    for (const auto* operand : {&gate_up, &gate_up_scales, &down, &down_scales})
      inputs.push_back(mx::contiguous(std::get<mx::array>(*operand), false, s));
  } else {
    params.gate_up = std::get<MappedTensor>(gate_up);
    params.gate_up_scales = std::get<MappedTensor>(gate_up_scales);
    params.down = std::get<MappedTensor>(down);
    params.down_scales = std::get<MappedTensor>(down_scales);
  }
  require(array_of(gate_up) != nullptr ? array_of(down) != nullptr : array_of(down) == nullptr,
          "gate_up and down must both be arrays or both be mapped");
  return mx::array({x.shape(0), int(H)}, mx::float32,
                   std::make_shared<MoeDecode>(s, std::move(params)), std::move(inputs));
}

bool MoeDecode::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const MoeDecode&>(other).params_;
  auto same = [](const std::optional<MappedTensor>& a, const std::optional<MappedTensor>& b) {
    return a.has_value() == b.has_value() && (!a || a->same_bytes(*b));
  };
  return params_.isa == o.isa && params_.top_k == o.top_k && params_.limit == o.limit &&
         params_.alpha == o.alpha && same(params_.gate_up, o.gate_up) &&
         same(params_.gate_up_scales, o.gate_up_scales) && same(params_.down, o.down) &&
         same(params_.down_scales, o.down_scales);
}

void MoeDecode::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  auto& out = outputs[0];
  for (const auto& a : inputs)
    if (!a.flags().row_contiguous)
      throw std::runtime_error("MoeDecode: inputs must be row-contiguous");
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : inputs) encoder.set_input_array(a);
  encoder.set_output_array(out);
  const bool mapped = params_.gate_up.has_value();
  auto operand = [&](const std::optional<MappedTensor>& m, size_t input) {
    return mapped ? m->data() : inputs[input].data<uint8_t>();
  };
  const auto& x = inputs[0];
  const int64_t H = x.shape(1), E = inputs[1].shape(0), N2 = inputs[3].shape(1);
  Problem problem{x.data<float>(), inputs[1].data<float>(), inputs[2].data<float>(),
                  inputs[3].data<float>(), inputs[4].data<float>(),
                  Mxfp4{operand(params_.gate_up, 5), operand(params_.gate_up_scales, 6), N2, H},
                  Mxfp4{operand(params_.down, 7), operand(params_.down_scales, 8), H, N2 / 2},
                  x.shape(0), H, E, params_.top_k, params_.limit, params_.alpha};
  // The lambda holds the inputs and the mappings until the kernel has run.
  encoder.dispatch([inputs, problem, y = out.data<float>(), isa = &select_isa(params_.isa),
                    keep = params_]() {
    run_moe_decode(*isa, problem, y);
  });
}

void MoeDecode::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("MoeDecode runs on the CPU only");
}

}  // namespace openharmony
