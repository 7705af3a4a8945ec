"""The GPT-OSS forward pass in MLX.

    x = embed(tokens)
    for each block:  x += attention(rmsnorm(x));  x += experts(rmsnorm(x))
    logits = lm_head(rmsnorm(x))

The math is that of transformers' and OpenAI's reference implementations (docs/model.md):
GQA attention with q/k/v/o biases and one learned sink logit per head, a sliding window of W
keys on the layers `config.layer_types` marks, half-split RoPE with YaRN (unrounded correction
range), top-k routing with a softmax over the k chosen logits, and MXFP4 experts that stay
packed (openharmony/moe.py). Loading lives in openharmony/load.py.

Numerics: RMSNorm and the router run in float32 whatever the compute dtype (the router's top-k
choice is where low precision hurts most); attention softmax is float32 inside
`mx.fast.scaled_dot_product_attention`; logits are returned as float32.
"""

from __future__ import annotations

import math
from typing import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .cache import make_caches
from .config import MXFP4_BLOCK, ModelConfig
from .errors import CheckpointError, ConfigError, InputError
from . import loader, native
from .linear import Embedding, Linear
from .moe import MLP
from .parallel import ExpertShard
from .mxfp4 import to_mlx

# Rows of the lm_head quantized at once when `quantized_lm_head` is asked for: mx.quantize
# (mxfp4, CPU) peaks at about 20x its input's bytes, 0.47 GB for 2048 rows of 2880.
QUANTIZE_ROWS = 2048


def default_dtype() -> mx.Dtype:
    """The compute dtype when none is asked for.

    MLX's CPU backend runs bfloat16 arithmetic many times slower than float32 (it has no bf16
    kernels), so float32 there; bfloat16 on a GPU (Metal or CUDA), where it halves the memory
    traffic that bounds decoding.
    """
    return mx.float32 if mx.default_device() == mx.cpu else mx.bfloat16


COMPUTE_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16}


def compute_dtype(dtype: mx.Dtype | str | None) -> mx.Dtype:
    """The compute dtype for `dtype` (an mx dtype, its name, or None for the default)."""
    if dtype is None:
        return default_dtype()
    if isinstance(dtype, str) and dtype in COMPUTE_DTYPES:
        return COMPUTE_DTYPES[dtype]
    if isinstance(dtype, mx.Dtype) and dtype in COMPUTE_DTYPES.values():
        return dtype
    raise ConfigError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {dtype!r}")


# -- layers -------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """`x * rsqrt(mean(x^2) + eps) * w`, computed in float32 and cast back to x's dtype."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dims,), dtype=mx.float32)
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x.astype(mx.float32), self.weight, self.eps).astype(x.dtype)


