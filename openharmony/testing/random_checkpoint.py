"""Random-weight gpt-oss checkpoints in the exact Hugging Face (and OpenAI `original/`) layout.

For tests and benchmarks: the real model cannot be downloaded everywhere, so the engine is
exercised on checkpoints with the real file format and shapes but random weights.

The safetensors files are written by this module, streaming: the header is computed from the
shapes first, then each tensor is generated in chunks (a block of rows, or one expert) and
written, so even the 120b checkpoint needs only one chunk in memory. Values are a pure
function of (seed, engine tensor name, chunk), so both layouts and any sharding hold the same
weights.

The weight scales depend on the config so that a forward pass is well conditioned at any size:
the residual stream stays near unit scale, the logits have a non-trivial softmax, and about
5-10% of the experts' gate/up pre-activations exceed `swiglu_limit` (so the clamp matters).
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import ModelConfig, YarnScaling, alternating_layers
from ..weights import (HF, INDEX_FILE, ORIGINAL, SINGLE_FILE, TensorSpec,
                       engine_shapes, engine_to_stored, hf_tensor_specs, original_tensor_specs)

# Values of the 16 E2M1 codes (OCP MX v1.0), used only to size the MXFP4 scales.
E2M1_VALUES = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6])
CHUNK_ELEMENTS = 1 << 24  # values generated at once: 64 MB of float32


def _real(num_layers: int, num_experts: int) -> ModelConfig:
    return ModelConfig(
        num_hidden_layers=num_layers, num_local_experts=num_experts, num_experts_per_tok=4,
        vocab_size=201088, hidden_size=2880, intermediate_size=2880, head_dim=64,
        num_attention_heads=64, num_key_value_heads=8, sliding_window=128,
        layer_types=alternating_layers(num_layers), rope_theta=150000.0, rope_scaling=YarnScaling(),
        swiglu_limit=7.0, max_position_embeddings=131072)


_TINY = ModelConfig(
    # H, I, and heads x head_dim all differ, so a transposed weight cannot go unnoticed.
    num_hidden_layers=2, num_local_experts=8, num_experts_per_tok=4, vocab_size=1024,
    hidden_size=64, intermediate_size=128, head_dim=16, num_attention_heads=6,
    num_key_value_heads=2, sliding_window=8, layer_types=alternating_layers(2), rope_theta=150000.0,
    rope_scaling=YarnScaling(), swiglu_limit=7.0, max_position_embeddings=131072,
    # eos keeps gpt-oss's id, outside this vocabulary: a tiny model never stops by itself.
    # No pad: transformers needs one inside the vocabulary. (OpenAI's original/ config
    # spells neither, so that layout reads back gpt-oss's defaults.)
    pad_token_id=None)

PRESETS: dict[str, ModelConfig] = {
    "tiny": _TINY,
    # The real vocabulary size, so the o200k_harmony tokenizer works end to end.
    "tiny-vocab": replace(_TINY, vocab_size=201088, pad_token_id=199999),
    "20b": _real(24, 32),
    "120b": _real(36, 128),
}


def preset_config(name: str, layers: int | None = None) -> ModelConfig:
    """The config of preset `name`, truncated to its first `layers` layers (a full layer's
    shapes in a fraction of the time and memory: what the benchmarks' quick looks use)."""
    config = PRESETS[name]
    if layers is None:
        return config
    if not 1 <= layers <= config.num_hidden_layers:
        raise ValueError(f"the {name} preset has {config.num_hidden_layers} layers: "
                         f"cannot keep {layers}")
    return replace(config, num_hidden_layers=layers, layer_types=config.layer_types[:layers])


# -- weight values ------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightScales:
    """Standard deviations of the dense weights and E8M0 exponents of the MXFP4 ones."""

    gate_up_exponent: int
    gate_up_raise: float  # probability that a block's exponent is one higher
    down_exponent: int
    down_raise: float
    gate_up_std: float  # the pre-activation scale these aim at
    down_input_rms: float


def _mxfp4_exponent(target_rms: float, fan_in: int) -> tuple[int, float]:
    """(e, p): blocks scaled by 2**e, or 2**(e+1) with probability p, give matmul outputs
    of RMS `target_rms` for unit-RMS inputs of length `fan_in`."""
    code_ms = float(np.mean(E2M1_VALUES ** 2))  # random bytes: every code equally likely
    wanted_ms = target_rms ** 2 / (fan_in * code_ms)  # mean square of a weight
    exponent = math.floor(math.log2(wanted_ms) / 2)
    raise_probability = (wanted_ms / 4.0 ** exponent - 1) / 3  # E[scale^2] = 4^e (1 + 3p)
    return exponent, raise_probability


def weight_scales(config: ModelConfig) -> WeightScales:
    # Gate/up pre-activations of RMS 0.6 * limit: ~10% of |up| and ~5% of gate exceed it.
    gate_up_std = 0.6 * config.swiglu_limit
    rng = np.random.default_rng(0)
    gate, up = rng.normal(0, gate_up_std, (2, 1 << 16))
    limit, alpha = config.swiglu_limit, config.swiglu_alpha
    gate, up = np.minimum(gate, limit), np.clip(up, -limit, limit)
    glu = gate / (1 + np.exp(-alpha * gate)) * (up + 1)
    down_input_rms = float(np.sqrt(np.mean(glu ** 2)))
    gu_e, gu_p = _mxfp4_exponent(gate_up_std, config.hidden_size)
    # Each expert's output of unit RMS, like the attention output.
    down_e, down_p = _mxfp4_exponent(1.0 / down_input_rms, config.intermediate_size)
    return WeightScales(gu_e, gu_p, down_e, down_p, gate_up_std, down_input_rms)


def _dense_init(name: str, config: ModelConfig) -> tuple[float, float]:
    """(mean, std) of a dense tensor: unit-scale activations at any width."""
    H, D = config.hidden_size, config.head_dim
    kind = name.split(".", 2)[-1] if name.startswith("layers.") else name
    table = {
        "embed_tokens.weight": (0.0, 1.0),
        "input_layernorm.weight": (1.0, 0.1),
        "post_attention_layernorm.weight": (1.0, 0.1),
        "norm.weight": (1.0, 0.1),
        "self_attn.q_proj.weight": (0.0, 1 / math.sqrt(H)),
        "self_attn.k_proj.weight": (0.0, 1 / math.sqrt(H)),
        "self_attn.v_proj.weight": (0.0, 1 / math.sqrt(H)),
        "self_attn.q_proj.bias": (0.0, 0.2),
        "self_attn.k_proj.bias": (0.0, 0.2),
        "self_attn.v_proj.bias": (0.0, 0.2),
        "self_attn.o_proj.weight": (0.0, 1 / math.sqrt(config.num_attention_heads * D)),
        "self_attn.o_proj.bias": (0.0, 0.1),
        "self_attn.sinks": (0.0, 1.0),
        "mlp.router.weight": (0.0, 2 / math.sqrt(H)),
        "mlp.router.bias": (0.0, 0.5),
        "mlp.experts.gate_up_proj.bias": (0.0, 0.5),
        "mlp.experts.down_proj.bias": (0.0, 0.1),
        # Logits of std ~3: a peaked but not one-hot softmax over the vocabulary.
        "lm_head.weight": (0.0, 3 / math.sqrt(H)),
    }
    return table[kind]


def _to_bf16_bytes(x: np.ndarray) -> bytes:
    """float32 -> bfloat16 (round to nearest even), little-endian bytes."""
    bits = x.astype("<f4").view("<u4")
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    return (rounded >> 16).astype("<u2").tobytes()


def _rng(seed: int, name: str, chunk: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), chunk])


