"""The two anchors, llama.cpp and ik_llama.cpp, through their `llama-bench`: the commands this
benchmark runs, and their JSON output as our measurements.

Both run on the same GGUF (`llama_build.convert`), on openharmony's thread count, with their
recommended CPU settings:
- llama.cpp: flash attention on (`-fa 1`), its weights repacked for the CPU at load (its
  default, `--repack 1`); decode at depth N is `-d N`.
- ik_llama.cpp (the CPU-speed fork): `-fa 1 -rtr 1 -fmoe 1` (flash attention, run-time
  repacking, fused MoE); it has no `-d`: decode of 16 tokens after an N-token prompt is
  `-gp N,16`.
Each runs twice per benchmark (one process each, every engine's files evicted before each):
prefill of each length from an empty context, then decode at each depth.
"""

from __future__ import annotations

import json
from pathlib import Path

ANCHORS = ("llama.cpp", "ik_llama.cpp")
FLAGS = {"llama.cpp": ["-fa", "1", "--repack", "1"],
         "ik_llama.cpp": ["-fa", "1", "-rtr", "1", "-fmoe", "1"]}


def prefill_command(anchor: str, binary: Path, gguf: Path, *, threads: int,
                    lengths: list[int], repetitions: int = 1) -> list[str]:
    """One llama-bench process: prefill of each of `lengths` from an empty context."""
    return [str(binary), "-m", str(gguf), "-t", str(threads), *FLAGS[anchor],
            "-p", ",".join(map(str, lengths)), "-n", "0", "-r", str(repetitions), "-o", "json"]


def decode_command(anchor: str, binary: Path, gguf: Path, *, threads: int, depths: list[int],
                   tokens: int = 16, repetitions: int = 1) -> list[str]:
    """One llama-bench process: decode of `tokens` after a prompt of each of `depths`."""
    common = [str(binary), "-m", str(gguf), "-t", str(threads), *FLAGS[anchor]]
    tail = ["-r", str(repetitions), "-o", "json"]
    if anchor == "llama.cpp":
        return [*common, "-p", "0", "-n", str(tokens), "-d", ",".join(map(str, depths)), *tail]
    # ik_llama.cpp: depth 0 is a plain generation test, depth N a `-gp N,tokens` test.
    at_depth = [arg for n in depths if n for arg in ("-gp", f"{n},{tokens}")]
    plain = ["-n", str(tokens)] if 0 in depths else ["-n", "0"]
    return [*common, "-p", "0", *plain, *at_depth, *tail]


def parse(anchor: str, text: str) -> list[dict]:
    """llama-bench's JSON tests as measurements: {"kind": "prefill" or "decode", "tokens",
    "depth", "tok_s"} (tok_s: llama-bench's mean over its repetitions)."""
    found = []
    for test in json.loads(text):
        prompt, gen = test["n_prompt"], test["n_gen"]
        depth = test.get("n_depth", 0)
        if prompt and not gen:
            found.append({"kind": "prefill", "tokens": prompt, "depth": depth})
        elif gen and not prompt:
            found.append({"kind": "decode", "tokens": gen, "depth": depth})
        elif "@pp" in test.get("test", ""):  # ik_llama.cpp's -gp: tg<gen>@pp<prompt>
            found.append({"kind": "decode", "tokens": gen, "depth": depth + prompt})
        else:
            raise ValueError(f"{anchor}: a combined prompt+generation test ({prompt}, {gen}) "
                             "is not one this benchmark runs")
        found[-1].update(tok_s=test["avg_ts"], engine=anchor)
    return found


def build_info(text: str) -> dict:
    """What the anchor reports of itself (its build, the CPU it saw, the model's type)."""
    first = json.loads(text)[0]
    return {k: first.get(k) for k in ("build_commit", "build_number", "cpu_info", "model_type",
                                      "model_size", "type_k", "n_threads")}
