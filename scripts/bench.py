"""openharmony against llama.cpp and ik_llama.cpp (and mlx-lm), side by side in one window, on
a gpt-oss checkpoint (the random 20b one: docs/benchmarks.md).

    python scripts/bench.py CHECKPOINT --gguf MODEL.gguf \\
        --llama-bench /work/anchors/llama.cpp/build/bin/llama-bench \\
        --ik-llama-bench /work/anchors/ik_llama.cpp/build/bin/llama-bench \\
        --prefill 512 2048 --depths 0 2048 --json bench.json
    python scripts/bench.py CHECKPOINT --engines openharmony --kv float bf16 8bit --depths 8192

Every run is a process of its own, alone on the machine (the script holds
/tmp/openharmony-bench.lock for the whole benchmark: do not wrap it in `flock`), started after
every engine's files were evicted from the page cache. It prints the machine's read bandwidth,
each decode run's achieved bandwidth beside it (runs under half of it are SUSPECT), the CPU
model, and one `ratio <test>: openharmony/<anchor> = 0.41x` line per test both ran. Depths
above 8192 on openharmony's CPU attention take long: ask for them explicitly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from openharmony.bench import report, runner
from openharmony.bench.engines import ENGINES, KV_OPTIONS
from openharmony.bench.llama_bench import ANCHORS
from openharmony.bench.traffic import StepBytes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="the checkpoint folder (HF layout)")
    p.add_argument("--engines", nargs="+", choices=[*ENGINES, *ANCHORS],
                   help="default: openharmony, and each anchor whose llama-bench is given")
    p.add_argument("--gguf", type=Path, help="the GGUF of the checkpoint, for the anchors "
                   "(`scripts/llama_cpp.py convert`)")
    p.add_argument("--llama-bench", type=Path, help="llama.cpp's llama-bench binary")
    p.add_argument("--ik-llama-bench", type=Path, help="ik_llama.cpp's llama-bench binary")
    p.add_argument("--prefill", type=int, nargs="*", default=[512, 2048],
                   help="prompt lengths to prefill from an empty context (default 512 2048)")
    p.add_argument("--depths", type=int, nargs="*", default=[0, 2048],
                   help="decode after a prompt of each length (default 0 2048; 8192 and 32768 "
                        "take long)")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--kv", nargs="+", choices=list(KV_OPTIONS), default=["float"],
                   help="openharmony's KV cache types, one run each (default float)")
    p.add_argument("--dtype", help="openharmony's compute dtype (default: its own default)")
    p.add_argument("--repetitions", type=int, default=1, help="llama-bench's -r")
    p.add_argument("--bandwidth-bytes", type=int, default=1 << 30,
                   help="buffer size of the read-bandwidth measurement")
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args(argv)
    binaries = {"llama.cpp": args.llama_bench, "ik_llama.cpp": args.ik_llama_bench}
    if args.engines is None:
        args.engines = ["openharmony", *(a for a in ANCHORS if binaries[a])]
    for anchor in set(args.engines) & set(ANCHORS):
        if binaries[anchor] is None or not binaries[anchor].is_file():
            p.error(f"{anchor} needs its llama-bench (--{anchor.split('.')[0].replace('_', '-')}"
                    f"-bench), got {binaries[anchor]}")
        if args.gguf is None or not args.gguf.is_file():
            p.error(f"{anchor} needs --gguf, an existing GGUF of the checkpoint")
    if not (args.checkpoint / "config.json").is_file():
        p.error(f"{args.checkpoint} is not a checkpoint folder (no config.json)")
    if min([args.decode_tokens, args.repetitions, *args.prefill, 1]) < 1 or min(
            [*args.depths, 0]) < 0:
        p.error("token counts must be positive, depths non-negative")
    args.binaries = {a: b for a, b in binaries.items() if b}
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    plan = runner.Plan(checkpoint=args.checkpoint, engines=args.engines, prefill=args.prefill,
                       depths=args.depths, decode_tokens=args.decode_tokens, kv=args.kv,
                       dtype=args.dtype, gguf=args.gguf, binaries=args.binaries,
                       repetitions=args.repetitions, bandwidth_bytes=args.bandwidth_bytes)
    result = runner.benchmark(plan, log=lambda line: print(line, file=sys.stderr, flush=True))
    measurements = report.annotate(result, StepBytes.of(args.checkpoint))
    print(report.table(result, measurements))
    print()
    print("\n".join(report.ratio_lines(measurements)))
    if args.json:
        args.json.write_text(json.dumps({**result, "measurements": measurements}, indent=2)
                             + "\n")


if __name__ == "__main__":
    main()
