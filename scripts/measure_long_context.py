"""Long contexts (issue 20): prefill and decode at depth per KV cache type, and peak memory.

    python scripts/measure_long_context.py --checkpoint /work/ckpt/gpt-oss-20b --tokens 8192 \\
        --kv-bits none 8
    python scripts/measure_long_context.py --checkpoint /work/ckpt/gpt-oss-20b-4layers \\
        --tokens 131072 --kv-bits 8 --fill

For each cache type, with the model loaded once: a prompt of --tokens random token ids is
prefilled in chunks of --chunk (model(chunk, caches), the caches evaluated, as generate's
prefill), then --decode steps (a token in, the logits evaluated) at that depth: seconds,
tokens/s (decode: the median step), MLX's peak memory and the process's VmHWM.

--fill: a prefill of the whole prompt would take hours on a small CPU at 131k, so the caches
are filled to tokens - chunk positions with random keys and values at the model's own scale
(openharmony.bench.cache_speed.fill: the cost of attention does not depend on the values), and
the prompt's first and last chunks are prefilled for real (depth 0, and tokens - chunk). A
chunk's time is its weights (fixed) plus its attention (linear in the depth), so the whole
prefill is projected as chunks x (first + last) / 2 (the first chunk timed warm, on its second
pass). "per layer" figures divide by the layers, for the
projection to the full depth (--project-layers, e.g. 24 for the 20b: the time scales with the
layers, the memory adds the other layers' weights and caches; docs/cache.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import openharmony  # noqa: F401 - first: it picks MLX's BLAS (openharmony/blas.py)
import mlx.core as mx

from openharmony.bench.cache import prompt_ids
from openharmony.bench.cache_speed import fill, key_value_scales
from openharmony.load import load_model
from openharmony.memory import _read_fields, prompt_memory


def vm_hwm() -> int:
    return _read_fields("/proc/self/status").get("VmHWM", 0) * 1024


def prefill(model, caches, tokens: list[int], chunk: int) -> list[float]:
    """Seconds of each chunk."""
    seconds = []
    for begin in range(0, len(tokens), chunk):
        start = time.perf_counter()
        model(mx.array([tokens[begin:begin + chunk]]), cache=caches)
        mx.eval([a for c in caches for a in c.state])
        seconds.append(time.perf_counter() - start)
    return seconds


def decode(model, caches, steps: int) -> list[float]:
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        mx.eval(model(mx.array([[1]]), cache=caches))
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(model, bits: int | None, args) -> dict:
    options = {} if bits is None else {"kv_bits": bits}
    tokens = prompt_ids(args.tokens, model.config.vocab_size, seed=0)
    mx.clear_cache()
    mx.reset_peak_memory()
    caches = model.make_cache(**options)
    out = {"kv_bits": bits, "tokens": args.tokens, "chunk": args.chunk}
    if args.fill:
        # The first chunk twice (fresh caches each time): the first pass also pages the
        # weights in, the second is a warm chunk at depth 0.
        first = [prefill(model, model.make_cache(**options), tokens[:args.chunk], args.chunk)[0]
                 for _ in range(2)][1]
        fill(caches, model.config, args.tokens - args.chunk, key_value_scales(model))
        last = prefill(model, caches, tokens[-args.chunk:], args.chunk)[0]
        chunks = -(-args.tokens // args.chunk)
        out.update(first_chunk_s=first, last_chunk_s=last,
                   prefill_s_projected=chunks * (first + last) / 2)
        out["prefill_tok_s_projected"] = args.tokens / out["prefill_s_projected"]
    else:
        seconds = prefill(model, caches, tokens, args.chunk)
        out.update(prefill_s=sum(seconds), prefill_tok_s=args.tokens / sum(seconds),
                   first_chunk_s=seconds[0], last_chunk_s=seconds[-1])
    steps = sorted(decode(model, caches, args.decode))
    out.update(decode_step_s=steps[len(steps) // 2], decode_tok_s=1 / steps[len(steps) // 2],
               kv_cache_bytes=sum(c.nbytes for c in caches),
               mlx_peak_bytes=mx.get_peak_memory(), vm_hwm_bytes=vm_hwm())
    if args.project_layers:
        layers = model.config.num_hidden_layers
        scale = args.project_layers / layers
        seconds = out.get("prefill_s", out.get("prefill_s_projected"))
        full = dataclass_replace_layers(model.config, args.project_layers)
        out["projected"] = {
            "layers": args.project_layers, "prefill_s": seconds * scale,
            "decode_tok_s": 1 / (out["decode_step_s"] * scale),
            "kv_and_prefill_bytes": prompt_memory(full, args.tokens, dtype_size=4,
                                                  kv_bits=bits, prefill_chunk=args.chunk)["total"]}
    print(json.dumps(out), file=sys.stderr)
    return out


def dataclass_replace_layers(config, layers: int):
    import dataclasses

    pattern = config.layer_types
    types = tuple(pattern[i % len(pattern)] for i in range(layers))
    return dataclasses.replace(config, num_hidden_layers=layers, layer_types=types)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--decode", type=int, default=8, help="decode steps at the depth")
    parser.add_argument("--kv-bits", nargs="+", default=["none", "8"],
                        help="cache types: none (float) or 4 / 8")
    parser.add_argument("--fill", action="store_true",
                        help="fill the caches with random keys/values; prefill first and last "
                             "chunks only, and project the prefill")
    parser.add_argument("--project-layers", type=int, help="project to this many layers")
    args = parser.parse_args()
    model = load_model(args.checkpoint, "float32")
    results = [measure(model, None if b == "none" else int(b), args) for b in args.kv_bits]
    print(json.dumps({"checkpoint": str(args.checkpoint), "results": results}, indent=1))


if __name__ == "__main__":
    main()
