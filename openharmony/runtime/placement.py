"""How each checkpoint tensor is held by a model: the one table of the rule.

For an engine-named tensor, its stored dtype, the compute dtype and the `Kernels`:

| tensor | held in | in place from the mapping |
| --- | --- | --- |
| experts' MXFP4 `blocks`, `scales` | uint8 as stored (packed: MLX's uint32 view of the blocks) | when the kernels read mapped tensors |
| norms, router | float32, whatever the compute dtype (the top-k choice is where precision matters) | no |
| `embed_tokens.weight` | as stored when no wider than the compute dtype (only gathered rows are cast, exactly: this halves the table in float32 mode), else the compute dtype | bfloat16, kernels reading mapped tensors |
| attention projections, `lm_head.weight` | bfloat16 as stored when the kernels read bf16 weights (`Kernels.reads_bf16`), else the compute dtype | bfloat16, kernels reading mapped tensors |
| `lm_head.weight` with `quantized_lm_head` | MXFP4, quantized at load (opt-in, changes the logits) | no |
| the rest (biases, sinks) | the compute dtype | no |

With the native kernels that is 98% of the bytes in place (the experts, embedding, attention
and lm_head); the rest (~50 MB on 20b) is read and converted into MLX's memory.
`Model.sanitize` holds the tensors by this table, `load_model` maps the ones it marks in place,
and `memory.checkpoint_summary` counts the bytes from it: none of them restates it.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from ..loader import is_expert_tensor
from .kernels import Kernels

MXFP4 = "mxfp4"


@dataclass(frozen=True)
class Placement:
    """How one tensor is held: `dtype` (of the values the model holds; MXFP4 bytes are uint8),
    `in_place` (used from the checkpoint's mapping, not copied into MLX's memory) and `packed`
    (MXFP4 for the experts' blocks and scales and a quantized lm_head, None for dense)."""

    dtype: mx.Dtype
    in_place: bool = False
    packed: str | None = None


def placement(name: str, stored: mx.Dtype, dtype: mx.Dtype, kernels: Kernels, *,
              quantized_lm_head: bool = False, in_place: bool = True) -> Placement:
    """How a model of compute dtype `dtype` on `kernels` holds the engine tensor `name`
    stored as `stored`. `in_place=False` copies every tensor into MLX's memory."""
    mapped = in_place and kernels.reads_mapped
    if _is_mxfp4(name):
        return Placement(mx.uint8, in_place=mapped, packed=MXFP4)
    if name == "lm_head.weight" and quantized_lm_head:
        return Placement(mx.uint8, packed=MXFP4)
    held = _dense_dtype(name, stored, dtype, kernels)
    return Placement(held, in_place=(mapped and stored == mx.bfloat16 and held == stored
                                     and (_is_linear(name) or name == "embed_tokens.weight")))


def table(checkpoint, dtype: mx.Dtype, kernels: Kernels, *, quantized_lm_head: bool = False,
          in_place: bool = True) -> dict[str, Placement]:
    """`placement` of every tensor of `checkpoint` (anything with `names()` and `dtype(name)`,
    e.g. `loader.Checkpoint`), by engine name."""
    return {name: placement(name, checkpoint.dtype(name), dtype, kernels,
                            quantized_lm_head=quantized_lm_head, in_place=in_place)
            for name in checkpoint.names()}


def _dense_dtype(name: str, stored: mx.Dtype, dtype: mx.Dtype, kernels: Kernels) -> mx.Dtype:
    if name.endswith("norm.weight") or ".mlp.router." in name:
        return mx.float32
    if name == "embed_tokens.weight" and stored.size <= dtype.size:
        return stored
    if stored == mx.bfloat16 and _is_linear(name) and kernels.reads_bf16:
        return stored  # the same float32 products from half the bytes (1.16 GB for the lm_head)
    return dtype


def _is_mxfp4(name: str) -> bool:
    return is_expert_tensor(name) and name.endswith((".blocks", ".scales"))


def _is_linear(name: str) -> bool:
    """The `Linear` weights: attention projections and the lm_head."""
    return (".self_attn." in name and name.endswith("_proj.weight")) or name == "lm_head.weight"
