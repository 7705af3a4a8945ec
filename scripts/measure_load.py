"""Load time from a cold page cache: openharmony vs mlx-lm, interleaved, one process at a time.

    python scripts/measure_load.py [CHECKPOINT] --rounds 3

Before each load the checkpoint's pages are evicted (`posix_fadvise(DONTNEED)`, no root
needed), so every engine reads the files from disk as after a reboot, whatever ran before.
Each load runs in a fresh process under the benchmarks' memory lock: openharmony
(`load_model(path, "float32")`, its CPU default, with and without its read-ahead thread) and
mlx-lm (`mlx_lm.utils.load_model` + evaluating every parameter, its bf16 default).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from openharmony.bench.harness import bench_lock, evict

DEFAULT = Path(__file__).resolve().parents[1] / "bench_cache" / "gpt-oss-20b-random"
SYSTEMS = ("openharmony", "openharmony-no-read-ahead", "mlx-lm")


def load(system: str, checkpoint: Path) -> float:
    """Seconds to load in this process (imports excluded)."""
    if system.startswith("openharmony"):
        from openharmony import load_model
        from openharmony.weights import ReadAhead

        if system == "openharmony-no-read-ahead":
            ReadAhead._run = lambda self: None
        start = time.perf_counter()
        load_model(checkpoint, "float32")
    else:
        import mlx.core as mx
        from mlx_lm.utils import load_model

        start = time.perf_counter()
        model, _ = load_model(checkpoint)
        mx.eval(model.parameters())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, nargs="?", default=DEFAULT)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(load(args.worker, args.checkpoint))
        return
    seconds: dict[str, list[float]] = {system: [] for system in SYSTEMS}
    for round_ in range(args.rounds):
        # Rotated each round: the first load after other work pays for reclaiming its memory.
        for system in SYSTEMS[round_ % 3:] + SYSTEMS[:round_ % 3]:
            with bench_lock():
                for file in args.checkpoint.rglob("*.safetensors"):
                    evict([file])
                out = subprocess.run([sys.executable, __file__, str(args.checkpoint),
                                      "--worker", system], check=True, capture_output=True,
                                     text=True).stdout
            seconds[system].append(float(out.split()[-1]))
            print(f"{system:26s} {seconds[system][-1]:.1f} s", flush=True)
    for system, values in seconds.items():
        print(f"{system:26s} median {statistics.median(values):.1f} s of "
              f"{', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
