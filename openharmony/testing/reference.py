"""The independent reference for model parity: Hugging Face transformers' GptOssForCausalLM
(the tests' oracle, and the parity scripts'; transformers and torch come with the `test` extra).

Runs on torch CPU in float32 with eager attention. The MXFP4 experts are dequantized by
transformers itself while loading (`Mxfp4Config(dequantize=True)`; this works offline on CPU,
without triton or the `kernels` package), so the reference shares no code with the engine:
not the loader, not the MXFP4 decoding, not the RoPE tables.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def load_reference(path: str | Path, **options):
    """GptOssForCausalLM from an HF-layout checkpoint folder, float32, eager attention
    (`options`: more of `from_pretrained`'s)."""
    import torch
    import transformers
    from transformers import GptOssForCausalLM, Mxfp4Config

    transformers.logging.set_verbosity_error()  # tiny configs trip vocabulary-size warnings
    transformers.utils.logging.disable_progress_bar()
    model = GptOssForCausalLM.from_pretrained(
        str(path), quantization_config=Mxfp4Config(dequantize=True), dtype=torch.float32,
        attn_implementation="eager", **options)
    experts = model.model.layers[0].mlp.experts
    assert experts.gate_up_proj.dtype == torch.float32, "the reference did not dequantize"
    return model.eval()


def reference_logits(model, tokens: np.ndarray) -> np.ndarray:
    """Full forward (no cache) of tokens [B, T] -> float32 logits [B, T, V]."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(np.asarray(tokens, dtype=np.int64)),
                    use_cache=False)
    return out.logits.float().numpy()


def reference_rope(config_dict: dict) -> tuple[np.ndarray, float]:
    """transformers' RoPE inverse frequencies [D/2] and cos/sin factor for an HF config dict."""
    from transformers import GptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding

    config = GptOssConfig(**config_dict)
    rope_type = config.rope_parameters["rope_type"]
    if rope_type == "default":
        inv_freq, factor = GptOssRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        inv_freq, factor = ROPE_INIT_FUNCTIONS[rope_type](config)
    return inv_freq.double().numpy(), float(factor)


def load_exact_reference(path: str | Path):
    """transformers' model in float64 with its RoPE angles computed in float64: the exact math
    at any position (to float64 rounding).

    transformers computes RoPE in float32 even in a float64 model: it builds the inverse
    frequencies in float32 and its `GptOssRotaryEmbedding.forward` casts positions and
    frequencies with `.float()`. At position 1e5 that rounding moves an angle by ~4e-3 rad, so
    its float32 logits there are not exact (docs/cache.md). Here the inverse frequencies are
    transformers' formula transcribed into float64 NumPy (checked against its float32 values)
    and the rotary forward is its own with float64 in place of `.float()`; everything else is
    transformers' model, cast to float64.
    """
    import types

    import torch

    # Its default experts use torch._grouped_mm, which has no float64; the eager loop does.
    model = load_reference(path, experts_implementation="eager").to(torch.float64)
    rotary = model.model.rotary_emb
    inv_freq = _float64_inverse_frequencies(model.config)
    np.testing.assert_allclose(inv_freq, rotary.inv_freq.numpy(), rtol=1e-6)  # its formula
    rotary.inv_freq = torch.from_numpy(inv_freq)

    def forward(self, x, position_ids):  # GptOssRotaryEmbedding.forward, float64 throughout
        freqs = position_ids[..., None].double() * self.inv_freq.double()
        return ((freqs.cos() * self.attention_scaling).to(x.dtype),
                (freqs.sin() * self.attention_scaling).to(x.dtype))

    rotary.forward = types.MethodType(forward, rotary)
    return model


def _float64_inverse_frequencies(config) -> np.ndarray:
    """transformers' default and YaRN inverse frequencies (modeling_rope_utils), in float64."""
    rope = config.rope_parameters
    base, dim = rope["rope_theta"], config.head_dim
    pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if rope["rope_type"] == "default":
        return 1.0 / pos_freqs
    assert rope["rope_type"] == "yarn", rope
    factor = rope["factor"]
    original = rope.get("original_max_position_embeddings")

    def correction_dim(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(rope.get("beta_fast") or 32), correction_dim(
        rope.get("beta_slow") or 1)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp
    return (1.0 / (factor * pos_freqs) * (1 - extrapolation_factor)
            + 1.0 / pos_freqs * extrapolation_factor)
