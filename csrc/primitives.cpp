#include "primitives.h"

#include <cstring>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "kernels.h"
#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

namespace openharmony {

namespace {

std::string shape_of(const mx::Shape& shape) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << (shape.size() == 1 ? ",)" : ")");
  return out.str();
}
std::string shape_of(const mx::array& a) { return shape_of(a.shape()); }

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// The kernels always run on the CPU stream: they read the buffers the CPU sees.
mx::Stream cpu_stream() { return mx::default_stream(mx::Device::cpu); }

mx::array as_contiguous(const mx::array& a, mx::Dtype dtype, const mx::Stream& s) {
  return mx::contiguous(mx::astype(a, dtype, s), false, s);
}

// What every eval_cpu does before its kernel: checks the inputs, allocates the output and
// registers both with the CPU encoder, which then runs the kernel in stream order.
mx::cpu::CommandEncoder& prepare_eval(const std::vector<mx::array>& inputs, mx::array& out,
                                      const mx::Stream& stream, const char* op) {
  for (const auto& a : inputs)
    if (!a.flags().row_contiguous)
      throw std::runtime_error(std::string(op) + ": inputs must be row-contiguous");
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream);
  for (const auto& a : inputs) encoder.set_input_array(a);
  encoder.set_output_array(out);
  return encoder;
}

// The operand checks shared by both forms of gather_mxfp4_matmul; `codes_per_row` is the
// weights' last dimension in whichever packing (K/8 uint32 or K/32 x 16 bytes).
void check_mxfp4(const mx::array& x, const mx::Shape& w, const mx::Shape& scales,
                 const mx::array& experts) {
  require(x.ndim() == 2, "gather_mxfp4_matmul: x must be [rows, K], got " + shape_of(x));
  const int K = x.shape(1);
  require(K % kBlock == 0, "gather_mxfp4_matmul: K = " + std::to_string(K) +
                               " is not a multiple of 32");
  require(scales.size() == 3 && scales[0] == w[0] && scales[1] == w[1] &&
              scales[2] * kBlock == K,
          "gather_mxfp4_matmul: scales must be uint8 [experts, N, K/32] matching the weights " +
              shape_of(w) + " and x " + shape_of(x) + ", got " + shape_of(scales));
  require(experts.ndim() == 1 && experts.shape(0) == x.shape(0) &&
              mx::issubdtype(experts.dtype(), mx::integer),
          "gather_mxfp4_matmul: experts must be integer [rows], got " + shape_of(experts));
}

// "exact" -> false, "fast" -> true; anything else is refused by name.
bool is_fast(const std::string& precision) {
  require(precision == "exact" || precision == "fast",
          "precision must be 'exact' or 'fast', got '" + precision + "'");
  return precision == "fast";
}

// The node: inputs x, the weights when they are arrays (none when mapped), experts, and with
// `swiglu` its bias (checked here against the weights' [E, N]).
mx::array mxfp4_node(const mx::array& x, int E, int N, const mx::array& experts,
                     std::vector<mx::array> weights, const std::string& isa,
                     std::optional<MappedTensor> blocks, std::optional<MappedTensor> scales,
                     bool fast, const SwiGLU* swiglu) {
  auto s = cpu_stream();
  std::vector<mx::array> inputs = {as_contiguous(x, mx::float32, s)};
  for (auto& w : weights) inputs.push_back(mx::contiguous(w, false, s));
  inputs.push_back(as_contiguous(experts, mx::uint32, s));
  std::optional<std::pair<float, float>> epilogue;
  if (swiglu) {
    require(N % 2 == 0, "gather_mxfp4_swiglu: N = " + std::to_string(N) + " must be even");
    require(swiglu->bias.ndim() == 2 && swiglu->bias.shape(0) == E && swiglu->bias.shape(1) == N,
            "gather_mxfp4_swiglu: bias must be [experts, N] = (" + std::to_string(E) + ", " +
                std::to_string(N) + "), got " + shape_of(swiglu->bias));
    inputs.push_back(as_contiguous(swiglu->bias, mx::float32, s));
    epilogue = {swiglu->limit, swiglu->alpha};
  }
  return mx::array({x.shape(0), swiglu ? N / 2 : N}, mx::float32,
                   std::make_shared<GatherMXFP4Matmul>(s, isa, std::move(blocks),
                                                       std::move(scales), fast, epilogue),
                   std::move(inputs));
}

bool same(const std::optional<MappedTensor>& a, const std::optional<MappedTensor>& b) {
  return a.has_value() == b.has_value() && (!a || a->same_bytes(*b));
}

}  // namespace

