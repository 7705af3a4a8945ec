"""Weights used in place from the mmap vs read into memory: load time, memory, two processes.

    python scripts/measure_in_place.py [CHECKPOINT] --decode 16 --rounds 2
    python scripts/measure_in_place.py CHECKPOINT_LARGER_THAN_MEMORY --in-place-only --decode 8

The targets of issue 10, on a checkpoint whose files are in the page cache (warm: the script
reads them once first): `load_model` until the first token can be computed, anonymous
(private) memory after loading, peak resident memory while decoding against the file size
plus the KV cache, and two processes of the same checkpoint decoding at once. Each engine
setting runs in a fresh process, alternated over the rounds, under the benchmarks' memory lock:

* `in place`: `load_model(path)` with the native kernels, the default on the CPU: the experts,
  embedding, attention and lm_head are the checkpoint's mapped pages;
* `read`: `load_model(path, in_place=False)`: the same kernels, every weight read into MLX's
  memory (what openharmony did before).

Then two `in place` processes are started together; both must load and decode. A third
`read` process alongside would not fit in 24 GB (each holds ~14 GB of its own).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from openharmony.bench.harness import bench_lock, prompt_ids, vm_hwm_bytes

DEFAULT = Path(__file__).resolve().parents[1] / "bench_cache" / "gpt-oss-20b-random"
MODES = ("in place", "read")
PROMPT_TOKENS = 16


def memory_status() -> dict[str, int]:
    """Bytes of this process: anonymous (private) memory and resident memory."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value) * 1024
    return {"anonymous_bytes": fields["Anonymous"], "rss_bytes": fields["Rss"]}


def storage_read_bytes() -> int:
    """Bytes this process made the kernel read from storage (page faults on the mapping
    included): what did not come from the page cache."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no read_bytes in /proc/self/io")


def worker(mode: str, checkpoint: Path, decode_tokens: int) -> dict:
    """Load, then decode `decode_tokens` greedily after a short prompt, in this process."""
    import mlx.core as mx

    from openharmony.generate import stream_generate
    from openharmony.load import load_model
    from openharmony.memory import kv_cache_bytes
    from openharmony.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    start = time.perf_counter()
    model = load_model(checkpoint, in_place=(mode == "in place"))
    load_s = time.perf_counter() - start
    after_load = memory_status()
    prompt = prompt_ids(PROMPT_TOKENS, model.config.vocab_size)
    read_before = storage_read_bytes()
    times = []
    last = time.perf_counter()
    for chunk in stream_generate(model, prompt, tokenizer=tokenizer, max_tokens=decode_tokens,
                                 temperature=0.0, ignore_eos=True):
        now = time.perf_counter()
        times.append(now - last)
        last = now
    # The first step is the prompt's (and, in place, touches every page it reads first).
    decode = times[1:]
    return {"mode": mode, "load_s": load_s, **after_load,
            "first_token_s": times[0], "decode_tok_s": len(decode) / sum(decode),
            "vm_hwm_bytes": vm_hwm_bytes(), "mlx_peak_bytes": mx.get_peak_memory(),
            "storage_read_per_token_bytes": (storage_read_bytes() - read_before) / len(times),
            "kv_bytes": kv_cache_bytes(model.config, model.dtype.size,
                                       PROMPT_TOKENS + decode_tokens)}


def start_worker(mode: str, checkpoint: Path, decode_tokens: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, str(checkpoint), "--worker", mode,
                             "--decode", str(decode_tokens)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def result(process: subprocess.Popen) -> dict:
    out, err = process.communicate()
    if process.returncode != 0:
        killed = " (killed: out of memory?)" if process.returncode < 0 else ""
        raise RuntimeError(f"worker failed with {process.returncode}{killed}:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def warm(checkpoint: Path) -> int:
    """Read every file once so that it is in the page cache; returns their total size."""
    total = 0
    for file in sorted(checkpoint.rglob("*.safetensors")):
        with open(file, "rb", buffering=0) as f:
            while chunk := f.read(64 << 20):
                total += len(chunk)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, nargs="?", default=DEFAULT)
    parser.add_argument("--decode", type=int, default=16, help="tokens decoded per process")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--in-place-only", action="store_true",
                        help="only `in place`, one process (a checkpoint larger than memory: "
                             "not warmed, since it cannot all be in the page cache)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.checkpoint, args.decode)))
        return
    if args.in_place_only:
        with bench_lock():
            print(json.dumps(result(start_worker("in place", args.checkpoint, args.decode))))
        return
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with bench_lock():
        file_bytes = warm(args.checkpoint)
        for round_ in range(args.rounds):
            for mode in MODES[round_ % 2:] + MODES[:round_ % 2]:
                warm(args.checkpoint)  # a `read` process pushes part of the file out
                runs[mode].append(result(start_worker(mode, args.checkpoint, args.decode)))
                print(json.dumps(runs[mode][-1]), flush=True)
        warm(args.checkpoint)
        pair = [start_worker("in place", args.checkpoint, args.decode) for _ in range(2)]
        together = [result(process) for process in pair]
    print(f"\ncheckpoint files: {file_bytes / 1e9:.2f} GB (warm in the page cache)\n")
    print("| | load_model (s) | anonymous after load (GiB) | decode tok/s | first token (s) "
          "| VmHWM (GB) | VmHWM / (file + KV) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def row(name: str, rs: list[dict]) -> None:
        med = {key: statistics.median(r[key] for r in rs) for key in rs[0] if key != "mode"}
        print(f"| {name} | {med['load_s']:.2f} | {med['anonymous_bytes'] / 2**30:.2f} "
              f"| {med['decode_tok_s']:.2f} | {med['first_token_s']:.2f} "
              f"| {med['vm_hwm_bytes'] / 1e9:.2f} "
              f"| {med['vm_hwm_bytes'] / (file_bytes + med['kv_bytes']):.2f} |")

    for mode in MODES:
        row(f"{mode} (median of {len(runs[mode])})", runs[mode])
    for i, r in enumerate(together):
        row(f"in place, two at once: process {i + 1}", [r])
    ratio = statistics.median(r["load_s"] for r in runs["read"]) / statistics.median(
        r["load_s"] for r in runs["in place"])
    print(f"\nload: read / in place = {ratio:.1f}x")


if __name__ == "__main__":
    main()
