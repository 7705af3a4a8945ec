"""The parity configs and the helpers that the model and cache tests and
`scripts/measure_cache.py` share: small gpt-oss configs that exercise every variant the model
supports (GQA, MHA, MQA; YaRN spellings and truncation; sliding layers in any order; tight
SwiGLU clamps), and ways of running a model through its caches."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np

from ..cache import QuantizedStorage
from ..config import FULL, SLIDING, ModelConfig, YarnScaling


def _layers(kinds: str) -> tuple[str, ...]:
    return tuple(SLIDING if k == "s" else FULL for k in kinds)


CONFIGS = {
    # gpt-oss's own RoPE (YaRN factor 32, unrounded range) and SwiGLU limit, GQA 3:1.
    "gqa-yarn": (ModelConfig(
        num_hidden_layers=2, num_local_experts=8, num_experts_per_tok=4, vocab_size=512,
        hidden_size=64, intermediate_size=128, head_dim=16, num_attention_heads=6,
        num_key_value_heads=2, sliding_window=8, layer_types=_layers("sf"),
        rope_theta=150000.0, rope_scaling=YarnScaling(), swiglu_limit=7.0,
        eos_token_id=2, pad_token_id=0), "rope_scaling"),
    # MHA, two sliding layers in a row, a truncated (rounded) YaRN range, a tight clamp; the
    # config spells RoPE as transformers 5 re-saves it.
    "mha-truncated-yarn": (ModelConfig(
        num_hidden_layers=3, num_local_experts=6, num_experts_per_tok=2, vocab_size=384,
        hidden_size=96, intermediate_size=64, head_dim=32, num_attention_heads=4,
        num_key_value_heads=4, sliding_window=5, layer_types=_layers("ssf"),
        rope_theta=10000.0,
        rope_scaling=YarnScaling(factor=8.0, beta_fast=16.0, beta_slow=2.0,
                                 original_max_position_embeddings=256, truncate=True),
        swiglu_limit=2.0, eos_token_id=2, pad_token_id=0), "rope_parameters"),
    # MQA, full attention first, many experts with top-3, an explicit YaRN attention factor.
    "mqa-attention-factor": (ModelConfig(
        num_hidden_layers=2, num_local_experts=16, num_experts_per_tok=3, vocab_size=640,
        hidden_size=32, intermediate_size=96, head_dim=8, num_attention_heads=8,
        num_key_value_heads=1, sliding_window=12, layer_types=_layers("fs"),
        rope_theta=500000.0,
        rope_scaling=YarnScaling(factor=4.0, beta_fast=24.0, beta_slow=1.5,
                                 original_max_position_embeddings=1024, attention_factor=1.3),
        swiglu_limit=4.0, eos_token_id=2, pad_token_id=0), "rope_scaling"),
}

# The parity configs whose head_dim a quantized cache accepts (a multiple of 32): the MHA one
# (head_dim 32) as it is, and the GQA/YaRN one with gpt-oss's head_dim of 64.
QUANTIZABLE = {
    "mha-truncated-yarn": CONFIGS["mha-truncated-yarn"],
    "gqa-yarn, head_dim 64": (dataclasses.replace(CONFIGS["gqa-yarn"][0], head_dim=64),
                              CONFIGS["gqa-yarn"][1]),
}


def as_stored(storage, x: np.ndarray) -> np.ndarray:
    """x [B, H, N, D] as the storage rounds it, by MLX's own decoders."""
    if isinstance(storage, QuantizedStorage):
        parts = storage.encode(mx.array(x))
        return np.array(mx.dequantize(*parts, group_size=storage.group_size,
                                      bits=storage.bits))
    return np.array(storage.encode(mx.array(x))[0].astype(mx.float32))


def chunked_then_decoded(model, tokens, caches):
    """A prefill in chunks (shorter and longer than the window), then token by token."""
    W = model.config.sliding_window
    cut = [0, 3, 3 + W + 2, 4 * W]
    logits = [model(mx.array(tokens[:, a:b]), caches) for a, b in zip(cut, cut[1:])]
    logits += [model(mx.array(tokens[:, t:t + 1]), caches) for t in range(cut[-1],
                                                                          tokens.shape[1])]
    return np.array(mx.concatenate(logits, axis=1))
