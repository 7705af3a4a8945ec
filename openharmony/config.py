"""The model config: one dataclass read from either checkpoint layout.

Three spellings exist in the wild and all must give the same `ModelConfig`:

* Hugging Face `config.json` with `rope_theta` + `rope_scaling` (as published on the hub);
* the same re-saved by transformers 5, with `rope_parameters` (`rope_theta` inside);
* OpenAI's `original/config.json` (`num_experts`, `rope_scaling_factor`, `rope_ntk_*`, ...).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .json_values import (as_float, check_int, check_number, check_token_ids,
                          first_given, given, present, require, valid_int, valid_number)

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
class ModelConfig:
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

    # -- reading (absent or null fields take their defaults; present ones must be valid:
    # openharmony/json_values.py) -----------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a Hugging Face or an OpenAI `original/` config dict."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        return cls._from_original(d) if is_original(d) else cls._from_hf(d)

    @classmethod
    def from_path(cls, path: str | Path) -> "ModelConfig":
        """Read `config.json` (a file, a checkpoint folder, or a folder with `original/`)."""
        path = Path(path)
        if path.is_dir():
            candidates = [path / "config.json", path / "original" / "config.json"]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise ConfigError(f"no config.json in {path} (nor in {path / 'original'})")
            path = found
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def _from_hf(cls, d: dict[str, Any]) -> "ModelConfig":
        model_type = d.get("model_type")
        if model_type != "gpt_oss":
            raise ConfigError(f"model_type is {model_type!r}, expected 'gpt_oss' "
                              "(this engine runs gpt-oss models only)")
        experts = first_given(d, "num_local_experts", "num_experts")
        top_k = first_given(d, "num_experts_per_tok", "experts_per_token")
        require(d, "num_hidden_layers", "vocab_size", "hidden_size", "intermediate_size",
                "num_attention_heads",
                extra={"num_local_experts": experts, "num_experts_per_tok": top_k})
        n_heads = d["num_attention_heads"]
        head_dim = d.get("head_dim")
        if head_dim is None:  # as transformers: hidden_size / heads
            head_dim = valid_int(d, "hidden_size") // valid_int(d, "num_attention_heads")
            if head_dim == 0:
                raise ConfigError(f"head_dim is absent and hidden_size ({d['hidden_size']}) / "
                                  f"num_attention_heads ({n_heads}) is below 1")
        layer_types = d.get("layer_types")
        if layer_types is None:
            layer_types = alternating_layers(valid_int(d, "num_hidden_layers", MAX_LAYERS))
        elif not isinstance(layer_types, list):
            raise ConfigError(f"layer_types must be a list of strings, got {layer_types!r}")
        rope_theta, rope_scaling = _hf_rope(d)
        # Absent (or null): the dataclass's default; the token ids may be null (no such token).
        optional = present(swiglu_limit=as_float(d.get("swiglu_limit")),
                           swiglu_alpha=as_float(d.get("swiglu_alpha")),
                           rms_norm_eps=as_float(d.get("rms_norm_eps")),
                           max_position_embeddings=d.get("max_position_embeddings"))
        optional.update({name: tuple(d[name]) if isinstance(d[name], list) else d[name]
                         for name in ("eos_token_id", "pad_token_id") if name in d})
        return cls(
            num_hidden_layers=d["num_hidden_layers"],
            num_local_experts=experts,
            num_experts_per_tok=top_k,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            head_dim=head_dim,
            num_attention_heads=n_heads,
            num_key_value_heads=given(d, "num_key_value_heads", n_heads),
            sliding_window=given(d, "sliding_window", HF_SLIDING_WINDOW),
            layer_types=tuple(layer_types),
            rope_theta=as_float(rope_theta),
            rope_scaling=rope_scaling,
            **optional,
        )

    @classmethod
    def _from_original(cls, d: dict[str, Any]) -> "ModelConfig":
        require(d, "num_hidden_layers", "num_experts", "experts_per_token", "vocab_size",
                "hidden_size", "intermediate_size", "head_dim", "num_attention_heads",
                "num_key_value_heads", "sliding_window", "rope_theta")
        # These two make max_position_embeddings and decide whether YaRN is on, so they are
        # checked here under their own names: factor 1 means plain RoPE, below 1 is an error.
        yarn = YarnScaling()  # its defaults are OpenAI's too
        initial_context = valid_int(d, "initial_context_length",
                                    default=yarn.original_max_position_embeddings)
        factor = valid_number(d, "rope_scaling_factor", default=1.0, at_least=1.0)
        max_positions = initial_context * factor
        if not max_positions < 2 ** 31:
            raise ConfigError(f"initial_context_length ({initial_context}) x "
                              f"rope_scaling_factor ({factor}) must be below 2**31 positions")
        # Checked even when factor 1 leaves them unused: a NaN is never passed over.
        beta_fast = valid_number(d, "rope_ntk_beta", default=yarn.beta_fast)
        beta_slow = valid_number(d, "rope_ntk_alpha", default=yarn.beta_slow)
        scaling = None
        if factor > 1:
            scaling = YarnScaling(factor=factor, beta_fast=beta_fast, beta_slow=beta_slow,
                                  original_max_position_embeddings=initial_context)
        return cls(
            num_hidden_layers=d["num_hidden_layers"],
            num_local_experts=d["num_experts"],
            num_experts_per_tok=d["experts_per_token"],
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            head_dim=d["head_dim"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d["num_key_value_heads"],
            sliding_window=d["sliding_window"],
            layer_types=alternating_layers(valid_int(d, "num_hidden_layers", MAX_LAYERS)),
            rope_theta=as_float(d["rope_theta"]),
            rope_scaling=scaling,
            max_position_embeddings=int(max_positions),
            **present(swiglu_limit=as_float(d.get("swiglu_limit"))),
        )

    # -- writing -------------------------------------------------------------------------

    def to_hf_dict(self, rope_spelling: str = "rope_scaling") -> dict[str, Any]:
        """The Hugging Face `config.json` for this config.

        `rope_spelling` is "rope_scaling" (as on the hub) or "rope_parameters" (transformers 5).
        """
        d: dict[str, Any] = {
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "num_hidden_layers": self.num_hidden_layers,
            "num_local_experts": self.num_local_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "experts_per_token": self.num_experts_per_tok,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "head_dim": self.head_dim,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "sliding_window": self.sliding_window,
            "layer_types": list(self.layer_types),
            "swiglu_limit": self.swiglu_limit,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_bias": True,
            "attention_dropout": 0.0,
            "hidden_act": "silu",
            "initializer_range": 0.02,
            "tie_word_embeddings": False,
            "use_cache": True,
            "output_router_logits": False,
            "router_aux_loss_coef": 0.9,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
            else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "bfloat16",
            "quantization_config": {
                "quant_method": "mxfp4",
                "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                           "model.embed_tokens", "lm_head"],
            },
        }
        if self.swiglu_alpha != _default("swiglu_alpha"):
            d["swiglu_alpha"] = self.swiglu_alpha
        rope: dict[str, Any]
        if self.rope_scaling is None:
            rope = {"rope_type": "default"}
        else:
            rope = {"rope_type": "yarn", **asdict(self.rope_scaling)}
            if rope["attention_factor"] is None:
                del rope["attention_factor"]
        if rope_spelling == "rope_scaling":
            d["rope_theta"] = self.rope_theta
            # Not null: transformers 5 reads a null rope_scaling as gpt-oss's default YaRN.
            d["rope_scaling"] = rope
        elif rope_spelling == "rope_parameters":
            d["rope_parameters"] = {**rope, "rope_theta": self.rope_theta}
        else:
            raise ValueError(f"rope_spelling must be 'rope_scaling' or 'rope_parameters', "
                             f"got {rope_spelling!r}")
        return d

    def to_original_dict(self) -> dict[str, Any]:
        """OpenAI's `original/config.json`. Only configs that layout can express are allowed."""
        if self.layer_types != alternating_layers(self.num_hidden_layers):
            raise ConfigError("the original/ layout can only express sliding attention on even "
                              "layers")
        # Without YaRN the context length is the original one (factor 1).
        y = self.rope_scaling or YarnScaling(factor=1.0,
                                             original_max_position_embeddings=self.max_position_embeddings)
        # Token ids are the tokenizer's business, not the weights': original/ does not carry
        # them and they come back as gpt-oss's defaults.
        lost = [name for name in ("rms_norm_eps", "swiglu_alpha")
                if getattr(self, name) != _default(name)]
        if y.truncate:
            lost.append("rope_scaling.truncate")
        if y.attention_factor is not None:
            lost.append("rope_scaling.attention_factor")
        if self.max_position_embeddings != int(y.original_max_position_embeddings * y.factor):
            lost.append("max_position_embeddings")
        if lost:
            raise ConfigError(f"the original/ layout cannot express {', '.join(lost)}")
        return {
            "num_hidden_layers": self.num_hidden_layers,
            "num_experts": self.num_local_experts,
            "experts_per_token": self.num_experts_per_tok,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit,
            "head_dim": self.head_dim,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "sliding_window": self.sliding_window,
            "initial_context_length": y.original_max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling_factor": y.factor,
            "rope_ntk_alpha": y.beta_slow,
            "rope_ntk_beta": y.beta_fast,
        }


