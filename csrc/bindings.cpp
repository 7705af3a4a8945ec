// The Python module openharmony.native._kernels (see openharmony/native/__init__.py).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "attention.h"
#include "kernels.h"
#include "mapping.h"
#include "mlx/version.h"
#include "primitives.h"
// decode: the fused MoE decode op
#include <nanobind/stl/variant.h>
#include "moe_decode.h"

namespace nb = nanobind;
using namespace nb::literals;
using openharmony::Mapping;
using openharmony::MappedTensor;
namespace mx = mlx::core;

namespace {
// What Python holds of a Mapping: a C++ shared_ptr inside a plain value. (nanobind's own
// shared_ptr support would tie the pointer to the Python object, and the last release, which
// can happen on MLX's stream thread when a kernel finishes, would then need the GIL, at exit
// too.)
struct MappingRef {
  std::shared_ptr<const Mapping> mapping;
};
}  // namespace

NB_MODULE(_kernels, m) {
  m.doc() = "openharmony's CPU kernels as MLX primitives, and checkpoint files mapped in place";

  nb::class_<MappingRef>(m, "Mapping", "A file mapped read-only and shared (map_file)")
      .def_prop_ro("path", [](const MappingRef& ref) { return ref.mapping->path(); })
      .def_prop_ro("size", [](const MappingRef& ref) { return ref.mapping->size(); })
      .def_prop_ro("address",
                   [](const MappingRef& ref) { return uintptr_t(ref.mapping->data()); })
      .def(
          "tensor",
          [](const MappingRef& ref, size_t offset, const std::vector<int>& shape,
             mx::Dtype dtype) {
            return MappedTensor(ref.mapping, offset, mx::Shape(shape.begin(), shape.end()),
                                dtype);
          },
          "offset"_a, "shape"_a, "dtype"_a,
          "The tensor of `shape` and `dtype` whose bytes start at `offset` of the file");
  m.def(
      "map_file",
      [](const std::string& path) { return MappingRef{std::make_shared<const Mapping>(path)}; },
      "path"_a, "Map a whole file read-only and shared");

  nb::class_<MappedTensor>(m, "MappedTensor",
                           "A tensor used in place from a mapped file (Mapping.tensor)")
      .def_prop_ro("shape",
                   [](const MappedTensor& t) {
                     nb::list dims;
                     for (auto d : t.shape) dims.append(d);
                     return nb::tuple(dims);
                   })
      .def_prop_ro("dtype", [](const MappedTensor& t) { return t.dtype; })
      .def_prop_ro("nbytes", &MappedTensor::nbytes)
      .def_prop_ro("size", &MappedTensor::size)
      .def_prop_ro("offset", [](const MappedTensor& t) { return t.offset; })
      .def_prop_ro("address", [](const MappedTensor& t) { return uintptr_t(t.data()); })
      .def_prop_ro("mapping", [](const MappedTensor& t) { return MappingRef{t.mapping}; })
      .def("rows", &MappedTensor::rows, "start"_a, "stop"_a,
           "Rows [start, stop) of the leading axis, still in place")
      .def("copy", &MappedTensor::copy, "The bytes as an MLX array in MLX's memory (a copy)")
      .def(
          "bytes",
          [](const MappedTensor& t) {
            // A read-only NumPy view of the mapped bytes, which keeps the mapping alive.
            auto* keep = new std::shared_ptr<const Mapping>(t.mapping);
            nb::capsule owner(keep, [](void* p) noexcept {
              delete static_cast<std::shared_ptr<const Mapping>*>(p);
            });
            return nb::ndarray<nb::numpy, const uint8_t, nb::ndim<1>, nb::ro>(
                t.data(), {t.nbytes()}, owner);
          },
          "The tensor's bytes as a read-only uint8 NumPy array over the mapping (no copy)");

  m.def("gather_mxfp4_matmul",
        nb::overload_cast<const mx::array&, const mx::array&, const mx::array&, const mx::array&,
                          const std::string&, const std::string&>(
            &openharmony::gather_mxfp4_matmul),
        "x"_a, "w"_a, "scales"_a, "experts"_a, "isa"_a = "auto", "precision"_a = "exact",
        "x [R, K] times MXFP4 expert experts[r] (MLX's packed uint32 weights [E, N, K/8], "
        "uint8 scales [E, N, K/32]) transposed -> float32 [R, N]; precision 'fast': experts "
        "with 8+ rows in int8, activations quantized per 32-block");
  m.def("gather_mxfp4_matmul",
        nb::overload_cast<const mx::array&, const MappedTensor&, const MappedTensor&,
                          const mx::array&, const std::string&, const std::string&>(
            &openharmony::gather_mxfp4_matmul),
        "x"_a, "w"_a, "scales"_a, "experts"_a, "isa"_a = "auto", "precision"_a = "exact",
        "The same with mapped checkpoint tensors: blocks uint8 [E, N, K/32, 16], scales uint8 "
        "[E, N, K/32]");
  m.def("bf16_matmul",
        nb::overload_cast<const mx::array&, const mx::array&, const std::string&,
                          const std::string&>(&openharmony::bf16_matmul),
        "x"_a, "w"_a, "isa"_a = "auto", "precision"_a = "exact",
        "x [R, K] times bfloat16 w [N, K] transposed -> float32 [R, N]; precision 'fast': "
        "with 8+ rows the activations are rounded to bfloat16");
  m.def("bf16_matmul",
        nb::overload_cast<const mx::array&, const MappedTensor&, const std::string&,
                          const std::string&>(&openharmony::bf16_matmul),
        "x"_a, "w"_a, "isa"_a = "auto", "precision"_a = "exact",
        "The same with a mapped bfloat16 w [N, K]");
  m.def("take_rows", &openharmony::take_rows, "table"_a, "ids"_a,
        "Rows ids [n] of a mapped table [V, H] -> [n, H] in its dtype (NaN rows for ids "
        "outside it)");
  // The fused expert gate_up (bias and SwiGLU in the kernel's epilogue).
  m.def(
      "gather_mxfp4_swiglu",
      [](const mx::array& x, const mx::array& w, const mx::array& scales,
         const mx::array& experts, const mx::array& bias, float limit, float alpha,
         const std::string& isa, const std::string& precision) {
        return openharmony::gather_mxfp4_swiglu(x, w, scales, experts, {bias, limit, alpha}, isa,
                                                precision);
      },
      "x"_a, "w"_a, "scales"_a, "experts"_a, "bias"_a, "limit"_a, "alpha"_a, "isa"_a = "auto",
      "precision"_a = "exact",
      "gather_mxfp4_matmul of the gate_up weights plus bias[experts], then SwiGLU of the even "
      "(gate) and odd (up) columns -> float32 [R, N/2]");
  m.def(
      "gather_mxfp4_swiglu",
      [](const mx::array& x, const MappedTensor& w, const MappedTensor& scales,
         const mx::array& experts, const mx::array& bias, float limit, float alpha,
         const std::string& isa, const std::string& precision) {
        return openharmony::gather_mxfp4_swiglu(x, w, scales, experts, {bias, limit, alpha}, isa,
                                                precision);
      },
      "x"_a, "w"_a, "scales"_a, "experts"_a, "bias"_a, "limit"_a, "alpha"_a, "isa"_a = "auto",
      "precision"_a = "exact", "The same with mapped checkpoint tensors");
  // Attention over a cache as stored (csrc/attention.h; issue 20).
  m.def("attention", &openharmony::native_attention, "q"_a, "keys"_a, "values"_a, "sinks"_a,
        "scale"_a, "first"_a, "window"_a = 0, "bits"_a = 0, "group_size"_a = 0,
        "isa"_a = "auto", "splits"_a = 0,
        "softmax([q.k * scale over the visible keys, sink]) @ v -> float32 [B, H, T, D]; keys "
        "and values float [B, kv_heads, S, D] or mx.quantize's (packed, scales, biases); query "
        "t sees key indices (first + t - window, first + t] (window 0: [0, first + t])");
  // decode: the fused mixture-of-experts MLP of a decode step (csrc/moe_decode.h).
  m.def("moe_decode", &openharmony::moe_decode, "x"_a, "router_w"_a, "router_b"_a, "gate_up"_a,
        "gate_up_scales"_a, "gate_up_bias"_a, "down"_a, "down_scales"_a, "down_bias"_a,
        "top_k"_a, "limit"_a, "alpha"_a, "isa"_a = "auto",
        "x [T, H] through the router, the top_k MXFP4 experts (SwiGLU) and their weighted sum "
        "-> float32 [T, H], in one call");
  m.def("isas", &openharmony::supported_isas,
        "The instruction sets this build and CPU run, fastest first");
  m.def("threads", &openharmony::thread_count, "Threads of the kernels' pool");
  // The MLX this module was compiled against: an extension works with that version only.
  m.attr("mlx_version") = std::to_string(MLX_VERSION_MAJOR) + "." +
                          std::to_string(MLX_VERSION_MINOR) + "." +
                          std::to_string(MLX_VERSION_PATCH);
}
