"""Expert parallel over local processes against one process, side by side (docs/distributed.md).

    .venv/bin/python scripts/bench_distributed.py [CHECKPOINT] [--ranks 2] [--prompt-tokens 128]
        [--decode-tokens 16] [--rounds 2]
    .venv/bin/python scripts/bench_distributed.py --all-sum [--ranks 2]
        # the time of one all_sum of a decode step's and a prefill chunk's hidden states

CHECKPOINT defaults to /tmp/openharmony-20b-8l (the real gpt-oss-20b shapes, 8 of its 24
layers: what `scripts/profile_model.py --layers 8` writes). Each round runs, one after the
other under the big-memory lock (scripts/bench.py), one process and then `--ranks` processes
under `mlx.launch --backend ring` on 127.0.0.1; each loads the checkpoint (rank r: its share
of the experts), prefills the same prompt and greedily decodes the same tokens. Per run:
resident memory after the load (MLX's active memory and VmRSS, per rank), VmHWM, prefill and
decode tokens/s (generate()'s statistics), and the bytes each rank handed to `all_sum` per
token (counted by ExpertShard) and the loopback interface's transmitted bytes per token (all
ranks, TCP/IP headers included). Prints medians over the rounds and the ratios to one process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from openharmony.bench.harness import (LOCK_ABOVE_BYTES, bench_lock, blas_in_use, prompt_ids,
                                       vm_hwm_bytes)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = Path("/tmp/openharmony-20b-8l")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _loopback_tx_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[8])
    raise RuntimeError("no lo in /proc/net/dev")


def run(checkpoint: Path, prompt_tokens: int, decode_tokens: int) -> None:
    """One rank (or the single process): load, prefill, decode; one JSON line per rank."""
    import openharmony  # noqa: F401  before mlx: it picks MLX's BLAS
    from openharmony import generate, load_model, parallel

    import mlx.core as mx

    group = parallel.init_group()
    start = time.perf_counter()
    model = load_model(checkpoint, "float32", group=group)
    load_s = time.perf_counter() - start
    resident = {"mlx_active_bytes": mx.get_active_memory(), "vm_rss_bytes": _status("VmRSS")}
    prompt = prompt_ids(prompt_tokens, model.config.vocab_size)
    shard = model.layers[0].mlp.shard
    sent_before, lo_before = (shard.bytes_sent if shard else 0), _loopback_tx_bytes()
    # Token ids in and out (no vocabulary needed); a fixed number of tokens for every engine.
    result = generate(model, prompt, detokenize=False, ignore_eos=True,
                      max_tokens=decode_tokens, temperature=0.0)
    tokens = prompt_tokens + len(result.tokens) - 1  # the last token is never fed back
    sent = (shard.bytes_sent if shard else 0) - sent_before
    print(json.dumps({
        "rank": group.rank() if group else 0, "ranks": group.size() if group else 1,
        "experts": [model.local_experts.start, model.local_experts.stop]
        if model.local_experts else None,
        "blas": blas_in_use(), "load_s": load_s, **resident, "vm_hwm_bytes": vm_hwm_bytes(),
        "prefill_tok_s": result.stats.prompt_tokens_per_second,
        "decode_tok_s": result.stats.generation_tokens_per_second,
        "all_sum_bytes_per_token": sent / tokens,
        "loopback_tx_bytes_per_token": (_loopback_tx_bytes() - lo_before) / tokens,
        "tokens": result.tokens}), flush=True)


ALL_SUM_SIZES = {  # bytes of one layer's all_sum: [tokens, 2880] hidden states
    "decode bf16 (1 x 2880)": (1, "bfloat16"), "decode f32 (1 x 2880)": (1, "float32"),
    "prefill 512 bf16": (512, "bfloat16"), "prefill 512 f32": (512, "float32")}


def time_all_sum(repeats: int = 300) -> None:
    """One rank: the median seconds of one evaluated all_sum of each ALL_SUM_SIZES entry."""
    from openharmony import parallel

    import mlx.core as mx

    group = parallel.init_group()
    result = {}
    for label, (tokens, dtype) in ALL_SUM_SIZES.items():
        x = mx.ones((tokens, 2880), dtype=getattr(mx, dtype))
        times = []
        for _ in range(repeats if tokens == 1 else repeats // 10):
            start = time.perf_counter()
            mx.eval(mx.distributed.all_sum(x, group=group))
            times.append(time.perf_counter() - start)
        result[label] = {"bytes": x.nbytes, "median_s": statistics.median(times)}
    print(json.dumps({"rank": group.rank(), "ranks": group.size(), "all_sum": result}))


def _free_port_block(n: int) -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


def launch(checkpoint: Path | None, ranks: int, args) -> list[dict]:
    command = [sys.executable, __file__, "--run", str(checkpoint),
               "--prompt-tokens", str(args.prompt_tokens),
               "--decode-tokens", str(args.decode_tokens)]
    if checkpoint is None:
        command = [sys.executable, __file__, "--all-sum-rank"]
    if ranks > 1:
        command = [str(Path(sys.executable).with_name("mlx.launch")), "-n", str(ranks),
                   "--backend", "ring", "--starting-port", str(_free_port_block(ranks)), "--",
                   *command]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{ranks} rank(s) failed ({done.returncode}):\n{done.stderr[-3000:]}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == ranks, done.stdout
    return sorted(lines, key=lambda line: line["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--all-sum", action="store_true",
                        help="time all_sum over --ranks local ranks instead")
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--all-sum-rank", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return run(args.run, args.prompt_tokens, args.decode_tokens)
    if args.all_sum_rank:
        return time_all_sum()
    if args.all_sum:
        rows = launch(None, args.ranks, args)
        print(f"all_sum over {args.ranks} local ranks (ring backend, 127.0.0.1), median of "
              "evaluated calls, rank 0:")
        for label, row in rows[0]["all_sum"].items():
            print(f"  {label:<24}{row['bytes']:>10} B {row['median_s'] * 1e6:>10.0f} us")
        return

    runs: dict[int, list[list[dict]]] = {1: [], args.ranks: []}
    from openharmony.weights import open_checkpoint

    with bench_lock(open_checkpoint(args.checkpoint).tensor_bytes >= LOCK_ABOVE_BYTES):
        for _ in range(args.rounds):
            for ranks in runs:
                runs[ranks].append(launch(args.checkpoint, ranks, args))
    one, many = runs[1], runs[args.ranks]
    assert all(r[0]["tokens"] == one[0][0]["tokens"] for r in one + many), "tokens differ"

    def med(rows, rank, field):
        return statistics.median(row[rank][field] for row in rows)

    gb = 1e9
    print(f"checkpoint {args.checkpoint}, prompt {args.prompt_tokens}, decode "
          f"{args.decode_tokens} tokens, {args.rounds} round(s), BLAS {one[0][0]['blas']}, "
          f"{os.cpu_count()} CPUs; medians")
    print(f"{'run':<16}{'experts':>9}{'MLX GB':>8}{'RSS GB':>8}{'HWM GB':>8}{'load s':>8}"
          f"{'prefill/s':>10}{'decode/s':>9}{'all_sum B/tok':>14}{'lo B/tok':>10}")
    for label, rows, count in (("1 process", one, 1), (f"{args.ranks} ranks", many, args.ranks)):
        for rank in range(count):
            experts = rows[0][rank]["experts"]
            print(f"{label + (f' r{rank}' if count > 1 else ''):<16}"
                  f"{'all' if experts is None else f'{experts[0]}-{experts[1] - 1}':>9}"
                  f"{med(rows, rank, 'mlx_active_bytes') / gb:>8.2f}"
                  f"{med(rows, rank, 'vm_rss_bytes') / gb:>8.2f}"
                  f"{med(rows, rank, 'vm_hwm_bytes') / gb:>8.2f}"
                  f"{med(rows, rank, 'load_s'):>8.1f}"
                  f"{med(rows, rank, 'prefill_tok_s'):>10.2f}"
                  f"{med(rows, rank, 'decode_tok_s'):>9.3f}"
                  f"{med(rows, rank, 'all_sum_bytes_per_token'):>14.0f}"
                  f"{med(rows, rank, 'loopback_tx_bytes_per_token'):>10.0f}")
    for field in ("prefill_tok_s", "decode_tok_s", "mlx_active_bytes"):
        print(f"{field} {args.ranks} ranks / 1 process: "
              f"{med(many, 0, field) / med(one, 0, field):.2f}x")
    print("same tokens in every run and rank: yes")


if __name__ == "__main__":
    main()
