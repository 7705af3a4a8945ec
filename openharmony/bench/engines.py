"""openharmony and mlx-lm as measured engines, each run as its users run it, in a process of
its own (`python -m openharmony.bench.engines SPEC`: one JSON spec in, one JSON list of
measurements out on the last line of stdout).

openharmony runs through its public API only (`openharmony.load_model`, `openharmony.generate`
with token ids, greedy, `ignore_eos`), mlx-lm through `mlx_lm.utils.load_model` and
`mlx_lm.generate.generate_step`. For each length N in the union of the prefill lengths and the
decode depths, one fresh request: a prompt of N random token ids (1 for depth 0), prefilled
(prefill tok/s: N / seconds to the first token), then, at a decode depth, `decode_tokens` more
tokens (decode tok/s: tokens after the first / seconds from the first to the last), each
request on a new cache. Before them, a warm-up request (64 tokens) touches the weights, as
llama-bench's warm-up run does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

WARMUP_TOKENS = 64
# openharmony's KV cache types (benchmark name -> generate()'s options).
KV_OPTIONS = {"float": {}, "bf16": {"kv_dtype": "bfloat16"}, "8bit": {"kv_bits": 8}}
ENGINES = ("openharmony", "mlx-lm")


def lengths(spec: dict) -> list[int]:
    return sorted({*spec["prefill"], *spec["depths"]})


def _openharmony(spec: dict):
    """(request function, peak memory reset, peak memory read) of openharmony."""
    import openharmony

    model = openharmony.load_model(spec["checkpoint"], dtype=spec.get("dtype"))
    options = KV_OPTIONS[spec.get("kv", "float")]

    def request(prompt: list[int], tokens: int) -> tuple[float, float | None]:
        result = openharmony.generate(model, prompt, max_tokens=tokens, temperature=0.0,
                                      ignore_eos=True, detokenize=False, **options)
        stats = result.stats
        return (stats.prompt_seconds,
                stats.generation_seconds if stats.generated_tokens > 1 else None)

    return model.config.vocab_size, request


def _mlx_lm(spec: dict):
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    if spec.get("kv", "float") != "float":
        raise ValueError("mlx-lm runs its own cache only (kv float)")
    model, _ = load_model(Path(spec["checkpoint"]))
    vocab = json.loads((Path(spec["checkpoint"]) / "config.json").read_text())["vocab_size"]

    def request(prompt: list[int], tokens: int) -> tuple[float, float | None]:
        start = time.perf_counter()
        times = [time.perf_counter() for _ in generate_step(mx.array(prompt), model,
                                                             max_tokens=tokens)]
        return times[0] - start, (times[-1] - times[0] if tokens > 1 else None)

    return vocab, request


def measure(spec: dict) -> list[dict]:
    """Every measurement of `spec` ({"engine", "checkpoint", "prefill": [N...], "depths":
    [N...], "decode_tokens", "kv", "dtype"}) in this process."""
    from ..runtime import select as select_kernels
    from .harness import prompt_ids, vm_hwm_bytes

    engine = spec["engine"]
    vocab, request = (_openharmony if engine == "openharmony" else _mlx_lm)(spec)
    request(prompt_ids(WARMUP_TOKENS, vocab, seed=1), 2)
    found = []
    for n in lengths(spec):
        # A fresh prompt per request (seeded by its length): nothing of another is reused.
        prompt = prompt_ids(max(n, 1), vocab, seed=100 + n)
        decode = n in spec["depths"]
        prefill_s, decode_s = request(prompt, spec["decode_tokens"] + 1 if decode else 1)
        if n in spec["prefill"]:
            found.append({"kind": "prefill", "tokens": n, "depth": 0, "tok_s": n / prefill_s})
        if decode:
            found.append({"kind": "decode", "tokens": spec["decode_tokens"], "depth": n,
                          "tok_s": spec["decode_tokens"] / decode_s})
        print(f"{engine} {spec.get('kv', 'float')}: {found[-1]}", file=sys.stderr, flush=True)
    for m in found:
        m.update(engine=engine, kv=spec.get("kv", "float"))
    return [*found, {"kind": "process", "vm_hwm_bytes": vm_hwm_bytes(),
                     "kernels": select_kernels().name}]


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
