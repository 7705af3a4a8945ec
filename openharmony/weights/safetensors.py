"""The safetensors format: header parsing and validation, and reading byte ranges.

A file is an 8-byte little-endian header length, a JSON header (tensor name -> dtype, shape,
data_offsets; an optional `__metadata__`) and the tensor data. The parser is strict: a corrupt
file gives a `CheckpointError` naming the file and tensor, never a crash or a silent wrong
load (the data must be covered exactly once, in order, with nothing after it).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ..errors import CheckpointError

MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit

# safetensors dtype codes -> (bytes per element, MLX dtype or None where MLX has none)
SAFETENSORS_DTYPES: dict[str, tuple[int, Any]] = {
    "BOOL": (1, mx.bool_), "U8": (1, mx.uint8), "I8": (1, mx.int8),
    "U16": (2, mx.uint16), "I16": (2, mx.int16), "F16": (2, mx.float16),
    "BF16": (2, mx.bfloat16), "U32": (4, mx.uint32), "I32": (4, mx.int32),
    "F32": (4, mx.float32), "U64": (8, mx.uint64), "I64": (8, mx.int64), "F64": (8, None),
    "F8_E4M3": (1, None), "F8_E5M2": (1, None),
}


@dataclass(frozen=True)
class StoredTensor:
    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    offset: int = 0  # of the first byte in the file


def read_safetensors_header(file: Path) -> dict[str, StoredTensor]:
    """Parse and validate one safetensors header; the tensor bytes are not read."""
    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file} is not a safetensors file: it is only "
                                      f"{size} bytes long")
            (header_len,) = struct.unpack("<Q", head)
            if header_len < 2 or header_len > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{file} has a corrupt safetensors header: its length "
                                      f"field says {header_len} bytes, the file has {size}")
            raw = f.read(header_len)
    except OSError as e:
        raise CheckpointError(f"cannot read {file}: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file} has a corrupt safetensors header: not valid JSON "
                              f"({e})") from None
    except _DuplicateKey as e:
        raise CheckpointError(f"{file} has a corrupt safetensors header: {e.args[0]!r} "
                              "appears twice") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file} has a corrupt safetensors header: not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not isinstance(metadata, dict):
        raise CheckpointError(f"{file} has a corrupt safetensors header: __metadata__ is not "
                              "an object")

    tensors: dict[str, StoredTensor] = {}
    ranges = []
    for name, entry in header.items():
        begin, end = _check_entry(file, name, entry)
        tensors[name] = StoredTensor(file, name, entry["dtype"], tuple(entry["shape"]),
                                     end - begin, 8 + header_len + begin)
        ranges.append((begin, end, name))

    # The data must be covered exactly once, in order: no gap, no overlap, nothing past the end.
    data_size = size - 8 - header_len
    position, previous = 0, "the header"
    for begin, end, name in sorted(ranges):
        if begin != position:
            how = "overlaps" if begin < position else "leaves a gap after"
            raise CheckpointError(f"{file} has a corrupt safetensors header: tensor {name!r} "
                                  f"(bytes {begin}..{end}) {how} {previous}")
        position, previous = end, repr(name)
    if position > data_size:
        raise CheckpointError(f"{file} is truncated: its header describes {position} bytes of "
                              f"tensor data ending with {previous}, the file holds {data_size}")
    if position < data_size:
        raise CheckpointError(f"{file} has {data_size - position} bytes after its last tensor: "
                              "the header does not describe the file")
    return tensors


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object hook: plain `json` would silently keep the last of two equal keys."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _check_entry(file: Path, name: str, entry: Any) -> tuple[int, int]:
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{file} has a corrupt safetensors header: tensor {name!r} {why}")

    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise bad("is not an object with exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES:
        raise bad(f"has the unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise bad(f"has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
            and offsets[0] <= offsets[1]):
        raise bad(f"has invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * SAFETENSORS_DTYPES[dtype][0]
    if offsets[1] - offsets[0] != expected:
        raise bad(f"spans {offsets[1] - offsets[0]} bytes, but a {dtype} tensor of shape "
                  f"{shape} needs {expected}")
    return offsets[0], offsets[1]


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


# safetensors codes -> the numpy dtype holding their bits (bf16 is read as uint16 and viewed)
_NUMPY_DTYPES = {"U8": np.uint8, "BF16": np.uint16, "F16": np.float16, "F32": np.float32}


def read_bytes(file: Path, offset: int, length: int, dtype: str,
                shape: tuple[int, ...]) -> mx.array:
    """`length` bytes at `offset` of `file` as an MLX array of a safetensors `dtype`."""
    data = np.empty(length, np.uint8)
    try:
        with open(file, "rb", buffering=0) as f:
            f.seek(offset)
            view, done = memoryview(data), 0
            while done < length:
                n = f.readinto(view[done:])
                if not n:
                    raise CheckpointError(f"{file} ended after {offset + done} bytes, inside "
                                          "a tensor")
                done += n
    except OSError as e:
        raise CheckpointError(f"cannot read {file}: {e.strerror or e}") from None
    array = mx.array(data.view(_NUMPY_DTYPES[dtype]).reshape(shape))
    return array.view(mx.bfloat16) if dtype == "BF16" else array

