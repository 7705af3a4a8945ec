"""The BLAS behind MLX's CPU backend: the one switch for a faster dense matmul on Linux.

MLX's Linux CPU wheel links netlib's reference BLAS, which runs the dense float32 matmuls of
attention and the lm_head at about a quarter of the memory bandwidth (docs/speed.md). MLX
looks `cblas_sgemm` up dynamically, so Intel MKL's single dynamic library, loaded with global
symbols before MLX is imported, serves every dense matmul instead. Nothing else changes: same
kernels for the MXFP4 experts, same results to float32 rounding (the parity tests pass either
way).

The switch is `OPENHARMONY_BLAS`:

* `auto` (default): MKL when it is installed (`pip install "openharmony[mkl]"`, Linux x86-64)
  and MLX is not imported yet; otherwise MLX's own BLAS.
* `mkl`: MKL, or a warning saying why it could not be loaded.
* `mlx`: MLX's own BLAS, as shipped.

On macOS MLX uses Accelerate and on a GPU the BLAS is not involved: the switch is a no-op there.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from pathlib import Path

ENV_VAR = "OPENHARMONY_BLAS"
CHOICES = ("auto", "mkl", "mlx")
MKL_LIBRARY = "libmkl_rt.so.3"

# What MLX's CPU matmuls run on in this process: "mkl" or "mlx" (MLX's own).
active = "mlx"


def find_mkl() -> Path | None:
    """The MKL runtime library of the `mkl` wheel (installed into `<prefix>/lib`), if any."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        path = Path(prefix) / "lib" / MKL_LIBRARY
        if path.is_file():
            return path
    return None


def preload() -> str:
    """Load the BLAS `OPENHARMONY_BLAS` asks for; returns what MLX's matmuls will run on.

    Runs when `openharmony` is imported, so it warns rather than raises: a bad setting must not
    make the package unimportable.
    """
    global active
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        warnings.warn(f"{ENV_VAR}={choice!r} is not one of {', '.join(CHOICES)}; "
                      "using MLX's own BLAS", stacklevel=2)
        return active
    if choice == "mlx" or not sys.platform.startswith("linux") or active == "mkl":
        return active
    library = find_mkl()
    if library is None or "mlx.core" in sys.modules:
        if choice == "mkl":
            why = ("is not installed (pip install 'openharmony[mkl]')" if library is None else
                   "must be loaded before mlx is imported (import openharmony first)")
            warnings.warn(f"{ENV_VAR}=mkl, but MKL {why}; using MLX's own BLAS", stacklevel=2)
        return active
    ctypes.CDLL(str(library), mode=os.RTLD_GLOBAL | os.RTLD_NOW)
    active = "mkl"
    return active
