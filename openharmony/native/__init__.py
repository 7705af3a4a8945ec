"""openharmony's own CPU kernels (csrc/, an MLX C++ extension).

The kernels are MLX primitives with a CPU implementation, so they are nodes of MLX's lazy
graph like `mx.gather_qmm`:

* `gather_mxfp4_matmul(x, w, scales, experts)`: row r of x times MXFP4 expert `experts[r]`
  (MLX's packed uint32 weights and uint8 E8M0 scales, as `mxfp4.to_mlx` gives them),
  transposed; the semantics of `mx.gather_qmm(..., transpose=True, mode="mxfp4")`. Rows on the
  same expert share each decoded block; with many rows (prefill) a tile of the expert is
  dequantized once and multiplied densely.
* `bf16_matmul(x, w)`: float32 activations times bfloat16 weights [N, K] transposed, for the
  dense layers, whose weights can then stay bfloat16 in memory.
* `take_rows(table, ids)`: rows of a mapped embedding table.

Weights can be MLX arrays or `MappedTensor`s: byte ranges of a checkpoint file mapped once,
read-only and shared (`map_file(path).tensor(offset, shape, dtype)`), which the kernels read
in place, so loading copies nothing (openharmony/load.py; docs/speed.md). A mapped MXFP4
weight is the checkpoint's own `blocks` tensor, uint8 [E, N, K/32, 16] (the same bytes MLX's
uint32 packing views).

Both accumulate in float32 and return float32. They run on a thread pool of their own (one
thread per usable core, `OPENHARMONY_THREADS` to change it) with AVX-512, AVX2 or portable
code chosen at run time; `isa=` (or `OPENHARMONY_NATIVE_ISA`) forces one, `isas()` lists what
this CPU runs.

Whether a model runs on them is chosen once, when it loads, by `openharmony.runtime.select`
(`OPENHARMONY_KERNELS`), and the layers reach them only through `runtime.NativeKernels`.
`available` and `unavailable_reason` say whether they can run here. Build the extension with
`python -m openharmony.native.build` (scripts/test.sh and scripts/download_and_run.sh do).
"""

from __future__ import annotations

import importlib.util
import os

import mlx.core as mx

from ..errors import OpenHarmonyError

ISA_ENV_VAR = "OPENHARMONY_NATIVE_ISA"


class NativeKernelsError(OpenHarmonyError):
    """The native kernels were asked for (OPENHARMONY_KERNELS=native, `in_place=True`) but
    cannot be used."""


def _load():
    """The compiled module, or None and why it cannot be used."""
    # Looked up first: importing a missing submodule from this half-imported package raises
    # an ImportError that blames a circular import.
    try:
        if importlib.util.find_spec(f"{__name__}._kernels") is None:
            return None, ("the native kernels are not built; build them with "
                          "`python -m openharmony.native.build`")
        from . import _kernels
    except ImportError as error:
        return None, (f"the native kernels are built but cannot be loaded ({error}); rebuild "
                      "them with `python -m openharmony.native.build`")
    installed = mx.__version__.split(".dev")[0]
    if _kernels.mlx_version != installed:
        return None, (f"the native kernels were built for mlx {_kernels.mlx_version} but mlx "
                      f"{installed} is installed; rebuild them with "
                      "`python -m openharmony.native.build`")
    return _kernels, None


_kernels, unavailable_reason = _load()
available = _kernels is not None


def isas() -> list[str]:
    """The instruction sets the kernels can use on this CPU, fastest first."""
    return list(_module().isas())


def threads() -> int:
    return _module().threads()


def gather_mxfp4_matmul(x: mx.array, w, scales, experts: mx.array,
                        isa: str | None = None) -> mx.array:
    """x [R, K], w uint32 [E, N, K/8], scales uint8 [E, N, K/32], experts [R] -> float32 [R, N].

    Or w and scales both `MappedTensor`s: blocks uint8 [E, N, K/32, 16], scales [E, N, K/32].
    """
    return _module().gather_mxfp4_matmul(x, w, scales, experts, _isa(isa))


def bf16_matmul(x: mx.array, w, isa: str | None = None) -> mx.array:
    """x [R, K] times bfloat16 w [N, K] (an array or a `MappedTensor`) -> float32 [R, N]."""
    return _module().bf16_matmul(x, w, _isa(isa))


def take_rows(table, ids: mx.array) -> mx.array:
    """Rows `ids` [n] of a mapped table [V, H] -> [n, H] in the table's dtype; ids outside
    [0, V) give NaN rows instead of reading outside the mapping."""
    return _module().take_rows(table, ids)


def map_file(path) -> "_kernels.Mapping":
    """The file at `path` mapped whole, read-only and shared (`.tensor(offset, shape, dtype)`)."""
    return _module().map_file(str(path))


def is_mapped(value) -> bool:
    """Whether `value` is a tensor used in place from a mapped file."""
    return _kernels is not None and isinstance(value, _kernels.MappedTensor)


def _isa(isa: str | None) -> str:
    return isa or os.environ.get(ISA_ENV_VAR, "auto").strip().lower() or "auto"


def _module():
    if _kernels is None:
        raise NativeKernelsError(unavailable_reason)
    return _kernels
