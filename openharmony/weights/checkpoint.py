"""Headers-only opening of a gpt-oss checkpoint, with lazy tensors under engine names.

Two layouts are read (see docs/loader.md; the names: layouts.py):

* Hugging Face: `config.json` + `model.safetensors`, or shards
  `model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`;
* OpenAI's `original/`: `config.json` (OpenAI's spelling) + `model.safetensors`.

`open_checkpoint` parses and validates every safetensors header itself (safetensors.py),
checks every tensor against the config, and then hands the files to `mx.load`, whose arrays
are lazy: a tensor's bytes are read when the array is first evaluated. `Checkpoint.map` gives
a tensor used in place instead (mapping.py).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ..config import ModelConfig, is_original
from ..errors import CheckpointError, ConfigError
from ..mxfp4 import SCALE_NAN
from .layouts import (DENSE_DTYPES, HF, ORIGINAL, _engine_sources, _stored_specs,
                      is_expert_tensor)
from .mapping import FileMappings
from .safetensors import SAFETENSORS_DTYPES, StoredTensor, read_bytes, read_safetensors_header

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def _is_original_config(file: Path) -> bool:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # let ModelConfig.from_path report it
    return is_original(data)


def _has_weights(folder: Path) -> bool:
    return ((folder / INDEX_FILE).is_file()
            or any(f.is_file() for f in folder.glob("*.safetensors")))


def _find_layout(path: Path) -> tuple[str, Path]:
    """(layout, folder holding config.json and the weights); the HF layout is preferred."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder: give the checkpoint folder (the one "
                              "holding config.json)")
    config = path / "config.json"
    if config.is_file() and _has_weights(path):
        return (ORIGINAL if _is_original_config(config) else HF), path
    original = path / "original"
    if (original / "config.json").is_file() and _has_weights(original):
        return ORIGINAL, original
    if _has_weights(path):
        raise CheckpointError(f"{path} has weights but no config.json")
    if config.is_file():
        raise CheckpointError(f"{path} has a config.json but no .safetensors weights (nor an "
                              "original/ folder with them)")
    raise CheckpointError(f"{path} holds no checkpoint: no config.json and no .safetensors "
                          "files (nor an original/ folder with them)")


_SHARD = re.compile(r"(.+)-(\d+)-of-(\d+)\.safetensors")


def _weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of a folder, and the index's weight_map where there is one."""
    index_file = folder / INDEX_FILE
    if index_file.is_file():
        try:
            index = json.loads(index_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{index_file} is not valid JSON: {e}") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not (isinstance(weight_map, dict) and weight_map
                and all(isinstance(v, str) for v in weight_map.values())):
            raise CheckpointError(f"{index_file} has no valid weight_map (tensor name -> file)")
        files = []
        for filename in sorted(set(weight_map.values())):
            file = folder / filename
            if Path(filename).name != filename or not file.is_file():
                tensor = next(t for t, f in weight_map.items() if f == filename)
                raise CheckpointError(f"{index_file} names the file {filename!r} (for "
                                      f"{tensor!r}, ...), which is missing from {folder}")
            files.append(file)
        return files, weight_map
    single = folder / SINGLE_FILE
    if single.is_file():
        return [single], None
    files = sorted(f for f in folder.glob("*.safetensors") if f.is_file())
    # Without an index, a set of shards must at least be complete. Shards count from 1
    # (model-00001-of-00003) or, as in openai/gpt-oss-20b, from 0 (model-00000-of-00002).
    groups: dict[tuple[str, str], dict[int, int]] = {}  # (prefix, last) -> number -> width
    for match in filter(None, (_SHARD.fullmatch(f.name) for f in files)):
        prefix, number, last = match.groups()
        groups.setdefault((prefix, last), {})[int(number)] = len(number)
    for (prefix, last), numbers in groups.items():
        first = 0 if 0 in numbers else 1
        width = max(numbers.values())
        for i in range(first, int(last) + 1):
            if i not in numbers:
                raise CheckpointError(f"shard {prefix}-{i:0{width}d}-of-{last}.safetensors "
                                      f"is missing from {folder}")
    return files, None


# -- the checkpoint ---------------------------------------------------------------------

def _as_mx_dtype(dtype: Any) -> mx.Dtype | None:
    if dtype is None or isinstance(dtype, mx.Dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(mx, dtype, None), mx.Dtype):
        return getattr(mx, dtype)
    raise ValueError(f"not an MLX dtype: {dtype!r}")


