"""Prompt tokens the server computes per turn of a 10-turn tool-calling loop, with its prompt
cache pool and without it (`max_cache_bytes=0`: what a cache-less server computes).

    OPENHARMONY_VOCAB=/path/to/o200k_base.tiktoken .venv/bin/python scripts/server_prompt_tokens.py

The model is the server tests' tool-calling bigram checkpoint (`openharmony.testing.server`;
tiny, built in a temporary folder): every reply is the call `get_weather({"city": "Paris"})`, so each turn of the loop
sends the whole conversation again (as Codex CLI does) with one more call and its output.
The client is the openai SDK, as in the tests; the token counts are the server's `usage`
(computed = input_tokens - cached_tokens). The sliding-window layers of this model have a
window of 8 tokens, so their caches wrap many times within each turn.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from openharmony.testing import PRESETS, write_bigram_checkpoint, write_random_checkpoint
from openharmony.testing.server import WEATHER_TOOL, Server, chains
from openharmony.tokenizer import load_tokenizer


def run_loop(server: Server, turns: int) -> list[tuple[int, int]]:
    """(input tokens, cached tokens) of each turn."""
    client = server.client()
    items = [{"type": "message", "role": "user",
              "content": "Check the weather in Paris every hour and tell me when it changes."}]
    counts = []
    for turn in range(turns):
        response = client.responses.create(model="bigram", input=items, tools=[WEATHER_TOOL],
                                           temperature=0, store=False)
        (call,) = response.output
        assert call.type == "function_call", call
        counts.append((response.usage.input_tokens,
                       response.usage.input_tokens_details.cached_tokens))
        items += [{"type": "function_call", "name": call.name, "arguments": call.arguments,
                   "call_id": call.call_id},
                  {"type": "function_call_output", "call_id": call.call_id,
                   "output": f'{{"hour": {turn}, "sky": "clear", "temperature_c": 18}}'}]
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    tokenizer = load_tokenizer()
    with tempfile.TemporaryDirectory() as folder:
        source = write_random_checkpoint(Path(folder) / "random", PRESETS["tiny-vocab"], seed=0)
        model = write_bigram_checkpoint(source, Path(folder) / "tool", chains(tokenizer, "tool"))
        results = {}
        for name, options in (("pooled caches", {}), ("no cache", {"max_cache_bytes": 0})):
            server = Server(model, tokenizer, **options)
            try:
                results[name] = run_loop(server, args.turns)
            finally:
                server.stop()
    cached, cacheless = results["pooled caches"], results["no cache"]
    print("| turn | prompt tokens | computed with the cache pool | computed without a cache |")
    print("| ---: | ---: | ---: | ---: |")
    for turn, ((prompt, reused), (prompt_b, reused_b)) in enumerate(zip(cached, cacheless), 1):
        assert prompt == prompt_b
        print(f"| {turn} | {prompt} | {prompt - reused} | {prompt_b - reused_b} |")
    with_cache = sum(p - r for p, r in cached)
    without = sum(p - r for p, r in cacheless)
    print(f"| all | {sum(p for p, _ in cached)} | {with_cache} | {without} |")
    print(f"computed without / with the cache pool: {without / with_cache:.1f}x")


if __name__ == "__main__":
    main()