# Keys only OpenAI's original/config.json has (hub config.json files also carry
# experts_per_token and initial_context_length, so those do not tell the layouts apart).
_ORIGINAL_ONLY_KEYS = ("num_experts", "rope_scaling_factor", "rope_ntk_alpha", "rope_ntk_beta")
# transformers' GptOssConfig default, for an HF config without `sliding_window`.
HF_SLIDING_WINDOW = 128


def is_original(d: Any) -> bool:
    """Whether a config dict is in OpenAI's `original/` spelling (the one rule: reading a
    config and finding a checkpoint's layout both ask it)."""
    return (isinstance(d, dict) and "model_type" not in d and "num_local_experts" not in d
            and any(k in d for k in _ORIGINAL_ONLY_KEYS))


def alternating_layers(n_layers: int) -> tuple[str, ...]:
    """Sliding attention on even layers, full on odd ones: OpenAI's reference (the only
    pattern the original/ layout expresses) and transformers' default."""
    return tuple(SLIDING if i % 2 == 0 else FULL for i in range(n_layers))

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


def _default(name: str) -> Any:
    """A `ModelConfig` field's default (written once, in the dataclass)."""
    return ModelConfig.__dataclass_fields__[name].default


def _hf_rope(d: dict[str, Any]) -> tuple[Any, YarnScaling | None]:
    """RoPE theta and YaRN scaling from either `rope_scaling`+`rope_theta` or `rope_parameters`."""
    params = d.get("rope_parameters")
    name = "rope_parameters"
    if params is not None:
        if not isinstance(params, dict):
            raise ConfigError(f"rope_parameters must be an object, got {params!r}")
        theta = given(params, "rope_theta", d.get("rope_theta"))
    else:
        params, name = d.get("rope_scaling"), "rope_scaling"
        theta = d.get("rope_theta")
    if theta is None:
        raise ConfigError("config is missing required field(s): rope_theta")
    if params is None:
        # As transformers: a gpt-oss config without a RoPE block means gpt-oss's YaRN.
        return theta, YarnScaling()
    if not isinstance(params, dict):
        raise ConfigError(f"{name} must be an object, got {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "yarn":
        raise ConfigError(f"unsupported RoPE type {rope_type!r}: gpt-oss uses 'yarn' (or none)")
    known = {"factor", "beta_fast", "beta_slow", "original_max_position_embeddings", "truncate",
             "attention_factor"}
    kwargs = {k: v for k, v in params.items() if k in known and v is not None}
    for k in ("factor", "beta_fast", "beta_slow", "attention_factor"):
        if k in kwargs:
            kwargs[k] = as_float(kwargs[k])
    return theta, YarnScaling(**kwargs)
