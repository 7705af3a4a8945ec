"""Decode throughput of the server's continuous batching for 1, 2 and 4 concurrent clients.

    flock /tmp/openharmony-bench.lock .venv/bin/python scripts/bench_server.py \\
        --model /work/ckpt/gpt-oss-20b-random           # the 20b shapes (docs/server.md)
    .venv/bin/python scripts/bench_server.py --model tests-tiny-checkpoint --tokens 8   # a look

Each client is one request as the server's engine runs it: its prompt prefilled alone on its
own `PromptCache` (not timed), then decoded with the others, one `openharmony.batch.step` per
token over all of them, pipelined as the engine is (each step is queued before the previous
tokens are read back): `openharmony.batch.Batch`, what the engine steps, without HTTP or
the harmony parser, because a random-weight model's tokens are not harmony
(the parser would reject the reply) and both cost nothing next to a forward of the 20b model.
Greedy, no stop token, `--tokens` per client. "alone" is `stream_generate` for one request,
the engine's path before batching, as a check that a batch of one costs nothing extra.

Rounds interleave the configurations so that machine noise hits all alike; figures are the
medians. Printed: total tokens/s (all clients' tokens after their first / the seconds from
the first token to the last), per-stream tokens/s (total / clients), and the ratio of each
total to one client's. Load the model once (a 20b in float32 needs ~17 GB): run it alone
under the shared lock, as above.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import statistics
import subprocess
import sys
import time

ORDINARY_TOKENS = 199998  # prompt ids below the special tokens, like ordinary text


def prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(min(vocab, ORDINARY_TOKENS)) for _ in range(length)]
            for _ in range(count)]


def batched(model, tokenizer, prompt_ids: list[list[int]], tokens: int) -> float:
    """Total tokens/s of decoding every prompt together (the engine's batch, without HTTP)."""
    from openharmony.batch import Batch
    from openharmony.cache import PromptCache
    from openharmony.generate import make_decoding

    batch = Batch(model)
    for p in prompt_ids:
        batch.join(make_decoding(model, p, tokenizer=tokenizer, max_tokens=tokens,
                                 temperature=0, ignore_eos=True, detokenize=False,
                                 prompt_cache=PromptCache(model)))
    first, read = None, 0
    while len(batch):
        ready = batch.step()
        read += len(ready)
        if ready and first is None:
            first, read_at_first = time.perf_counter(), read
    # Tokens after the first ones, over the time from them to the last (as GenerationStats).
    return (read - read_at_first) / (time.perf_counter() - first)


def alone(model, tokenizer, prompt: list[int], tokens: int) -> float:
    from openharmony.generate import stream_generate

    chunks = list(stream_generate(model, prompt, tokenizer=tokenizer, max_tokens=tokens,
                                  temperature=0, ignore_eos=True, detokenize=False))
    return chunks[-1].stats.generation_tokens_per_second


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="/work/ckpt/gpt-oss-20b-random")
    parser.add_argument("--clients", default="1,2,4", help="comma-separated client counts")
    parser.add_argument("--tokens", type=int, default=8, help="tokens decoded per client")
    parser.add_argument("--prompt-tokens", type=int, default=4,
                        help="prompt length (the 20b prefills ~1 tok/s on this CPU: keep it short)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default=None, help="the compute dtype (default: the engine's)")
    parser.add_argument("--vocab", default=None, help="a tiktoken vocabulary file")
    parser.add_argument("--mkl", default=None, metavar="LIBMKL_RT",
                        help="load this MKL runtime (libmkl_rt.so.3) before MLX, as "
                             "OPENHARMONY_BLAS does for the [mkl] extra (openharmony/blas.py), "
                             "for an MKL installed elsewhere; its folder must be on "
                             "LD_LIBRARY_PATH")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    assert "mlx.core" not in sys.modules  # the BLAS is chosen before MLX is loaded
    if args.mkl:
        ctypes.CDLL(args.mkl, mode=os.RTLD_GLOBAL | os.RTLD_NOW)
    from openharmony import blas
    from openharmony.load import load_model
    from openharmony.tokenizer import load_tokenizer

    blas_used = "MKL" if args.mkl or blas.active == "mkl" else "MLX's own (the wheel's)"

    tokenizer = load_tokenizer(args.vocab)
    start = time.perf_counter()
    model = load_model(args.model, dtype=args.dtype)
    print(f"loaded {args.model} ({model.config.num_hidden_layers} layers, {model.dtype}) in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    vocab = model.config.vocab_size
    # Warm-up (page-ins, first-call costs): a few tokens of each batch size, not counted.
    for n in clients:
        batched(model, tokenizer, prompts(n, args.prompt_tokens, vocab, seed=-n), 3)

    results: dict[str, list[float]] = {"alone": []} | {f"{n} clients": [] for n in clients}
    for r in range(args.rounds):
        results["alone"].append(alone(model, tokenizer,
                                      prompts(1, args.prompt_tokens, vocab, seed=r)[0],
                                      args.tokens))
        for n in clients:
            results[f"{n} clients"].append(
                batched(model, tokenizer, prompts(n, args.prompt_tokens, vocab, seed=r),
                        args.tokens))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in results.items()),
              flush=True)

    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True,
                         text=True).stdout.split(":")[-1].strip()
    print(f"\n{cpu}; {args.tokens} tokens per client after a {args.prompt_tokens}-token "
          f"prompt, greedy; {blas_used} BLAS; medians of {args.rounds} rounds")
    base = statistics.median(results["1 clients" if 1 in clients else "alone"])
    print(f"{'':<10} {'total tok/s':>12} {'per stream':>11} {'total vs 1':>11}")
    for name, values in results.items():
        n = 1 if name == "alone" else int(name.split()[0])
        total = statistics.median(values)
        print(f"{name:<10} {total:>12.3f} {total / n:>11.3f} {total / base:>10.2f}x")


if __name__ == "__main__":
    main()
