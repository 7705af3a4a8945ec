"""Scripted ("bigram") checkpoints: a model whose next token is a chosen function of the
current one, so what it says is known in advance, independently of the generation code.

`write_bigram_checkpoint(source, folder, chains)` copies a single-file random checkpoint (the
tiny-vocab one the tests write with `openharmony.testing.random_checkpoint`) and zeroes its
attention and expert outputs, so the residual stream stays the current token's embedding; then it sets
one embedding dimension per chained token and the lm_head row of its successor, so greedy
decoding follows `chains[current token]`. `bigram_chains(*sequences)` builds `chains` from
token sequences, each token followed by the next.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import mlx.core as mx
import numpy as np

# The logit of the scripted successor; every other logit is 0.
SUCCESSOR_LOGIT = 10.0


def bigram_chains(*sequences: Sequence[int]) -> dict[int, int]:
    """token -> the token that follows it in `sequences` (a token must have one successor)."""
    chains: dict[int, int] = {}
    for sequence in sequences:
        for current, following in zip(sequence, sequence[1:]):
            if chains.get(current, following) != following:
                raise ValueError(f"token {current} is followed by both {chains[current]} "
                                 f"and {following}")
            chains[current] = following
    return chains


def write_bigram_checkpoint(source: Path, folder: Path, chains: dict[int, int]) -> Path:
    """A copy of the checkpoint `source` whose next token is `chains[current token]` (greedy)."""
    shutil.copytree(source, folder)
    path = folder / "model.safetensors"
    weights = mx.load(str(path))
    mx.eval(weights)  # read whole before the file is rewritten
    for name, tensor in weights.items():
        if ("self_attn.o_proj" in name or "experts.down_proj_blocks" in name
                or "experts.down_proj_bias" in name):
            weights[name] = mx.zeros_like(tensor)  # no attention, no experts
    vocab, hidden = weights["model.embed_tokens.weight"].shape
    if len(chains) > hidden:
        raise ValueError(f"{len(chains)} chained tokens need more than {hidden} dimensions")
    embedding = np.zeros((vocab, hidden), np.float32)
    lm_head = np.zeros(weights["lm_head.weight"].shape, np.float32)
    for dim, (current, following) in enumerate(chains.items()):
        embedding[current, dim] = 1.0
        lm_head[following, dim] = SUCCESSOR_LOGIT
    for name, values in (("model.embed_tokens.weight", embedding), ("lm_head.weight", lm_head)):
        weights[name] = mx.array(values).astype(weights[name].dtype)
    weights["model.norm.weight"] = mx.ones_like(weights["model.norm.weight"])
    mx.save_safetensors(str(path), weights, metadata={"format": "pt"})
    return folder