class Checkpoint:
    """An opened checkpoint: validated headers, lazy tensors under engine names."""

    def __init__(self, folder: Path, layout: str, config: ModelConfig,
                 stored: dict[str, StoredTensor], files: list[Path]):
        self.path = folder
        self.layout = layout
        self.config = config
        self.files = tuple(files)
        self.total_bytes = sum(f.stat().st_size for f in files)  # on disk, headers included
        self._stored = stored
        self._sources = _engine_sources(config, layout)
        self._arrays: dict[Path, dict[str, mx.array]] = {}
        self._mappings = FileMappings()  # each file mapped once, on its first `map`

    def __repr__(self) -> str:
        return (f"Checkpoint({str(self.path)!r}, layout={self.layout!r}, "
                f"{len(self.files)} file(s), {self.total_bytes / 1e9:.2f} GB)")

    def names(self) -> list[str]:
        """The engine names, in a fixed order (embedding, layers, final norm, head)."""
        return list(self._sources)

    def byte_range(self, name: str, experts: range | None = None) -> tuple[Path, int, int]:
        """(file, offset, length) of the stored bytes evaluating `name` reads (a sliced
        original/ q, k or v reads its whole fused tensor); with `experts`, those of only
        these experts of an expert tensor (see `get`)."""
        tensor, _ = self._source(name)
        if experts is None:
            return tensor.file, tensor.offset, tensor.nbytes
        if not is_expert_tensor(name):
            raise ValueError(f"{name!r} is not an expert tensor: it has no experts to select")
        if not (0 <= experts.start <= experts.stop <= tensor.shape[0] and experts.step == 1):
            raise ValueError(f"experts {experts} are not a contiguous range of the "
                             f"{tensor.shape[0]} experts of {name!r}")
        row = tensor.nbytes // tensor.shape[0]
        return tensor.file, tensor.offset + experts.start * row, len(experts) * row

    def _source(self, name: str) -> tuple[StoredTensor, slice | None]:
        if name not in self._sources:
            raise KeyError(f"{name!r} is not a tensor of this checkpoint (see .names())")
        stored, rows = self._sources[name]
        return self._stored[stored], rows

    def shape(self, name: str) -> tuple[int, ...]:
        tensor, rows = self._source(name)
        if rows is None:
            return tensor.shape
        return (rows.stop - rows.start, *tensor.shape[1:])

    def dtype(self, name: str) -> mx.Dtype:
        """The stored dtype (a dense tensor may be cast on `get`)."""
        return SAFETENSORS_DTYPES[self._source(name)[0].dtype][1]

    @property
    def tensor_bytes(self) -> int:
        """Bytes of all tensors as stored (what a forward pass over every weight reads)."""
        return sum(t.nbytes for t in self._stored.values())

    def nbytes(self, name: str) -> int:
        """Bytes of this tensor as stored."""
        tensor, _ = self._source(name)
        return math.prod(self.shape(name)) * SAFETENSORS_DTYPES[tensor.dtype][0]

    def stored_name(self, name: str) -> str:
        return self._source(name)[0].name

    def get(self, name: str, dtype: Any = None, experts: range | None = None) -> mx.array:
        """The tensor, lazy; `dtype` casts floating tensors only (MXFP4 stays uint8).

        `experts` (a contiguous range, expert tensors only) selects those experts, rows of
        the leading axis, and reads only their bytes, at once: a slice of MLX's lazy array
        would read the whole tensor when evaluated.

        MXFP4 scales are the exception to laziness: they are read here (1/17 of the MXFP4
        bytes, kept as they are by the model) and a scale byte 255, E8M0's NaN, raises
        `CheckpointError` naming the tensor: its 32 weights would be NaN, and so every logit.
        (With `experts`, the index in the message counts from the first expert read.)
        """
        tensor, rows = self._source(name)
        if experts is not None:
            array = read_bytes(*self.byte_range(name, experts), tensor.dtype,
                                (len(experts), *tensor.shape[1:]))
        else:
            array = self._file_arrays(tensor.file)[tensor.name]
        if rows is not None:
            array = array[rows]
        if name.endswith(".scales"):
            _refuse_nan_scales(tensor, array)
        dtype = _as_mx_dtype(dtype)
        if dtype is not None and mx.issubdtype(array.dtype, mx.floating):
            array = array.astype(dtype)
        return array

    def map(self, name: str, experts: range | None = None):
        """The tensor used in place: a `native.MappedTensor` over the file's mapping (made once
        per file, read-only and shared), so nothing is read or copied now; the native kernels
        read its bytes where the page cache holds them. `experts` as for `get`. The MXFP4
        scales are scanned for E8M0's NaN here, as by `get`."""
        tensor, rows = self._source(name)
        mapped = self._mappings.tensor(tensor)
        if rows is not None:
            mapped = mapped.rows(rows.start, rows.stop)
        if experts is not None:
            self.byte_range(name, experts)  # checks the range
            mapped = mapped.rows(experts.start, experts.stop)
        if name.endswith(".scales"):
            _refuse_nan_scales(tensor, mapped.bytes().reshape(mapped.shape))
        return mapped

    def weights(self, dtype: Any = None, experts: range | None = None,
                in_place=None) -> dict[str, Any]:
        """Every tensor (`get`); with `experts`, only those experts of the expert tensors.
        `in_place(name, stored dtype) -> bool` picks the tensors returned by `map` instead."""
        def one(name: str):
            share = experts if is_expert_tensor(name) else None
            if in_place is not None and in_place(name, self.dtype(name)):
                return self.map(name, share)
            return self.get(name, dtype, share)
        return {name: one(name) for name in self.names()}

    def _file_arrays(self, file: Path) -> dict[str, mx.array]:
        if file not in self._arrays:
            try:
                self._arrays[file] = mx.load(str(file))  # lazy: reads only the header
            except (RuntimeError, ValueError, OSError) as e:
                raise CheckpointError(f"MLX cannot open {file}: {e}") from None
        return self._arrays[file]