def rope_inverse_frequencies(config: ModelConfig) -> tuple[np.ndarray, float]:
    """Per-pair inverse frequencies [D/2] and the factor YaRN applies to cos and sin.

    YaRN exactly as transformers and OpenAI's reference: the correction range [low, high] is
    rounded outwards only when `truncate` is set (gpt-oss ships `truncate: false`).
    """
    dims, theta = config.head_dim, config.rope_theta
    base_inv_freq = 1.0 / theta ** (np.arange(0, dims, 2, dtype=np.float64) / dims)
    yarn = config.rope_scaling
    if yarn is None:
        return base_inv_freq, 1.0

    def correction_dim(rotations: float) -> float:
        return dims * math.log(yarn.original_max_position_embeddings
                               / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(yarn.beta_fast), correction_dim(yarn.beta_slow)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dims - 1)
    if low == high:
        high += 0.001  # as the references: avoids a division by zero
    ramp = np.clip((np.arange(dims // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    inv_freq = (1 - ramp) * base_inv_freq + ramp * base_inv_freq / yarn.factor
    return inv_freq, yarn.mscale


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        hidden, self.head_dim = config.hidden_size, config.head_dim
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.q_proj = Linear(hidden, self.n_heads * self.head_dim, bias=True)
        self.k_proj = Linear(hidden, self.n_kv_heads * self.head_dim, bias=True)
        self.v_proj = Linear(hidden, self.n_kv_heads * self.head_dim, bias=True)
        self.o_proj = Linear(self.n_heads * self.head_dim, hidden, bias=True)
        self.sinks = mx.zeros((self.n_heads,))
        self.window = config.sliding_window if config.is_sliding(layer) else None

        inv_freq, attention_factor = rope_inverse_frequencies(config)
        self.rope_inverse_frequencies = inv_freq  # float64 NumPy [D/2]: a host value, not a weight
        # YaRN multiplies cos and sin by `attention_factor` for both q and k, which scales every
        # q.k score by its square: fold that into the softmax scale instead of rescaling q and k.
        self.scale = attention_factor ** 2 / math.sqrt(self.head_dim)

    def rope(self, x: mx.array, offset: int | Sequence[int]) -> mx.array:
        """Rotate x [B, H, T, D] for positions offset .. offset+T-1 (half-split pairs).

        `offset` is the cache's position, a host int (a batch: one int per row). The angles
        (position x inverse frequency) are computed in float64 on the host and only cos and
        sin rounded to float32. In float32, as `mx.fast.rope` computes them, an angle near
        1e5 rad is off by up to ~4e-3 (one float32 step at 1e5 is 7.8e-3), which moved the
        logits by up to 4e-3 at position 100,000 (docs/cache.md); in float64 they are exact
        at any position. The offset is already on the host, so this adds no device sync.
        """
        T = x.shape[2]
        positions = np.asarray(offset, dtype=np.float64)[..., None] + np.arange(T)  # [(B,) T]
        angles = positions[..., None] * self.rope_inverse_frequencies  # [(B,) T, D/2]
        cos, sin = (mx.array(f(angles), dtype=x.dtype) for f in (np.cos, np.sin))
        if angles.ndim == 3:  # one row of positions per batch row: broadcast over heads
            cos, sin = cos[:, None], sin[:, None]
        first, second = x[..., :self.head_dim // 2], x[..., self.head_dim // 2:]
        return mx.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)

    def __call__(self, x: mx.array, cache) -> mx.array:
        B, T, _ = x.shape
        D = self.head_dim
        q = self.q_proj(x).reshape(B, T, self.n_heads, D).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, T, self.n_kv_heads, D).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, T, self.n_kv_heads, D).transpose(0, 2, 1, 3)

        q, k = self.rope(q, cache.offset), self.rope(k, cache.offset)
        # The cache stores k and v and computes the attention (openharmony/cache/base.py): GQA,
        # the sink logit per head in the softmax, the window, in whatever form it holds them.
        out = cache.attend(q, k, v, scale=self.scale, sinks=self.sinks, window=self.window)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, self.n_heads * D))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, shard: ExpertShard | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, shard)

    def __call__(self, x: mx.array, cache) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), cache)
        return x + self.mlp(self.post_attention_layernorm(x))


# -- the model ----------------------------------------------------------------------------


