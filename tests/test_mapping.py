"""Files mapped in place (csrc/mapping.cpp, `native.map_file`) and the kernels reading them.

The invariants the in-place weights rely on (docs/speed.md): a mapped tensor's bytes are the
file's own bytes at its offset (no copy: its address is inside the mapping), the file is
never written (the mapping is read-only: a write through it faults), and every array computed
from a mapping keeps it alive, however its handles are dropped. The kernels are checked on
mapped operands against the OCP spec decode and float64, on every ISA path.
"""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys
import textwrap

import mlx.core as mx
import numpy as np
import pytest

from openharmony import native

from test_native import ISAS, assert_close, isa_or_skip, random_mxfp4, spec_decode

pytestmark = pytest.mark.skipif(not native.available,
                                reason=f"native kernels unavailable: {native.unavailable_reason}")

PREFIX = b"\x01" * 13  # tensors at unaligned offsets, as nothing in the format forbids


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns by truncation (exact for the values used here)."""
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def write(path, *arrays: np.ndarray) -> list[int]:
    """`arrays`' bytes after PREFIX, back to back; returns each one's offset."""
    offsets, data = [], bytearray(PREFIX)
    for a in arrays:
        offsets.append(len(data))
        data += a.tobytes()
    path.write_bytes(bytes(data))
    return offsets


def mapped_files() -> str:
    return open("/proc/self/maps").read()


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_mapped_tensor_is_the_files_bytes_in_place(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "t.bin"
    (offset,) = write(path, data)
    mapping = native.map_file(path)
    assert mapping.size == path.stat().st_size and mapping.path == str(path)
    tensor = mapping.tensor(offset, [5, 7, 3], mx.uint8)
    assert tensor.shape == (5, 7, 3) and tensor.dtype == mx.uint8 and tensor.nbytes == data.size
    # No copy: the tensor's address is its offset inside the mapping.
    assert tensor.address == mapping.address + offset
    view = tensor.bytes()
    assert np.array_equal(view, data.reshape(-1))
    assert view.__array_interface__["data"][0] == tensor.address
    # A share of the leading axis is a byte range of the same mapping.
    rows = tensor.rows(1, 4)
    assert rows.shape == (3, 7, 3) and rows.address == tensor.address + 21
    assert np.array_equal(rows.bytes(), data[1:4].reshape(-1))
    assert np.array_equal(np.array(tensor.copy()), data)
    # The mapping is shared and read-only, as /proc/self/maps shows it.
    line = next(ln for ln in mapped_files().splitlines() if ln.endswith(str(path)))
    assert line.split()[1] == "r--s"


def test_the_numpy_view_is_read_only(tmp_path):
    path = tmp_path / "t.bin"
    (offset,) = write(path, np.arange(16, dtype=np.uint8))
    view = native.map_file(path).tensor(offset, [16], mx.uint8).bytes()
    assert not view.flags.writeable
    with pytest.raises(ValueError):
        view[0] = 1


def test_a_write_through_the_mapping_faults_and_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "t.bin"
    (offset,) = write(path, np.arange(64, dtype=np.uint8))
    before = digest(path)
    script = textwrap.dedent(f"""
        import ctypes, mlx.core as mx
        from openharmony import native
        t = native.map_file({str(path)!r}).tensor({offset}, [64], mx.uint8)
        ctypes.memset(t.address, 0, 64)
        print("written")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -11 and "written" not in done.stdout  # SIGSEGV
    assert digest(path) == before


@pytest.mark.parametrize("offset, shape, why", [
    (0, [10**6], "outside"), (10, [100], "outside"), (0, [-1], "negative")])
def test_a_tensor_outside_the_file_is_refused(tmp_path, offset, shape, why):
    path = tmp_path / "t.bin"
    write(path, np.zeros(90, np.uint8))  # 103 bytes
    with pytest.raises(ValueError, match=why):
        native.map_file(path).tensor(offset, shape, mx.uint8)


def test_rows_outside_the_tensor_are_refused(tmp_path):
    path = tmp_path / "t.bin"
    (offset,) = write(path, np.zeros((4, 2), np.uint8))
    tensor = native.map_file(path).tensor(offset, [4, 2], mx.uint8)
    for start, stop in [(-1, 2), (3, 2), (0, 5)]:
        with pytest.raises(ValueError, match="not a range"):
            tensor.rows(start, stop)


