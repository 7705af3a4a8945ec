"""The KV cache variants' memory and decode speed (docs/cache.md): the caches filled with
random keys and values (`fill`: a decode step's cost does not depend on the values), the
20b's caches alone in a fresh process per variant (`memory`), whole-model decode steps at
depth (`speed`) and one layer's attention alone (`attention_alone`). `scripts/measure_cache.py`
and `scripts/measure_long_context.py` are shells over this and `openharmony.bench.cache`.

    python -m openharmony.bench.cache_speed VARIANT POSITIONS  # `memory`'s worker: one JSON line
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import numpy as np

import mlx.core as mx

from .cache import VARIANTS, model_path, needs_lock, prompt_ids
from .harness import bench_lock

def fill(caches, config, positions: int, scales=None, chunk: int = 4096) -> None:
    """Put `positions` random keys/values into every cache through the caches' own API (full
    ones with `extend`; the sliding ones through `attend`, a window at a time, which is cheap
    at any context). `scales`: per layer, the (mean, std) of its keys and of its values
    [H, D] (`key_value_scales`); None: standard normal. A decode step's cost does not depend
    on the values, and this is minutes where a 32k prefill is most of an hour on this CPU."""
    H, D = config.num_key_value_heads, config.head_dim
    queries = mx.zeros((1, config.num_attention_heads, config.sliding_window, D))
    sinks = mx.zeros((config.num_attention_heads,))
    for layer, cache in enumerate(caches):
        step = config.sliding_window if cache.bounded else chunk
        for begin in range(0, positions, step):
            n = min(step, positions - begin)
            k, v = mx.random.normal((2, 1, H, n, D))
            if scales is not None:
                (k_mean, k_std), (v_mean, v_std) = scales[layer]
                k, v = k * k_std[:, None] + k_mean[:, None], v * v_std[:, None] + v_mean[:, None]
            if cache.bounded:
                cache.attend(queries[:, :, :n], k, v, scale=1.0, sinks=sinks,
                             window=cache.window)
            else:
                cache.extend(k, v)
            mx.eval(cache.state)


def key_value_scales(model, tokens: int = 64) -> list:
    """Per layer, the mean and std over positions of the model's own keys and of its values
    ([H, D] each), from a short prefill of random tokens into float caches."""
    caches = model.make_cache()
    model(mx.array([prompt_ids(tokens, model.config.vocab_size, seed=3)]), caches)
    scales = []
    for cache in caches:  # both layouts hold positions 0 .. tokens-1 in order (tokens <= W)
        held = [parts[0][:, :, :tokens] for parts in (cache.keys, cache.values)]
        scales.append([(x.mean(axis=2)[0], mx.sqrt(x.var(axis=2)[0])) for x in held])
    mx.eval(scales)
    return scales


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class MemoryProbe:
    """VmRSS and MLX's active memory now, against when the probe was made."""

    def __init__(self):
        mx.clear_cache()
        self.rss, self.active = rss_bytes(), mx.get_active_memory()

    def growth(self) -> dict:
        mx.clear_cache()  # freed buffers MLX keeps for reuse are not the cache's
        return {"rss_growth_bytes": rss_bytes() - self.rss,
                "active_memory_growth_bytes": mx.get_active_memory() - self.active}


def cache_bytes(caches, positions: int) -> dict:
    full = sum(c.nbytes for c in caches if not c.bounded)
    sliding = sum(c.nbytes for c in caches if c.bounded)
    return {"nbytes": full + sliding, "full_layers_nbytes": full,
            "sliding_layers_nbytes": sliding, "bytes_per_token_full_layers": full / positions}


