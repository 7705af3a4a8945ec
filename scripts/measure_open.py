#!/usr/bin/env python
"""Measure how long `open_checkpoint` takes on a real-size checkpoint, and what it costs in memory.

    scripts/measure_open.py [--cache-dir bench_cache/gpt-oss-20b-random] [--preset 20b]

Writes a random checkpoint with the real shapes (gpt-oss-20b: 13.8 GB in three shards, like
the hub) unless the cache folder already holds one, then opens it in a fresh Python process
and prints one JSON line (by default with the files evicted from the page cache first, as
after a reboot): seconds to open, VmRSS / VmHWM (MB) before and after opening, and
the time to build the lazy dict of every tensor and to read one tensor.
Targets: open under 2 s, resident memory under 500 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer

from openharmony.bench.harness import evict

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter, so the numbers include nothing of the writer.
MEASURE = r"""
import json, sys, time

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}

t0 = time.perf_counter()
import mlx.core as mx
from openharmony.weights import open_checkpoint
imported = time.perf_counter()
before = status()
start = time.perf_counter()
checkpoint = open_checkpoint(sys.argv[1])
opened = time.perf_counter()
after_open = status()
weights = checkpoint.weights()
listed = time.perf_counter()
after_weights = status()
norm = checkpoint.get("layers.0.input_layernorm.weight", mx.float32)
mx.eval(norm)
read_one = time.perf_counter()
print(json.dumps({
    "path": sys.argv[1], "layout": checkpoint.layout, "files": len(checkpoint.files),
    "total_gb": round(checkpoint.total_bytes / 1e9, 3), "tensors": len(weights),
    "cold_cache": sys.argv[2] == "cold",
    "import_s": round(imported - t0, 3),
    "open_s": round(opened - start, 4),
    "weights_dict_s": round(listed - opened, 4),
    "read_one_tensor_s": round(read_one - listed, 4),
    "rss_mb_before_open": round(before["VmRSS"], 1),
    "rss_mb_after_open": round(after_open["VmRSS"], 1),
    "rss_mb_after_weights_dict": round(after_weights["VmRSS"], 1),
    "hwm_mb": round(status()["VmHWM"], 1),
}))
"""


def main(
    cache_dir: Path = typer.Option(REPO / "bench_cache" / "gpt-oss-20b-random",
                                   help="Where the random checkpoint is (or is written)."),
    preset: str = typer.Option("20b", help="Preset to write when the cache is empty."),
    shards: int = typer.Option(3, help="Shards to write when the cache is empty."),
    seed: int = typer.Option(0),
    cold: bool = typer.Option(True, help="Evict the files from the page cache first "
                                         "(posix_fadvise DONTNEED; no root needed)."),
) -> None:
    if not (cache_dir / "config.json").is_file():  # config.json is written last
        from openharmony.testing.random_checkpoint import PRESETS, write_random_checkpoint

        typer.echo(f"writing a random {preset} checkpoint to {cache_dir}", err=True)
        write_random_checkpoint(cache_dir, PRESETS[preset], seed=seed, shards=shards,
                                progress=True)
    if cold:
        for file in cache_dir.iterdir():
            evict([file])
    result = subprocess.run([sys.executable, "-c", MEASURE, str(cache_dir),
                             "cold" if cold else "warm"],
                            capture_output=True, text=True, check=False)
    if result.returncode:
        typer.echo(result.stderr, err=True)
        raise typer.Exit(result.returncode)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    typer.echo(json.dumps(measured, indent=2))
    ok = measured["open_s"] < 2 and measured["hwm_mb"] < 500
    typer.echo(f"target (open < 2 s, peak RSS < 500 MB): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    typer.run(main)