namespace {

mx::array mxfp4_op(const mx::array& x, const mx::array& w, const mx::array& scales,
                   const mx::array& experts, const std::string& isa,
                   const std::string& precision, const SwiGLU* swiglu) {
  select_isa(isa);  // an unknown or unsupported ISA fails here, not inside the graph
  const bool fast = is_fast(precision);
  require(w.ndim() == 3 && w.dtype() == mx::uint32 && x.ndim() == 2 &&
              int64_t(w.shape(2)) * 8 == x.shape(1),
          "gather_mxfp4_matmul: w must be uint32 [experts, N, K/8] for x " + shape_of(x) +
              ", got " + shape_of(w));
  require(scales.dtype() == mx::uint8, "gather_mxfp4_matmul: scales must be uint8");
  check_mxfp4(x, w.shape(), scales.shape(), experts);
  return mxfp4_node(x, w.shape(0), w.shape(1), experts, {w, scales}, isa, std::nullopt,
                    std::nullopt, fast, swiglu);
}

mx::array mxfp4_op(const mx::array& x, const MappedTensor& blocks, const MappedTensor& scales,
                   const mx::array& experts, const std::string& isa,
                   const std::string& precision, const SwiGLU* swiglu) {
  select_isa(isa);
  const bool fast = is_fast(precision);
  const auto& b = blocks.shape;
  require(blocks.dtype == mx::uint8 && b.size() == 4 && b[3] == kBlock / 2 && x.ndim() == 2 &&
              int64_t(b[2]) * kBlock == x.shape(1),
          "gather_mxfp4_matmul: mapped blocks must be uint8 [experts, N, K/32, 16] for x " +
              shape_of(x) + ", got " + shape_of(b));
  require(scales.dtype == mx::uint8, "gather_mxfp4_matmul: scales must be uint8");
  check_mxfp4(x, b, scales.shape, experts);
  return mxfp4_node(x, b[0], b[1], experts, {}, isa, blocks, scales, fast, swiglu);
}

}  // namespace

mx::array gather_mxfp4_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                              const mx::array& experts, const std::string& isa,
                              const std::string& precision) {
  return mxfp4_op(x, w, scales, experts, isa, precision, nullptr);
}

mx::array gather_mxfp4_matmul(const mx::array& x, const MappedTensor& blocks,
                              const MappedTensor& scales, const mx::array& experts,
                              const std::string& isa, const std::string& precision) {
  return mxfp4_op(x, blocks, scales, experts, isa, precision, nullptr);
}

mx::array gather_mxfp4_swiglu(const mx::array& x, const mx::array& w, const mx::array& scales,
                              const mx::array& experts, const SwiGLU& swiglu,
                              const std::string& isa, const std::string& precision) {
  return mxfp4_op(x, w, scales, experts, isa, precision, &swiglu);
}

mx::array gather_mxfp4_swiglu(const mx::array& x, const MappedTensor& blocks,
                              const MappedTensor& scales, const mx::array& experts,
                              const SwiGLU& swiglu, const std::string& isa,
                              const std::string& precision) {
  return mxfp4_op(x, blocks, scales, experts, isa, precision, &swiglu);
}

bool GatherMXFP4Matmul::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const GatherMXFP4Matmul&>(other);
  return isa_ == o.isa_ && fast_ == o.fast_ && swiglu_ == o.swiglu_ &&
         same(blocks_, o.blocks_) && same(scales_, o.scales_);
}

void GatherMXFP4Matmul::eval_cpu(const std::vector<mx::array>& inputs,
                                 std::vector<mx::array>& outputs) {
  auto& out = outputs[0];
  auto& encoder = prepare_eval(inputs, out, stream(), name());
  const uint8_t *w, *scales;
  int64_t E, N;
  if (blocks_) {
    w = blocks_->data();
    scales = scales_->data();
    E = blocks_->shape[0], N = blocks_->shape[1];
  } else {
    w = reinterpret_cast<const uint8_t*>(inputs[1].data<uint32_t>());
    scales = inputs[2].data<uint8_t>();
    E = inputs[1].shape(0), N = inputs[1].shape(1);
  }
  // The lambda holds the mapping (if any) and the inputs until the kernel has run.
  encoder.dispatch([inputs, keep = blocks_ ? blocks_->mapping : nullptr, w, scales, E, N,
                    y = out.data<float>(), isa = &select_isa(isa_),
                    fast = fast_ ? &select_fast(isa_) : nullptr, swiglu = swiglu_]() {
    const auto& x = inputs.front();
    if (swiglu) {  // inputs: ..., experts, bias
      const auto& experts = inputs[inputs.size() - 2];
      run_gather_mxfp4_swiglu(*isa, x.data<float>(), w, scales, inputs.back().data<float>(),
                              experts.data<uint32_t>(), y, x.shape(0), E, N, x.shape(1),
                              swiglu->first, swiglu->second, fast);
    } else {
      run_gather_mxfp4_matmul(*isa, x.data<float>(), w, scales,
                              inputs.back().data<uint32_t>(), y, x.shape(0), E, N, x.shape(1),
                              fast);
    }
  });
}

void GatherMXFP4Matmul::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("GatherMXFP4Matmul runs on the CPU only");
}

