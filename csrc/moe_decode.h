// The mixture-of-experts MLP of a decode step as one MLX primitive: router, top-k, softmax,
// each chosen expert's gate_up, SwiGLU and down, and the weighted sum, for a few tokens.
//
// What it replaces is about twenty MLX operations a layer (openharmony/moe.py's decode path),
// each a graph node, an allocation and a dispatch on MLX's stream thread between the two
// expert matmuls; here the work between them runs on the kernels' own thread pool, and the
// activations never leave this call.
#pragma once

#include <optional>
#include <string>
#include <variant>

#include "mapping.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace openharmony {

namespace mx = mlx::core;

// An MXFP4 weight or its scales: an MLX array (MLX's packing: uint32 [E, N, K/8], uint8
// scales [E, N, K/32]) or the checkpoint's tensor used in place (blocks [E, N, K/32, 16]).
using ExpertOperand = std::variant<mx::array, MappedTensor>;

// x [T, H] -> float32 [T, H]:
//   logits = x @ router_w.T + router_b                        (float32, [T, E])
//   chosen = the top_k largest logits per token; weights = softmax over them
//   h = gate_up[e] x + gate_up_bias[e]                        ([2I], rows interleaved gate/up)
//   a = min(g, limit) * sigmoid(alpha * min(g, limit)) * (clip(u, -limit, limit) + 1)
//   y = sum over chosen e of weight_e * (down[e] a + down_bias[e])
// the semantics of openharmony/moe.py's MLP (float32 everywhere).
mx::array moe_decode(const mx::array& x, const mx::array& router_w, const mx::array& router_b,
                     const ExpertOperand& gate_up, const ExpertOperand& gate_up_scales,
                     const mx::array& gate_up_bias, const ExpertOperand& down,
                     const ExpertOperand& down_scales, const mx::array& down_bias, int top_k,
                     float limit, float alpha, const std::string& isa);

class MoeDecode : public mx::Primitive {
 public:
  struct Params {
    std::string isa;
    int top_k;
    float limit, alpha;
    // All four set: the weights are mapped (not inputs); none set: they are inputs 5..8.
    std::optional<MappedTensor> gate_up, gate_up_scales, down, down_scales;
  };
  MoeDecode(mx::Stream stream, Params params)
      : mx::Primitive(stream), params_(std::move(params)) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "MoeDecode"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  Params params_;
};

}  // namespace openharmony
