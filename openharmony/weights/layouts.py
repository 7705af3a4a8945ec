"""The two checkpoint layouts and the engine names: which tensors a config implies, under
which stored names, with which shapes and dtypes.

* Hugging Face: `model.` + engine name, the experts' `.blocks` spelled `_blocks`;
* OpenAI's `original/`: other names, q, k and v fused into one `qkv` tensor.

`_engine_sources` is the only place where stored names are mapped to engine names. The rules
that read the config files (which spelling is OpenAI's, `config.is_original`; the original
layout's sliding layers, `config.alternating_layers`) live in openharmony/config/, which
everything here builds on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..config import MXFP4_BLOCK, ModelConfig
from .safetensors import SAFETENSORS_DTYPES

HF, ORIGINAL = "hf", "original"
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


def is_expert_tensor(name: str) -> bool:
    """Whether an engine tensor has one row per expert (`layers.N.mlp.experts.*`)."""
    return ".mlp.experts." in name