def test_a_missing_file_names_itself(tmp_path):
    with pytest.raises(RuntimeError, match="nothing-here.safetensors"):
        native.map_file(tmp_path / "nothing-here.safetensors")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_gather_mxfp4_matmul_on_mapped_weights_matches_the_spec(tmp_path, isa, rows):
    isa_or_skip(isa)
    rng = np.random.default_rng(rows)
    E, N, K = 5, 70, 544
    codes, scales = random_mxfp4(rng, E, N, K)
    path = tmp_path / "experts.bin"
    at_codes, at_scales = write(path, codes, scales)
    mapping = native.map_file(path)
    blocks = mapping.tensor(at_codes, list(codes.shape), mx.uint8)
    mapped_scales = mapping.tensor(at_scales, list(scales.shape), mx.uint8)
    x = rng.standard_normal((rows, K)).astype(np.float32)
    experts = rng.integers(0, E, rows).astype(np.uint32)

    y = native.gather_mxfp4_matmul(mx.array(x), blocks, mapped_scales, mx.array(experts), isa=isa)
    assert y.dtype == mx.float32 and y.shape == (rows, N)
    weights = spec_decode(codes, scales)[experts]
    reference = np.einsum("rk,rnk->rn", x.astype(np.float64), weights)
    bound = np.einsum("rk,rnk->rn", np.abs(x.astype(np.float64)), np.abs(weights))
    assert_close(y, reference, bound)
    # A share of the experts (as a rank of expert parallelism holds) reads only its rows.
    share = native.gather_mxfp4_matmul(mx.array(x), blocks.rows(2, 5), mapped_scales.rows(2, 5),
                                       mx.array(experts % 3), isa=isa)
    weights = spec_decode(codes[2:5], scales[2:5])[experts % 3]
    assert_close(share, np.einsum("rk,rnk->rn", x.astype(np.float64), weights), bound)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows", [1, 9, 130])
def test_bf16_matmul_on_a_mapped_weight_matches_float64(tmp_path, isa, rows):
    isa_or_skip(isa)
    rng = np.random.default_rng(rows)
    N, K = 70, 555
    bits = bf16_bits(rng.standard_normal((N, K)))
    path = tmp_path / "w.bin"
    (offset,) = write(path, bits)
    w = native.map_file(path).tensor(offset, [N, K], mx.bfloat16)
    x = rng.standard_normal((rows, K)).astype(np.float32)
    y = native.bf16_matmul(mx.array(x), w, isa=isa)
    wide = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    assert_close(y, x.astype(np.float64) @ wide.T, np.abs(x.astype(np.float64)) @ np.abs(wide).T)


def test_take_rows_gathers_mapped_rows_and_gives_nan_outside(tmp_path):
    rng = np.random.default_rng(3)
    bits = bf16_bits(rng.standard_normal((50, 24)))
    path = tmp_path / "table.bin"
    (offset,) = write(path, bits)
    table = native.map_file(path).tensor(offset, [50, 24], mx.bfloat16)
    rows = native.take_rows(table, mx.array([3, 0, 49, 3, 50, -1]))
    assert rows.dtype == mx.bfloat16 and rows.shape == (6, 24)
    got = np.array(rows.view(mx.uint16))
    assert np.array_equal(got[:4], bits[[3, 0, 49, 3]])
    assert np.isnan(np.array(rows[4:].astype(mx.float32))).all()


def test_arrays_computed_from_a_mapping_keep_it_alive(tmp_path):
    rng = np.random.default_rng(4)
    bits = bf16_bits(rng.standard_normal((30, 64)))
    path = tmp_path / "w.bin"
    (offset,) = write(path, bits)
    x = mx.array(rng.standard_normal((2, 64)).astype(np.float32))
    mapping = native.map_file(path)
    w = mapping.tensor(offset, [30, 64], mx.bfloat16)
    view = w.bytes()
    lazy = native.bf16_matmul(x, w)  # not evaluated yet
    expected = np.array(x, np.float64) @ (bits.astype(np.uint32) << 16).view(
        np.float32).astype(np.float64).T
    del mapping, w
    gc.collect()
    assert str(path) in mapped_files()  # the view and the lazy array still need it
    del view
    gc.collect()
    assert str(path) in mapped_files()  # the lazy array alone
    assert np.allclose(np.array(lazy), expected, rtol=1e-5, atol=1e-5)
    del lazy
    gc.collect()
    assert str(path) not in mapped_files()  # unmapped with its last user


def test_the_kernels_never_write_the_file(tmp_path):
    rng = np.random.default_rng(5)
    codes, scales = random_mxfp4(rng, 3, 40, 64)
    path = tmp_path / "experts.bin"
    at_codes, at_scales = write(path, codes, scales)
    before, mtime = digest(path), os.stat(path).st_mtime_ns
    mapping = native.map_file(path)
    y = native.gather_mxfp4_matmul(
        mx.ones((100, 64)), mapping.tensor(at_codes, list(codes.shape), mx.uint8),
        mapping.tensor(at_scales, list(scales.shape), mx.uint8),
        mx.array(rng.integers(0, 3, 100).astype(np.uint32)))
    mx.eval(y)
    del y, mapping
    gc.collect()
    assert digest(path) == before and os.stat(path).st_mtime_ns == mtime