def engine_tensor_chunks(name: str, shape: tuple[int, ...], dtype: str, config: ModelConfig,
                         scales: WeightScales, seed: int) -> Iterator[bytes]:
    """The stored bytes of one engine tensor, in chunks of rows (or one expert at a time)."""
    row_elements = math.prod(shape[1:])
    rows_per_chunk = 1 if len(shape) >= 3 else max(1, CHUNK_ELEMENTS // max(row_elements, 1))
    for chunk, start in enumerate(range(0, shape[0], rows_per_chunk)):
        rows = min(rows_per_chunk, shape[0] - start)
        rng = _rng(seed, name, chunk)
        count = rows * row_elements
        if name.endswith(".blocks"):  # any byte is two valid E2M1 codes
            yield rng.bytes(count)
        elif name.endswith(".scales"):
            up = name.endswith("gate_up_proj.scales")
            exponent = scales.gate_up_exponent if up else scales.down_exponent
            raise_p = scales.gate_up_raise if up else scales.down_raise
            e8m0 = 127 + exponent + (rng.random(count) < raise_p)
            yield np.clip(e8m0, 1, 254).astype(np.uint8).tobytes()
        else:
            assert dtype == "BF16", (name, dtype)
            mean, std = _dense_init(name, config)
            yield _to_bf16_bytes(rng.standard_normal(count, dtype=np.float32) * std + mean)


# -- safetensors writing -------------------------------------------------------------------

def _header_bytes(specs: list[TensorSpec], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for spec in specs:
        header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # as the safetensors library: data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def _split(specs: list[TensorSpec], shards: int) -> list[list[TensorSpec]]:
    """At most `shards` consecutive groups of roughly equal size in bytes."""
    total = sum(s.nbytes for s in specs)
    groups: list[list[TensorSpec]] = [[] for _ in range(max(1, shards))]
    start = 0
    for spec in specs:
        groups[start * len(groups) // total].append(spec)
        start += spec.nbytes
    return [g for g in groups if g]


def _write_layout(folder: Path, config: ModelConfig, layout: str, seed: int, shards: int,
                  max_shard_size: int | None, progress) -> None:
    """The safetensors file(s) of one layout, plus the index where there are shards."""
    specs = list((hf_tensor_specs(config) if layout == HF
                  else original_tensor_specs(config)).values())
    shapes = engine_shapes(config)
    parts: dict[str, list[str]] = {}  # stored name -> its engine tensors (q, k, v for qkv)
    for engine, (stored, _rows) in engine_to_stored(config, layout).items():
        parts.setdefault(stored, []).append(engine)
    scales = weight_scales(config)

    total = sum(s.nbytes for s in specs)
    if max_shard_size:
        shards = max(shards, math.ceil(total / max_shard_size))
    groups = _split(specs, shards)
    names = ([SINGLE_FILE] if len(groups) == 1 else
             [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))])

    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for filename, group in zip(names, groups):
        partial = folder / (filename + ".partial")  # a complete file only under its name
        with open(partial, "wb") as f:
            f.write(_header_bytes(group, {"format": "pt"}))
            for spec in group:
                for engine in parts[spec.name]:
                    shape, dtype = shapes[engine]
                    for chunk in engine_tensor_chunks(engine, shape, dtype, config, scales,
                                                      seed):
                        f.write(chunk)
                        progress(len(chunk))
                weight_map[spec.name] = filename
        os.replace(partial, folder / filename)
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _original_config_dict(config: ModelConfig) -> dict:
    """OpenAI's config for `config`. It has no eos/pad fields: on the hub those live in the
    HF config beside it, so they are left out here rather than refused."""
    fields = ModelConfig.__dataclass_fields__
    return replace(config, eos_token_id=fields["eos_token_id"].default,
                   pad_token_id=fields["pad_token_id"].default).to_original_dict()


def write_random_checkpoint(path: str | Path, config: ModelConfig, *, seed: int = 0,
                            layout: str = "hf", shards: int = 1,
                            max_shard_size: int | None = None,
                            rope_spelling: str = "rope_scaling",
                            progress: bool = False) -> Path:
    """Write a random-weight checkpoint of `config` into the folder `path`; return `path`.

    `layout`: "hf" (the Hugging Face layout in `path`), "original" (OpenAI's layout in
    `path/original`), or "both". `shards` / `max_shard_size` (bytes) split the HF layout into
    `model-0000N-of-0000M.safetensors` files with an index. The config file is written last,
    so a folder with a config.json holds a complete checkpoint.
    """
    if layout not in (HF, ORIGINAL, "both"):
        raise ValueError(f"layout must be 'hf', 'original' or 'both', got {layout!r}")
    path = Path(path)
    layouts = [HF, ORIGINAL] if layout == "both" else [layout]
    if ORIGINAL in layouts:
        _original_config_dict(config)  # raises now, not after writing, if it cannot be written
    total = sum(sum(s.nbytes for s in (hf_tensor_specs(config) if lay == HF
                                       else original_tensor_specs(config)).values())
                for lay in layouts)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"writing {path.name}")
    try:
        for lay in layouts:
            folder = path if lay == HF else path / "original"
            _write_layout(folder, config, lay, seed, shards if lay == HF else 1,
                          max_shard_size if lay == HF else None,
                          bar.update if bar is not None else (lambda n: None))
            config_dict = (config.to_hf_dict(rope_spelling=rope_spelling) if lay == HF
                           else _original_config_dict(config))
            (folder / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    finally:
        if bar is not None:
            bar.close()
    return path


def checkpoint_nbytes(config: ModelConfig, layout: str = HF) -> int:
    """Bytes of tensor data of one layout of `config` (without headers)."""
    specs = hf_tensor_specs(config) if layout == HF else original_tensor_specs(config)
    return sum(s.nbytes for s in specs.values())

