// The kernels as MLX primitives: nodes of MLX's lazy graph with a CPU implementation, so they
// are scheduled, fused around and freed like MLX's own operations.
#pragma once

#include <string>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace openharmony {

namespace mx = mlx::core;

// x [R, K] (cast to float32), w uint32 [E, N, K/8] and uint8 scales [E, N, K/32] (MLX's
// mode="mxfp4" packing), experts [R] -> float32 [R, N]: row r times expert experts[r],
// transposed. The semantics of mx.gather_qmm(x[:, None], w, scales, rhs_indices=experts,
// transpose=True, mode="mxfp4")[:, 0].
mx::array gather_mxfp4_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                              const mx::array& experts, const std::string& isa);

// x [R, K] (cast to float32) times bfloat16 w [N, K] transposed -> float32 [R, N].
mx::array bf16_matmul(const mx::array& x, const mx::array& w, const std::string& isa);

class GatherMXFP4Matmul : public mx::Primitive {
 public:
  GatherMXFP4Matmul(mx::Stream stream, std::string isa)
      : mx::Primitive(stream), isa_(std::move(isa)) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "GatherMXFP4Matmul"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return isa_ == static_cast<const GatherMXFP4Matmul&>(other).isa_;
  }

 private:
  std::string isa_;
};

class BF16Matmul : public mx::Primitive {
 public:
  BF16Matmul(mx::Stream stream, std::string isa) : mx::Primitive(stream), isa_(std::move(isa)) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "BF16Matmul"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return isa_ == static_cast<const BF16Matmul&>(other).isa_;
  }

 private:
  std::string isa_;
};

}  // namespace openharmony
