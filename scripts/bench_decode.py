"""Where a decode step's time goes: the native kernels at gpt-oss-20b's decode shapes, and
whole decode steps with the fused MoE op on and off (docs/speed.md, "Decode at the bandwidth
limit").

    python scripts/bench_decode.py kernels [--threads N]      # GB/s of each kernel, one row
    python scripts/bench_decode.py steps CHECKPOINT [--depth 2048] [--blocks 5] [--steps 8]
    python scripts/bench_decode.py mlp CHECKPOINT [--reps 300]  # one layer's MoE MLP, 1 token

`kernels` times each kernel over weights several times the L3 (so they come from DRAM, as in
a step) and over weights that stay in L2 (its compute bound), the minimum of many runs, and
prints GB/s of weight bytes. `steps` evicts the checkpoint from the page cache, reads it back
(decode is measured warm), prefills `--depth` tokens and then alternates blocks of decode
steps with `Kernels.fused_moe` on and off in one process, so load on a shared machine hits
both alike. Run it alone, under the benchmark lock, on a big checkpoint. `mlp` times one
layer's MoE MLP for one token (each layer in turn, a different token each time, so the chosen
experts come from DRAM), fused and unfused alternately; the best of many short runs is the
figure that load moves least.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

STEP_BYTES = 3.71e9  # bf16 dense weights + 4 MXFP4 experts a layer + lm_head (gpt-oss-20b)
H, I, E, V = 2880, 2880, 32, 201088


def best_rate(run, nbytes: float, seconds: float = 2.0) -> float:
    """Weight GB/s of the fastest of as many runs of `run` as fit in `seconds`."""
    run()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def kernels(isa: str) -> None:
    import mlx.core as mx
    from openharmony import native

    rng = np.random.default_rng(0)

    def bf16(n, k):
        return mx.array(rng.standard_normal((n, k), dtype=np.float32)).astype(mx.bfloat16)

    def mxfp4(n, k):
        return (mx.array(rng.integers(0, 2**32, (E, n, k // 8), dtype=np.uint32)),
                mx.array(rng.integers(118, 130, (E, n, k // 32), dtype=np.uint8)))

    experts = mx.array(np.array([3, 9, 17, 28], dtype=np.uint32))
    print(f"isa {isa}, {native.threads()} threads; weight GB/s, best run")
    for name, n, k, copies in [("q_proj 4096x2880", 4096, H, 8), ("o_proj 2880x4096", H, 4096, 8),
                               ("lm_head 201088x2880", V, H, 1), ("in L2: 64x2880", 64, H, 1)]:
        ws = [bf16(n, k) for _ in range(copies)]
        x = mx.array(rng.standard_normal((1, k), dtype=np.float32))
        mx.eval(ws)
        rate = best_rate(lambda: mx.eval([native.bf16_matmul(x, w, isa=isa) for w in ws]),
                         n * k * 2 * copies)
        print(f"  bf16_matmul, 1 row, {name}: {rate:.1f}")
    for name, n, k, layers in [("gate_up 5760x2880", 2 * I, H, 6), ("down 2880x2880", H, I, 6)]:
        ws = [mxfp4(n, k) for _ in range(layers)]
        x = mx.array(rng.standard_normal((4, k), dtype=np.float32))
        mx.eval(ws)
        rate = best_rate(lambda: mx.eval([native.gather_mxfp4_matmul(x, w, s, experts, isa=isa)
                                          for w, s in ws]), 4 * n * k * 17 / 32 * layers)
        print(f"  gather_mxfp4_matmul, 4 experts x 1 row, {name}: {rate:.1f}")
    layers = [(mxfp4(2 * I, H), mxfp4(H, I)) for _ in range(6)]
    router = [mx.array(rng.standard_normal((E, H), dtype=np.float32)) for _ in range(6)]
    zero_gu, zero_d, zero_r = mx.zeros((E, 2 * I)), mx.zeros((E, H)), mx.zeros((E,))
    x = mx.array(rng.standard_normal((1, H), dtype=np.float32))
    mx.eval(layers, router)
    rate = best_rate(lambda: mx.eval([native.moe_decode(x, r, zero_r, *gu, zero_gu, *d, zero_d,
                                                        4, 7.0, 1.702, isa=isa)
                                      for r, (gu, d) in zip(router, layers)]),
                     6 * 4 * (2 * I * H + H * I) * 17 / 32)
    print(f"  moe_decode, 1 token, 4 of 32 experts (gate_up + down): {rate:.1f}")


def evict_then_read(checkpoint: Path) -> None:
    for file in sorted(checkpoint.glob("*.safetensors")):
        fd = os.open(file, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        with open(file, "rb") as f:
            while f.read(1 << 26):
                pass


def steps(checkpoint: Path, depth: int, blocks: int, count: int) -> None:
    evict_then_read(checkpoint)
    import mlx.core as mx
    from openharmony.load import load_model

    model = load_model(checkpoint)
    cache = model.make_cache()
    prompt = mx.random.randint(0, 199998, (1, max(1, depth)), key=mx.random.key(0))
    for i in range(0, prompt.shape[1], 512):
        logits = model(prompt[:, i:i + 512], cache)
        mx.eval([c.state for c in cache])
    token = mx.argmax(logits[:, -1:], axis=-1).astype(mx.int32)

    def step(previous):  # as generate runs it: the next step queued before reading a token
        out = model(previous, cache, check_ids=False)[:, -1, :]
        sampled = mx.argmax(out, axis=-1, keepdims=True).astype(mx.int32)
        mx.async_eval([sampled] + [c.state for c in cache])
        return sampled

    modes = fused_modes(model)
    times = {mode: [] for mode in modes}
    for _ in range(blocks):
        for mode, switch in modes.items():
            switch()
            sampled = step(token)
            sampled.item()
            start = time.perf_counter()
            for _ in range(count):
                following = step(sampled)
                sampled.item()
                now = time.perf_counter()
                times[mode].append(now - start)
                start, sampled = now, following
            sampled.item()
            token = sampled
    print(f"load average {os.getloadavg()[0]:.1f}; depth {depth}")
    for mode, ts in times.items():
        median = statistics.median(ts)
        print(f"  {mode:8s} {len(ts)} steps: median {median * 1e3:.1f} ms ({1 / median:.2f} tok/s, "
              f"{STEP_BYTES / median / 1e9:.1f} GB/s), best {min(ts) * 1e3:.1f} ms "
              f"({1 / min(ts):.2f} tok/s)")


def fused_modes(model) -> dict:
    """Switches between the fused MoE op (the backend's `fused_moe`) and the unfused MLP."""
    return {"fused": lambda: model.kernels.__dict__.pop("fused_moe", None),
            "unfused": lambda: setattr(model.kernels, "fused_moe", None)}


def mlp(checkpoint: Path, reps: int) -> None:
    import mlx.core as mx
    from openharmony.load import load_model

    model = load_model(checkpoint)
    xs = [mx.random.normal((1, 1, model.config.hidden_size), key=mx.random.key(i))
          for i in range(64)]
    mx.eval(xs)
    best, total = {}, {}
    for r in range(reps):
        for mode, switch in fused_modes(model).items():
            switch()
            for index, layer in enumerate(model.layers):
                start = time.perf_counter()
                mx.eval(layer.mlp(xs[(7 * r + index) % len(xs)]))
                seconds = time.perf_counter() - start
                best[mode] = min(best.get(mode, float("inf")), seconds)
                total[mode] = total.get(mode, 0.0) + seconds
    expert_bytes = 4 * 3 * model.config.hidden_size ** 2 * 17 / 32  # 4 x (gate_up + down)
    print(f"load average {os.getloadavg()[0]:.1f}; one layer's MoE MLP, 1 token")
    for mode in best:
        mean = total[mode] / reps / len(model.layers)
        print(f"  {mode:8s} best {best[mode] * 1e3:.2f} ms ({expert_bytes / best[mode] / 1e9:.1f} "
              f"GB/s), mean {mean * 1e3:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("--isa", default="auto")
    s = sub.add_parser("steps")
    s.add_argument("checkpoint", type=Path)
    s.add_argument("--depth", type=int, default=0)
    s.add_argument("--blocks", type=int, default=5)
    s.add_argument("--steps", type=int, default=8)
    m = sub.add_parser("mlp")
    m.add_argument("checkpoint", type=Path)
    m.add_argument("--reps", type=int, default=300)
    args = parser.parse_args()
    if args.what == "kernels":
        kernels(args.isa)
    elif args.what == "mlp":
        mlp(args.checkpoint, args.reps)
    else:
        steps(args.checkpoint, args.depth, args.blocks, args.steps)


if __name__ == "__main__":
    main()
