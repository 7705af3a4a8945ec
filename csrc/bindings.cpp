// The Python module openharmony.native._kernels (see openharmony/native/__init__.py).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "kernels.h"
#include "mlx/version.h"
#include "primitives.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_kernels, m) {
  m.doc() = "openharmony's CPU kernels as MLX primitives";
  m.def("gather_mxfp4_matmul", &openharmony::gather_mxfp4_matmul, "x"_a, "w"_a, "scales"_a,
        "experts"_a, "isa"_a = "auto",
        "x [R, K] times MXFP4 expert experts[r] (MLX's packed uint32 weights [E, N, K/8], "
        "uint8 scales [E, N, K/32]) transposed -> float32 [R, N]");
  m.def("bf16_matmul", &openharmony::bf16_matmul, "x"_a, "w"_a, "isa"_a = "auto",
        "x [R, K] times bfloat16 w [N, K] transposed -> float32 [R, N]");
  m.def("isas", &openharmony::supported_isas,
        "The instruction sets this build and CPU run, fastest first");
  m.def("threads", &openharmony::thread_count, "Threads of the kernels' pool");
  // The MLX this module was compiled against: an extension works with that version only.
  m.attr("mlx_version") = std::to_string(MLX_VERSION_MAJOR) + "." +
                          std::to_string(MLX_VERSION_MINOR) + "." +
                          std::to_string(MLX_VERSION_PATCH);
}
