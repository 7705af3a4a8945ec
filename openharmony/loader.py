"""Headers-only opening of a gpt-oss checkpoint, with lazy tensors under engine names.

Two layouts are read (see docs/loader.md):

* Hugging Face: `config.json` + `model.safetensors`, or shards
  `model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`;
* OpenAI's `original/`: `config.json` (OpenAI's spelling) + `model.safetensors` with other
  tensor names and q, k, v fused into one `qkv` tensor.

`open_checkpoint` parses and validates every safetensors header itself (strictly: a corrupt
file must give a `CheckpointError`, never a crash or a silent wrong load), checks every tensor
against the config, and then hands the files to `mx.load`, whose arrays are lazy: a tensor's
bytes are read when the array is first evaluated. Engine names are the same for both layouts;
`_engine_sources` is the only place where stored names are mapped to them.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from . import native
from .config import MXFP4_BLOCK, ModelConfig
from .errors import CheckpointError, ConfigError
from .mxfp4 import SCALE_NAN

HF, ORIGINAL = "hf", "original"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit

# safetensors dtype codes -> (bytes per element, MLX dtype or None where MLX has none)
SAFETENSORS_DTYPES: dict[str, tuple[int, Any]] = {
    "BOOL": (1, mx.bool_), "U8": (1, mx.uint8), "I8": (1, mx.int8),
    "U16": (2, mx.uint16), "I16": (2, mx.int16), "F16": (2, mx.float16),
    "BF16": (2, mx.bfloat16), "U32": (4, mx.uint32), "I32": (4, mx.int32),
    "F32": (4, mx.float32), "U64": (8, mx.uint64), "I64": (8, mx.int64), "F64": (8, None),
    "F8_E4M3": (1, None), "F8_E5M2": (1, None),
}
# Dense tensors are stored in bf16 by gpt-oss; a re-saved checkpoint may use f16 or f32.
DENSE_DTYPES = ("BF16", "F16", "F32")


@dataclass(frozen=True)
class TensorSpec:
    """A stored tensor as a config requires it: `dtype` is a safetensors code (BF16 or U8)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * SAFETENSORS_DTYPES[self.dtype][0]


# -- the stored names --------------------------------------------------------------------

