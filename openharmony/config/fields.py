"""What a gpt-oss config is: its fields (transformers' names), their defaults, written once
here, and the checks every config passes, whichever spelling it was read from."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .values import check_int, check_number, check_token_ids

SLIDING = "sliding_attention"
FULL = "full_attention"
MXFP4_BLOCK = 32


@dataclass(frozen=True)
class YarnScaling:
    """YaRN RoPE scaling parameters (transformers' names)."""

    factor: float = 32.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    original_max_position_embeddings: int = 4096
    truncate: bool = False
    attention_factor: float | None = None  # None: 0.1 * ln(factor) + 1, as the references

    @property
    def mscale(self) -> float:
        """The factor applied to cos and sin."""
        if self.attention_factor is not None:
            return self.attention_factor
        return 0.1 * math.log(self.factor) + 1.0 if self.factor > 1 else 1.0

    def check(self, problems: list[str]) -> None:
        """Append what is wrong with these parameters (as `rope_scaling.NAME`) to `problems`."""
        for name, bounds in (("factor", {"at_least": 1.0}), ("beta_fast", {"above": 0.0}),
                             ("beta_slow", {"above": 0.0})):
            check_number(problems, f"rope_scaling.{name}", getattr(self, name), **bounds)
        check_int(problems, "rope_scaling.original_max_position_embeddings",
                  self.original_max_position_embeddings)
        if not isinstance(self.truncate, bool):
            problems.append(f"rope_scaling.truncate must be true or false, got "
                            f"{self.truncate!r}")
        if self.attention_factor is not None:
            check_number(problems, "rope_scaling.attention_factor", self.attention_factor,
                         above=0.0)
        if not problems and self.beta_fast <= self.beta_slow:
            problems.append(f"rope_scaling.beta_fast ({self.beta_fast}) must exceed "
                            f"beta_slow ({self.beta_slow})")


@dataclass(frozen=True)
class ConfigFields:
    """`ModelConfig`'s fields, validated on construction (openharmony/config/__init__.py adds
    reading and writing the spellings)."""

    num_hidden_layers: int
    num_local_experts: int
    num_experts_per_tok: int
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    head_dim: int
    num_attention_heads: int
    num_key_value_heads: int
    sliding_window: int
    layer_types: tuple[str, ...]
    rope_theta: float = 150000.0
    rope_scaling: YarnScaling | None = field(default_factory=YarnScaling)  # None: plain RoPE
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    eos_token_id: int | tuple[int, ...] | None = 200002
    pad_token_id: int | None = 199999
    model_type: str = "gpt_oss"

    def __post_init__(self) -> None:
        self.validate()

    # -- derived -------------------------------------------------------------------------

    @property
    def queries_per_kv_head(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    # -- validation ----------------------------------------------------------------------

    def validate(self) -> None:
        """Every field's type, range and finiteness, then the relations between fields; all
        problems are reported together in one `ConfigError`."""
        problems: list[str] = []
        if self.model_type != "gpt_oss":
            problems.append(f"model_type is {self.model_type!r}, expected 'gpt_oss'")
        for name in _SIZE_FIELDS:
            check_int(problems, name, getattr(self, name))
        check_int(problems, "num_hidden_layers", self.num_hidden_layers, most=MAX_LAYERS)
        for name, bounds in _FLOAT_FIELDS.items():
            check_number(problems, name, getattr(self, name), **bounds)
        check_token_ids(problems, "eos_token_id", self.eos_token_id, many=True)
        check_token_ids(problems, "pad_token_id", self.pad_token_id, many=False)
        if not isinstance(self.layer_types, tuple) or not all(
                isinstance(t, str) for t in self.layer_types):
            problems.append(f"layer_types must be a list of strings, got {self.layer_types!r}")
        if self.rope_scaling is not None:
            if isinstance(self.rope_scaling, YarnScaling):
                self.rope_scaling.check(problems)
            else:
                problems.append(f"rope_scaling must be YaRN parameters or None, got "
                                f"{self.rope_scaling!r}")
        if problems:  # the checks below assume well-typed values
            raise ConfigError("invalid gpt-oss config: " + "; ".join(problems))
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(
                f"num_attention_heads ({self.num_attention_heads}) is not divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.num_experts_per_tok > self.num_local_experts:
            problems.append(
                f"num_experts_per_tok ({self.num_experts_per_tok}) exceeds "
                f"num_local_experts ({self.num_local_experts})")
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % MXFP4_BLOCK:
                problems.append(f"{name} ({getattr(self, name)}) must be a multiple of "
                                f"{MXFP4_BLOCK}, the MXFP4 block size")
        if self.head_dim % 2:
            problems.append(f"head_dim ({self.head_dim}) must be even for RoPE")
        if len(self.layer_types) != self.num_hidden_layers:
            problems.append(f"layer_types has {len(self.layer_types)} entries for "
                            f"{self.num_hidden_layers} layers")
        bad = sorted({t for t in self.layer_types if t not in (SLIDING, FULL)})
        if bad:
            problems.append(f"unknown layer_types {bad}; expected {SLIDING!r} or {FULL!r}")
        if problems:
            raise ConfigError("invalid gpt-oss config: " + "; ".join(problems))


def alternating_layers(n_layers: int) -> tuple[str, ...]:
    """Sliding attention on even layers, full on odd ones: OpenAI's reference (the only
    pattern the original/ layout expresses) and transformers' default."""
    return tuple(SLIDING if i % 2 == 0 else FULL for i in range(n_layers))


def default(name: str) -> Any:
    """A field's default (written once, in the dataclass above)."""
    return ConfigFields.__dataclass_fields__[name].default


# Integer sizes: positive and within MLX's int32 shapes.
_SIZE_FIELDS = ("num_local_experts", "num_experts_per_tok", "vocab_size", "hidden_size",
                "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads",
                "sliding_window", "max_position_embeddings")
# Far above any gpt-oss (36 layers); keeps the per-layer lists a config implies small.
MAX_LAYERS = 1024
# Float fields and their ranges (all must be finite).
_FLOAT_FIELDS: dict[str, dict[str, float]] = {
    "rope_theta": {"above": 1.0},
    "swiglu_limit": {"above": 0.0},
    "swiglu_alpha": {"above": 0.0},
    "rms_norm_eps": {"above": 0.0},
}
