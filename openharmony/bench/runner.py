"""One benchmark: every engine's runs, one process each, alone on the machine, each from a
cold page cache, and what the machine could do (its read bandwidth) measured in the same
window.

A run is one process: openharmony (or mlx-lm) once per KV cache type, doing every length in
one load; each anchor twice (prefill lengths, then decode depths). Before each run the files of
*every* engine (the checkpoint's shards and the GGUF) are evicted from the page cache, and what
stayed resident is recorded, so that no run pays for another engine's files.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import harness, llama_bench
from .engines import ENGINES


@dataclass
class Plan:
    checkpoint: Path
    engines: list[str]  # of engines.ENGINES and llama_bench.ANCHORS
    prefill: list[int] = field(default_factory=lambda: [512, 2048])
    depths: list[int] = field(default_factory=lambda: [0, 2048])
    decode_tokens: int = 16
    kv: list[str] = field(default_factory=lambda: ["float"])  # openharmony's cache types
    dtype: str | None = None  # openharmony's compute dtype (None: its default)
    gguf: Path | None = None
    binaries: dict[str, Path] = field(default_factory=dict)  # anchor -> llama-bench
    repetitions: int = 1  # llama-bench's -r
    bandwidth_bytes: int = 1 << 30

    def files(self) -> list[Path]:
        """Every engine's files: what is evicted before each run."""
        files = sorted(self.checkpoint.rglob("*.safetensors"))
        return files + ([self.gguf] if self.gguf else [])

    def runs(self) -> list[tuple[str, str, dict | list[str]]]:
        """(engine, label, what to run): a spec for our engines, a command for the anchors."""
        runs = []
        for engine in self.engines:
            if engine in ENGINES:
                for kv in (self.kv if engine == "openharmony" else ["float"]):
                    runs.append((engine, kv, {
                        "engine": engine, "checkpoint": str(self.checkpoint), "kv": kv,
                        "prefill": self.prefill, "depths": self.depths,
                        "decode_tokens": self.decode_tokens, "dtype": self.dtype}))
                continue
            common = dict(threads=harness.threads(), repetitions=self.repetitions)
            binary = self.binaries[engine]
            if self.prefill:
                runs.append((engine, "prefill", llama_bench.prefill_command(
                    engine, binary, self.gguf, lengths=self.prefill, **common)))
            if self.depths:
                runs.append((engine, "decode", llama_bench.decode_command(
                    engine, binary, self.gguf, depths=self.depths, tokens=self.decode_tokens,
                    **common)))
        return runs


def run_one(engine: str, what, log=print) -> tuple[list[dict], int]:
    """One process: its measurements and its peak resident memory (from wait4); our engines'
    progress lines go to `log` as they come."""
    if engine in ENGINES:
        env = dict(os.environ)
        if engine == "mlx-lm":
            env["OPENHARMONY_BLAS"] = "mlx"  # mlx-lm runs on the BLAS MLX ships with
        command = [sys.executable, "-m", "openharmony.bench.engines", json.dumps(what)]
        out, _, peak = harness.run_measured(
            command, env=env, on_stderr=lambda line, seconds: log(f"  [{seconds:.0f} s] "
                                                                  f"{line.rstrip()}"))
        found = json.loads(out.strip().splitlines()[-1])
        return [m for m in found if m["kind"] != "process"], peak
    out, _, peak = harness.run_measured(what)
    found = llama_bench.parse(engine, out)
    info = llama_bench.build_info(out)
    for m in found:
        m["build"] = info
    return found, peak


def benchmark(plan: Plan, log=print) -> dict:
    """Run `plan` under the machine-wide lock (for a big checkpoint: a tiny one runs beside
    others); every figure, and how the window looked."""
    big = sum(f.stat().st_size for f in plan.files()) >= harness.LOCK_ABOVE_BYTES
    with harness.bench_lock(big):
        before = harness.load_average()
        bandwidth = harness.read_bandwidth(plan.bandwidth_bytes)
        log(f"machine read bandwidth {bandwidth / 1e9:.1f} GB/s ({harness.threads()} threads); "
            f"load average {before}")
        measurements, runs = [], []
        for engine, label, what in plan.runs():
            harness.evict(plan.files())
            resident = sum(harness.resident_bytes(f) for f in plan.files())
            log(f"{engine} {label}: page cache evicted ({resident / 1e6:.0f} MB of every "
                f"engine's files still resident); running ...")
            start = time.perf_counter()
            found, peak = run_one(engine, what, log)
            seconds = time.perf_counter() - start
            for m in found:
                m.update(label=label, peak_rss_bytes=peak)
            measurements += found
            runs.append({"engine": engine, "label": label, "resident_before_bytes": resident,
                         "peak_rss_bytes": peak, "seconds": seconds,
                         "command": what if isinstance(what, list) else None})
            log(f"{engine} {label}: {seconds:.0f} s, peak RSS {peak / 1e9:.2f} GB")
            for m in found:  # each figure as soon as it is known: a long run may be cut short
                log(f"  {m['kind']} {m['tokens']} tokens at depth {m['depth']}: "
                    f"{m['tok_s']:.2f} tok/s")
        after = harness.load_average()
    return {"cpu": harness.cpu_model(), "threads": harness.threads(),
            "bandwidth_bytes_s": bandwidth, "load_average": {"before": before, "after": after},
            "checkpoint": str(plan.checkpoint), "gguf": str(plan.gguf) if plan.gguf else None,
            "decode_tokens": plan.decode_tokens, "measurements": measurements, "runs": runs}