def engine_shapes(c: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every engine tensor name with its shape and stored dtype (a safetensors code)."""
    H, I, E, V, D = (c.hidden_size, c.intermediate_size, c.num_local_experts, c.vocab_size,
                     c.head_dim)
    q_rows, kv_rows = c.num_attention_heads * D, c.num_key_value_heads * D
    shapes: dict[str, tuple[tuple[int, ...], str]] = {"embed_tokens.weight": ((V, H), "BF16")}
    for n in range(c.num_hidden_layers):
        p = f"layers.{n}."
        shapes.update({
            p + "input_layernorm.weight": ((H,), "BF16"),
            p + "self_attn.q_proj.weight": ((q_rows, H), "BF16"),
            p + "self_attn.q_proj.bias": ((q_rows,), "BF16"),
            p + "self_attn.k_proj.weight": ((kv_rows, H), "BF16"),
            p + "self_attn.k_proj.bias": ((kv_rows,), "BF16"),
            p + "self_attn.v_proj.weight": ((kv_rows, H), "BF16"),
            p + "self_attn.v_proj.bias": ((kv_rows,), "BF16"),
            p + "self_attn.o_proj.weight": ((H, q_rows), "BF16"),
            p + "self_attn.o_proj.bias": ((H,), "BF16"),
            p + "self_attn.sinks": ((c.num_attention_heads,), "BF16"),
            p + "post_attention_layernorm.weight": ((H,), "BF16"),
            p + "mlp.router.weight": ((E, H), "BF16"),
            p + "mlp.router.bias": ((E,), "BF16"),
            p + "mlp.experts.gate_up_proj.blocks": ((E, 2 * I, H // MXFP4_BLOCK, 16), "U8"),
            p + "mlp.experts.gate_up_proj.scales": ((E, 2 * I, H // MXFP4_BLOCK), "U8"),
            p + "mlp.experts.gate_up_proj.bias": ((E, 2 * I), "BF16"),
            p + "mlp.experts.down_proj.blocks": ((E, H, I // MXFP4_BLOCK, 16), "U8"),
            p + "mlp.experts.down_proj.scales": ((E, H, I // MXFP4_BLOCK), "U8"),
            p + "mlp.experts.down_proj.bias": ((E, H), "BF16"),
        })
    shapes["norm.weight"] = ((H,), "BF16")
    shapes["lm_head.weight"] = ((V, H), "BF16")
    return shapes


_ORIGINAL_LAYER_NAMES = {
    "input_layernorm.weight": "attn.norm.scale",
    "self_attn.sinks": "attn.sinks",
    "self_attn.o_proj.weight": "attn.out.weight",
    "self_attn.o_proj.bias": "attn.out.bias",
    "post_attention_layernorm.weight": "mlp.norm.scale",
    "mlp.router.weight": "mlp.gate.weight",
    "mlp.router.bias": "mlp.gate.bias",
    "mlp.experts.gate_up_proj.blocks": "mlp.mlp1_weight.blocks",
    "mlp.experts.gate_up_proj.scales": "mlp.mlp1_weight.scales",
    "mlp.experts.gate_up_proj.bias": "mlp.mlp1_bias",
    "mlp.experts.down_proj.blocks": "mlp.mlp2_weight.blocks",
    "mlp.experts.down_proj.scales": "mlp.mlp2_weight.scales",
    "mlp.experts.down_proj.bias": "mlp.mlp2_bias",
}
_ORIGINAL_TOP_NAMES = {"embed_tokens.weight": "embedding.weight", "norm.weight": "norm.scale",
                       "lm_head.weight": "unembedding.weight"}


def _engine_sources(config: ModelConfig, layout: str) -> dict[str, tuple[str, slice | None]]:
    """Engine name -> (stored name, rows of the stored tensor it occupies, None for all).

    The one place where stored names are mapped to engine names.
    """
    sources: dict[str, tuple[str, slice | None]] = {}
    q_rows = config.num_attention_heads * config.head_dim
    kv_rows = config.num_key_value_heads * config.head_dim
    qkv_rows = {"q": slice(0, q_rows), "k": slice(q_rows, q_rows + kv_rows),
                "v": slice(q_rows + kv_rows, q_rows + 2 * kv_rows)}
    for name in engine_shapes(config):
        if layout == HF:
            if name.startswith("lm_head."):
                sources[name] = (name, None)
            else:  # the experts' ".blocks" -> "_blocks" etc.
                stored = re.sub(r"(experts\.\w+_proj)\.(blocks|scales|bias)$", r"\1_\2", name)
                sources[name] = ("model." + stored, None)
        elif name in _ORIGINAL_TOP_NAMES:
            sources[name] = (_ORIGINAL_TOP_NAMES[name], None)
        else:
            n, rest = re.fullmatch(r"layers\.(\d+)\.(.+)", name).groups()
            fused = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if fused:
                which, kind = fused.groups()
                sources[name] = (f"block.{n}.attn.qkv.{kind}", qkv_rows[which])
            else:
                sources[name] = (f"block.{n}.{_ORIGINAL_LAYER_NAMES[rest]}", None)
    return sources


def _stored_specs(config: ModelConfig, layout: str) -> dict[str, TensorSpec]:
    shapes = engine_shapes(config)
    specs: dict[str, TensorSpec] = {}
    for name, (stored, rows) in _engine_sources(config, layout).items():
        shape, dtype = shapes[name]
        if rows is None:
            specs[stored] = TensorSpec(stored, shape, dtype)
        else:  # rows of a fused tensor: the stored tensor is the concatenation
            prev = specs.get(stored)
            total = rows.stop if prev is None else max(prev.shape[0], rows.stop)
            specs[stored] = TensorSpec(stored, (total, *shape[1:]), dtype)
    return specs


def hf_tensor_specs(config: ModelConfig) -> dict[str, TensorSpec]:
    """Every tensor of the Hugging Face layout for `config`, by stored name, in file order."""
    return _stored_specs(config, HF)


def original_tensor_specs(config: ModelConfig) -> dict[str, TensorSpec]:
    """Every tensor of OpenAI's `original/` layout for `config`, by stored name."""
    return _stored_specs(config, ORIGINAL)


def engine_to_stored(config: ModelConfig, layout: str) -> dict[str, tuple[str, slice | None]]:
    """Engine name -> (stored name, row slice or None): what the random writer needs."""
    if layout not in (HF, ORIGINAL):
        raise ValueError(f"layout must be {HF!r} or {ORIGINAL!r}, got {layout!r}")
    return _engine_sources(config, layout)


# -- safetensors headers ----------------------------------------------------------------

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


# -- finding the files ------------------------------------------------------------------

def _is_original_config(file: Path) -> bool:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # let ModelConfig.from_path report it
    return isinstance(data, dict) and "model_type" not in data and "num_experts" in data


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
        self._mappings: dict[Path, Any] = {}  # file -> native.Mapping, made on first `map`

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
            array = _read_bytes(*self.byte_range(name, experts), tensor.dtype,
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
        if tensor.file not in self._mappings:
            try:
                self._mappings[tensor.file] = native.map_file(tensor.file)
            except RuntimeError as e:
                raise CheckpointError(str(e)) from None
        mapped = self._mappings[tensor.file].tensor(
            tensor.offset, list(tensor.shape), SAFETENSORS_DTYPES[tensor.dtype][1])
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


def is_expert_tensor(name: str) -> bool:
    """Whether an engine tensor has one row per expert (`layers.N.mlp.experts.*`)."""
    return ".mlp.experts." in name


# safetensors codes -> the numpy dtype holding their bits (bf16 is read as uint16 and viewed)
_NUMPY_DTYPES = {"U8": np.uint8, "BF16": np.uint16, "F16": np.float16, "F32": np.float32}


def _read_bytes(file: Path, offset: int, length: int, dtype: str,
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


# -- read-ahead -----------------------------------------------------------------------------


class ReadAhead:
    """Brings the bytes of the next groups of tensors into the page cache on a second thread.

    Reading a checkpoint is CPU work in the kernel (page-cache inserts and copies: about
    0.8 GB/s on one core here) and so is converting its tensors; MLX does both on one thread.
    While the caller evaluates group i, this thread asks the kernel for groups i+1 .. i+depth,
    so the reads overlap the conversion and MLX's own reads find the pages already cached. It
    never runs further ahead than `depth` groups, so it holds little page cache (a model that
    fills most of the memory leaves little room for it).

        with ReadAhead([[(file, offset, length), ...], ...]) as read_ahead:
            for i, group in enumerate(groups):
                read_ahead.reached(i)
                mx.eval(group)
    """

    CHUNK = 16 << 20

    def __init__(self, groups: list[list[tuple[Path, int, int]]], depth: int = 2):
        self.groups, self.depth = groups, depth
        self._reached = -1
        self._closed = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="openharmony-read-ahead",
                                        daemon=True)

    def __enter__(self) -> "ReadAhead":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join()

    def reached(self, index: int) -> None:
        """The caller starts on group `index`: read up to `index + depth`."""
        with self._condition:
            self._reached = index
            self._condition.notify()

    def _run(self) -> None:
        for index, ranges in enumerate(self.groups):
            with self._condition:
                while not self._closed and index > self._reached + self.depth:
                    self._condition.wait()
                if self._closed:
                    return
            for file, offset, length in ranges:
                try:
                    _read_into_page_cache(file, offset, length, self.CHUNK)
                except OSError:
                    return  # only an optimization: MLX's own read reports real errors


def _read_into_page_cache(file: Path, offset: int, length: int, chunk: int) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        buffer = bytearray(min(chunk, length))
        view = memoryview(buffer)
        end = offset + length
        while offset < end:
            n = os.preadv(fd, [view[:min(chunk, end - offset)]], offset)
            if n <= 0:
                return
            offset += n
    finally:
        os.close(fd)
