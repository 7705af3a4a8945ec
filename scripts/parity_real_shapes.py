"""Logits of openharmony and mlx-lm against transformers on a real-shape checkpoint.

The parity tests use tiny configs; this checks the real gpt-oss-20b shapes (a few layers, so
the float32 reference fits in memory) over a prompt several sliding windows long:

    python scripts/parity_real_shapes.py bench_cache/gpt-oss-20b-random-2layers --tokens 512

Each engine runs in its own subprocess, one at a time (under the benchmarks' memory lock), and
leaves its float32 logits in a temporary folder; the report is each engine's largest
|logit difference| from transformers, the first position where it exceeds 1e-3, and the
top-1 agreement, and the median top-1 margin of the reference (how close its two best logits
are: a small margin makes top-1 agreement fragile).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from openharmony.bench.harness import bench_lock

# openharmony-mxfp4-head: openharmony with its opt-in quantized lm_head, openharmony-fast: with
# precision="fast"; this measures their accuracy cost (docs/speed.md).
ENGINES = ("openharmony", "openharmony-mxfp4-head", "openharmony-fast", "mlx-lm", "transformers")


def logits(engine: str, path: Path, tokens: np.ndarray) -> np.ndarray:
    """[T] token ids -> float32 logits [T, V] of `engine` (run in this process)."""
    if engine.startswith("openharmony"):
        from openharmony import load_model  # first: it picks MLX's BLAS (openharmony/blas.py)

        import mlx.core as mx

        model = load_model(path, "float32", quantized_lm_head=engine == "openharmony-mxfp4-head",
                           precision="fast" if engine == "openharmony-fast" else "exact")
        return np.array(model(mx.array(tokens[None])))[0]
    if engine == "mlx-lm":
        import mlx.core as mx
        from mlx_lm.utils import load_model

        model, _ = load_model(path)
        model.set_dtype(mx.float32)
        return np.array(model(mx.array(tokens[None])).astype(mx.float32))[0]
    from openharmony.testing.reference import load_reference, reference_logits

    return reference_logits(load_reference(path), tokens[None])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from openharmony.config import ModelConfig

    # Inside the vocabulary: a small model's, else the range the documented run used.
    vocab = min(200_000, ModelConfig.from_path(args.checkpoint).vocab_size)
    tokens = np.random.default_rng(0).integers(0, vocab, size=args.tokens)
    if args.worker:
        np.save(args.out, logits(args.worker, args.checkpoint, tokens))
        return

    with tempfile.TemporaryDirectory() as folder:
        results = {}
        for engine in ENGINES:
            out = Path(folder) / f"{engine}.npy"
            with bench_lock():
                subprocess.run([sys.executable, __file__, str(args.checkpoint), "--tokens",
                                str(args.tokens), "--worker", engine, "--out", str(out)],
                               check=True)
            results[engine] = np.load(out)
    reference = results.pop("transformers")
    top2 = np.sort(reference, axis=1)[:, -2:]
    print(f"{args.checkpoint}, {args.tokens} tokens, logit std {reference.std():.2f}, "
          f"median top-1 margin {np.median(top2[:, 1] - top2[:, 0]):.2f}")
    for engine, values in results.items():
        per_position = np.abs(values - reference).max(axis=1)
        off = np.flatnonzero(per_position > 1e-3)
        agree = (values.argmax(1) == reference.argmax(1)).mean()
        print(f"{engine:22s} max |diff| {per_position.max():.2e}; first position > 1e-3: "
              f"{off[0] if off.size else 'none'}; top-1 agreement {agree:.3f}; mean KL "
              f"{mean_kl(reference, values):.1e}")


def mean_kl(reference: np.ndarray, values: np.ndarray) -> float:
    """Mean over positions of KL(softmax(reference) || softmax(values)), in float64."""
    def log_softmax(z):
        z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p, q = log_softmax(reference), log_softmax(values)
    return float((np.exp(p) * (p - q)).sum(axis=1).mean())


if __name__ == "__main__":
    main()