mx::array bf16_matmul(const mx::array& x, const mx::array& w, const std::string& isa,
                      const std::string& precision) {
  select_isa(isa);
  const bool fast = is_fast(precision);
  require(x.ndim() == 2, "bf16_matmul: x must be [rows, K], got " + shape_of(x));
  require(w.ndim() == 2 && w.dtype() == mx::bfloat16 && w.shape(1) == x.shape(1),
          "bf16_matmul: w must be bfloat16 [N, K] with K = x's " + std::to_string(x.shape(1)) +
              ", got " + shape_of(w));
  auto s = cpu_stream();
  std::vector<mx::array> inputs = {as_contiguous(x, mx::float32, s),
                                   mx::contiguous(w, false, s)};
  return mx::array({x.shape(0), w.shape(0)}, mx::float32,
                   std::make_shared<BF16Matmul>(s, isa, std::nullopt, fast), std::move(inputs));
}

mx::array bf16_matmul(const mx::array& x, const MappedTensor& w, const std::string& isa,
                      const std::string& precision) {
  select_isa(isa);
  const bool fast = is_fast(precision);
  require(x.ndim() == 2, "bf16_matmul: x must be [rows, K], got " + shape_of(x));
  require(w.shape.size() == 2 && w.dtype == mx::bfloat16 && w.shape[1] == x.shape(1),
          "bf16_matmul: mapped w must be bfloat16 [N, K] with K = x's " +
              std::to_string(x.shape(1)) + ", got " + shape_of(w.shape));
  auto s = cpu_stream();
  return mx::array({x.shape(0), w.shape[0]}, mx::float32,
                   std::make_shared<BF16Matmul>(s, isa, w, fast),
                   {as_contiguous(x, mx::float32, s)});
}

bool BF16Matmul::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const BF16Matmul&>(other);
  return isa_ == o.isa_ && fast_ == o.fast_ && same(w_, o.w_);
}

void BF16Matmul::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  auto& out = outputs[0];
  auto& encoder = prepare_eval(inputs, out, stream(), name());
  const uint16_t* w = w_ ? reinterpret_cast<const uint16_t*>(w_->data())
                         : reinterpret_cast<const uint16_t*>(inputs[1].data<mx::bfloat16_t>());
  const int64_t N = w_ ? w_->shape[0] : inputs[1].shape(0);
  encoder.dispatch([inputs, keep = w_ ? w_->mapping : nullptr, w, N, y = out.data<float>(),
                    isa = &select_isa(isa_), fast = fast_ ? &select_fast(isa_) : nullptr]() {
    const auto& x = inputs.front();
    run_bf16_matmul(*isa, x.data<float>(), w, y, x.shape(0), N, x.shape(1), fast);
  });
}

void BF16Matmul::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("BF16Matmul runs on the CPU only");
}

mx::array take_rows(const MappedTensor& table, const mx::array& ids) {
  require(table.shape.size() == 2, "take_rows: the table must be [rows, width], got " +
                                       shape_of(table.shape));
  require(table.dtype.size() == 2 || table.dtype.size() == 4,
          "take_rows: the table must be of a 2- or 4-byte float dtype");
  require(ids.ndim() == 1 && mx::issubdtype(ids.dtype(), mx::integer),
          "take_rows: ids must be integer [n], got " + shape_of(ids));
  auto s = cpu_stream();
  return mx::array({ids.shape(0), table.shape[1]}, table.dtype,
                   std::make_shared<TakeRows>(s, table),
                   {mx::contiguous(mx::astype(ids, mx::int64, s), false, s)});
}

void TakeRows::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  auto& out = outputs[0];
  auto& encoder = prepare_eval(inputs, out, stream(), name());
  encoder.dispatch([ids = inputs[0], table = table_, y = out.data<uint8_t>()]() {
    const int64_t rows = table.shape[0];
    const size_t row_bytes = size_t(table.shape[1]) * table.dtype.size();
    const int64_t* id = ids.data<int64_t>();
    for (int64_t i = 0; i < ids.shape(0); ++i) {
      uint8_t* dst = y + size_t(i) * row_bytes;
      if (id[i] >= 0 && id[i] < rows) {
        std::memcpy(dst, table.data() + size_t(id[i]) * row_bytes, row_bytes);
      } else if (table.dtype.size() == 2) {  // bfloat16 or float16 NaN
        const uint16_t nan = table.dtype == mx::bfloat16 ? 0x7FC0 : 0x7E00;
        for (size_t j = 0; j < row_bytes / 2; ++j) std::memcpy(dst + 2 * j, &nan, 2);
      } else {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        for (size_t j = 0; j < row_bytes / 4; ++j) std::memcpy(dst + 4 * j, &nan, 4);
      }
    }
  });
}

void TakeRows::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("TakeRows runs on the CPU only");
}

}  // namespace openharmony
