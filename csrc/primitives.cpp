#include "primitives.h"

#include <sstream>
#include <stdexcept>

#include "kernels.h"
#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

namespace openharmony {

namespace {

std::string shape_of(const mx::array& a) {
  std::ostringstream out;
  out << "(";
  for (int i = 0; i < int(a.ndim()); ++i) out << (i ? ", " : "") << a.shape(i);
  out << (a.ndim() == 1 ? ",)" : ")");
  return out.str();
}

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// The kernels always run on the CPU stream: they read the buffers the CPU sees.
mx::Stream cpu_stream() { return mx::default_stream(mx::Device::cpu); }

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

}  // namespace

mx::array gather_mxfp4_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                              const mx::array& experts, const std::string& isa) {
  select_isa(isa);  // an unknown or unsupported ISA fails here, not inside the graph
  require(x.ndim() == 2, "gather_mxfp4_matmul: x must be [rows, K], got " + shape_of(x));
  require(w.ndim() == 3 && w.dtype() == mx::uint32,
          "gather_mxfp4_matmul: w must be uint32 [experts, N, K/8], got " + shape_of(w));
  const int K = x.shape(1);
  require(K % kBlock == 0 && w.shape(2) * 8 == K,
          "gather_mxfp4_matmul: w " + shape_of(w) + " does not match x " + shape_of(x) +
              " (K a multiple of 32, w's last dimension K/8)");
  require(scales.dtype() == mx::uint8 && scales.ndim() == 3 && scales.shape(0) == w.shape(0) &&
              scales.shape(1) == w.shape(1) && scales.shape(2) * kBlock == K,
          "gather_mxfp4_matmul: scales must be uint8 [experts, N, K/32], got " +
              shape_of(scales));
  require(experts.ndim() == 1 && experts.shape(0) == x.shape(0) &&
              mx::issubdtype(experts.dtype(), mx::integer),
          "gather_mxfp4_matmul: experts must be integer [rows], got " + shape_of(experts));
  auto s = cpu_stream();
  std::vector<mx::array> inputs = {
      mx::contiguous(mx::astype(x, mx::float32, s), false, s), mx::contiguous(w, false, s),
      mx::contiguous(scales, false, s),
      mx::contiguous(mx::astype(experts, mx::uint32, s), false, s)};
  return mx::array({x.shape(0), w.shape(1)}, mx::float32,
                   std::make_shared<GatherMXFP4Matmul>(s, isa), std::move(inputs));
}

void GatherMXFP4Matmul::eval_cpu(const std::vector<mx::array>& inputs,
                                 std::vector<mx::array>& outputs) {
  auto& out = outputs[0];
  auto& encoder = prepare_eval(inputs, out, stream(), name());
  const auto& x = inputs[0];
  const auto& w = inputs[1];
  encoder.dispatch([x = x, w = w, scales = inputs[2], experts = inputs[3],
                    y = out.data<float>(), isa = &select_isa(isa_)]() {
    run_gather_mxfp4_matmul(*isa, x.data<float>(), reinterpret_cast<const uint8_t*>(w.data<uint32_t>()),
                        scales.data<uint8_t>(), experts.data<uint32_t>(), y, x.shape(0),
                        w.shape(0), w.shape(1), x.shape(1));
  });
}

void GatherMXFP4Matmul::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("GatherMXFP4Matmul runs on the CPU only");
}

mx::array bf16_matmul(const mx::array& x, const mx::array& w, const std::string& isa) {
  select_isa(isa);
  require(x.ndim() == 2, "bf16_matmul: x must be [rows, K], got " + shape_of(x));
  require(w.ndim() == 2 && w.dtype() == mx::bfloat16 && w.shape(1) == x.shape(1),
          "bf16_matmul: w must be bfloat16 [N, K] with K = x's " + std::to_string(x.shape(1)) +
              ", got " + shape_of(w));
  auto s = cpu_stream();
  std::vector<mx::array> inputs = {mx::contiguous(mx::astype(x, mx::float32, s), false, s),
                                   mx::contiguous(w, false, s)};
  return mx::array({x.shape(0), w.shape(0)}, mx::float32, std::make_shared<BF16Matmul>(s, isa),
                   std::move(inputs));
}

void BF16Matmul::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  auto& out = outputs[0];
  auto& encoder = prepare_eval(inputs, out, stream(), name());
  encoder.dispatch([x = inputs[0], w = inputs[1], y = out.data<float>(),
                    isa = &select_isa(isa_)]() {
    run_bf16_matmul(*isa, x.data<float>(), reinterpret_cast<const uint16_t*>(w.data<mx::bfloat16_t>()),
                y, x.shape(0), w.shape(0), x.shape(1));
  });
}

void BF16Matmul::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("BF16Matmul runs on the CPU only");
}

}  // namespace openharmony
