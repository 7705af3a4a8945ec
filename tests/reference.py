"""The independent reference for model parity: Hugging Face transformers' GptOssForCausalLM.

Runs on torch CPU in float32 with eager attention. The MXFP4 experts are dequantized by
transformers itself while loading (`Mxfp4Config(dequantize=True)`; this works offline on CPU,
without triton or the `kernels` package), so the reference shares no code with the engine:
not the loader, not the MXFP4 decoding, not the RoPE tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_reference(path: str | Path):
    """GptOssForCausalLM from an HF-layout checkpoint folder, float32, eager attention."""
    import torch
    import transformers
    from transformers import GptOssForCausalLM, Mxfp4Config

    transformers.logging.set_verbosity_error()  # tiny configs trip vocabulary-size warnings
    transformers.utils.logging.disable_progress_bar()
    model = GptOssForCausalLM.from_pretrained(
        str(path), quantization_config=Mxfp4Config(dequantize=True), dtype=torch.float32,
        attn_implementation="eager")
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