def memory_worker(variant: str, positions: int) -> dict:
    """In a fresh process: the 20b caches (24 layers) filled to `positions`, no model."""
    from ..cache import make_caches
    from ..testing.random_checkpoint import PRESETS

    config = PRESETS["20b"]
    mx.eval(mx.zeros((1,)))
    probe = MemoryProbe()
    caches = make_caches(config, **VARIANTS[variant])
    fill(caches, config, positions)
    return {"positions": positions, **cache_bytes(caches, positions), **probe.growth(),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def memory(args) -> dict:
    out = {}
    for variant in args.variants:
        with bench_lock(True):  # 1.6 GB of float caches at 32k
            result = subprocess.run(
                [sys.executable, "-m", "openharmony.bench.cache_speed", variant,
                 str(args.positions)], check=True, capture_output=True, text=True)
        out[variant] = json.loads(result.stdout)
    return out


# -- speed ------------------------------------------------------------------------------------


def speed(args) -> dict:
    """Whole-model decode steps with the caches filled to each context (`fill`, at the scale
    of the model's own keys and values), the variants interleaved step by step: tokens/s,
    and where a step's time goes (`_attention_by_layer`: the attention of every layer vs the
    rest, the weights). Also each variant's memory once filled (VmRSS and MLX's active
    memory growth, next to `nbytes`)."""
    from ..load import load_model

    out = {"checkpoint": None, "steps": args.steps, "contexts": {}}
    with bench_lock(needs_lock(args)):
        path = model_path(args)
        out["checkpoint"] = str(path)
        model = load_model(path, "float32")
        config = model.config
        scales = key_value_scales(model)
        for context in args.contexts:
            results, caches = {}, {}
            for variant in args.variants:
                probe = MemoryProbe()
                caches[variant] = model.make_cache(**VARIANTS[variant])
                fill(caches[variant], config, context, scales)
                results[variant] = {**cache_bytes(caches[variant], context), **probe.growth()}
                mx.eval(model(mx.array([[1]]), caches[variant]))  # warm-up (grows the buffers)
            steps = {variant: [] for variant in caches}
            for _ in range(args.steps):
                for variant, cache in caches.items():
                    begin = time.perf_counter()
                    mx.eval(model(mx.array([[1]]), cache))
                    steps[variant].append(time.perf_counter() - begin)
            for variant, cache in caches.items():
                split = [_attention_by_layer(model, cache) for _ in range(args.split_steps)]
                step = float(np.median(steps[variant]))
                attention = float(np.median([s["full"] + s["sliding"] for s in split]))
                with_barriers = float(np.median([s["step"] for s in split]))
                results[variant].update({
                    "step_s": step, "tokens_per_s": 1 / step,
                    "vs_float_step": step / float(np.median(steps[args.variants[0]])),
                    "full_attention_s": float(np.median([s["full"] for s in split])),
                    "sliding_attention_s": float(np.median([s["sliding"] for s in split])),
                    "step_with_barriers_s": with_barriers,
                    "attention_share": attention / with_barriers})
                print(context, variant, json.dumps(results[variant]), file=sys.stderr)
            out["contexts"][context] = results
            del caches
            mx.clear_cache()
    return out


# `attention` only: the 8-bit cache reading its packed keys and values for any number of
# queries (a prefill chunk otherwise decodes them first: QuantizedStorage.dequantize_from).
PACKED = "8-bit full layers, packed"
# `attention` only: a variant name ending in this runs on MLX's attention (MLXKernels)
# instead of the kernels runtime.select() picks (the native kernel on the CPU; issue 20).
ON_MLX = " [mlx]"


def attention_alone(args) -> dict:
    """One step's attention (`--queries` new positions: 1 is a decode step) of one
    full-attention layer of the 20b (64 query heads, 8 kv heads of 64), its cache filled to
    each context: seconds per variant, the variants interleaved round by round (medians).
    Small enough to need no lock (134 MB at 32k)."""
    from .. import runtime
    from ..cache import make_caches
    from ..testing.random_checkpoint import PRESETS
    from ..runtime import MLXKernels

    config = PRESETS["20b"]
    full_layer = next(i for i in range(config.num_hidden_layers) if not config.is_sliding(i))
    out = {}
    for context in args.contexts:
        caches = {}
        for variant in args.variants:
            base = variant.removesuffix(ON_MLX)
            options = VARIANTS["8-bit full layers"] if base == PACKED else VARIANTS[base]
            kernels = MLXKernels(mx.cpu) if variant.endswith(ON_MLX) else runtime.select()
            cache = make_caches(config, attention=kernels.attention,
                                packed_attention=kernels.packed_attention, **options)[full_layer]
            if base == PACKED:
                cache.storage.dequantize_from = sys.maxsize
            fill([cache], config, context)
            caches[variant] = cache
        T = args.queries
        q = mx.random.normal((1, config.num_attention_heads, T, config.head_dim))
        k, v = mx.random.normal((2, 1, config.num_key_value_heads, T, config.head_dim))
        sinks = mx.zeros((config.num_attention_heads,))
        times = {variant: [] for variant in caches}
        for _ in range(args.rounds):
            for variant, cache in caches.items():
                cache.trim_to(context)  # every step attends over `context` + T keys
                begin = time.perf_counter()
                mx.eval(cache.attend(q, k, v, scale=0.125, sinks=sinks, window=None))
                times[variant].append(time.perf_counter() - begin)
        for variant, seconds in times.items():
            out[f"{variant} @ {context}"] = {
                "context": context, "queries": T, "variant": variant,
                "attention_s": float(np.median(seconds)),
                "vs_first": float(np.median(seconds) / np.median(times[args.variants[0]]))}
        del caches
    return out


def _attention_by_layer(model, caches) -> dict:
    """One decode step (the model's layers called one by one) with a barrier around each
    layer's attention: seconds of the full and the sliding layers' attention (projections
    included) and of the whole step ("step"; the rest is the experts, norms and lm_head)."""
    start = time.perf_counter()
    x = model.embed_tokens(mx.array([[1]])).astype(model.dtype)
    mx.eval(x)
    seconds = {"full": 0.0, "sliding": 0.0}
    for layer, cache in zip(model.layers, caches):
        begin = time.perf_counter()
        x = x + layer.self_attn(layer.input_layernorm(x), cache)
        mx.eval(x, *cache.state)
        seconds["sliding" if cache.bounded else "full"] += time.perf_counter() - begin
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        mx.eval(x)
    mx.eval(model.lm_head(model.norm(x)))
    seconds["step"] = time.perf_counter() - start
    return seconds


if __name__ == "__main__":
    print(json.dumps(memory_worker(sys.argv[1], int(sys.argv[2]))))
