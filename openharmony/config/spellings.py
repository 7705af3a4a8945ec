"""The three spellings of a gpt-oss config.json, read and written.

* Hugging Face `config.json` with `rope_theta` + `rope_scaling` (as published on the hub);
* the same re-saved by transformers 5, with `rope_parameters` (`rope_theta` inside);
* OpenAI's `original/config.json` (`num_experts`, `rope_scaling_factor`, `rope_ntk_*`, ...).

A field that is absent (or null) takes the dataclass's default; a present one must be valid
(values.py). `is_original` is the one rule for telling OpenAI's spelling apart (reading a
config and finding a checkpoint's layout both ask it).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..errors import ConfigError
from .fields import MAX_LAYERS, ConfigFields, YarnScaling, alternating_layers, default
from .values import as_float, first_given, given, present, require, valid_int, valid_number

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


def from_hf(cls, d: dict[str, Any]):
    """A `cls` (ModelConfig) from a Hugging Face config dict (either RoPE spelling)."""
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


def from_original(cls, d: dict[str, Any]):
    """A `cls` (ModelConfig) from OpenAI's `original/config.json` dict."""
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


def to_hf_dict(c: ConfigFields, rope_spelling: str = "rope_scaling") -> dict[str, Any]:
    """The Hugging Face `config.json` for this config.

    `rope_spelling` is "rope_scaling" (as on the hub) or "rope_parameters" (transformers 5).
    """
    d: dict[str, Any] = {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "num_hidden_layers": c.num_hidden_layers,
        "num_local_experts": c.num_local_experts,
        "num_experts_per_tok": c.num_experts_per_tok,
        "experts_per_token": c.num_experts_per_tok,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "head_dim": c.head_dim,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "sliding_window": c.sliding_window,
        "layer_types": list(c.layer_types),
        "swiglu_limit": c.swiglu_limit,
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "attention_bias": True,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.9,
        "eos_token_id": list(c.eos_token_id) if isinstance(c.eos_token_id, tuple)
        else c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "torch_dtype": "bfloat16",
        "quantization_config": {
            "quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
        },
    }
    if c.swiglu_alpha != default("swiglu_alpha"):
        d["swiglu_alpha"] = c.swiglu_alpha
    rope: dict[str, Any]
    if c.rope_scaling is None:
        rope = {"rope_type": "default"}
    else:
        rope = {"rope_type": "yarn", **asdict(c.rope_scaling)}
        if rope["attention_factor"] is None:
            del rope["attention_factor"]
    if rope_spelling == "rope_scaling":
        d["rope_theta"] = c.rope_theta
        # Not null: transformers 5 reads a null rope_scaling as gpt-oss's default YaRN.
        d["rope_scaling"] = rope
    elif rope_spelling == "rope_parameters":
        d["rope_parameters"] = {**rope, "rope_theta": c.rope_theta}
    else:
        raise ValueError(f"rope_spelling must be 'rope_scaling' or 'rope_parameters', "
                         f"got {rope_spelling!r}")
    return d


def to_original_dict(c: ConfigFields) -> dict[str, Any]:
    """OpenAI's `original/config.json`. Only configs that layout can express are allowed."""
    if c.layer_types != alternating_layers(c.num_hidden_layers):
        raise ConfigError("the original/ layout can only express sliding attention on even "
                          "layers")
    # Without YaRN the context length is the original one (factor 1).
    y = c.rope_scaling or YarnScaling(
        factor=1.0, original_max_position_embeddings=c.max_position_embeddings)
    # Token ids are the tokenizer's business, not the weights': original/ does not carry
    # them and they come back as gpt-oss's defaults.
    lost = [name for name in ("rms_norm_eps", "swiglu_alpha")
            if getattr(c, name) != default(name)]
    if y.truncate:
        lost.append("rope_scaling.truncate")
    if y.attention_factor is not None:
        lost.append("rope_scaling.attention_factor")
    if c.max_position_embeddings != int(y.original_max_position_embeddings * y.factor):
        lost.append("max_position_embeddings")
    if lost:
        raise ConfigError(f"the original/ layout cannot express {', '.join(lost)}")
    return {
        "num_hidden_layers": c.num_hidden_layers,
        "num_experts": c.num_local_experts,
        "experts_per_token": c.num_experts_per_tok,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "swiglu_limit": c.swiglu_limit,
        "head_dim": c.head_dim,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "sliding_window": c.sliding_window,
        "initial_context_length": y.original_max_position_embeddings,
        "rope_theta": c.rope_theta,
        "rope_scaling_factor": y.factor,
        "rope_ntk_alpha": y.beta_slow,
        "rope_ntk_beta": y.beta_fast,
    }


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