class Model(nn.Module):
    """GPT-OSS. Parameter names are the loader's engine names (MXFP4 `blocks` -> `weight`).

    With a distributed `group` of more than one rank this rank holds only its share of every
    layer's experts (`self.local_experts`, a range; None when it holds them all) and each forward
    sums the ranks' expert results (openharmony/parallel): every rank gets the full logits.
    """

    def __init__(self, config: ModelConfig, dtype: mx.Dtype | str | None = None,
                 quantized_lm_head: bool = False, group: mx.distributed.Group | None = None):
        super().__init__()
        self.config = config
        self.dtype = compute_dtype(dtype)
        self.quantized_lm_head = quantized_lm_head
        self.group = group if group is not None and group.size() > 1 else None
        shard = (ExpertShard(config.num_local_experts, self.group) if self.group is not None
                 else None)
        self.local_experts = shard.experts if shard is not None else None
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = [Block(config, i, shard) for i in range(config.num_hidden_layers)]
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if quantized_lm_head:
            # Opt-in, changes the logits (docs/speed.md): MXFP4 reads 4.25 bits per weight
            # instead of 32, and MLX's CPU mxfp4 matvec is about twice as fast as float32's.
            self.lm_head = nn.QuantizedLinear(config.hidden_size, config.vocab_size, bias=False,
                                              group_size=MXFP4_BLOCK, bits=4, mode="mxfp4")
        else:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)

    def __call__(self, tokens: mx.array, cache: list | None = None, *,
                 check_ids: bool = True) -> mx.array:
        """tokens [B, T] int -> float32 logits [B, T, vocab]; `cache` is extended in place.

        Token ids outside [0, vocab_size) raise `InputError` (the embedding lookup would read
        outside its table). That check reads the ids back to the host, so callers feeding
        ids sampled on the device from this model's logits (decoding) pass check_ids=False.
        """
        if not isinstance(tokens, mx.array) or tokens.ndim != 2 or not mx.issubdtype(
                tokens.dtype, mx.integer):
            shape = getattr(tokens, "shape", None)
            raise InputError(f"tokens must be an integer mx.array of shape [batch, time], got "
                             f"{type(tokens).__name__} {getattr(tokens, 'dtype', '')} {shape}")
        if check_ids and tokens.size:
            low, high = mx.stack([tokens.min(), tokens.max()]).tolist()
            if low < 0 or high >= self.config.vocab_size:
                raise InputError(f"token id {high if high >= self.config.vocab_size else low} "
                                 f"is outside the model's vocabulary "
                                 f"(0 .. {self.config.vocab_size - 1})")
        if cache is None:
            cache = self.make_cache()  # a forward from position 0, keeping nothing
        if len(cache) != len(self.layers):
            raise InputError(f"cache has {len(cache)} layer caches for {len(self.layers)} "
                             "layers (make it with model.make_cache())")
        # The table stays in its (narrower) stored dtype; only the gathered rows are cast.
        x = self.embed_tokens(tokens).astype(self.dtype)
        for layer, layer_cache in zip(self.layers, cache):
            x = layer(x, layer_cache)
        return self.lm_head(self.norm(x)).astype(mx.float32)

    def make_cache(self, **options) -> list:
        """One cache per layer (rotating on sliding-window layers), extended by each call.

        `options` are `openharmony.cache.make_caches`'s: `kv_bits=8` (or 4) quantizes the
        full-attention layers' keys and values, `kv_dtype` stores the float ones narrower, ...
        """
        return make_caches(self.config, **options)

    # -- weights --------------------------------------------------------------------------

    def uses_in_place(self, name: str, stored: mx.Dtype) -> bool:
        """Whether the engine tensor `name`, stored as `stored`, is used in place from the
        checkpoint's mapping (`Checkpoint.map`) rather than read into MLX's memory."""
        return used_in_place(name, stored, self.dtype, self.quantized_lm_head)

    def sanitize(self, weights: dict) -> dict:
        """Engine-named tensors (the loader's names) -> this module's parameters.

        Checks every name and shape against the config, turns MXFP4 blocks into MLX's packed
        uint32 form (a view, no copy), and holds every other tensor in
        `dense_weight_dtype(name, stored, compute dtype)`: norms and the router in float32, the
        embedding table in its stored dtype when that is no wider than the compute dtype, the
        bfloat16 `Linear` weights as stored when the native kernels run them, everything else
        in the compute dtype. Tensors used in place (`native.MappedTensor`s, see
        `uses_in_place`) pass through as they are: blocks stay [E, N, K/32, 16] bytes.
        """
        expected = engine_shapes(self.config)
        if self.local_experts is not None:  # this rank's share of the experts only
            expected.update({name: (len(self.local_experts), *shape[1:])
                             for name, shape in expected.items() if loader.is_expert_tensor(name)})
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {_summarize(missing)}")
            if unexpected:
                parts.append(f"unexpected {_summarize(unexpected)}")
            raise CheckpointError("checkpoint tensors do not match the config: "
                                  + "; ".join(parts))
        for name, shape in expected.items():
            if tuple(weights[name].shape) != shape:
                raise CheckpointError(f"tensor {name} has shape {tuple(weights[name].shape)}, "
                                      f"the config implies {shape}")

        params: dict[str, mx.array] = {}
        for name, value in weights.items():
            if name.endswith(".scales"):
                continue  # consumed with its blocks
            if name.endswith(".blocks"):
                prefix = name[: -len(".blocks")]
                scales = weights[prefix + ".scales"]
                if value.dtype != mx.uint8 or scales.dtype != mx.uint8:
                    raise CheckpointError(f"MXFP4 tensors {prefix}.blocks/.scales must be "
                                          f"uint8, got {value.dtype}/{scales.dtype}")
                if native.is_mapped(value) != native.is_mapped(scales):
                    raise CheckpointError(f"{prefix}.blocks and .scales must both be mapped "
                                          "or both be arrays")
                params[prefix + ".weight"], params[prefix + ".scales"] = (
                    (value, scales) if native.is_mapped(value) else to_mlx(value, scales))
            elif native.is_mapped(value):
                if value.dtype != dense_weight_dtype(name, value.dtype, self.dtype):
                    raise CheckpointError(f"{name} is mapped in {value.dtype}, but this model "
                                          f"holds it in {self.dtype}")
                params[name] = value
            elif name == "lm_head.weight" and self.quantized_lm_head:
                params["lm_head.weight"], params["lm_head.scales"] = _quantize_mxfp4(value)
            else:
                params[name] = value.astype(dense_weight_dtype(name, value.dtype, self.dtype))
        return params


