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
truncated to `--layers` (written under ./bench_cache/ once, random weights, seed 0); every
20b-sized run holds the benchmarks' memory lock. The measurements themselves are
openharmony.bench.cache (accuracy) and openharmony.bench.cache_speed (memory, speed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openharmony.bench.cache import (CHECKPOINT_20B, NOISE_FLOOR, VARIANTS, accuracy,
                                     long_positions, parity, quantization_error)
from openharmony.bench.cache_speed import ON_MLX, attention_alone, memory, speed


def add_model_options(parser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT_20B,
                        help="the model (default: the full 20b shapes, random weights)")
    parser.add_argument("--layers", type=int, help="instead: the 20b shapes truncated to this "
                                                   "many layers (written under bench_cache/)")
    parser.add_argument("--proxy", action="store_true", help="with --layers: the 20b "
                        "attention, small vocabulary and experts (under 1 GB, no memory lock)")


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
    command = {"parity": parity, "accuracy": accuracy, "memory": memory, "speed": speed,
               "quantization-error": quantization_error,
               "attention": attention_alone, "long-positions": long_positions}[args.command]
    print(json.dumps(command(args), indent=1))


if __name__ == "__main__":
    main()
