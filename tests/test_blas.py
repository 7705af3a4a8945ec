"""The BLAS switch (openharmony/blas.py), each case in a fresh interpreter: the choice only
takes effect before MLX is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from openharmony import blas

PROBE = """
import warnings
warnings.simplefilter("always")
{before}
import openharmony, mlx.core as mx, numpy as np
maps = open("/proc/self/maps").read()
a = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((96, 80)).astype(np.float32)
error = float(np.abs(np.array(mx.array(a) @ mx.array(b)) - a.astype(np.float64) @ b).max())
print(openharmony.blas.active, "libmkl_rt" in maps, error)
"""


def probe(setting: str | None, before: str = "") -> tuple[str, bool, float, str]:
    env = {k: v for k, v in os.environ.items() if k != blas.ENV_VAR}
    if setting is not None:
        env[blas.ENV_VAR] = setting
    result = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    active, mkl_mapped, error = result.stdout.split()
    return active, mkl_mapped == "True", float(error), result.stderr


needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
needs_mkl = pytest.mark.skipif(blas.find_mkl() is None,
                               reason="MKL is not installed (pip install '.[mkl]')")


def test_mlx_setting_keeps_mlx_own_blas():
    active, mkl_mapped, error, _ = probe("mlx")
    assert (active, mkl_mapped) == ("mlx", False)
    assert error < 1e-4


def test_unknown_setting_warns_and_keeps_mlx_own_blas():
    active, mkl_mapped, _, stderr = probe("openblas")
    assert (active, mkl_mapped) == ("mlx", False)
    assert "OPENHARMONY_BLAS='openblas' is not one of auto, mkl, mlx" in stderr


@needs_linux
@needs_mkl
def test_auto_loads_mkl_when_installed_and_results_agree():
    active, mkl_mapped, error, _ = probe(None)
    assert (active, mkl_mapped) == ("mkl", True)
    assert error < 1e-4  # float32 rounding of a 96-term dot product


@needs_linux
@needs_mkl
def test_asking_for_mkl_after_mlx_was_imported_warns():
    active, mkl_mapped, _, stderr = probe("mkl", before="import mlx.core")
    assert (active, mkl_mapped) == ("mlx", False)
    assert "must be loaded before mlx is imported" in stderr


@needs_linux
def test_asking_for_missing_mkl_warns(monkeypatch):
    monkeypatch.setattr(blas, "find_mkl", lambda: None)
    monkeypatch.setenv(blas.ENV_VAR, "mkl")
    monkeypatch.setattr(blas, "active", "mlx")
    with pytest.warns(UserWarning, match=r"MKL is not installed \(pip install 'openharmony\[mkl\]'\)"):
        assert blas.preload() == "mlx"
