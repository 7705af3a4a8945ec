"""The bytes one decode step must read, and the read bandwidth an engine achieved with them.

A decode step reads every weight it uses at least once: attention, router, the chosen experts'
MXFP4 blocks and scales (4 of 32 per layer for the 20b), norms, the lm_head and one embedding
row, plus the KV cache at its depth. Weights are counted as stored (bf16 dense, MXFP4 experts:
what llama.cpp's GGUF and openharmony's native kernels both read), so the same step costs every
engine the same weight bytes; only the KV cache's bytes per value differ by engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Bytes per stored key or value entry, on full-attention and on sliding-window layers.
#   float: openharmony's float32 compute dtype; bf16: `kv_dtype="bfloat16"`;
#   8bit: `kv_bits=8` on full layers, one byte plus a float32 scale and bias per 64 entries,
#   the sliding layers stay float; f16: llama.cpp's and ik_llama.cpp's default cache type.
KV_BYTES = {"float": (4.0, 4.0), "bf16": (2.0, 2.0), "8bit": (1 + 8 / 64, 4.0),
            "f16": (2.0, 2.0)}


def weight_bytes(path: Path) -> dict[str, int]:
    """Weight bytes of one decode step by part, from the checkpoint's own headers."""
    from ..weights import open_checkpoint

    checkpoint = open_checkpoint(path)
    c = checkpoint.config
    parts = dict.fromkeys(("attention", "router", "experts", "norms", "lm_head",
                           "embedding"), 0)
    for name in checkpoint.names():
        size = checkpoint.nbytes(name)
        if name.startswith("layers."):
            if ".self_attn." in name:
                parts["attention"] += size
            elif ".mlp.router." in name:
                parts["router"] += size
            elif ".mlp.experts." in name:
                parts["experts"] += size * c.num_experts_per_tok // c.num_local_experts
            else:
                parts["norms"] += size
        elif name == "lm_head.weight":
            parts["lm_head"] += size
        elif name == "embed_tokens.weight":
            parts["embedding"] += size // c.vocab_size  # one row
        else:
            parts["norms"] += size
    return parts


def kv_cache_bytes(config, depth: int, kv: str) -> float:
    """Bytes of keys and values a step attends over at `depth` cached positions."""
    full, sliding = KV_BYTES[kv]
    entries = 2 * config.num_key_value_heads * config.head_dim  # keys and values, one position
    total = 0.0
    for layer in range(config.num_hidden_layers):
        if config.is_sliding(layer):
            total += min(depth, config.sliding_window) * entries * sliding
        else:
            total += depth * entries * full
    return total


@dataclass(frozen=True)
class StepBytes:
    """A decode step's bytes for one checkpoint: weights (fixed) plus the cache (by depth)."""

    weights: dict[str, int]
    config: object

    @classmethod
    def of(cls, path: Path) -> "StepBytes":
        from ..config import ModelConfig

        return cls(weight_bytes(path), ModelConfig.from_path(path))

    def total(self, depth: int, kv: str) -> float:
        return sum(self.weights.values()) + kv_cache_bytes(self.config, depth, kv)


def achieved_bandwidth(step_bytes: float, tokens_per_second: float) -> float:
    """Bytes/s an engine read at least: a step's bytes times the steps per second."""
    return step_bytes * tokens_per_second
