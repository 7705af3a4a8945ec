"""The KV cache variants' accuracy (docs/cache.md): against the float cache on the same model
and tokens, against transformers on the tiny parity configs, at long positions against the
exact (float64) math, and each storage's rounding error. `scripts/measure_cache.py` is the
shell over this and `openharmony.bench.cache_speed` (memory and speed).

Variants: float (the default: as computed, float32 on the CPU), 8-bit on the full-attention
layers (sliding layers float), 8-bit on all layers, 4-bit on the full layers, bf16 storage.
Accuracy is against the float cache on the same model and tokens (each variant prefills with
its own cache; `accuracy`'s docstring): max |logit diff|, top-1 agreement and the mean KL
divergence KL(float || variant) of the next-token distributions. The model is the random
20b-shaped checkpoint at /work/ckpt/gpt-oss-20b-random (`--checkpoint`), or the 20b shapes
truncated to `--layers` (written under bench_cache/ in the working directory once, random
weights, seed 0); every 20b-sized run holds the benchmarks' memory lock (`harness.bench_lock`).
Each measurement takes `args`, the script's parsed options (the names of its flags).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

import mlx.core as mx

from ..cache import FloatStorage, KVCache, RotatingKVCache
from .harness import bench_lock

BENCH_CACHE = Path("bench_cache")  # where truncated checkpoints are written (as llama_cpp's)

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
    from ..testing.random_checkpoint import PRESETS, write_random_checkpoint

    name = f"gpt-oss-20b-random-{layers}layers" + ("-attention-proxy" if proxy else "")
    path = BENCH_CACHE / name
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

CHECKPOINT_20B = Path("/work/ckpt/gpt-oss-20b-random")  # the 20b shapes, random weights


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
    from ..load import load_model

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
    from ..testing.random_checkpoint import write_random_checkpoint

    for name, (config, spelling) in configs.items():
        path = write_random_checkpoint(folder / name, config, seed=7, rope_spelling=spelling)
        tokens = np.random.default_rng(11).integers(0, config.vocab_size,
                                                    (2, 6 * config.sliding_window))
        yield name, config, path, tokens


def parity(args) -> dict:
    """The tiny parity configs (tests/test_model.py) against transformers' float32 logits,
    every variant, chunked prefill then decoding token by token (tests/test_cache.py)."""
    from ..load import load_model
    import tempfile
    from ..testing.reference import load_reference, reference_logits
    from ..testing.parity import QUANTIZABLE, chunked_then_decoded

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
    from ..load import load_model
    from ..testing.reference import load_exact_reference, load_reference
    from ..testing.parity import CONFIGS, chunked_then_decoded

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


def quantization_error(args) -> dict:
    """How far each storage rounds the model's own keys and values, against what any code with
    that many bits per entry could do: per full-attention layer, after a prefill of random
    tokens into float caches, the rms rounding error over the rms of the entries, beside the
    rate-distortion bound of a Gaussian source (error/std = 2**-bits at `bits` bits per entry,
    scales not counted), and range/std per group (an outlier-free Gaussian group of 64: ~4.7)."""
    from ..cache import QuantizedStorage
    from ..load import load_model
    from ..testing.parity import as_stored  # x as a storage holds it, decoded by MLX

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
