"""Parity of the MLX forward pass with Hugging Face transformers (float32, CPU).

Every config is written as a random checkpoint by the project's writer, loaded by the engine
and, independently, by transformers (which dequantizes the MXFP4 experts itself). The three
configs differ in head counts, kv heads, experts, top-k, window, swiglu_limit and RoPE, and
their sequences are six sliding windows long, so the window boundary, YaRN at many positions
and the clamp of the SwiGLU are all exercised. `test_deliberate_bugs_are_caught` shows that
the parity bound catches the classic porting bugs.

Every test that uses `cases` runs twice: on openharmony's native CPU kernels
(OPENHARMONY_KERNELS=native, skipped where the extension is not built) and on MLX's own
(OPENHARMONY_KERNELS=mlx), each with its own loaded models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import openharmony.model as model_module
import openharmony.moe as moe_module
import openharmony.mxfp4 as mxfp4_module
from openharmony import native, runtime
from openharmony.cache import KVCache
from openharmony.config import ModelConfig
from openharmony.errors import CheckpointError, ConfigError
from openharmony.weights import open_checkpoint
from openharmony.load import load_model
from openharmony.model import Model
from openharmony.mxfp4 import decode, from_mlx
from openharmony.runtime import MLXKernels, placement
from openharmony.runtime.mlx import SORT_THRESHOLD
from openharmony.testing.parity import CONFIGS
from openharmony.testing.random_checkpoint import write_random_checkpoint
from openharmony.testing.reference import load_reference, reference_logits, reference_rope

TOLERANCE = 1e-4  # max |logit difference| in float32
BATCH = 2
WINDOWS_PER_SEQUENCE = 6


ORIGINAL_LAYOUT_CONFIG = "gqa-yarn"


@dataclass
class Case:
    config: ModelConfig
    path: Path
    tokens: np.ndarray  # [BATCH, T]
    reference: np.ndarray  # transformers' float32 logits [BATCH, T, V]
    model: Model  # the engine in float32


@pytest.fixture(scope="module", params=["native", "mlx"])
def kernels(request):
    """OPENHARMONY_KERNELS for the tests that use it: each kernel path in turn."""
    if request.param == "native" and not native.available:
        pytest.skip(f"native kernels unavailable: {native.unavailable_reason}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(runtime.ENV_VAR, request.param)
        yield request.param


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """name -> (path, tokens, transformers' logits), built once per module for both paths."""
    built: dict[str, tuple[Path, np.ndarray, np.ndarray]] = {}

    def get(name: str):
        if name not in built:
            config, rope_spelling = CONFIGS[name]
            # Only the first config is expressible in OpenAI's layout (sliding on even layers).
            layout = "both" if name == ORIGINAL_LAYOUT_CONFIG else "hf"
            path = write_random_checkpoint(tmp_path_factory.mktemp(name), config, seed=7,
                                           layout=layout, rope_spelling=rope_spelling)
            length = WINDOWS_PER_SEQUENCE * config.sliding_window
            tokens = np.random.default_rng(11).integers(0, config.vocab_size, (BATCH, length))
            built[name] = path, tokens, reference_logits(load_reference(path), tokens)
        return built[name]

    return get


@pytest.fixture(scope="module")
def cases(kernels, references):
    """name -> Case, the model loaded once per module and kernel path."""
    built: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in built:
            path, tokens, reference = references(name)
            built[name] = Case(CONFIGS[name][0], path, tokens, reference,
                               load_model(path, mx.float32))
        return built[name]

    return get


def max_diff(logits: mx.array, reference: np.ndarray) -> float:
    assert logits.dtype == mx.float32 and logits.shape == reference.shape
    return float(np.abs(np.array(logits) - reference).max())


# -- parity -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_full_forward_matches_transformers(cases, name):
    case = cases(name)
    assert case.model.config == case.config
    assert case.tokens.shape[1] >= 5 * case.config.sliding_window
    assert max_diff(case.model(mx.array(case.tokens)), case.reference) <= TOLERANCE


EXPERT_DISPATCH = ("gather_qmm only", "all dequantized", "mixed")


@pytest.mark.parametrize("dispatch", EXPERT_DISPATCH)
@pytest.mark.parametrize("name", CONFIGS)
def test_prefill_expert_dispatch_matches_transformers(cases, kernels, monkeypatch, name,
                                                     dispatch):
    """Both prefill expert paths (gather_qmm, and the CPU's dequantize-then-matmul) and their
    mix within one layer give the reference's logits."""
    if kernels == "native":
        pytest.skip("MLX's kernels only: with the native kernels the experts are used in place "
                    "from the mapping, the kernel groups each expert's rows itself and the "
                    "gate_up runs fused with its SwiGLU (the parity tests above cover it)")
    case = cases(name)
    c = case.config
    calls = {"dense": 0, "gather_qmm": 0}

    def spy(method, kind):
        def counted(*args, **kwargs):
            calls[kind] += 1
            return method(*args, **kwargs)
        return counted

    Linear = moe_module.MXFP4SwitchLinear
    monkeypatch.setattr(Linear, "dense", spy(Linear.dense, "dense"))
    monkeypatch.setattr(Linear, "__call__", spy(Linear.__call__, "gather_qmm"))
    pairs = case.tokens.size * c.num_experts_per_tok
    if dispatch == "gather_qmm only":  # as on a GPU
        min_rows = None
    else:
        # "mixed": the mean rows per expert, so that some experts fall on either side.
        min_rows = 1 if dispatch == "all dequantized" else pairs // c.num_local_experts
    monkeypatch.setattr(case.model.kernels, "dequantize_min_rows", min_rows)
    assert pairs >= SORT_THRESHOLD  # the prefill path

    assert max_diff(case.model(mx.array(case.tokens)), case.reference) <= TOLERANCE
    # Two projections per expert call.
    if dispatch == "gather_qmm only":
        assert calls == {"dense": 0, "gather_qmm": 2 * c.num_hidden_layers}
    elif dispatch == "all dequantized":
        assert calls["gather_qmm"] == 0 and calls["dense"] >= 2 * c.num_hidden_layers
    else:
        assert calls["dense"] > 0 and calls["gather_qmm"] > 0


@pytest.mark.parametrize("last_only", [False, True])
def test_the_forward_reports_every_part_in_order(cases, last_only):
    """`observe` sees each part of the forward once, in order, with the shapes the config
    implies; evaluating every part as it comes (a profiler's barriers) leaves the logits
    transformers' (of the last position only with `last_only`)."""
    case = cases("mha-truncated-yarn")  # three layers
    c = case.config
    tokens = case.tokens[:, :2 * c.sliding_window + 1]
    B, T = tokens.shape
    seen = []

    def observe(part, layer, value):
        mx.eval(value)
        seen.append((part, layer, tuple(v.shape for v in value) if isinstance(value, tuple)
                     else value.shape))

    logits = case.model(mx.array(tokens), observe=observe, last_only=last_only)
    hidden = (B, T, c.hidden_size)
    routed = ((B * T, c.num_experts_per_tok),) * 2  # expert indices, routing weights
    per_layer = [("attention_norm", hidden), ("attention", hidden),
                 ("attention_residual", hidden), ("experts_norm", hidden), ("router", routed),
                 ("experts", hidden), ("experts_residual", hidden)]
    out = 1 if last_only else T
    assert seen == [("embed", None, hidden),
                    *[(part, layer, shape) for layer in range(c.num_hidden_layers)
                      for part, shape in per_layer],
                    ("norm", None, (B, out, c.hidden_size)),
                    ("lm_head", None, (B, out, c.vocab_size))]
    assert max_diff(logits, case.reference[:, T - out:T]) <= TOLERANCE


@pytest.mark.parametrize("name", CONFIGS)
def test_chunked_prefill_matches_full_forward_of_transformers(cases, name):
    case = cases(name)
    W, T = case.config.sliding_window, case.tokens.shape[1]
    # Chunks shorter and longer than the window, each starting at a different offset.
    sizes = [1, W - 1, W + 3, 2, 2 * W + 1]
    cache = case.model.make_cache()
    chunks, start = [], 0
    for size in sizes + [T]:
        chunk = case.tokens[:, start:start + size]
        chunks.append(case.model(mx.array(chunk), cache))
        start += size
        if start >= T:
            break
    assert cache[0].offset == T
    assert max_diff(mx.concatenate(chunks, axis=1), case.reference) <= TOLERANCE


@pytest.mark.parametrize("name", CONFIGS)
def test_growing_caches_on_every_layer_match(cases, name):
    """The model relies on the cache protocol only: a growing cache on a sliding layer (whose
    mask then carries the window) gives the same logits as the rotating one."""
    case = cases(name)
    W = case.config.sliding_window
    cache = [KVCache() for _ in case.model.layers]
    prefill = case.model(mx.array(case.tokens[:, :2 * W + 1]), cache)
    steps = [case.model(mx.array(case.tokens[:, t:t + 1]), cache)
             for t in range(2 * W + 1, case.tokens.shape[1])]
    assert max_diff(mx.concatenate([prefill, *steps], axis=1), case.reference) <= TOLERANCE


@pytest.mark.parametrize("name", CONFIGS)
def test_token_by_token_decode_matches_full_forward_of_transformers(cases, name):
    case = cases(name)
    cache = case.model.make_cache()
    steps = [case.model(mx.array(case.tokens[:, t:t + 1]), cache)
             for t in range(case.tokens.shape[1])]
    assert max_diff(mx.concatenate(steps, axis=1), case.reference) <= TOLERANCE


def test_original_layout_gives_the_same_logits(cases):
    case = cases(ORIGINAL_LAYOUT_CONFIG)
    assert open_checkpoint(case.path / "original").layout == "original"
    original = load_model(case.path / "original", mx.float32)
    tokens = mx.array(case.tokens)
    np.testing.assert_array_equal(np.array(original(tokens)), np.array(case.model(tokens)))
    assert max_diff(original(tokens), case.reference) <= TOLERANCE


@pytest.mark.parametrize("name", CONFIGS)
def test_bfloat16_agrees_on_the_top_token(cases, name):
    case = cases(name)
    model = load_model(case.path, mx.bfloat16)
    logits = model(mx.array(case.tokens))
    assert logits.dtype == mx.float32
    agreement = np.mean(np.array(logits).argmax(-1) == case.reference.argmax(-1))
    assert agreement >= 0.9


# -- the parity check catches the classic bugs ----------------------------------------------


def _swap_nibbles(blocks: mx.array) -> mx.array:
    return ((blocks & 0x0F) << 4) | (blocks >> 4)


def _bug_window_off_by_one(monkeypatch):  # W + 1 keys, as shipped ports did
    def caches(config, **options):
        return [KVCache() for _ in range(config.num_hidden_layers)]
    mask = KVCache._mask
    monkeypatch.setattr(model_module, "make_caches", caches)
    monkeypatch.setattr(KVCache, "_mask",
                        lambda self, n, window: mask(self, n, window and window + 1))


def _bug_yarn_range_rounded(monkeypatch):  # as mlx-lm
    rope = model_module.rope_inverse_frequencies
    monkeypatch.setattr(model_module, "rope_inverse_frequencies", lambda config: rope(
        replace(config, rope_scaling=replace(config.rope_scaling, truncate=True))))


def _bug_yarn_attention_factor_dropped(monkeypatch):
    rope = model_module.rope_inverse_frequencies
    monkeypatch.setattr(model_module, "rope_inverse_frequencies",
                        lambda config: (rope(config)[0], 1.0))


# The MXFP4 bugs below are injected where the loader converts the blocks (to_mlx), so the
# experts must be read (`in_place=False`), not used in place from the (read-only) mapping; what
# the native kernel does with mapped bytes is tested against the spec in test_native.py.
READ_NOT_MAPPED = {"nibble order swapped", "scale bias 128"}


def _bug_nibble_order(monkeypatch):
    to_mlx = mxfp4_module.to_mlx
    monkeypatch.setattr(mxfp4_module, "to_mlx", lambda b, s: to_mlx(_swap_nibbles(b), s))


def _bug_scale_bias_128(monkeypatch):
    to_mlx = mxfp4_module.to_mlx
    monkeypatch.setattr(mxfp4_module, "to_mlx", lambda b, s: to_mlx(b, s - 1))


def _bug_gate_up_halves(monkeypatch):
    def swiglu(self, gate_up):
        half = gate_up.shape[-1] // 2
        gate = mx.minimum(gate_up[..., :half], self.limit)
        up = mx.clip(gate_up[..., half:], -self.limit, self.limit)
        return gate * mx.sigmoid(self.alpha * gate) * (up + 1)
    monkeypatch.setattr(moe_module.Experts, "swiglu", swiglu)
    # The native kernels fuse the SwiGLU into the gate_up kernel (its interleave is tested
    # against NumPy in test_native.py): here they take the unfused gather path instead.
    monkeypatch.setattr(runtime.NativeKernels, "expert_pairs",
                        lambda self, experts, x, indices: experts.mlp(
                            x[:, None, None, :], indices, sorted_indices=False).reshape(
                                *indices.shape, x.shape[-1]))


def _bug_swiglu_limit_ignored(monkeypatch):  # as mlx-lm (a fixed 7.0 instead)
    swiglu = moe_module.Experts.swiglu

    def unclamped(self, gate_up):
        self.limit = math.inf
        return swiglu(self, gate_up)
    monkeypatch.setattr(moe_module.Experts, "swiglu", unclamped)
    fused = native.gather_mxfp4_swiglu  # the native kernels' fused SwiGLU
    monkeypatch.setattr(native, "gather_mxfp4_swiglu",
                        lambda *args, **kwargs: fused(*args[:5], math.inf, *args[6:], **kwargs))


def _patch_sinks(monkeypatch, change):
    sdpa = mx.fast.scaled_dot_product_attention
    monkeypatch.setattr(mx.fast, "scaled_dot_product_attention",
                        lambda q, k, v, *, scale, mask, sinks: sdpa(
                            q, k, v, scale=scale, mask=mask, sinks=change(sinks, scale)))
    attention = native.attention  # the CPU's attention kernel (issue 20), where it runs
    monkeypatch.setattr(native, "attention", lambda q, k, v, *, scale, sinks, **kw: attention(
        q, k, v, scale=scale, sinks=change(sinks, scale), **kw))


def _bug_sinks_missing(monkeypatch):
    _patch_sinks(monkeypatch, lambda sinks, scale: None)


def _bug_sinks_scaled(monkeypatch):
    _patch_sinks(monkeypatch, lambda sinks, scale: sinks * scale)


def _bug_softmax_over_all_experts(monkeypatch):
    def route(self, x):
        logits = x.astype(mx.float32) @ self.weight.T + self.bias
        indices = mx.argpartition(-logits, kth=self.top_k - 1, axis=-1)[..., :self.top_k]
        return indices, mx.take_along_axis(mx.softmax(logits, axis=-1), indices, axis=-1)
    monkeypatch.setattr(moe_module.Router, "__call__", route)


BUGS = {
    "window off by one": _bug_window_off_by_one,
    "YaRN range rounded": _bug_yarn_range_rounded,
    "YaRN attention factor dropped": _bug_yarn_attention_factor_dropped,
    "nibble order swapped": _bug_nibble_order,
    "scale bias 128": _bug_scale_bias_128,
    "gate/up as halves": _bug_gate_up_halves,
    "swiglu_limit ignored": _bug_swiglu_limit_ignored,
    "sinks missing": _bug_sinks_missing,
    "sinks scaled": _bug_sinks_scaled,
    "router softmax over all experts": _bug_softmax_over_all_experts,
}


@pytest.mark.parametrize("bug", BUGS)
def test_deliberate_bugs_are_caught(cases, monkeypatch, bug):
    case = cases("gqa-yarn")  # gpt-oss's RoPE and limit: the unrounded YaRN range matters here
    BUGS[bug](monkeypatch)
    buggy = load_model(case.path, mx.float32, in_place=False if bug in READ_NOT_MAPPED else None)
    # At least 10x the parity bound: the bound catches the bug with a wide margin.
    assert max_diff(buggy(mx.array(case.tokens)), case.reference) > 10 * TOLERANCE


# -- pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*CONFIGS, "plain-rope", "gpt-oss-20b"])
def test_rope_frequencies_match_transformers(name):
    if name == "plain-rope":
        config = replace(CONFIGS["gqa-yarn"][0], rope_scaling=None)
    elif name == "gpt-oss-20b":
        config = ModelConfig.from_path(Path(__file__).parents[1] / "configs" / "gpt-oss-20b")
    else:
        config = CONFIGS[name][0]
    inv_freq, attention_factor = model_module.rope_inverse_frequencies(config)
    # transformers reads `rope_scaling: null` as gpt-oss's default YaRN; plain RoPE needs the
    # explicit `rope_parameters: {rope_type: default}`.
    expected_inv_freq, expected_factor = reference_rope(config.to_hf_dict("rope_parameters"))
    np.testing.assert_allclose(inv_freq, expected_inv_freq, rtol=1e-6)
    assert attention_factor == pytest.approx(expected_factor, rel=1e-12)


def test_parameters_are_laid_out_for_the_kernels(cases, kernels):
    case = cases("gqa-yarn")
    c = case.config
    model = load_model(case.path, "bfloat16")
    assert model.dtype == mx.bfloat16
    layer = model.layers[0]
    experts = layer.mlp.experts.gate_up_proj
    if kernels == "native":  # the checkpoint's own blocks, used in place
        assert native.is_mapped(experts.weight) and native.is_mapped(experts.scales)
        assert experts.weight.dtype == mx.uint8
        assert experts.weight.shape == (c.num_local_experts, 2 * c.intermediate_size,
                                        c.hidden_size // 32, 16)
    else:  # MLX's packing
        assert experts.weight.dtype == mx.uint32
        assert experts.weight.shape == (c.num_local_experts, 2 * c.intermediate_size,
                                        c.hidden_size // 8)
    assert experts.scales.dtype == mx.uint8
    assert experts.scales.shape == (c.num_local_experts, 2 * c.intermediate_size,
                                    c.hidden_size // 32)
    assert layer.self_attn.q_proj.weight.dtype == mx.bfloat16
    assert experts.bias.dtype == mx.bfloat16
    # Precision-critical pieces stay float32 whatever the compute dtype.
    assert layer.input_layernorm.weight.dtype == mx.float32
    assert layer.mlp.router.weight.dtype == mx.float32


def test_default_dtype_on_cpu_is_float32(cases):
    if mx.default_device() != mx.cpu:
        pytest.skip("this checks the CPU default")
    assert load_model(cases("gqa-yarn").path).dtype == mx.float32


def test_unknown_compute_dtype_is_rejected():
    with pytest.raises(ConfigError, match="compute dtype"):
        Model(CONFIGS["gqa-yarn"][0], "float64")


def test_sanitize_names_a_missing_tensor(cases):
    case = cases("gqa-yarn")
    weights = open_checkpoint(case.path).weights()
    del weights["layers.1.self_attn.sinks"]
    with pytest.raises(CheckpointError, match=r"missing layers\.1\.self_attn\.sinks"):
        Model(case.config).sanitize(weights)


def test_sanitize_names_a_tensor_of_the_wrong_shape(cases):
    case = cases("gqa-yarn")
    weights = open_checkpoint(case.path).weights()
    weights["layers.0.mlp.experts.down_proj.blocks"] = weights[
        "layers.0.mlp.experts.down_proj.blocks"][:, :-1]
    with pytest.raises(CheckpointError, match=r"layers\.0\.mlp\.experts\.down_proj\.blocks"):
        Model(case.config).sanitize(weights)


def test_checkpoint_of_another_config_is_rejected(cases):
    case = cases("gqa-yarn")
    weights = open_checkpoint(case.path).weights()
    other = replace(case.config, num_local_experts=4, num_experts_per_tok=2)
    with pytest.raises(CheckpointError, match="router.weight has shape"):
        Model(other).sanitize(weights)


def test_float32_model_keeps_the_embedding_table_as_stored(cases, kernels):
    # Exact (the gathered bf16 rows are widened, as the whole table would be): the float32
    # parity tests above run with this layout; it halves the table's memory. With the native
    # kernels the dense layers' bf16 weights stay as stored too (the kernel widens them).
    # (On the native path those weights are the checkpoint's mapped bf16 bytes: test_load.py.)
    model = cases("gqa-yarn").model
    dense = mx.bfloat16 if kernels == "native" else mx.float32
    assert model.embed_tokens.weight.dtype == mx.bfloat16
    assert model.lm_head.weight.dtype == dense
    assert model.layers[0].self_attn.q_proj.weight.dtype == dense
    assert model.layers[0].self_attn.o_proj.weight.dtype == dense


@pytest.mark.parametrize("tokens", ["prefill", "decode"])
def test_native_kernels_run_every_matmul_they_serve(cases, kernels, monkeypatch, tokens):
    """On the native path the experts and dense layers go through the native kernels (and
    only there), and the logits still match transformers'."""
    if kernels != "native":
        pytest.skip("the native path only")
    calls = {"gather_mxfp4_matmul": 0, "gather_mxfp4_swiglu": 0, "bf16_matmul": 0,
             "take_rows": 0, "moe_decode": 0}
    for name in calls:
        def counted(*args, _name=name, _kernel=getattr(native, name), **kwargs):
            calls[_name] += 1
            return _kernel(*args, **kwargs)
        monkeypatch.setattr(native, name, counted)
    monkeypatch.setattr(mx, "gather_qmm", None)  # MLX's expert kernel must not be reached
    case = cases("gqa-yarn")
    layers = case.config.num_hidden_layers
    if tokens == "prefill":
        logits = case.model(mx.array(case.tokens))
        assert max_diff(logits, case.reference) <= TOLERANCE
    else:
        cache = case.model.make_cache()
        steps = [case.model(mx.array(case.tokens[:, t:t + 1]), cache) for t in range(3)]
        assert max_diff(mx.concatenate(steps, axis=1), case.reference[:, :3]) <= TOLERANCE
    forwards = 1 if tokens == "prefill" else 3
    # Per layer: gate_up (fused with its SwiGLU) and down (prefill), or the fused MLP
    # (decode); q, k, v, o; plus the lm_head.
    prefill = tokens == "prefill"
    assert calls == {"gather_mxfp4_matmul": layers * forwards if prefill else 0,
                     "gather_mxfp4_swiglu": layers * forwards if prefill else 0,
                     "moe_decode": 0 if prefill else layers * forwards,
                     "bf16_matmul": (4 * layers + 1) * forwards, "take_rows": forwards}


def _load_overhead(path: Path, load) -> tuple[int, int]:
    """(bytes the loaded weights occupy, peak bytes beyond them while loading)."""
    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    model = load(path)
    weights = mx.get_active_memory() - before
    overhead = mx.get_peak_memory() - before - weights
    del model
    return weights, overhead


def test_loading_holds_one_stored_tensor_at_most_beyond_the_weights(tmp_path, monkeypatch):
    # Converting every tensor in one evaluation would hold each stored bf16 copy next to its
    # float32 conversion at the peak; one tensor at a time holds only the one being converted.
    # (On MLX's kernels, which read every tensor into memory.)
    monkeypatch.setenv(runtime.ENV_VAR, "mlx")
    config = replace(CONFIGS["gqa-yarn"][0], hidden_size=512, head_dim=64, vocab_size=2048)
    path = write_random_checkpoint(tmp_path, config, seed=1)
    checkpoint = open_checkpoint(path)
    held = placement.table(checkpoint, mx.float32, MLXKernels())
    converted = [checkpoint.nbytes(name) for name in checkpoint.names()
                 if held[name].dtype != checkpoint.dtype(name) and held[name].packed is None]
    assert sum(converted) >= 2 * max(converted)

    def load_all_at_once(path):
        checkpoint = open_checkpoint(path)
        model = Model(checkpoint.config, mx.float32)
        model.load_weights(list(model.sanitize(checkpoint.weights()).items()))
        mx.eval(model.parameters())
        return model

    weights, overhead = _load_overhead(path, lambda p: load_model(p, mx.float32))
    assert weights >= 2 * sum(converted)  # the float32 conversions are really resident
    assert overhead <= 1.25 * max(converted), (overhead, max(converted))
    _, naive_overhead = _load_overhead(path, load_all_at_once)
    assert naive_overhead >= 0.9 * sum(converted), "the naive load no longer shows the peak"


def test_quantized_lm_head_is_the_mxfp4_rounding_of_the_head(cases):
    # The opt-in MXFP4 head, checked with the project's OCP-spec decoder (not MLX's
    # dequantize): every weight is within half an E2M1 step (at most 1 * 2^e, e the block
    # exponent) of the stored one, and the logits are the hidden states times those weights.
    case = cases("gqa-yarn")
    model = load_model(case.path, mx.float32, quantized_lm_head=True)
    head = model.lm_head
    assert head.weight.dtype == mx.uint32 and head.scales.dtype == mx.uint8
    blocks, scales = from_mlx(head.weight, head.scales)
    dequantized = np.array(decode(blocks, scales)).reshape(case.config.vocab_size, -1)
    stored = np.array(open_checkpoint(case.path).get("lm_head.weight", mx.float32))
    block_max = np.abs(stored).reshape(stored.shape[0], -1, 32).max(axis=-1, keepdims=True)
    step = np.exp2(np.floor(np.log2(block_max)) - 2)  # E2M1's largest step is 2^(emax-2) * 2
    error = np.abs(dequantized.reshape(block_max.shape[0], -1, 32)
                   - stored.reshape(block_max.shape[0], -1, 32))
    assert (error <= step + 1e-12).all()

    tokens = mx.array(case.tokens)
    # The final hidden states (the float32 model's "norm" part: both models share everything
    # before the head) times the spec-decoded head.
    hidden = {}
    case.model(tokens, observe=lambda part, layer, value: hidden.setdefault(part, value))
    expected = np.array(hidden["norm"]) @ dequantized.T
    logits = model(tokens)
    assert max_diff(logits, expected) <= 1e-4
    top1 = np.mean(np.array(logits).argmax(-1) == case.reference.argmax(-1))
    assert top1 >= 0.75, top1  # measured 0.80 (0.68-0.80 over the three configs)


# -- bad input to Model.__call__ (issue 13): an error, never a read outside the table -------


@pytest.mark.parametrize("tokens, fragment", [
    (mx.array([[1, 1024]]), "token id 1024 is outside the model's vocabulary (0 .. 1023)"),
    (mx.array([[-1, 3]]), "token id -1 is outside the model's vocabulary"),
    (mx.array([[2 ** 31 - 1]]), "token id 2147483647 is outside"),
    (mx.array([[1.0, 2.0]]), "tokens must be an integer mx.array of shape [batch, time]"),
    (mx.array([1, 2]), "tokens must be an integer mx.array of shape [batch, time]"),
    ([[1, 2]], "tokens must be an integer mx.array of shape [batch, time], got list"),
])
def test_model_call_refuses_bad_tokens(tiny_checkpoint, tokens, fragment):
    from openharmony.errors import InputError

    model = load_model(tiny_checkpoint, mx.float32)  # vocabulary 1024, 2 layers
    with pytest.raises(InputError) as raised:
        model(tokens)
    assert isinstance(raised.value, ValueError) and fragment in str(raised.value)
    with pytest.raises(InputError, match="cache has 1 layer caches for 2 layers"):
        model(mx.array([[1, 2]]), cache=[KVCache()])
