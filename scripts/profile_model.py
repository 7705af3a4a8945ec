"""Where openharmony's decode and prefill time goes, per layer part, on real gpt-oss shapes.

    python scripts/profile_model.py [CHECKPOINT] [--layers 4] [--prompt 512] [--dtype float32]

CHECKPOINT defaults to /tmp/openharmony-20b-<layers>l, written once with the real gpt-oss-20b
shapes and `--layers` layers (about 0.6 GB per layer + 2.3 GB of embeddings). Each part runs
behind an `mx.eval` barrier, so the parts add up to more than an unbarriered step (no
overlap, more host round trips); the unbarriered step is printed too. Per-layer figures are
averaged over the layers and scaled to the full model's layer count (24 for 20b).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

from openharmony.load import load_model  # first: openharmony picks MLX's BLAS (blas.py)
from openharmony.testing import PRESETS, preset_config, write_random_checkpoint

import mlx.core as mx

from openharmony.bench.harness import LOCK_FILE, bench_lock
from openharmony.bench.parts import GROUPS, PER_LAYER, timed_forward, timed_step


def truncated_checkpoint(path: Path, layers: int) -> Path:
    if not (path / "config.json").exists():
        print(f"writing {path} ({layers} layers)")
        write_random_checkpoint(path, preset_config("20b", layers))
    return path


def barriered_forward(model, tokens: mx.array, cache: list) -> tuple[dict[str, float], mx.array]:
    """One forward through the model's own parts hook, a barrier after each; seconds per part
    group summed over layers. The lm_head runs on the last position only, as generation does."""
    parts = dict.fromkeys(GROUPS, 0.0)
    logits = timed_forward(model, tokens, cache, parts)
    return parts, logits


def prefill_step(model, tokens: mx.array, cache: list) -> list[mx.array]:
    """A prefill as generate runs it: the model's logits stay unevaluated, the cache is not."""
    model(tokens, cache)
    return [c.state for c in cache]


def timed(fn, *args):
    """(seconds, result) of fn(*args) evaluated."""
    mx.synchronize()
    start = time.perf_counter()
    out = fn(*args)
    mx.eval(out)
    return time.perf_counter() - start, out


def report(title: str, runs: list[dict[str, float]], steps: list[float], layers: int,
           full_layers: int, tokens: int) -> None:
    per_layer = PER_LAYER
    print(f"\n{title}: median of {len(runs)} runs, {tokens} token(s) per step")
    print(f"  {'part':16s} {'ms (this model)':>16s} {'ms/layer':>10s} "
          f"{f'ms x{full_layers} layers':>16s}")
    total_full = 0.0
    for part in runs[0]:
        ms = statistics.median(r[part] for r in runs) * 1e3
        scaled = ms / layers * full_layers if part in per_layer else ms
        total_full += scaled
        per = f"{ms / layers:10.2f}" if part in per_layer else f"{'':10s}"
        print(f"  {part:16s} {ms:16.2f} {per} {scaled:16.1f}")
    step_ms = statistics.median(steps) * 1e3
    print(f"  {'sum of parts':16s} {'':16s} {'':10s} {total_full:16.1f}"
          f"  -> {tokens / total_full * 1e3:.3f} tok/s at {full_layers} layers")
    print(f"  unbarriered step on this model: {step_ms:.1f} ms"
          + ("  (prefill: cache only, as generate)" if tokens > 1 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", type=Path)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=512, help="prefill length")
    parser.add_argument("--decode", type=int, default=8, help="decode steps to time")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quantized-lm-head", action="store_true",
                        help="the opt-in MXFP4 lm_head (changes the logits)")
    parser.add_argument("--no-lock", action="store_true",
                        help=f"skip {LOCK_FILE} (only for a model far smaller than the machine)")
    parser.add_argument("--full-layers", type=int, default=PRESETS["20b"].num_hidden_layers)
    args = parser.parse_args()
    path = truncated_checkpoint(args.checkpoint or Path(f"/tmp/openharmony-20b-{args.layers}l"),
                                args.layers)

    with bench_lock(not args.no_lock):  # one big-memory process at a time here
        start = time.perf_counter()
        model = load_model(path, args.dtype, quantized_lm_head=args.quantized_lm_head)
        print(f"load: {time.perf_counter() - start:.2f} s, "
              f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB, "
              f"MLX peak {mx.get_peak_memory() / 1e9:.2f} GB, "
              f"active {mx.get_active_memory() / 1e9:.2f} GB")
        layers = len(model.layers)
        prompt = mx.random.randint(0, model.config.vocab_size, (1, args.prompt))

        prefill_runs, prefill_steps = [], []
        for _ in range(2):
            parts, _ = barriered_forward(model, prompt, model.make_cache())
            prefill_runs.append(parts)
            prefill_steps.append(timed(prefill_step, model, prompt, model.make_cache())[0])
        report(f"prefill {args.prompt} tokens", prefill_runs, prefill_steps, layers,
               args.full_layers, args.prompt)

        cache = model.make_cache()
        _, logits = barriered_forward(model, prompt, cache)
        token = mx.argmax(logits[:, -1:], axis=-1)
        decode_runs, decode_steps = [], []
        for _ in range(args.decode):
            parts, logits = barriered_forward(model, token, cache)
            decode_runs.append(parts)
            token = mx.argmax(logits[:, -1:], axis=-1)
            seconds, logits = timed_step(model, token, cache)
            decode_steps.append(seconds)
            token = mx.argmax(logits[:, -1:], axis=-1)
        report("decode", decode_runs, decode_steps, layers, args.full_layers, 1)
        print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB, "
              f"MLX peak {mx.get_peak_memory() / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
