"""Build the native kernels against the installed MLX: `python -m openharmony.native.build`.

The extension (`openharmony/native/_kernels*.so`, git-ignored) is compiled from csrc/ with the
system's cmake and C++ compiler, MLX's headers and CMake config from the installed wheel, and
nanobind (whose ABI must match the one MLX was built with). It is tied to that exact MLX: a
stamp next to it records the MLX and nanobind versions and a hash of the sources, and the
build runs again whenever any of them changes. The package refuses a module built for another
MLX (openharmony/native/__init__.py).

Exit status: 0 when the extension is built and passes its smoke check, or when the machine has
no compiler or cmake (then it says so and openharmony runs on MLX's kernels); 1 when a build
that could run failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parents[1]  # the repository: CMakeLists.txt and csrc/
BUILD_DIR = SOURCE_ROOT / "build" / "native"
STAMP = PACKAGE_DIR / "_kernels.stamp"

# A smoke check in a fresh interpreter: a module with the wrong nanobind ABI imports fine but
# rejects every mx.array ("incompatible function arguments"), so call it once.
SMOKE_CHECK = """
import mlx.core as mx
from openharmony.native import _kernels
w = mx.zeros((1, 2, 4), dtype=mx.uint32); s = mx.full((1, 2, 1), 127, dtype=mx.uint8)
y = _kernels.gather_mxfp4_matmul(mx.ones((1, 32)), w, s, mx.zeros((1,), dtype=mx.uint32))
z = _kernels.bf16_matmul(mx.ones((1, 3)), mx.ones((2, 3), dtype=mx.bfloat16))
mx.eval(y, z)
assert y.tolist() == [[0.0, 0.0]] and z.tolist() == [[3.0, 3.0]], (y, z)
"""


def versions() -> dict[str, str]:
    """What the built module depends on: MLX, nanobind, and the sources."""
    import mlx.core as mx
    import nanobind

    digest = hashlib.sha256()
    for path in sorted([SOURCE_ROOT / "CMakeLists.txt", *(SOURCE_ROOT / "csrc").iterdir()]):
        digest.update(path.name.encode() + path.read_bytes())
    return {"mlx": mx.__version__, "nanobind": nanobind.__version__,
            "sources": digest.hexdigest()}


def built_module() -> Path | None:
    found = sorted(PACKAGE_DIR.glob("_kernels*.so")) + sorted(PACKAGE_DIR.glob("_kernels*.pyd"))
    return found[0] if found else None


def up_to_date() -> bool:
    if built_module() is None or not STAMP.is_file():
        return False
    try:
        return json.loads(STAMP.read_text()) == versions()
    except (ValueError, ImportError):
        return False


def missing_tools() -> str | None:
    """Why this machine cannot build (no cmake, no compiler, no nanobind), or None."""
    if not (SOURCE_ROOT / "CMakeLists.txt").is_file():
        return f"the sources are not here ({SOURCE_ROOT / 'CMakeLists.txt'} is missing)"
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    compiler = os.environ.get("CXX") or next(
        (c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if compiler is None or shutil.which(compiler) is None:
        return "no C++ compiler (c++, g++ or clang++) is installed"
    try:
        import nanobind  # noqa: F401
    except ImportError:
        return "nanobind is not installed (pip install nanobind)"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        return f"Python's development headers are not installed ({headers} is missing)"
    return None


def build(force: bool = False, quiet: bool = False) -> int:
    say = (lambda *a: None) if quiet else (lambda *a: print("openharmony.native.build:", *a))
    if not force and up_to_date():
        say(f"up to date ({built_module().name})")
        return 0
    why = missing_tools()
    if why:
        say(f"skipped: {why}; openharmony will run on MLX's kernels")
        return 0
    for old in PACKAGE_DIR.glob("_kernels*"):  # never leave a module for another MLX behind
        old.unlink()
    configure = ["cmake", "-S", str(SOURCE_ROOT), "-B", str(BUILD_DIR),
                 f"-DPython_EXECUTABLE={sys.executable}",
                 f"-DOPENHARMONY_NATIVE_OUTPUT={PACKAGE_DIR}", "-DCMAKE_BUILD_TYPE=Release"]
    compile_ = ["cmake", "--build", str(BUILD_DIR), "-j", str(os.cpu_count() or 1)]
    say("building the native kernels against mlx", versions()["mlx"])
    for command in (configure, compile_):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
            say(f"FAILED: {' '.join(command[:2])} exited with {done.returncode}")
            return 1
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(SOURCE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    check = subprocess.run([sys.executable, "-c", SMOKE_CHECK], capture_output=True, text=True,
                           env=env, cwd=SOURCE_ROOT)
    if check.returncode:
        for old in PACKAGE_DIR.glob("_kernels*"):
            old.unlink()
        print(check.stderr[-4000:], file=sys.stderr)
        say("FAILED: the built module does not work with this MLX (a nanobind ABI mismatch "
            "gives 'incompatible function arguments'; MLX 0.32 needs nanobind 3.x); removed it")
        return 1
    STAMP.write_text(json.dumps(versions()))
    say(f"built {built_module().name}")
    return 0


if __name__ == "__main__":
    sys.exit(build(force="--force" in sys.argv[1:], quiet="--quiet" in sys.argv[1:]))
