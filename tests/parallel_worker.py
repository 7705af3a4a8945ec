"""One rank of the expert-parallel tests (tests/test_parallel.py), started by `mlx.launch` or
by the test itself with MLX's ring variables set.

    python tests/parallel_worker.py parity CHECKPOINT OUT_FOLDER
        loads its share of CHECKPOINT (measuring the bytes it reads and the memory it holds),
        runs a full forward, a chunked prefill, token-by-token decoding, greedy and sampled
        generation, and writes OUT_FOLDER/rank<r>.npz
    python tests/parallel_worker.py loop CHECKPOINT
        loads, prints "ready" and decodes until it is stopped (the failure tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from openharmony import generate, load_model, native, parallel
from openharmony.weights import is_expert_tensor

import mlx.core as mx

PROMPT = [3, 17, 900, 5, 42, 311, 8, 1000, 64, 7, 250]  # inside every tiny vocabulary
CHUNKS = (4, 3, 4)  # the chunked prefill of PROMPT


def read_bytes() -> int:
    """Bytes this process has read through read(2)-like calls so far; -1 where the system
    does not count them (Linux does, in /proc/self/io)."""
    io = Path("/proc/self/io")
    if not io.exists():
        return -1
    return int(next(line for line in io.read_text().splitlines()
                    if line.startswith("rchar:")).split()[1])


def parameter_bytes(model, experts: bool) -> int:
    """Bytes of the model's expert parameters (or of all of them)."""
    from mlx.utils import tree_flatten

    return sum(v.nbytes for k, v in tree_flatten(model.parameters())
               if is_expert_tensor(k) or not experts)


def mapped_expert_bytes(model) -> int:
    """Bytes of the expert tensors the model uses in place from the checkpoint's mapping."""
    return sum(t.nbytes for layer in model.layers
               for linear in (layer.mlp.experts.gate_up_proj, layer.mlp.experts.down_proj)
               for t in (linear.weight, linear.scales) if native.is_mapped(t))


def parity(checkpoint: str, out: Path) -> None:
    group = parallel.init_group()
    # The default load: with the native kernels the experts are used in place, this rank's
    # share of them only.
    model = load_model(checkpoint, "float32", group=group)
    in_place_experts = mapped_expert_bytes(model)
    # Read into memory instead: what this rank reads and holds.
    before_read, before_memory = read_bytes(), mx.get_active_memory()
    read_model = load_model(checkpoint, "float32", group=group, in_place=False)
    read = read_bytes() - before_read if before_read >= 0 else -1
    memory = mx.get_active_memory() - before_memory

    tokens = mx.array([PROMPT])
    full = model(tokens)
    cache, chunked, begin = model.make_cache(), [], 0
    for size in CHUNKS:
        chunked.append(model(tokens[:, begin:begin + size], cache))
        begin += size
    cache = model.make_cache()
    decoded = [model(tokens[:, t:t + 1], cache) for t in range(len(PROMPT))]
    # Token ids in and out (detokenize=False): the tiny vocabularies have no text.
    greedy = generate(model, PROMPT, detokenize=False, max_tokens=8, temperature=0).tokens
    # Every rank its own seed: the tokens must still agree (each takes rank 0's).
    sampled = generate(model, PROMPT, detokenize=False, max_tokens=8, temperature=1.0,
                       seed=1000 + group.rank()).tokens
    experts = model.local_experts
    expert_bytes = parameter_bytes(read_model, experts=True)
    whole = load_model(checkpoint, "float32", in_place=False)  # what one process holds
    np.savez(out / f"rank{group.rank()}.npz", full=np.array(full),
             chunked=np.array(mx.concatenate(chunked, axis=1)),
             decoded=np.array(mx.concatenate(decoded, axis=1)), greedy=greedy, sampled=sampled,
             experts=[experts.start, experts.stop], read=read, memory=memory,
             expert_bytes=expert_bytes, in_place_experts=in_place_experts, whole_bytes=parameter_bytes(whole, experts=False),
             whole_expert_bytes=parameter_bytes(whole, experts=True), size=group.size())


def loop(checkpoint: str) -> None:
    group = parallel.init_group()
    model = load_model(checkpoint, "float32", group=group)
    cache = model.make_cache()
    token = mx.array([PROMPT[:1]])
    for step in range(1_000_000):
        logits = model(token, cache)
        mx.eval(logits)
        if step == 2:
            print("ready", flush=True)


if __name__ == "__main__":
    mode, checkpoint, *rest = sys.argv[1:]
    if mode == "parity":
        parity(checkpoint, Path(rest[0]))
    else:
        loop(checkpoint)
