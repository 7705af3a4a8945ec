// The kernels as MLX primitives: nodes of MLX's lazy graph with a CPU implementation, so they
// are scheduled, fused around and freed like MLX's own operations.
//
// Each weight operand is either an MLX array (an input of the node) or a MappedTensor of a
// checkpoint used in place (held by the primitive, which keeps its mapping alive; not an
// input, since MLX never has to allocate, move or free it).
#pragma once

#include <optional>
#include <utility>
#include <string>

#include "mapping.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace openharmony {

namespace mx = mlx::core;

// x [R, K] (cast to float32), w uint32 [E, N, K/8] and uint8 scales [E, N, K/32] (MLX's
// mode="mxfp4" packing), experts [R] -> float32 [R, N]: row r times expert experts[r],
// transposed. The semantics of mx.gather_qmm(x[:, None], w, scales, rhs_indices=experts,
// transpose=True, mode="mxfp4")[:, 0]. precision "exact" (float32 throughout) or "fast": experts
// with 8 or more rows multiply in int8 with the activations quantized per 32-block (fast.h).
mx::array gather_mxfp4_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                              const mx::array& experts, const std::string& isa,
                              const std::string& precision = "exact");
// The same with the checkpoint's own tensors: blocks uint8 [E, N, K/32, 16] (the same bytes
// as MLX's packing) and scales uint8 [E, N, K/32].
mx::array gather_mxfp4_matmul(const mx::array& x, const MappedTensor& blocks,
                              const MappedTensor& scales, const mx::array& experts,
                              const std::string& isa, const std::string& precision = "exact");

// gpt-oss's expert gate_up fused with its bias and SwiGLU (kernels.h run_gather_mxfp4_swiglu):
// x [R, K], the weights as above with N even, bias [E, N] (cast to float32) -> float32 [R, N/2].
struct SwiGLU {
  mx::array bias;
  float limit, alpha;
};
mx::array gather_mxfp4_swiglu(const mx::array& x, const mx::array& w, const mx::array& scales,
                              const mx::array& experts, const SwiGLU& swiglu,
                              const std::string& isa, const std::string& precision = "exact");
mx::array gather_mxfp4_swiglu(const mx::array& x, const MappedTensor& blocks,
                              const MappedTensor& scales, const mx::array& experts,
                              const SwiGLU& swiglu, const std::string& isa,
                              const std::string& precision = "exact");

// x [R, K] (cast to float32) times bfloat16 w [N, K] transposed -> float32 [R, N]. precision
// "fast": with 8 or more rows, the activations are rounded to bfloat16 (fast.h).
mx::array bf16_matmul(const mx::array& x, const mx::array& w, const std::string& isa,
                      const std::string& precision = "exact");
mx::array bf16_matmul(const mx::array& x, const MappedTensor& w, const std::string& isa,
                      const std::string& precision = "exact");

// Rows ids [n] of a mapped table [V, H] -> [n, H] in the table's dtype; an id outside
// [0, V) gives a row of NaN (the model checks ids before; this keeps a bad one from reading
// outside the mapping).
mx::array take_rows(const MappedTensor& table, const mx::array& ids);

class GatherMXFP4Matmul : public mx::Primitive {
 public:
  // swiglu: {limit, alpha} of the fused epilogue (the bias is the last input), or none.
  GatherMXFP4Matmul(mx::Stream stream, std::string isa, std::optional<MappedTensor> blocks,
                    std::optional<MappedTensor> scales, bool fast,
                    std::optional<std::pair<float, float>> swiglu)
      : mx::Primitive(stream), isa_(std::move(isa)), blocks_(std::move(blocks)),
        scales_(std::move(scales)), fast_(fast), swiglu_(swiglu) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "GatherMXFP4Matmul"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  std::string isa_;
  std::optional<MappedTensor> blocks_, scales_;  // set: the weights are mapped
  bool fast_;                                     // precision "fast"
  std::optional<std::pair<float, float>> swiglu_;  // set: gather_mxfp4_swiglu
};

class BF16Matmul : public mx::Primitive {
 public:
  BF16Matmul(mx::Stream stream, std::string isa, std::optional<MappedTensor> w, bool fast)
      : mx::Primitive(stream), isa_(std::move(isa)), w_(std::move(w)), fast_(fast) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "BF16Matmul"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  std::string isa_;
  std::optional<MappedTensor> w_;  // set: the weight is mapped
  bool fast_;                      // precision "fast"
};

class TakeRows : public mx::Primitive {
 public:
  TakeRows(mx::Stream stream, MappedTensor table)
      : mx::Primitive(stream), table_(std::move(table)) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "TakeRows"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return table_.same_bytes(static_cast<const TakeRows&>(other).table_);
  }

 private:
  MappedTensor table_;
};

}  // namespace openharmony
