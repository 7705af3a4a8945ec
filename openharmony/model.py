"""The GPT-OSS forward pass in MLX.

    x = embed(tokens)
    for each block:  x += attention(rmsnorm(x));  x += experts(rmsnorm(x))
    logits = lm_head(rmsnorm(x))

The math is that of transformers' and OpenAI's reference implementations (docs/model.md):
GQA attention with q/k/v/o biases and one learned sink logit per head, a sliding window of W
keys on the layers `config.layer_types` marks, half-split RoPE with YaRN (unrounded correction
range), top-k routing with a softmax over the k chosen logits, and MXFP4 experts that stay
packed (openharmony/moe.py). Loading lives in openharmony/load.py.

Every matmul is the `Kernels`' the model was built with (openharmony/runtime, chosen once by
`load_model`); how each weight is held is runtime/placement.py's table. Nothing here asks
which backend runs. `Model.__call__(..., observe=)` reports each part of the forward as it is
built (`PARTS`), for profilers and benchmarks that time the parts of this one forward.

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

from . import loader, runtime
from .cache import make_caches
from .config import MXFP4_BLOCK, ModelConfig
from .errors import CheckpointError, ConfigError, InputError
from .linear import Embedding, Linear
from .moe import MLP, unreported
from .parallel import ExpertShard
from .runtime import Kernels
from .runtime.placement import MXFP4, Placement, placement

# The parts of the forward `Model.__call__` reports to `observe`, in order: "embed", then for
# each layer the LAYER_PARTS, then "norm" and "lm_head".
LAYER_PARTS = ("attention_norm", "attention", "attention_residual", "experts_norm", "router",
               "experts", "experts_residual")
PARTS = ("embed", *LAYER_PARTS, "norm", "lm_head")

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
    def __init__(self, kernels: Kernels, config: ModelConfig, layer: int):
        super().__init__()
        hidden, self.head_dim = config.hidden_size, config.head_dim
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        q_rows, kv_rows = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.q_proj = Linear(kernels, hidden, q_rows, bias=True)
        self.k_proj = Linear(kernels, hidden, kv_rows, bias=True)
        self.v_proj = Linear(kernels, hidden, kv_rows, bias=True)
        self.o_proj = Linear(kernels, q_rows, hidden, bias=True)
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
    def __init__(self, kernels: Kernels, config: ModelConfig, layer: int,
                 shard: ExpertShard | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(kernels, config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(kernels, config, shard)

    def __call__(self, x: mx.array, cache, report=unreported) -> mx.array:
        """x [B, T, H] -> [B, T, H]; `report(part, value) -> value` sees each LAYER_PART."""
        h = report("attention_norm", self.input_layernorm(x))
        x = report("attention_residual", x + report("attention", self.self_attn(h, cache)))
        h = report("experts_norm", self.post_attention_layernorm(x))
        return report("experts_residual", x + self.mlp(h, report))


# -- the model ----------------------------------------------------------------------------


class Model(nn.Module):
    """GPT-OSS. Parameter names are the loader's engine names (MXFP4 `blocks` -> `weight`).

    With a distributed `group` of more than one rank this rank holds only its share of every
    layer's experts (`self.local_experts`, a range; None when it holds them all) and each forward
    sums the ranks' expert results (openharmony/parallel): every rank gets the full logits.
    """

    def __init__(self, config: ModelConfig, dtype: mx.Dtype | str | None = None,
                 quantized_lm_head: bool = False, group: mx.distributed.Group | None = None,
                 kernels: Kernels | None = None):
        super().__init__()
        self.config = config
        self.dtype = compute_dtype(dtype)
        # Every layer multiplies through these (default: what `runtime.select()` picks now).
        self.kernels = runtime.select() if kernels is None else kernels
        self.quantized_lm_head = quantized_lm_head
        self.group = group if group is not None and group.size() > 1 else None
        shard = (ExpertShard(config.num_local_experts, self.group) if self.group is not None
                 else None)
        self.local_experts = shard.experts if shard is not None else None
        self.embed_tokens = Embedding(self.kernels, config.vocab_size, config.hidden_size)
        self.layers = [Block(self.kernels, config, i, shard)
                       for i in range(config.num_hidden_layers)]
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if quantized_lm_head:
            # Opt-in, changes the logits (docs/speed.md): MXFP4 reads 4.25 bits per weight
            # instead of 32, and MLX's CPU mxfp4 matvec is about twice as fast as float32's.
            self.lm_head = nn.QuantizedLinear(config.hidden_size, config.vocab_size, bias=False,
                                              group_size=MXFP4_BLOCK, bits=4, mode="mxfp4")
        else:
            self.lm_head = Linear(self.kernels, config.hidden_size, config.vocab_size,
                                  bias=False)

    def __call__(self, tokens: mx.array, cache: list | None = None, *,
                 check_ids: bool = True, last_only: bool = False, observe=None) -> mx.array:
        """tokens [B, T] int -> float32 logits [B, T, vocab]; `cache` is extended in place.

        Token ids outside [0, vocab_size) raise `InputError` (the embedding lookup would read
        outside its table). That check reads the ids back to the host, so callers feeding
        ids sampled on the device from this model's logits (decoding) pass check_ids=False.
        `last_only`: the logits of the last position only ([B, 1, vocab]), as generation
        wants them after a prefill.

        `observe(part, layer, value)`, the hook for profilers and benchmarks, is called for
        each part of the forward right after it is built, in `PARTS` order: "embed" (layer
        None), then for layer 0, 1, ... "attention_norm", "attention", "attention_residual",
        "experts_norm", "router", "experts", "experts_residual", then "norm" and "lm_head"
        (layer None). `value` is that part's output, lazy (nothing is evaluated for it):
        [B, T, H] arrays in the compute dtype, except "router" (expert indices and routing
        weights, [B*T, k] each), "norm" ([B, 1, H] with `last_only`) and "lm_head" (the
        returned logits). Its return value is ignored; evaluating `value` there (`mx.eval`)
        is a barrier that charges the time since the previous one to this part. Attention
        includes the cache's update; "experts" the all_sum of expert parallelism.
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
        report = _reporter(observe, None)
        # The table stays in its (narrower) stored dtype; only the gathered rows are cast.
        x = report("embed", self.embed_tokens(tokens).astype(self.dtype))
        for index, (layer, layer_cache) in enumerate(zip(self.layers, cache)):
            x = layer(x, layer_cache, _reporter(observe, index))
        if last_only:
            x = x[:, -1:]
        x = report("norm", self.norm(x))
        return report("lm_head", self.lm_head(x).astype(mx.float32))

    def make_cache(self, **options) -> list:
        """One cache per layer (rotating on sliding-window layers), extended by each call.

        `options` are `openharmony.cache.make_caches`'s: `kv_bits=8` (or 4) quantizes the
        full-attention layers' keys and values, `kv_dtype` stores the float ones narrower, ...
        """
        return make_caches(self.config, attention=self.kernels.attention, **options)

    # -- weights --------------------------------------------------------------------------

    def placement(self, name: str, stored: mx.Dtype) -> Placement:
        """How this model holds the engine tensor `name` stored as `stored` (the table in
        openharmony/runtime/placement.py)."""
        return placement(name, stored, self.dtype, self.kernels,
                         quantized_lm_head=self.quantized_lm_head)

    def sanitize(self, weights: dict) -> dict:
        """Engine-named tensors (the loader's names) -> this module's parameters.

        Checks every name and shape against the config and holds each tensor as
        `self.placement` says: MXFP4 blocks and scales as the kernels take them
        (`Kernels.pack_mxfp4`: MLX's packed uint32 form, a view, no copy; or the mapped
        blocks as they are, [E, N, K/32, 16] bytes), dense tensors cast to their held dtype.
        Tensors used in place from the checkpoint's mapping pass through as they are.
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
            held = self.placement(name, value.dtype)
            if name.endswith(".blocks"):
                prefix = name[: -len(".blocks")]
                scales = weights[prefix + ".scales"]
                if value.dtype != mx.uint8 or scales.dtype != mx.uint8:
                    raise CheckpointError(f"MXFP4 tensors {prefix}.blocks/.scales must be "
                                          f"uint8, got {value.dtype}/{scales.dtype}")
                params[prefix + ".weight"], params[prefix + ".scales"] = (
                    self.kernels.pack_mxfp4(value, scales))
            elif self.kernels.is_mapped(value):
                if value.dtype != held.dtype:
                    raise CheckpointError(f"{name} is mapped in {value.dtype}, but this model "
                                          f"holds it in {held.dtype}")
                params[name] = value
            elif held.packed == MXFP4:  # the opt-in quantized lm_head
                params["lm_head.weight"], params["lm_head.scales"] = _quantize_mxfp4(value)
            else:
                params[name] = value.astype(held.dtype)
        return params


def _reporter(observe, layer: int | None):
    """`Model.__call__`'s `observe` for one layer (None: the model's own parts), as the
    `report(part, value) -> value` the layers call."""
    if observe is None:
        return unreported

    def report(part: str, value):
        observe(part, layer, value)
        return value
    return report


def _quantize_mxfp4(weight: mx.array) -> tuple[mx.array, mx.array]:
    """weight [out, in] -> MLX's packed mxfp4 (uint32 [out, in/8], uint8 scales [out, in/32])."""
    chunks = []
    for row in range(0, weight.shape[0], QUANTIZE_ROWS):
        chunks.append(mx.quantize(weight[row:row + QUANTIZE_ROWS].astype(mx.float32),
                                  group_size=MXFP4_BLOCK, bits=4, mode="mxfp4"))
        mx.eval(chunks[-1])  # one chunk's temporaries at a time
    return (mx.concatenate([w for w, _ in chunks]), mx.concatenate([s for _, s in chunks]))


def _summarize(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def engine_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every engine-named tensor of a checkpoint with this config, with its shape."""
    return {name: shape for name, (shape, _) in loader.engine_shapes(config).items()}
