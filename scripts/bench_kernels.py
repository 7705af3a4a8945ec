"""openharmony's native CPU kernels vs MLX's, one matmul at a time, on the gpt-oss-20b shapes.

    .venv/bin/python scripts/bench_kernels.py            # every shape, every ISA path
    .venv/bin/python scripts/bench_kernels.py --rows 1 512 --isas avx512
    .venv/bin/python scripts/bench_kernels.py --rows 512 --precisions exact fast --no-mlx

Side by side in one process, interleaved: the MXFP4 experts (gate_up and down of 4 experts
per token, i.e. 4*rows token-expert pairs over the 32 experts) through
`native.gather_mxfp4_matmul` and `mx.gather_qmm(mode="mxfp4")`, and the dense layers (q+k+v,
lm_head) as bfloat16 weights through `native.bf16_matmul` and as float32 weights through MLX's
matmul (the BLAS openharmony.blas picks: MKL when installed). Random weights and inputs; the
median of --repeats timed evaluations after one warm-up. Prints ms, GB/s of weights read for one
row (decode: the bytes a step must read) or GFLOP/s for many (also per second of the process's
CPU time: on a shared machine, what the cores it got achieved), and the speedup. Takes the
big-memory lock (the float32 lm_head alone is 2.3 GB).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import openharmony  # noqa: F401  before mlx: the BLAS
import mlx.core as mx
from openharmony import native
from openharmony.bench.harness import bench_lock

HIDDEN, INTERMEDIATE, EXPERTS, TOP_K = 2880, 2880, 32, 4
QKV, VOCAB = (64 + 2 * 8) * 64, 201088


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds of one evaluation."""
    mx.eval(fn())
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        mx.eval(fn())
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(times), statistics.median(cpu)


def expert_case(name, n, k, rows, isas, precisions, repeats, with_mlx):
    w = mx.random.randint(0, 1 << 31, (EXPERTS, n, k // 8)).astype(mx.uint32)
    s = mx.random.randint(118, 130, (EXPERTS, n, k // 32)).astype(mx.uint8)
    x = mx.random.normal((rows * TOP_K, k))
    experts = mx.random.randint(0, EXPERTS, (rows * TOP_K,)).astype(mx.uint32)
    mx.eval(w, s, x, experts)
    used = len(set(experts.tolist()))
    nbytes = used * n * (k // 2 + k // 32)
    mlx = with_mlx and timed(lambda: mx.gather_qmm(x[:, None], w, s, None, rhs_indices=experts,
                                                   transpose=True, group_size=32, bits=4,
                                                   mode="mxfp4"), repeats)
    for isa in isas:
        for precision in precisions:
            ours = timed(lambda: native.gather_mxfp4_matmul(x, w, s, experts, isa=isa,
                                                            precision=precision), repeats)
            report(f"{name} {TOP_K}x{rows} rows", f"{isa} {precision}", ours, "gather_qmm",
                   mlx, nbytes, 2 * rows * TOP_K * n * k)


def dense_case(name, n, k, rows, isas, precisions, repeats, with_mlx):
    w16 = mx.random.normal((n, k)).astype(mx.bfloat16)
    x = mx.random.normal((rows, k))
    mx.eval(w16, x)
    mlx = None
    if with_mlx:
        w32 = w16.astype(mx.float32)
        mlx = timed(lambda: x @ w32.T, repeats)
        del w32
    for isa in isas:
        for precision in precisions:
            ours = timed(lambda: native.bf16_matmul(x, w16, isa=isa, precision=precision),
                         repeats)
            report(f"{name} {rows} rows", f"{isa} {precision}", ours, "float32 matmul", mlx,
                   n * k * 2, 2 * rows * n * k)


def report(case, isa, ours, theirs_name, theirs, nbytes, flops):
    # One row (decode) is bound by the weights' bytes, many rows (prefill) by arithmetic.
    (wall, cpu), decode = ours, flops <= 2 * nbytes * TOP_K
    rate = (f"{nbytes / wall / 1e9:.1f} GB/s" if decode else
            f"{flops / wall / 1e9:.0f} GFLOP/s, {flops / cpu / 1e9:.0f} per CPU-second")
    mlx = f"{theirs_name} {theirs[0] * 1e3:.2f} ms | {theirs[0] / wall:.1f}x" if theirs else "- | -"
    print(f"| {case} | {isa} {wall * 1e3:.2f} ms ({rate}) | {mlx} |", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 128, 512],
                   help="tokens per matmul (1: decode; more: a prefill chunk)")
    p.add_argument("--isas", nargs="+", help="ISA paths to time (default: every one this CPU "
                   "runs except portable)")
    p.add_argument("--precisions", nargs="+", default=["exact"], choices=["exact", "fast"],
                   help="the native kernels' precisions to time (fast: int8/bf16 products)")
    p.add_argument("--no-mlx", action="store_true", help="skip MLX's kernels (slow here)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-lm-head", action="store_true", help="skip the 201088-row lm_head")
    args = p.parse_args(argv)
    if not native.available:
        sys.exit(f"the native kernels are not available: {native.unavailable_reason}")
    isas = args.isas or [i for i in native.isas() if i != "portable"] or ["portable"]
    import platform
    print(f"{platform.processor() or platform.machine()}, {native.threads()} threads, "
          f"mlx {mx.__version__}, BLAS {openharmony.blas.active}")
    print("| matmul | native | MLX | speedup |\n| --- | --- | --- | --- |")
    with bench_lock():
        for rows in args.rows:
            repeats = args.repeats if rows == 1 else max(1, args.repeats // 2)
            common = (isas, args.precisions, repeats, not args.no_mlx)
            expert_case("experts gate_up", 2 * INTERMEDIATE, HIDDEN, rows, *common)
            expert_case("experts down", HIDDEN, INTERMEDIATE, rows, *common)
            dense_case("q+k+v", QKV, HIDDEN, rows, *common)
            if not args.no_lm_head and rows == 1:
                dense_case("lm_head", VOCAB, HIDDEN, rows, *common)


if __name__ == "__main__":
    main()