def _refuse_nan_scales(tensor: StoredTensor, scales: mx.array | np.ndarray) -> None:
    # 255 is the largest byte: one max reduction (no temporary array) finds any; the common
    # case ends here (scripts/measure_scale_scan.py). Mapped scales come as a NumPy view.
    if scales.size == 0 or int(scales.max()) != SCALE_NAN:
        return
    nan = np.asarray(scales) == SCALE_NAN
    count = int(nan.sum())
    first = tuple(int(i) for i in np.argwhere(nan)[0])
    raise CheckpointError(
        f"{tensor.file}: tensor {tensor.name!r} holds the MXFP4 scale byte {SCALE_NAN} (E8M0's "
        f"NaN) in {count} block(s), the first at index {list(first)}: those weights are NaN "
        "and the model's logits would be too; the checkpoint is corrupt")


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a checkpoint folder (HF layout, `original/` layout, or a folder holding both).

    Reads and validates the config and every safetensors header; reads no tensor bytes.
    Raises `CheckpointError` (or `ConfigError` for a bad config) naming the file and tensor.
    """
    layout, folder = _find_layout(Path(path).expanduser())
    try:
        config = ModelConfig.from_path(folder / "config.json")
    except ConfigError as e:
        raise CheckpointError(f"cannot read the config of {folder}: {e}") from None
    files, weight_map = _weight_files(folder)

    stored: dict[str, StoredTensor] = {}
    for file in files:
        for name, tensor in read_safetensors_header(file).items():
            if name in stored:
                raise CheckpointError(f"tensor {name!r} is stored twice: in "
                                      f"{stored[name].file.name} and in {file.name}")
            if weight_map is not None and weight_map.get(name) != file.name:
                where = (f"maps tensor {name!r} to {weight_map[name]}" if name in weight_map
                         else f"does not list tensor {name!r}")
                raise CheckpointError(f"{folder / INDEX_FILE} {where}, but it is stored in "
                                      f"{file.name}")
            stored[name] = tensor
    if weight_map is not None:
        for name, filename in weight_map.items():
            if name not in stored:
                raise CheckpointError(f"{folder / INDEX_FILE} maps tensor {name!r} to "
                                      f"{filename}, which does not hold it")

    _check_tensors(folder, layout, config, stored)
    return Checkpoint(folder, layout, config, stored, files)


def _check_tensors(folder: Path, layout: str, config: ModelConfig,
                   stored: dict[str, StoredTensor]) -> None:
    specs = _stored_specs(config, layout)
    for name, spec in specs.items():
        tensor = stored.get(name)
        if tensor is None:
            raise CheckpointError(f"tensor {name!r} is missing from the {layout} checkpoint "
                                  f"in {folder}")
        if tensor.shape != spec.shape:
            raise CheckpointError(f"{tensor.file}: tensor {name!r} has shape "
                                  f"{list(tensor.shape)}, the config needs {list(spec.shape)}")
        allowed = DENSE_DTYPES if spec.dtype in DENSE_DTYPES else (spec.dtype,)
        if tensor.dtype not in allowed:
            raise CheckpointError(f"{tensor.file}: tensor {name!r} has dtype {tensor.dtype}, "
                                  f"expected {' or '.join(allowed)}")
    unexpected = sorted(set(stored) - set(specs))
    if unexpected:
        tensor = stored[unexpected[0]]
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{tensor.file}: unexpected tensor {tensor.name!r}{more} for a "
                              f"{layout}-layout gpt-oss checkpoint of this config")
