"""The KV cache variants measured (docs/cache.md): accuracy, memory, decode speed, long positions.

    python scripts/measure_cache.py parity          # tiny parity configs vs transformers
    python scripts/measure_cache.py accuracy        # the 20b (24 layers): a 2304-token prompt
    python scripts/measure_cache.py quantization-error  # the 20b's keys/values: rounding error
    python scripts/measure_cache.py memory          # 20b caches alone: bytes/token, RSS at 32k
    python scripts/measure_cache.py speed           # 20b decode tokens/s at 1k, 8k, 32k
    python scripts/measure_cache.py attention       # one full layer's decode attention alone
    python scripts/measure_cache.py long-positions  # offset 100k vs the exact (float64) math

Variants: float (the default: as computed, float32 on the CPU), 8-bit on the full-attention
layers (sliding layers float), 8-bit on all layers, 4-bit on the full layers, bf16 storage.
Accuracy is against the float cache on the same model and tokens (each variant prefills with
its own cache; `accuracy`'s docstring): max |logit diff|, top-1 agreement and the mean KL
divergence KL(float || variant) of the next-token distributions. The model is the random
20b-shaped checkpoint at /work/ckpt/gpt-oss-20b-random (`--checkpoint`), or the 20b shapes
truncated to `--layers` (written under bench_cache/ once, random weights, seed 0); every
20b-sized run holds the benchmarks' memory lock (scripts/bench.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import openharmony  # noqa: F401 - first: it picks MLX's BLAS (openharmony/blas.py)
import mlx.core as mx

from openharmony.bench.harness import bench_lock
from openharmony.cache import FloatStorage, KVCache, RotatingKVCache

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {
    "float": {},
    "8-bit full layers": {"kv_bits": 8},
    "8-bit all layers": {"kv_bits": 8, "quantize_sliding": True},
    "4-bit full layers": {"kv_bits": 4},
    "bf16": {"kv_dtype": "bfloat16"},
}

# Not a storage: the float cache with the prompt in chunks of half the length (`accuracy`),
# to show how far float32 rounding alone moves the logits of the same model.
NOISE_FLOOR = "float, half chunks"

# `accuracy` also takes "simulated N-bit full layers" (any N): the full layers' keys and values
# rounded onto an N-bit affine grid and kept in float (`RoundedStorage`), to find how much
# precision the model needs for a given agreement; "8-bit full layers, groups of 32"; and
# "bf16 full layers" (bf16 storage where the 8-bit cache quantizes, the sliding layers float:
# not a make_caches option).
ACCURACY_ONLY = {"8-bit full layers, groups of 32": {"kv_bits": 8, "kv_group_size": 32}}
SIMULATED = re.compile(r"simulated (\d+)-bit full layers")
BF16_FULL = "bf16 full layers"
# make_cache's options for the `accuracy` variants it can make (the noise floor: float).
ACCURACY_OPTIONS = {**VARIANTS, **ACCURACY_ONLY, NOISE_FLOOR: {}}


# -- metrics --------------------------------------------------------------------------------


class Agreement:
    """Running max |logit diff|, top-1 agreement and mean KL(reference || candidate)."""

    def __init__(self):
        self.max_diff, self.agree, self.kl, self.positions = 0.0, 0, 0.0, 0
        self.per_position_max: list[float] = []

    def add(self, reference: mx.array, candidate: mx.array) -> None:
        """Logits [..., V] of the same positions."""
        reference = reference.reshape(-1, reference.shape[-1]).astype(mx.float32)
        candidate = candidate.reshape(-1, candidate.shape[-1]).astype(mx.float32)
        diff = mx.abs(reference - candidate).max(axis=-1)
        log_p = reference - mx.logsumexp(reference, axis=-1, keepdims=True)
        log_q = candidate - mx.logsumexp(candidate, axis=-1, keepdims=True)
        kl = (mx.exp(log_p) * (log_p - log_q)).sum(axis=-1)
        agree = mx.argmax(reference, axis=-1) == mx.argmax(candidate, axis=-1)
        mx.eval(diff, kl, agree)
        self.per_position_max += np.array(diff).tolist()
        self.max_diff = max(self.max_diff, float(diff.max()))
        self.agree += int(agree.sum())
        self.kl += float(kl.sum())
        self.positions += diff.size

    def summary(self) -> dict:
        return {"positions": self.positions, "max_abs_logit_diff": self.max_diff,
                "median_position_max_diff": float(np.median(self.per_position_max)),
                "top1_agreement": self.agree / self.positions,
                "mean_kl": self.kl / self.positions}


# -- checkpoints ------------------------------------------------------------------------------


# The 20b's attention exactly (hidden 2880, 64 query and 8 kv heads of 64, window 128, YaRN,
# sinks) with a small vocabulary and narrow experts: under 1 GB, so it runs without the memory
# lock, and ~4x cheaper per token (for when the lock is not to be had).
PROXY = {"vocab_size": 8192, "intermediate_size": 704,
         "pad_token_id": 8191}  # in the vocabulary: transformers' embedding requires it


def truncated_20b(layers: int, proxy: bool = False) -> Path:
    """A random checkpoint with the 20b shapes and `layers` layers (sliding, full, ...)."""
    from openharmony.testing.random_checkpoint import PRESETS, write_random_checkpoint

    name = f"gpt-oss-20b-random-{layers}layers" + ("-attention-proxy" if proxy else "")
    path = REPO / "bench_cache" / name
    if not (path / "config.json").is_file():  # config.json is written last
        config = PRESETS["20b"]
        config = dataclasses.replace(config, num_hidden_layers=layers,
                                     layer_types=config.layer_types[:layers],
                                     **(PROXY if proxy else {}))
        print(f"writing {path}", file=sys.stderr)
        write_random_checkpoint(path, config, seed=0)
    return path


def prompt_ids(n: int, vocab: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


# -- accuracy ---------------------------------------------------------------------------------

CHECKPOINT_20B = Path("/work/ckpt/gpt-oss-20b-random")  # the full 20b shapes, random weights


def add_model_options(parser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT_20B,
                        help="the model (default: the full 20b shapes, random weights)")
    parser.add_argument("--layers", type=int, help="instead: the 20b shapes truncated to this "
                                                   "many layers (written under bench_cache/)")
    parser.add_argument("--proxy", action="store_true", help="with --layers: the 20b "
                        "attention, small vocabulary and experts (under 1 GB, no memory lock)")


def model_path(args) -> Path:
    return args.checkpoint if args.layers is None else truncated_20b(args.layers, args.proxy)


def needs_lock(args) -> bool:
    return not (args.layers is not None and args.proxy)


class RoundedStorage(FloatStorage):
    """A measuring instrument, not a storage to use: each key and value vector rounded onto
    the grid of a `bits`-bit affine quantization with groups of `group_size` along head_dim
    (mx.quantize's: per group, bias = min and scale = (max - min) / (2**bits - 1)), then kept
    in float32. For bits = 8 it rounds as QuantizedStorage(8) does (to within how mx.quantize
    places its grid); for more bits, it shows what an N-bit cache would give."""

    def __init__(self, bits: int, group_size: int = 64) -> None:
        super().__init__(None)
        self.bits, self.group_size = bits, group_size

    def encode(self, x: mx.array) -> tuple:
        groups = x.reshape(*x.shape[:-1], x.shape[-1] // self.group_size, self.group_size)
        low = groups.min(axis=-1, keepdims=True)
        step = mx.maximum((groups.max(axis=-1, keepdims=True) - low) / (2 ** self.bits - 1),
                          mx.array(1e-30, x.dtype))
        return ((mx.round((groups - low) / step) * step + low).reshape(x.shape),)


def variant_caches(model, name: str) -> list:
    """The caches of one `accuracy` variant."""
    if name in ACCURACY_OPTIONS:
        return model.make_cache(**ACCURACY_OPTIONS[name])
    simulated = SIMULATED.fullmatch(name)
    full = (FloatStorage(mx.bfloat16) if name == BF16_FULL
            else RoundedStorage(int(simulated.group(1))))
    config = model.config
    return [RotatingKVCache(config.sliding_window, FloatStorage()) if config.is_sliding(layer)
            else KVCache(full) for layer in range(config.num_hidden_layers)]


def prefill_logits(model, tokens: list[int], caches, chunk: int, keep_from: int) -> mx.array:
    """Prefill `tokens` through `caches` in chunks of `chunk`; the logits [N, V] of positions
    `keep_from` .. len(tokens)-1 (teacher-forced next-token distributions)."""
    kept = []
    for begin in range(0, len(tokens), chunk):
        logits = model(mx.array([tokens[begin:begin + chunk]]), caches)[0]
        logits = logits[max(0, keep_from - begin):]
        mx.eval(logits, [a for c in caches for a in c.state])
        if logits.shape[0]:
            kept.append(logits)
    return mx.concatenate(kept)


def accuracy(args) -> dict:
    """Each variant prefills the same `tokens`-token prompt with its own caches (so the
    quantization error enters every key and value, as in a real run), in chunks of `chunk`;
    the next-token distributions at every position from `compare_from` on are compared with
    the float cache's. All variants run in this one process (one load, one lock); the float
    logits are saved to `--reference`, so that a later process can compare more variants
    against them (each locked run stays short)."""
    from openharmony.load import load_model

    for name in args.variants:
        if name not in ACCURACY_OPTIONS and name != BF16_FULL and not SIMULATED.fullmatch(name):
            raise SystemExit(f"unknown variant {name!r}")
    path = model_path(args)
    reference_file = args.reference
    with bench_lock(needs_lock(args)):
        model = load_model(path, "float32")
        tokens = prompt_ids(args.tokens, model.config.vocab_size, seed=0)
        out = {"checkpoint": str(path), "layers": model.config.num_hidden_layers,
               "tokens": args.tokens, "compared_from": args.compare_from,
               "chunk": args.chunk, "variants": {}}
        reference = None
        for name in args.variants:
            start = time.perf_counter()
            # The noise floor: float caches again, the prompt in chunks half as long, so
            # the float32 sums run in another order (differences of ~1e-7 relative).
            noise = name == NOISE_FLOOR
            logits = prefill_logits(model, tokens, variant_caches(model, name),
                                    args.chunk // 2 if noise else args.chunk,
                                    args.compare_from)
            seconds = time.perf_counter() - start
            if name == "float":
                reference = logits
                if reference_file is not None:
                    np.save(reference_file, np.array(logits))
                out["variants"][name] = {"prefill_s": seconds}
            else:
                if reference is None:
                    reference = mx.array(np.load(reference_file))
                agreement = Agreement()
                agreement.add(reference, logits)
                out["variants"][name] = {**agreement.summary(), "prefill_s": seconds}
            print(f"{name}: {json.dumps(out['variants'][name])}", file=sys.stderr)
    return out


def parity_checkpoints(configs: dict, folder: Path):
    """(name, config, checkpoint path, tokens [2, 6 windows]) for each of the parity configs
    (name -> (config, RoPE spelling)), written into `folder` as tests/test_model.py writes
    them (seed 7, tokens from seed 11)."""
    from openharmony.testing.random_checkpoint import write_random_checkpoint

    for name, (config, spelling) in configs.items():
        path = write_random_checkpoint(folder / name, config, seed=7, rope_spelling=spelling)
        tokens = np.random.default_rng(11).integers(0, config.vocab_size,
                                                    (2, 6 * config.sliding_window))
        yield name, config, path, tokens


def parity(args) -> dict:
    """The tiny parity configs (tests/test_model.py) against transformers' float32 logits,
    every variant, chunked prefill then decoding token by token (tests/test_cache.py)."""
    from openharmony.load import load_model
    import tempfile
    from openharmony.testing.reference import load_reference, reference_logits
    from openharmony.testing.parity import QUANTIZABLE, chunked_then_decoded

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config, path, tokens in parity_checkpoints(QUANTIZABLE, Path(tmp)):
            reference = mx.array(reference_logits(load_reference(path), tokens))
            model = load_model(path, mx.float32)
            out[name] = {}
            for variant, options in VARIANTS.items():
                agreement = Agreement()
                agreement.add(reference, mx.array(chunked_then_decoded(
                    model, tokens, model.make_cache(**options))))
                out[name][variant] = agreement.summary()
    return out


# -- long positions ---------------------------------------------------------------------------


def long_positions(args) -> dict:
    """A sequence started at `offset` through caches started there, against transformers in
    float64 with float64 RoPE angles (tests/reference.py, `load_exact_reference`) given the
    same position_ids, and transformers' own float32 at the same positions for comparison.
    RoPE only sees position differences, so the exact logits at `offset` equal those at 0.
    On the tiny parity configs, and (`--with-20b`) the 20b's attention with 2 layers and the
    proxy's small vocabulary and experts (transformers in float64 needs 8 bytes a weight)."""
    import tempfile

    import torch
    from openharmony.load import load_model
    from openharmony.testing.reference import load_exact_reference, load_reference
    from openharmony.testing.parity import CONFIGS, chunked_then_decoded

    def transformers_logits(reference, tokens, start):
        positions = torch.arange(start, start + tokens.shape[1])[None].expand(
            tokens.shape[0], -1)
        with torch.no_grad():
            return reference(input_ids=torch.from_numpy(tokens), position_ids=positions,
                             use_cache=False).logits.double().numpy()

    def compare(path, tokens) -> dict:
        model = load_model(path, "float32")
        ours = {start: chunked_then_decoded(model, tokens, model.make_cache(start=start))
                for start in (0, args.offset)}
        del model
        exact = load_exact_reference(path)
        expected = {start: transformers_logits(exact, tokens, start) for start in ours}
        del exact
        float32 = transformers_logits(load_reference(path), tokens, args.offset)
        diff = lambda a, b: float(np.abs(a - b).max())  # noqa: E731
        return {"openharmony vs exact at 0": diff(ours[0], expected[0]),
                "openharmony vs exact at offset": diff(ours[args.offset],
                                                       expected[args.offset]),
                "transformers float32 vs exact at offset": diff(float32, expected[args.offset]),
                "exact: offset vs 0": diff(expected[args.offset], expected[0])}

    out = {"offset": args.offset}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config, path, tokens in parity_checkpoints(CONFIGS, Path(tmp)):
            out[name] = compare(path, tokens)
            print(name, json.dumps(out[name]), file=sys.stderr)
    if args.with_20b:
        path = truncated_20b(2, proxy=True)
        tokens = np.array([prompt_ids(args.length, PROXY["vocab_size"], seed=5)])
        with bench_lock(True):  # ~5 GB: the float64 reference
            out["20b attention, 2 layers (proxy)"] = compare(path, tokens)
    return out


# -- memory -----------------------------------------------------------------------------------


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


def quantization_error(args) -> dict:
    """How far each storage rounds the model's own keys and values, against what any code with
    that many bits per entry could do: per full-attention layer, after a prefill of random
    tokens into float caches, the rms rounding error over the rms of the entries, beside the
    rate-distortion bound of a Gaussian source (error/std = 2**-bits at `bits` bits per entry,
    scales not counted), and range/std per group (an outlier-free Gaussian group of 64: ~4.7)."""
    from openharmony.cache import QuantizedStorage
    from openharmony.load import load_model
    from openharmony.testing.parity import as_stored  # x as a storage holds it, decoded by MLX

    storages = {"8-bit": QuantizedStorage(8, 64), "4-bit": QuantizedStorage(4, 64),
                "bf16": FloatStorage(mx.bfloat16)}
    with bench_lock(needs_lock(args)):
        model = load_model(model_path(args), "float32")
        caches = model.make_cache()
        model(mx.array([prompt_ids(args.tokens, model.config.vocab_size, seed=0)]), caches)
        layers = {}
        for layer, cache in enumerate(caches):
            if cache.bounded:
                continue
            row = {}
            for name, x in zip(("keys", "values"), (cache.keys[0], cache.values[0])):
                x = x[:, :, :args.tokens]
                groups = x.reshape(*x.shape[:-1], -1, 64)
                spread = (groups.max(axis=-1) - groups.min(axis=-1)) / mx.sqrt(
                    groups.var(axis=-1))
                rms = float(mx.sqrt((x * x).mean()))
                row[name] = {"rms": rms, "range_over_std": float(spread.mean())}
                x = np.array(x)
                for storage, stored in storages.items():
                    error = float(np.sqrt(((as_stored(stored, x) - x) ** 2).mean()))
                    row[name][f"{storage} error/rms"] = error / rms
            layers[layer] = row
            print(f"layer {layer}: {json.dumps(row)}", file=sys.stderr)
    return {"tokens": args.tokens, "bound error/std": {"8-bit": 2 ** -8, "4-bit": 2 ** -4},
            "layers": layers}


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
    from openharmony.cache import make_caches
    from openharmony.testing.random_checkpoint import PRESETS

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
            result = subprocess.run([sys.executable, __file__, "memory-worker", variant,
                                     str(args.positions)], check=True, capture_output=True,
                                    text=True)
        out[variant] = json.loads(result.stdout)
    return out


# -- speed ------------------------------------------------------------------------------------


def speed(args) -> dict:
    """Whole-model decode steps with the caches filled to each context (`fill`, at the scale
    of the model's own keys and values), the variants interleaved step by step: tokens/s,
    and where a step's time goes (`_attention_by_layer`: the attention of every layer vs the
    rest, the weights). Also each variant's memory once filled (VmRSS and MLX's active
    memory growth, next to `nbytes`)."""
    from openharmony.load import load_model

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
    from openharmony import runtime
    from openharmony.cache import make_caches
    from openharmony.testing.random_checkpoint import PRESETS
    from openharmony.runtime import MLXKernels

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("parity")
    p = sub.add_parser("accuracy")
    add_model_options(p)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS),
                   help="float first (the reference), unless --reference holds its logits; "
                        f"'{NOISE_FLOOR}' is float in chunks half as long")
    p.add_argument("--tokens", type=int, default=2304, help="prompt length")
    p.add_argument("--compare-from", type=int, default=2048,
                   help="the first position whose next-token distribution is compared")
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--reference", type=Path, help="where the float logits are saved / read")
    p = sub.add_parser("quantization-error")
    add_model_options(p)
    p.add_argument("--tokens", type=int, default=256)
    p = sub.add_parser("memory")
    p.add_argument("--positions", type=int, default=32768)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p = sub.add_parser("memory-worker")
    p.add_argument("variant")
    p.add_argument("positions", type=int)
    p = sub.add_parser("speed")
    add_model_options(p)
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768])
    p.add_argument("--variants", nargs="+", default=["float", "8-bit full layers",
                                                     "8-bit all layers"],
                   help="the first is the one the others are compared with")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    p.add_argument("--split-steps", type=int, default=3,
                   help="steps with a barrier per layer, for where the time goes")
    p = sub.add_parser("attention")
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768])
    p.add_argument("--variants", nargs="+", default=["float", "8-bit full layers",
                                                     "4-bit full layers", "bf16"],
                   help=f"the first is the one the others are compared with; '<variant>{ON_MLX}'"
                        " runs on MLX's attention instead of the native kernel")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--queries", type=int, default=1, help="new positions per step (1: decode)")
    p = sub.add_parser("long-positions")
    p.add_argument("--offset", type=int, default=100_000)
    p.add_argument("--with-20b", action="store_true",
                   help="also the 20b attention with 2 layers (the proxy; takes the lock)")
    p.add_argument("--length", type=int, default=544, help="for the 20b: 4 windows "
                                                           "prefilled, the rest decoded")
    args = parser.parse_args()
    if args.command == "memory-worker":
        print(json.dumps(memory_worker(args.variant, args.positions)))
        return
    command = {"parity": parity, "accuracy": accuracy, "memory": memory, "speed": speed,
               "quantization-error": quantization_error,
               "attention": attention_alone, "long-positions": long_positions}[args.command]
    print(json.dumps(command(args), indent=1))


if __name__ == "__main__":
    main()
