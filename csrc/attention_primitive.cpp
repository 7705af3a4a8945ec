// The attention kernel as an MLX primitive (a lazy graph node, as primitives.cpp's matmuls):
// argument checks at graph-build time, and the cache's arrays read in place at eval time.
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>

#include "attention.h"
#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

namespace openharmony {

namespace {

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument("native_attention: " + message);
}

std::string shape_of(const mx::array& a) {
  std::string s = "(";
  for (int i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// An input's bytes with strides (in elements) on its 4 axes; an array whose last axis is not
// contiguous (never a cache's buffer) is copied first, into `keep`.
struct Strided {
  const uint8_t* data;
  int64_t stride[4];
};

Strided strided(const mx::array& a, std::vector<std::shared_ptr<std::vector<uint8_t>>>& keep) {
  Strided s{a.data<uint8_t>(), {a.strides()[0], a.strides()[1], a.strides()[2], a.strides()[3]}};
  if (s.stride[3] == 1 || a.shape(3) == 1) return s;
  const size_t item = a.itemsize();
  auto copy = std::make_shared<std::vector<uint8_t>>(a.size() * item);
  uint8_t* out = copy->data();
  for (int i0 = 0; i0 < a.shape(0); ++i0)
    for (int i1 = 0; i1 < a.shape(1); ++i1)
      for (int i2 = 0; i2 < a.shape(2); ++i2)
        for (int i3 = 0; i3 < a.shape(3); ++i3, out += item)
          std::memcpy(out, s.data + (i0 * s.stride[0] + i1 * s.stride[1] + i2 * s.stride[2] +
                                     i3 * s.stride[3]) * int64_t(item), item);
  keep.push_back(copy);
  const int64_t dims[4] = {a.shape(0), a.shape(1), a.shape(2), a.shape(3)};
  s = {copy->data(), {dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1}};
  return s;
}

// Keys or values from their input arrays: parts[0] the data, parts[1..2] scales and biases.
KvLayout layout(const mx::array* parts, int bits, int group_size,
                std::vector<std::shared_ptr<std::vector<uint8_t>>>& keep) {
  const Strided data = strided(parts[0], keep);
  const int64_t item = parts[0].itemsize();
  KvLayout k{};
  k.source.format = bits ? kKvAffine : parts[0].dtype() == mx::bfloat16 ? kKvBF16 : kKvF32;
  k.source.data = data.data;
  k.source.row_bytes = data.stride[2] * item;
  k.stride_b = data.stride[0] * item;
  k.stride_h = data.stride[1] * item;
  k.source.bits = bits;
  k.source.group_size = group_size;
  if (bits) {
    const Strided scales = strided(parts[1], keep), biases = strided(parts[2], keep);
    require(scales.stride[0] == biases.stride[0] && scales.stride[1] == biases.stride[1] &&
                scales.stride[2] == biases.stride[2],
            "scales and biases must be laid out alike");
    k.source.scales = reinterpret_cast<const float*>(scales.data);
    k.source.biases = reinterpret_cast<const float*>(biases.data);
    k.source.group_stride = scales.stride[2];
    k.scale_stride_b = scales.stride[0];
    k.scale_stride_h = scales.stride[1];
  }
  return k;
}

mx::Stream cpu_stream() { return mx::default_stream(mx::Device::cpu); }

}  // namespace

mx::array native_attention(const mx::array& q, const std::vector<mx::array>& keys,
                           const std::vector<mx::array>& values,
                           const std::optional<mx::array>& sinks, float scale, int64_t first,
                           int64_t window, int bits, int group_size, const std::string& isa,
                           int splits) {
  attention_kernels(isa);  // an unknown or unsupported ISA fails here, not inside the graph
  require(q.ndim() == 4, "queries must be [B, heads, T, head_dim], got " + shape_of(q));
  const int B = q.shape(0), H = q.shape(1), T = q.shape(2), D = q.shape(3);
  require(bits == 0 || bits == 4 || bits == 8, "bits must be 4 or 8 (0: float)");
  const size_t parts = bits ? 3 : 1;
  require(keys.size() == parts && values.size() == parts,
          bits ? "a quantized cache's keys and values are (packed, scales, biases)"
               : "float keys and values are one array each");
  const mx::array& k = keys[0];
  require(k.ndim() == 4 && k.shape(0) == B && k.shape(1) > 0 && H % k.shape(1) == 0,
          "keys must be [B, kv_heads, S, ...] with kv_heads dividing the " + std::to_string(H) +
              " query heads, got " + shape_of(k) + " for queries " + shape_of(q));
  const int S = k.shape(2);
  for (const auto* group : {&keys, &values})
    for (size_t i = 0; i < parts; ++i) {
      const mx::array& a = (*group)[i];
      const int width = bits == 0 ? D : i == 0 ? D * bits / 32 : D / std::max(group_size, 1);
      require(a.ndim() == 4 && a.shape(0) == B && a.shape(1) == k.shape(1) && a.shape(2) == S &&
                  a.shape(3) == width,
              "keys and values must be [" + std::to_string(B) + ", " +
                  std::to_string(k.shape(1)) + ", " + std::to_string(S) + ", " +
                  std::to_string(width) + "], got " + shape_of(a));
    }
  if (bits) {
    require(group_size > 0 && D % group_size == 0 && group_size % 16 == 0,
            "group_size must divide head_dim and be a multiple of 16");
    require(k.dtype() == mx::uint32 && values[0].dtype() == mx::uint32,
            "quantized keys and values must be packed uint32");
  }
  require(first >= 0, "first (the key index of the first query's position) must be >= 0");
  require(window >= 0, "window must be >= 0 (0: none)");
  if (sinks) require(sinks->ndim() == 1 && sinks->shape(0) == H, "sinks must be [heads]");
  auto s = cpu_stream();
  std::vector<mx::array> inputs = {
      mx::contiguous(mx::astype(q, mx::float32, s), false, s),
      sinks ? mx::contiguous(mx::astype(*sinks, mx::float32, s), false, s)
            : mx::full({H}, -std::numeric_limits<float>::infinity(), mx::float32, s)};
  for (const auto* group : {&keys, &values})
    for (size_t i = 0; i < parts; ++i) {
      const mx::array& a = (*group)[i];
      const bool as_is = bits ? (i == 0 || a.dtype() == mx::float32)
                              : (a.dtype() == mx::float32 || a.dtype() == mx::bfloat16);
      inputs.push_back(as_is ? a : mx::astype(a, mx::float32, s));
    }
  return mx::array({B, H, T, D}, mx::float32,
                   std::make_shared<NativeAttention>(s, scale, first, window, bits, group_size,
                                                     isa, splits),
                   std::move(inputs));
}

bool NativeAttention::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const NativeAttention&>(other);
  return scale_ == o.scale_ && first_ == o.first_ && window_ == o.window_ && bits_ == o.bits_ &&
         group_size_ == o.group_size_ && isa_ == o.isa_ && splits_ == o.splits_;
}

void NativeAttention::eval_cpu(const std::vector<mx::array>& inputs,
                               std::vector<mx::array>& outputs) {
  auto& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : inputs) encoder.set_input_array(a);
  encoder.set_output_array(out);
  encoder.dispatch([inputs, out = out.data<float>(), scale = scale_, first = first_,
                    window = window_, bits = bits_, group = group_size_, splits = splits_,
                    isa = &attention_kernels(isa_)]() {
    std::vector<std::shared_ptr<std::vector<uint8_t>>> keep;
    const size_t parts = bits ? 3 : 1;
    const mx::array& q = inputs[0];
    AttentionProblem p;
    p.B = q.shape(0), p.H = q.shape(1), p.T = q.shape(2), p.D = q.shape(3);
    p.Hkv = inputs[2].shape(1), p.S = inputs[2].shape(2);
    p.q = q.data<float>();
    p.sinks = inputs[1].data<float>();
    p.scale = scale;
    p.first = first;
    p.window = window;
    p.keys = layout(&inputs[2], bits, group, keep);
    p.values = layout(&inputs[2 + parts], bits, group, keep);
    p.out = out;
    p.splits = splits;
    run_attention(*isa, p);
  });
}

void NativeAttention::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("NativeAttention runs on the CPU only");
}

}  // namespace openharmony