def _quantize_mxfp4(weight: mx.array) -> tuple[mx.array, mx.array]:
    """weight [out, in] -> MLX's packed mxfp4 (uint32 [out, in/8], uint8 scales [out, in/32])."""
    chunks = []
    for row in range(0, weight.shape[0], QUANTIZE_ROWS):
        chunks.append(mx.quantize(weight[row:row + QUANTIZE_ROWS].astype(mx.float32),
                                  group_size=MXFP4_BLOCK, bits=4, mode="mxfp4"))
        mx.eval(chunks[-1])  # one chunk's temporaries at a time
    return (mx.concatenate([w for w, _ in chunks]), mx.concatenate([s for _, s in chunks]))


def used_in_place(name: str, stored: mx.Dtype, dtype: mx.Dtype,
                  quantized_lm_head: bool = False) -> bool:
    """Whether a model of compute dtype `dtype` uses the engine tensor `name` (stored as
    `stored`) in place from the checkpoint's mapping (`Model.uses_in_place`).

    With the native kernels, every tensor they read as stored: the MXFP4 experts and the
    bfloat16 embedding, attention projections and lm_head, 98% of the bytes. The rest (norms,
    biases, sinks, router: ~50 MB on 20b) is read and converted into MLX's memory.
    """
    if not native.use_native():
        return False
    if loader.is_expert_tensor(name) and name.endswith((".blocks", ".scales")):
        return True
    if name == "lm_head.weight" and quantized_lm_head:
        return False
    return (stored == mx.bfloat16 and (_native_dense(name) or name == "embed_tokens.weight")
            and dense_weight_dtype(name, stored, dtype) == stored)


def dense_weight_dtype(name: str, stored: mx.Dtype, dtype: mx.Dtype) -> mx.Dtype:
    """The dtype a floating engine tensor `name` stored as `stored` is held in, for compute
    dtype `dtype` (an MXFP4-quantized lm_head aside)."""
    if _kept_in_float32(name):
        return mx.float32
    if name == "embed_tokens.weight" and stored.size <= dtype.size:
        # Only gathered rows are ever cast, exactly; in float32 mode this halves the table
        # (1.16 GB on gpt-oss).
        return stored
    if stored == mx.bfloat16 and _native_dense(name) and native.use_native():
        # The native kernel multiplies bfloat16 weights with float32 activations in float32
        # (openharmony/linear.py): the same products from half the bytes (1.16 GB less for
        # the lm_head alone).
        return stored
    return dtype


def _native_dense(name: str) -> bool:
    """The `Linear` weights: attention projections and the lm_head."""
    return (".self_attn." in name and name.endswith("_proj.weight")) or name == "lm_head.weight"


def _kept_in_float32(name: str) -> bool:
    return name.endswith("norm.weight") or ".mlp.router." in name


def _summarize(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def engine_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every engine-named tensor of a checkpoint with this config, with its shape."""
    return {name: shape for name, (shape, _) in loader.engine_shapes(config).items()}
