// Attention over a key/value cache as stored (float32, bfloat16 or 8/4-bit affine), flash
// style: keys in blocks with an online softmax, gpt-oss's sink logit, GQA, causal + sliding
// window masks computed from positions. attention.cpp plans it; attention_*.cpp hold the tiles.
#pragma once

#include <cstdint>
#include <string>

#include "attention_isa.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace openharmony {

namespace mx = mlx::core;

// Keys or values of every (batch, kv head): KvSource for (b, h) at data + b * stride_b +
// h * stride_h (bytes), its scales and biases at + b * scale_stride_b + h * scale_stride_h
// (floats).
struct KvLayout {
  KvSource source;
  int64_t stride_b, stride_h;
  int64_t scale_stride_b, scale_stride_h;
  KvSource at(int64_t b, int64_t h) const;
};

// out [B, H, T, D] = softmax([q . k * scale over the visible keys, sink[h]]) @ v, without the
// sink's column; query head h reads kv head h / (H / Hkv). Query t sits at key index first + t:
// it sees keys j <= first + t, and with window > 0 only j > first + t - window. The sink is
// unscaled and never masked (-inf: none). `splits` > 0 forces that many key ranges per
// (batch, kv head, query group) (flash-decoding's split-K); 0 chooses.
struct AttentionProblem {
  int64_t B, H, Hkv, T, S, D;
  const float* q;      // [B, H, T, D]
  const float* sinks;  // [H]
  float scale;
  int64_t first, window;
  KvLayout keys, values;
  float* out;  // [B, H, T, D]
  int splits;
};

const AttentionKernels& attention_kernels(const std::string& isa);
void run_attention(const AttentionKernels& isa, const AttentionProblem& p);

// The MLX graph node. q [B, H, T, D]; sinks [H] or None; keys and values each one float array
// [B, Hkv, S, D] (float32, or bfloat16 read as such) or the three arrays of mx.quantize
// (packed uint32 [B, Hkv, S, D * bits / 32], scales and biases [B, Hkv, S, D / group_size]).
// Key and value arrays may be views with any strides over their first three axes (a cache's
// buffer sliced to the positions held): they are read in place.
mx::array native_attention(const mx::array& q, const std::vector<mx::array>& keys,
                           const std::vector<mx::array>& values,
                           const std::optional<mx::array>& sinks, float scale, int64_t first,
                           int64_t window, int bits, int group_size, const std::string& isa,
                           int splits);

class NativeAttention : public mx::Primitive {
 public:
  NativeAttention(mx::Stream stream, float scale, int64_t first, int64_t window, int bits,
                  int group_size, std::string isa, int splits)
      : mx::Primitive(stream), scale_(scale), first_(first), window_(window), bits_(bits),
        group_size_(group_size), isa_(std::move(isa)), splits_(splits) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "NativeAttention"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  float scale_;
  int64_t first_, window_;
  int bits_, group_size_;  // bits 0: float keys and values
  std::string isa_;
  int splits_;
};

}  // namespace openharmony
