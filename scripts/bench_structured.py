"""Constrained vs unconstrained decode speed, side by side on one model.

    flock /tmp/openharmony-bench.lock .venv/bin/python scripts/bench_structured.py \\
        /work/ckpt/gpt-oss-20b --tokens 32 --repeats 3

Both runs decode the same prompt greedily for --tokens tokens, in alternating rounds so that
machine noise hits both alike. The constrained run holds the completion to a JSON Schema
whose document stays open (an object with one string: inside the string nearly every token is
allowed, so llguidance computes a full mask each token, the costly case); the unconstrained
one ignores eos so that it runs as long. Printed: each run's decode tokens/s (tokens after the
first / the seconds from the first to the last; medians over the rounds) and their ratio.

The mask of a constrained token depends on the token before it, so its sampling waits for that
token; the model's forward is queued before, and the mask is computed on the host while it
runs (openharmony/generate.py).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import mlx.core as mx

from openharmony.generate import generate, make_decoding
from openharmony.load import load_model
from openharmony.sampling import SamplingOptions
from openharmony.tokenizer import load_tokenizer

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}},
          "required": ["answer"]}
PROMPT = "Describe the weather in Paris as JSON:"


def decode_rate(model, tokenizer, tokens: int, constrained: bool) -> tuple[float, list[int]]:
    options = dict(json_schema=SCHEMA) if constrained else dict(ignore_eos=True)
    result = generate(model, PROMPT, tokenizer=tokenizer, max_tokens=tokens,
                      sampling=SamplingOptions(temperature=0), **options)
    return result.stats.generation_tokens_per_second, result.tokens


def mask_seconds(model, tokenizer, tokens: list[int]) -> float:
    """The host's time per token to compute the mask and follow the token (what the decode
    overlaps with the forward), replayed on the constrained run's tokens."""
    decoding = make_decoding(model, PROMPT, tokenizer=tokenizer, json_schema=SCHEMA)
    constraint, start = decoding.constraint, time.perf_counter()
    for token in tokens:
        mx.eval(constraint.mask())
        constraint.advance(token)
    return (time.perf_counter() - start) / len(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer = load_model(args.checkpoint), load_tokenizer()
    decode_rate(model, tokenizer, 4, constrained=True)  # warm up: vocabulary, kernels
    rates = {False: [], True: []}
    for round_ in range(args.repeats):
        for constrained in (False, True):
            rate, tokens = decode_rate(model, tokenizer, args.tokens, constrained)
            rates[constrained].append(rate)
            print(f"round {round_ + 1}: {'constrained' if constrained else 'free':>11} "
                  f"{len(tokens)} tokens, {rate:.2f} tokens/s", flush=True)
    free, constrained = (statistics.median(rates[c]) for c in (False, True))
    print(f"mask + advance on the host: {mask_seconds(model, tokenizer, tokens) * 1e3:.3f} ms "
          f"per token; a decode step: {1e3 / free:.1f} ms")
    print(f"decode tokens/s: unconstrained {free:.2f}, constrained {constrained:.2f}; "
          f"ratio constrained/unconstrained {constrained / free:.3f}")


if __name__ == "__main__":
    main()
