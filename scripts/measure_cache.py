"""The KV cache variants measured (docs/cache.md): accuracy, memory, decode speed, long positions.

    python scripts/measure_cache.py parity            # tiny parity configs vs transformers
    python scripts/measure_cache.py accuracy          # 20b shapes, 4 layers, 2k+ token prompts
    python scripts/measure_cache.py memory            # 20b (24 layers): bytes/token, RSS at 32k
    python scripts/measure_cache.py speed             # decode tokens/s at 1k, 8k, 32k context
    python scripts/measure_cache.py attention         # one full layer's decode attention alone
    python scripts/measure_cache.py long-positions    # 20b shapes, 2 layers, offset 100k vs HF

Variants: float (the default: as computed, float32 on the CPU), 8-bit on the full-attention
layers (sliding layers float), 8-bit on all layers, 4-bit on the full layers, bf16 storage.
Accuracy is against the float cache on the same model and tokens: every 8th position of a
chunked prefill (each query attends to the stored, i.e. quantized, keys of every earlier
position and its own, as a decode step does): max |logit diff|, top-1 agreement and the mean
KL divergence KL(float || variant) of the next-token distributions. The 20b-shaped checkpoints (random
weights, seed 0) are written under bench_cache/ once; every 20b-shaped run holds the
benchmarks' memory lock (scripts/bench.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import openharmony  # noqa: F401 - first: it picks MLX's BLAS (openharmony/blas.py)
import mlx.core as mx

from bench import big_memory_lock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

VARIANTS = {
    "float": {},
    "8-bit full layers": {"kv_bits": 8},
    "8-bit all layers": {"kv_bits": 8, "quantize_sliding": True},
    "4-bit full layers": {"kv_bits": 4},
    "bf16": {"kv_dtype": "bfloat16"},
}


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


def truncated_20b(layers: int) -> Path:
    """A random checkpoint with the 20b shapes and `layers` layers (sliding, full, ...)."""
    from openharmony.random_checkpoint import PRESETS, write_random_checkpoint

    path = REPO / "bench_cache" / f"gpt-oss-20b-random-{layers}layers"
    if not (path / "config.json").is_file():  # config.json is written last
        config = PRESETS["20b"]
        config = dataclasses.replace(config, num_hidden_layers=layers,
                                     layer_types=config.layer_types[:layers])
        print(f"writing {path}", file=sys.stderr)
        write_random_checkpoint(path, config, seed=0)
    return path


def prompt_ids(n: int, vocab: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


# -- accuracy ---------------------------------------------------------------------------------


def hidden_states(model, tokens: mx.array, caches: list) -> mx.array:
    """`Model.__call__` without the lm_head (applied to chosen positions only: on the CPU the
    head of every position would cost more than the layers of this truncated model)."""
    x = model.embed_tokens(tokens).astype(model.dtype)
    for layer, cache in zip(model.layers, caches):
        x = layer(x, cache)
    return model.norm(x)


def compare_variants(model, tokens: list[int], chunk: int, stride: int, variants: dict) -> dict:
    """Prefill `tokens` chunk by chunk with a float cache and with each variant's; compare
    the next-token logits at every `stride`-th position."""
    caches = {name: model.make_cache(**options) for name, options in variants.items()}
    reference = model.make_cache()
    results = {name: Agreement() for name in variants}
    for begin in range(0, len(tokens), chunk):
        batch = mx.array([tokens[begin:begin + chunk]])
        picked = mx.arange(stride - 1 - begin % stride, batch.shape[1], stride)
        if picked.size == 0:
            continue

        def logits(caches):
            h = hidden_states(model, batch, caches)
            return model.lm_head(h[:, picked]).astype(mx.float32)

        expected = logits(reference)
        mx.eval(expected)
        for name, cache in caches.items():
            results[name].add(expected, logits(cache))
    return {name: r.summary() for name, r in results.items()}


def accuracy(args) -> dict:
    from openharmony.load import load_model

    with big_memory_lock(True):
        model = load_model(truncated_20b(args.layers), "float32")
        variants = {n: o for n, o in VARIANTS.items() if o}
        out = {"layers": args.layers, "chunk": args.chunk, "stride": args.stride,
               "prompts": {}}
        for i, length in enumerate(args.tokens):
            start = time.perf_counter()
            out["prompts"][length] = compare_variants(
                model, prompt_ids(length, model.config.vocab_size, seed=i), args.chunk,
                args.stride, variants)
            print(f"{length} tokens: {time.perf_counter() - start:.0f} s "
                  f"{json.dumps(out['prompts'][length])}", file=sys.stderr)
    return out


def parity(args) -> dict:
    """The tiny parity configs (tests/test_model.py) against transformers' float32 logits,
    every variant, chunked prefill then decoding token by token (tests/test_cache.py)."""
    from openharmony.load import load_model
    from openharmony.random_checkpoint import write_random_checkpoint
    import tempfile
    from reference import load_reference, reference_logits
    from test_cache import QUANTIZABLE, chunked_then_decoded

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, spelling) in QUANTIZABLE.items():
            path = write_random_checkpoint(Path(tmp) / name, config, seed=7,
                                           rope_spelling=spelling)
            tokens = np.random.default_rng(11).integers(0, config.vocab_size,
                                                        (2, 6 * config.sliding_window))
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
    """A sequence started at `offset` through caches started there, against transformers
    given the same position_ids. RoPE only sees position differences, so the exact logits at
    `offset` are those at 0: each engine's drift (its logits at `offset` vs at 0) is its
    float32 rounding of the rotation angles."""
    import torch
    from openharmony.load import load_model
    from reference import load_reference
    from test_cache import chunked_then_decoded

    path = truncated_20b(2) if args.checkpoint is None else args.checkpoint
    offsets = (0, args.offset)
    with big_memory_lock(args.checkpoint is None):
        model = load_model(path, "float32")
        tokens = np.array([prompt_ids(args.length, model.config.vocab_size, seed=5)])
        ours = {offset: chunked_then_decoded(model, tokens, model.make_cache(start=offset))
                for offset in offsets}
        del model
        reference, theirs = load_reference(path), {}
        for offset in offsets:
            positions = torch.arange(offset, offset + tokens.shape[1])[None]
            with torch.no_grad():
                theirs[offset] = reference(input_ids=torch.from_numpy(tokens),
                                           position_ids=positions, use_cache=False
                                           ).logits.float().numpy()
        del reference

    def max_diff(a, b):
        return float(np.abs(a - b).max())

    return {"checkpoint": str(path), "length": args.length, "offset": args.offset,
            "openharmony vs transformers at 0": max_diff(ours[0], theirs[0]),
            "openharmony vs transformers at offset": max_diff(ours[args.offset],
                                                              theirs[args.offset]),
            "openharmony drift (offset vs 0)": max_diff(ours[args.offset], ours[0]),
            "transformers drift (offset vs 0)": max_diff(theirs[args.offset], theirs[0]),
            "top1 openharmony at offset vs transformers at offset": float(np.mean(
                ours[args.offset].argmax(-1) == theirs[args.offset].argmax(-1)))}


# -- memory -----------------------------------------------------------------------------------


def fill(caches, config, positions: int, chunk: int = 4096) -> None:
    """Put `positions` random keys/values into every cache (full ones with `extend`; the
    sliding ones through `attend`, a window at a time, which is cheap at any context)."""
    H, D = config.num_key_value_heads, config.head_dim
    queries = mx.zeros((1, config.num_attention_heads, config.sliding_window, D))
    sinks = mx.zeros((config.num_attention_heads,))
    for cache in caches:
        step = config.sliding_window if cache.bounded else chunk
        for begin in range(0, positions, step):
            n = min(step, positions - begin)
            k, v = mx.random.normal((2, 1, H, n, D))
            if cache.bounded:
                cache.attend(queries[:, :, :n], k, v, scale=1.0, sinks=sinks,
                             window=cache.window)
            else:
                cache.extend(k, v)
            mx.eval(cache.state)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def memory_worker(variant: str, positions: int) -> dict:
    """In a fresh process: the 20b caches (24 layers) filled to `positions`."""
    from openharmony.cache import make_caches
    from openharmony.random_checkpoint import PRESETS

    config = PRESETS["20b"]
    mx.eval(mx.zeros((1,)))
    before = rss_bytes()
    caches = make_caches(config, **VARIANTS[variant])
    fill(caches, config, positions)
    mx.clear_cache()
    full = sum(c.nbytes for c in caches if not c.bounded)
    sliding = sum(c.nbytes for c in caches if c.bounded)
    return {"positions": positions, "nbytes": full + sliding, "full_layers_nbytes": full,
            "sliding_layers_nbytes": sliding, "bytes_per_token_full_layers": full / positions,
            "rss_delta_bytes": rss_bytes() - before,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def memory(args) -> dict:
    out = {}
    for variant in VARIANTS:
        with big_memory_lock(True):  # 1.6 GB of float caches at 32k
            result = subprocess.run([sys.executable, __file__, "memory-worker", variant,
                                     str(args.positions)], check=True, capture_output=True,
                                    text=True)
        out[variant] = json.loads(result.stdout)
    return out


# -- speed ------------------------------------------------------------------------------------


def speed(args) -> dict:
    """Decode steps on the truncated 20b model with caches filled to each context: tokens/s
    of the model, and the attention of one full layer, one sliding layer and the rest of a
    step timed apart (with barriers) to project the 24-layer
    model."""
    from openharmony.load import load_model

    out = {}
    with big_memory_lock(True):
        model = load_model(truncated_20b(args.layers), "float32")
        config = model.config
        for context in args.contexts:
            for variant in args.variants:
                caches = model.make_cache(**VARIANTS[variant])
                fill(caches, config, context)
                token = 1
                model(mx.array([[token]]), caches)  # warm-up
                steps = []
                for _ in range(args.steps):
                    begin = time.perf_counter()
                    mx.eval(model(mx.array([[token]]), caches))
                    steps.append(time.perf_counter() - begin)
                attention = {"full": 0.0, "sliding": 0.0}
                for _ in range(args.steps):
                    per_layer = _attention_by_layer(model, caches)
                    for kind, seconds in per_layer.items():
                        attention[kind] += seconds
                step = float(np.median(steps))
                n_full = sum(not config.is_sliding(i) for i in range(config.num_hidden_layers))
                n_sliding = config.num_hidden_layers - n_full
                full_attention = attention["full"] / args.steps / n_full
                sliding_attention = attention["sliding"] / args.steps / n_sliding
                rest = (step - n_full * full_attention - n_sliding * sliding_attention)
                per_layer_rest = rest / config.num_hidden_layers  # experts, router, norms...
                # The 20b: 12 full + 12 sliding layers; the lm_head is in `rest` once, which
                # this spreads over the layers (a small overestimate for 24 layers).
                projected = 12 * full_attention + 12 * sliding_attention + 24 * per_layer_rest
                out[f"{variant} @ {context}"] = {
                    "context": context, "variant": variant, "layers": config.num_hidden_layers,
                    "step_s": step, "tokens_per_s": 1 / step,
                    "full_layer_attention_s": full_attention,
                    "sliding_layer_attention_s": sliding_attention,
                    "rest_per_layer_s": per_layer_rest,
                    "projected_20b_step_s": projected,
                    "projected_20b_attention_share": 12 * (full_attention + sliding_attention)
                                                     / projected,
                }
                print(json.dumps(out[f"{variant} @ {context}"]), file=sys.stderr)
                del caches
                mx.clear_cache()
    return out


def attention_alone(args) -> dict:
    """One decode step's attention of one full-attention layer of the 20b (64 query heads, 8
    kv heads of 64), its cache filled to each context: seconds per variant, the variants
    interleaved round by round (medians). Small enough to need no lock (134 MB at 32k)."""
    from openharmony.cache import make_caches
    from openharmony.random_checkpoint import PRESETS

    config = PRESETS["20b"]
    full_layer = next(i for i in range(config.num_hidden_layers) if not config.is_sliding(i))
    out = {}
    for context in args.contexts:
        caches = {}
        for variant in args.variants:
            cache = make_caches(config, **VARIANTS[variant])[full_layer]
            fill([cache], config, context)
            caches[variant] = cache
        q = mx.random.normal((1, config.num_attention_heads, 1, config.head_dim))
        k, v = mx.random.normal((2, 1, config.num_key_value_heads, 1, config.head_dim))
        sinks = mx.zeros((config.num_attention_heads,))
        times = {variant: [] for variant in caches}
        for _ in range(args.rounds):
            for variant, cache in caches.items():
                cache.trim_to(context)  # every step attends over `context` + 1 keys
                begin = time.perf_counter()
                mx.eval(cache.attend(q, k, v, scale=0.125, sinks=sinks, window=None))
                times[variant].append(time.perf_counter() - begin)
        for variant, seconds in times.items():
            out[f"{variant} @ {context}"] = {
                "context": context, "variant": variant, "attention_s": float(np.median(seconds)),
                "vs_float": float(np.median(seconds) / np.median(times["float"]))}
        del caches
    return out


def _attention_by_layer(model, caches) -> dict:
    """One decode step with a barrier around each layer's attention; seconds by layer kind."""
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
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("parity")
    p = sub.add_parser("accuracy")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 2560])
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--stride", type=int, default=8, help="compare every stride-th position")
    p = sub.add_parser("memory")
    p.add_argument("--positions", type=int, default=32768)
    p = sub.add_parser("memory-worker")
    p.add_argument("variant")
    p.add_argument("positions", type=int)
    p = sub.add_parser("speed")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768])
    p.add_argument("--variants", nargs="+", default=["float", "8-bit full layers",
                                                     "4-bit full layers", "bf16"])
    p.add_argument("--steps", type=int, default=5)
    p = sub.add_parser("attention")
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768])
    p.add_argument("--variants", nargs="+", default=["float", "8-bit full layers",
                                                     "4-bit full layers", "bf16"])
    p.add_argument("--rounds", type=int, default=9)
    p = sub.add_parser("long-positions")
    p.add_argument("--checkpoint", type=Path, help="default: the 20b shapes with 2 layers")
    p.add_argument("--offset", type=int, default=100_000)
    p.add_argument("--length", type=int, default=544, help="4 windows prefilled, the rest "
                                                           "decoded token by token")
    args = parser.parse_args()
    if args.command == "memory-worker":
        print(json.dumps(memory_worker(args.variant, args.positions)))
        return
    command = {"parity": parity, "accuracy": accuracy, "memory": memory, "speed": speed,
               "attention": attention_alone, "long-positions": long_positions}[args.command]
    print(json.dumps(command(args), indent=1))


if __name__ == "__main__":
    main()
