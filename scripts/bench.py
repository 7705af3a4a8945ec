"""openharmony vs mlx-lm, llama.cpp and the memory-bandwidth ceiling, on a random gpt-oss-20b
checkpoint.

    .venv/bin/python scripts/bench.py --json bench.json    # the full benchmark (docs/benchmarks.md)
    .venv/bin/python scripts/bench.py --llama-cpp model.gguf --configs openharmony/float32 \\
        llama.cpp/bfloat16 llama.cpp-no-repack/bfloat16     # against llama.cpp (llama_cpp.py)
    .venv/bin/python scripts/bench.py --layers 2 --decode-tokens 8 --repeats 1   # a quick look
    .venv/bin/python scripts/bench.py --profile --layers 2  # where openharmony's time goes

Both engines load the same checkpoint (written once by `openharmony.testing.random_checkpoint`), get
the same prompt token ids (batch 1), prefill it, and greedily decode the same number of tokens
with no stop token (the weights are random, so eos can come at any time). Each (engine, dtype)
run is a fresh subprocess (a 20b model in float32 needs ~17 GB: two at once would not fit),
holding an exclusive lock on LOCK_FILE while it runs, and rounds interleave the engines so that
machine noise hits all of them alike. Every figure is the median over the rounds. Before each
run the checkpoint is evicted from the page cache, so every engine loads it from disk.

Measured per run: load seconds (from nothing until the weights are evaluated, so the first
token can be computed), prefill tokens/s (prompt tokens / the seconds until the first generated
token is known), decode tokens/s (tokens after the first / the seconds from the first to the
last), VmHWM (the process's peak resident memory) and MLX's peak memory. openharmony's runs
then prefill each of --prefill-tokens (128 and 512) once more, warm, from an empty cache: the
figures set beside llama-bench's prefill tests.

llama.cpp runs as llama-bench (scripts/llama_cpp.py builds it from the tree that PyPI's
llama-cpp-python sdist vendors and converts the checkpoint to GGUF with that tree's converter)
on the same number of threads as openharmony: prefill of --prefill-tokens and of
--prompt-tokens, and decode of --decode-tokens from an empty context, each after llama-bench's
warm-up, with its weights repacked for the CPU at load (its default, "llama.cpp") and used in
place from the mmap ("llama.cpp-no-repack", `--repack 0`). Its load seconds run from the
start of the process until llama-bench begins its first warm-up (model loaded, context made);
its VmHWM is the process's, from wait4.

The ceiling: one decode step must read every weight it uses at least once (attention, router,
4 experts' MXFP4 blocks and scales per layer, lm_head) plus the KV cache, so the machine's read
bandwidth divided by those bytes bounds decode tokens/s from above.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import mlx.core as mx

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / "bench_cache"
LOCK_FILE = "/tmp/openharmony-bigmem.lock"
VOCAB = Path("/work/shared/vocab/o200k_base.tiktoken")
# Checkpoints at least this large hold the lock while a process has them loaded (the lock
# keeps full-size models from ever sharing this 24 GB machine).
LOCK_ABOVE_BYTES = 1 << 30
# Prompt ids are drawn below the special tokens, like ordinary text.
ORDINARY_TOKENS = 199998

# "openharmony" runs as users get it (the native CPU kernels where they are built);
# "openharmony-mlx" is the same engine on MLX's own kernels (OPENHARMONY_KERNELS=mlx).
# llama.cpp: llama-bench with its weights repacked for the CPU ("llama.cpp", its default) or
# used in place from the mmap ("llama.cpp-no-repack"); engine -> repack.
LLAMA_CPP_REPACK = {"llama.cpp": True, "llama.cpp-no-repack": False}
ENGINES = ("openharmony", "openharmony-mlx", "mlx-lm", *LLAMA_CPP_REPACK)
KERNELS_SETTING = {"openharmony": "auto", "openharmony-mlx": "mlx"}
DTYPES = ("float32", "bfloat16")
# llama.cpp runs its GGUF's types only: MXFP4 experts and bf16 dense weights (llama_cpp.py).
CONFIGS = tuple(f"{engine}/{dtype}" for engine in ENGINES for dtype in DTYPES
                if engine not in LLAMA_CPP_REPACK or dtype == "bfloat16")
DEFAULT_CONFIGS = ("openharmony/float32", "openharmony-mlx/float32", "mlx-lm/bfloat16",
                   "mlx-lm/float32")
# Each engine's own default on this CPU: openharmony computes in float32 on the CPU
# (model.default_dtype), mlx-lm runs the checkpoint's bfloat16 as loaded.
DEFAULT_DTYPE = {"openharmony": "float32", "openharmony-mlx": "float32", "mlx-lm": "bfloat16",
                 "llama.cpp": "bfloat16", "llama.cpp-no-repack": "bfloat16"}
RUN_FIELDS = ("load_s", "prefill_tok_s", "decode_tok_s", "vm_hwm_bytes", "mlx_peak_bytes")


# -- the checkpoint -----------------------------------------------------------------------


def checkpoint_path(cache_dir: Path, layers: int | None) -> Path:
    name = "gpt-oss-20b-random" + (f"-{layers}layers" if layers else "")
    return cache_dir / name


def ensure_checkpoint(path: Path, layers: int | None) -> Path:
    """The random 20b checkpoint (truncated to `layers`) at `path`, written if absent."""
    if (path / "config.json").exists():  # the writer writes config.json last
        return path
    from openharmony.testing.random_checkpoint import PRESETS, write_random_checkpoint

    config = PRESETS["20b"]
    if layers:
        config = dataclasses.replace(config, num_hidden_layers=layers,
                                     layer_types=config.layer_types[:layers])
    print(f"writing {path} (once) ...", file=sys.stderr, flush=True)
    return write_random_checkpoint(path, config, shards=3 if not layers else 1, progress=True)


def prompt_ids(n: int, vocab_size: int, seed: int = 0) -> list[int]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, min(vocab_size, ORDINARY_TOKENS), size=n).tolist()


# -- the ceiling --------------------------------------------------------------------------


def read_bandwidth(nbytes: int = 1 << 30, threads: int | None = None, tries: int = 5) -> float:
    """Best-of-`tries` bytes/s of summing a float32 buffer far larger than the caches, split
    over `threads` threads (numpy releases the GIL in the reduction)."""
    import numpy as np

    threads = threads or os.cpu_count() or 1
    buffer = np.ones(nbytes // 4, dtype=np.float32)
    parts = np.array_split(buffer, threads)
    best = 0.0
    for _ in range(tries):
        workers = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, buffer.nbytes / (time.perf_counter() - start))
    return best


def decode_step_bytes(path: Path, context: int, dense_bytes: int | None) -> dict[str, int]:
    """Bytes one decode step reads at `context` cached positions, by part.

    `dense_bytes`: bytes per floating value (4 for float32), None for the stored dtypes.
    Experts: only the `num_experts_per_tok` chosen ones, blocks + scales + biases. The KV
    cache (keys and values, in the dense dtype) holds min(context, window) positions on
    sliding layers.
    """
    import mlx.core as mx
    from openharmony.loader import open_checkpoint

    checkpoint = open_checkpoint(path)
    c = checkpoint.config

    def size(name: str) -> int:
        stored = checkpoint.nbytes(name)
        if dense_bytes is None or not mx.issubdtype(checkpoint.dtype(name), mx.floating):
            return stored
        return stored // checkpoint.dtype(name).size * dense_bytes

    value_bytes = dense_bytes or checkpoint.dtype("layers.0.self_attn.k_proj.weight").size
    parts = dict.fromkeys(("attention", "router", "experts", "norms", "lm_head", "embedding",
                           "kv_cache"), 0)
    for name in checkpoint.names():
        if name.startswith("layers."):
            if ".self_attn." in name:
                parts["attention"] += size(name)
            elif ".mlp.router." in name:
                parts["router"] += size(name)
            elif ".mlp.experts." in name:
                parts["experts"] += size(name) * c.num_experts_per_tok // c.num_local_experts
            else:
                parts["norms"] += size(name)
        elif name == "lm_head.weight":
            parts["lm_head"] += size(name)
        elif name == "embed_tokens.weight":
            parts["embedding"] += size(name) // c.vocab_size  # one row
        else:
            parts["norms"] += size(name)
    for layer in range(c.num_hidden_layers):
        positions = min(context, c.sliding_window) if c.is_sliding(layer) else context
        parts["kv_cache"] += 2 * positions * c.num_key_value_heads * c.head_dim * value_bytes
    parts["total"] = sum(parts.values())
    return parts


# -- one measurement (runs in its own process) --------------------------------------------


def vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _load_openharmony(path: Path, dtype: str):
    from openharmony.load import load_model

    return load_model(path, dtype=dtype)


def _load_mlx_lm(path: Path, dtype: str):
    import mlx.core as mx
    from mlx_lm.utils import load_model

    from mlx.utils import tree_flatten

    model, _ = load_model(path)  # lazy=False: weights evaluated
    if dtype == "float32":
        # What model.set_dtype(mx.float32) does (floating parameters only; the MXFP4 experts
        # stay packed), one parameter at a time: casting all at once holds both copies of the
        # 7 GB of float32 dense weights plus the bfloat16 model, which does not fit in 24 GB.
        for name, value in tree_flatten(model.parameters()):
            if mx.issubdtype(value.dtype, mx.floating) and value.dtype != mx.float32:
                value = value.astype(mx.float32)
                mx.eval(value)
                model.load_weights([(name, value)], strict=False)
    elif dtype != "bfloat16":
        raise ValueError(f"mlx-lm runs bfloat16 or float32, not {dtype}")
    return model


def _decode_openharmony(model, prompt: list[int], max_tokens: int):
    """An iterator of the generated token ids, each as soon as it is known."""
    from openharmony.generate import stream_generate
    from openharmony.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(VOCAB)  # detokenizing is part of the loop, as for users
    chunks = stream_generate(model, prompt, tokenizer=tokenizer, max_tokens=max_tokens,
                             temperature=0.0, ignore_eos=True)
    return (chunk.token for chunk in chunks)


def _decode_mlx_lm(model, prompt: list[int], max_tokens: int):
    """An iterator of the generated token ids, each as soon as it is known."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    # generate_step: greedy by default, chunked prefill with its caches, pipelined decode,
    # never stops before max_tokens (stop tokens are stream_generate's, which needs a
    # Hugging Face tokenizer this checkpoint does not have).
    steps = generate_step(mx.array(prompt), model, max_tokens=max_tokens)
    return (int(token) for token, _ in steps)


def blas_in_use() -> str:
    """"mkl" when Intel MKL serves MLX's CPU matmuls in this process (see openharmony.blas),
    else "mlx" (the BLAS MLX's wheel links)."""
    return "mkl" if "libmkl_rt" in Path("/proc/self/maps").read_text() else "mlx"


def kernels_in_use(engine: str) -> str:
    """"native" when openharmony's own CPU kernels ran the experts and dense layers, else
    "mlx" (MLX's kernels)."""
    if engine not in KERNELS_SETTING:
        return "mlx"
    from openharmony import native

    return "native" if native.use_native() else "mlx"


def measure(engine: str, dtype: str, path: Path, prompt_tokens: int,
            decode_tokens: int, prefill_tokens: list[int] = ()) -> dict:
    """Load, prefill and decode once in this process; the run's figures. openharmony's runs
    then prefill each of `prefill_tokens` once more from an empty cache (warm: the decode run
    has used every weight), for `prefill_tok_s_at` (mlx-lm's do not: a 512-token prefill takes
    it 12 minutes in float32 here).

    Each engine is imported as its users import it, and only it: `import openharmony` first
    picks MLX's CPU BLAS (MKL when its extra is installed, unless OPENHARMONY_BLAS=mlx), while
    mlx-lm runs on the BLAS MLX ships with. Imports are not load time (mlx-lm's pulls in
    transformers, a second or two).
    """
    if engine in KERNELS_SETTING:
        os.environ["OPENHARMONY_KERNELS"] = KERNELS_SETTING[engine]
        import openharmony  # noqa: F401  before mlx, as openharmony.blas needs
        import openharmony.generate  # noqa: F401
        import openharmony.load  # noqa: F401
    else:
        import mlx_lm.generate  # noqa: F401
        import mlx_lm.utils  # noqa: F401
    import mlx.core as mx

    vocab_size = json.loads((path / "config.json").read_text())["vocab_size"]
    prompt = prompt_ids(prompt_tokens, vocab_size)
    start = time.perf_counter()
    model = (_load_openharmony if engine in KERNELS_SETTING else _load_mlx_lm)(path, dtype)
    load_s = time.perf_counter() - start
    # openharmony's generate resets MLX's peak when it starts: keep the load's.
    load_peak = mx.get_peak_memory()

    decode = _decode_openharmony if engine in KERNELS_SETTING else _decode_mlx_lm
    tokens, times = [], []
    token_stream = decode(model, prompt, decode_tokens)  # nothing computed yet
    start = time.perf_counter()
    for token in token_stream:
        times.append(time.perf_counter())
        tokens.append(token)
    assert len(tokens) == decode_tokens, (engine, len(tokens))
    prefill_at = {}
    if engine in KERNELS_SETTING:
        for n in prefill_tokens:
            # Another prompt (seed), so that nothing of the first could be reused.
            began = time.perf_counter()
            next(iter(decode(model, prompt_ids(n, vocab_size, seed=n), 1)))
            prefill_at[str(n)] = n / (time.perf_counter() - began)
    return {
        "engine": engine, "dtype": dtype, "blas": blas_in_use(), "kernels": kernels_in_use(engine),
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "load_s": load_s,
        "prefill_tok_s": prompt_tokens / (times[0] - start),
        "prefill_tok_s_at": prefill_at,
        "decode_tok_s": ((decode_tokens - 1) / (times[-1] - times[0])
                         if decode_tokens > 1 else None),
        "vm_hwm_bytes": vm_hwm_bytes(),
        "mlx_peak_bytes": max(load_peak, mx.get_peak_memory()),
        "tokens": tokens,
    }


@contextlib.contextmanager
def big_memory_lock(needed: bool):
    """Exclusive use of the machine's memory for one full-size model."""
    if not needed:
        yield
        return
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def evict_from_page_cache(file: Path) -> None:
    """Drop `file` from the page cache, so that reading it goes to the disk as after a reboot."""
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be evicted
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_subprocess(engine: str, dtype: str, path: Path, prompt_tokens: int,
                   decode_tokens: int, lock: bool, prefill_tokens: list[int] = ()) -> dict:
    command = [sys.executable, __file__, "--worker", engine, dtype, "--checkpoint", str(path),
               "--prompt-tokens", str(prompt_tokens), "--decode-tokens", str(decode_tokens)]
    command += ["--prefill-tokens", *map(str, prefill_tokens)]  # none: the option, empty
    with big_memory_lock(lock):
        # Every run loads from disk, as the first load after a reboot does, whatever the run
        # before it left in the page cache (a bf16 run leaves ~8 GB of the checkpoint there).
        for file in path.rglob("*.safetensors"):
            evict_from_page_cache(file)
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        killed = " (killed: out of memory?)" if done.returncode < 0 else ""
        raise RuntimeError(f"{engine} {dtype} failed with exit status {done.returncode}{killed}:"
                           f"\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _llama_cpp_script():
    """scripts/llama_cpp.py, by its path: `import llama_cpp` would find llama-cpp-python's
    package where that is installed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("llama_cpp_script",
                                                  Path(__file__).with_name("llama_cpp.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def threads() -> int:
    """The threads openharmony's native pool runs (csrc/thread_pool.cpp): OPENHARMONY_THREADS,
    else the cores this process may use; llama.cpp gets the same number."""
    return int(os.environ.get("OPENHARMONY_THREADS") or len(os.sched_getaffinity(0)))


def run_llama_cpp(engine: str, gguf: Path, binary: Path, prompt_tokens: int,
                  decode_tokens: int, prefill_tokens: list[int]) -> dict:
    """One llama-bench process (scripts/llama_cpp.py) on `gguf`, from a cold page cache like
    every run, as a run of this benchmark."""
    llama_cpp = _llama_cpp_script()
    lengths = sorted({prompt_tokens, *prefill_tokens})
    command = llama_cpp.bench_command(binary, gguf, threads=threads(), prompt_tokens=lengths,
                                      decode_tokens=decode_tokens,
                                      repack=LLAMA_CPP_REPACK[engine])
    with big_memory_lock(gguf.stat().st_size >= LOCK_ABOVE_BYTES):
        evict_from_page_cache(gguf)
        result = llama_cpp.run_bench(command)
    at = {str(n): result["prefill_tok_s_at"][n] for n in lengths}
    return {
        "engine": engine, "dtype": DEFAULT_DTYPE[engine], "blas": "ggml", "kernels": "ggml",
        "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens,
        "load_s": result["load_s"],
        "prefill_tok_s": at[str(prompt_tokens)],
        "prefill_tok_s_at": {str(n): at[str(n)] for n in prefill_tokens},
        "decode_tok_s": result["decode_tok_s"],
        "vm_hwm_bytes": result["vm_hwm_bytes"], "mlx_peak_bytes": None, "tokens": [],
        "threads": result["threads"], "repack": result["repack"], "command": command,
        "llama_cpp": {k: result[k] for k in ("build_commit", "build_number", "cpu_info",
                                             "model_type", "model_size", "type_k")},
        "llama_bench_json": result["raw_json"],
    }


# -- the benchmark ------------------------------------------------------------------------


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(runs: list[dict], ceilings: dict[str, float], bandwidth: float,
              step_bytes: dict[str, dict], settings: dict) -> dict:
    """Medians per (engine, dtype) and the ratios of the table."""
    results = {}
    for engine in ENGINES:
        for dtype in DTYPES:
            mine = [r for r in runs if r["engine"] == engine and r["dtype"] == dtype]
            if not mine:
                continue
            entry = {field: median([r[field] for r in mine]) for field in RUN_FIELDS}
            entry["prompt_tokens"] = mine[0]["prompt_tokens"]
            lengths = sorted({n for r in mine for n in r.get("prefill_tok_s_at", {})}, key=int)
            entry["prefill_tok_s_at"] = {
                n: median([r.get("prefill_tok_s_at", {}).get(n) for r in mine]) for n in lengths}
            entry["blas"] = sorted({r.get("blas", "unrecorded") for r in mine})
            entry["kernels"] = sorted({r.get("kernels", "mlx") for r in mine})
            entry["runs"] = len(mine)
            entry["default"] = DEFAULT_DTYPE[engine] == dtype
            # The native kernels read the bf16 dense weights as stored even in float32 mode.
            entry["ceiling_basis"] = ("stored dense" if entry["kernels"] == ["native"]
                                      and "stored dense" in ceilings else dtype)
            entry["ceiling_share"] = ratio(entry["decode_tok_s"],
                                           ceilings[entry["ceiling_basis"]])
            results[f"{engine}/{dtype}"] = entry
    comparisons = {}
    for dtype in DTYPES:
        ours, theirs = results.get(f"openharmony/{dtype}"), results.get(f"mlx-lm/{dtype}")
        if ours and theirs:
            comparisons[f"openharmony/{dtype} vs mlx-lm/{dtype}"] = _ratios(ours, theirs)
    ours = results.get(f"openharmony/{DEFAULT_DTYPE['openharmony']}")
    theirs = results.get(f"mlx-lm/{DEFAULT_DTYPE['mlx-lm']}")
    if ours and theirs:
        comparisons["defaults: openharmony/float32 vs mlx-lm/bfloat16"] = _ratios(ours, theirs)
    for dtype in DTYPES:  # the native kernels against MLX's, the same engine otherwise
        ours, theirs = results.get(f"openharmony/{dtype}"), results.get(f"openharmony-mlx/{dtype}")
        if ours and theirs:
            comparisons[f"openharmony/{dtype} vs openharmony-mlx/{dtype}"] = _ratios(ours, theirs)
    for dtype in DTYPES:  # openharmony against llama.cpp, repacked and in place
        for engine in LLAMA_CPP_REPACK:
            ours, theirs = results.get(f"openharmony/{dtype}"), results.get(f"{engine}/bfloat16")
            if ours and theirs:
                comparisons[f"openharmony/{dtype} vs {engine}/bfloat16"] = _ratios(ours, theirs)
    same = _same_tokens(runs)
    return {"settings": settings, "bandwidth_bytes_s": bandwidth, "decode_step_bytes": step_bytes,
            "ceiling_decode_tok_s": ceilings, "results": results, "ratios": comparisons,
            "same_greedy_tokens": same, "runs": runs}


def _ratios(ours: dict, theirs: dict) -> dict:
    return {
        "load_s": ratio(ours["load_s"], theirs["load_s"]),
        "prefill_tok_s": ratio(ours["prefill_tok_s"], theirs["prefill_tok_s"]),
        "decode_tok_s": ratio(ours["decode_tok_s"], theirs["decode_tok_s"]),
        "vm_hwm_bytes": ratio(ours["vm_hwm_bytes"], theirs["vm_hwm_bytes"]),
        "prompt_tokens": [ours["prompt_tokens"], theirs["prompt_tokens"]],
        # The warm prefills of the same lengths (openharmony's and llama.cpp's runs have them).
        "prefill_tok_s_at": {n: ratio(ours["prefill_tok_s_at"][n], theirs["prefill_tok_s_at"][n])
                             for n in ours.get("prefill_tok_s_at", {})
                             if n in theirs.get("prefill_tok_s_at", {})},
    }


def _same_tokens(runs: list[dict]) -> dict:
    """Per dtype: the fraction of leading greedy tokens both engines agree on (a check that
    they compute the same model; the first disagreement may be a rounding tie)."""
    agreement = {}
    for dtype in DTYPES:
        ours = [r["tokens"] for r in runs if r["engine"] == "openharmony" and r["dtype"] == dtype]
        theirs = [r["tokens"] for r in runs if r["engine"] == "mlx-lm" and r["dtype"] == dtype]
        if ours and theirs:
            a, b = ours[0], theirs[0]
            common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
            agreement[dtype] = {"leading_equal": common, "of": len(a)}
    return agreement


def format_table(summary: dict) -> str:
    gb = 1e9
    lines = [f"read bandwidth {summary['bandwidth_bytes_s'] / gb:.1f} GB/s; one decode step "
             + ", ".join(f"{d}: {summary['decode_step_bytes'][d]['total'] / gb:.2f} GB -> "
                         f"ceiling {summary['ceiling_decode_tok_s'][d]:.2f} tok/s"
                         for d in summary["ceiling_decode_tok_s"]),
             "",
             "| engine | dtype | kernels | BLAS | runs | load s | prompt | prefill tok/s "
             "| warm prefill tok/s | decode tok/s | VmHWM GB | MLX peak GB | decode / ceiling |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, r in summary["results"].items():
        engine, dtype = key.split("/")
        lines.append(
            f"| {engine} | {dtype}{' (default)' if r['default'] else ''} "
            f"| {'/'.join(r.get('kernels', ['mlx']))} | {'/'.join(r['blas'])} | {r['runs']} "
            f"| {_num(r['load_s'], '.1f')} | {r['prompt_tokens']} | {r['prefill_tok_s']:.2f} "
            f"| {_by_length(r.get('prefill_tok_s_at'), '.2f')} "
            f"| {_num(r['decode_tok_s'], '.3f')} "
            f"| {r['vm_hwm_bytes'] / gb:.2f} | {_num(_over(r['mlx_peak_bytes'], gb), '.2f')} "
            f"| {_num(r['ceiling_share'], '.1%')} |")
    lines += ["", "| ours / theirs | load time | prefill | prompts | warm prefill | decode "
              "| VmHWM |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in summary["ratios"].items():
        lines.append(f"| {name} | {_num(r['load_s'], '.2f')} | {_num(r['prefill_tok_s'], '.2f')}"
                     f" | {r['prompt_tokens'][0]} vs {r['prompt_tokens'][1]} "
                     f"| {_by_length(r.get('prefill_tok_s_at'), '.2f')} "
                     f"| {_num(r['decode_tok_s'], '.2f')} | {_num(r['vm_hwm_bytes'], '.2f')} |")
    same = ", ".join(f"{d}: {s['leading_equal']}/{s['of']}"
                     for d, s in summary["same_greedy_tokens"].items())
    if same:
        lines += ["", f"leading greedy tokens equal between the engines: {same}"]
    return "\n".join(lines)


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _over(x: float | None, unit: float) -> float | None:
    return None if x is None else x / unit


def _by_length(values: dict | None, spec: str) -> str:
    """{"128": 12.7, "512": 11.3} as "128: 12.70, 512: 11.30"."""
    return ", ".join(f"{n}: {_num(v, spec)}" for n, v in (values or {}).items()) or "-"


def prompt_tokens_for(engine: str, dtype: str, args) -> int:
    # llama.cpp prefills bf16 weights fast: it gets the float32 runs' prompt, like openharmony.
    if dtype == "bfloat16" and engine not in LLAMA_CPP_REPACK:
        return args.bf16_prompt_tokens
    return args.prompt_tokens


def reused_runs(path: Path, configs: list[str], checkpoint: Path, args) -> list[dict]:
    """The runs in an earlier JSON report of the configurations this run does not measure,
    checked to be of the same checkpoint and token counts."""
    earlier = json.loads(path.read_text())
    if earlier["settings"]["checkpoint"] != str(checkpoint):
        sys.exit(f"--reuse: {path} measured {earlier['settings']['checkpoint']}, not {checkpoint}")
    runs = []
    for run in earlier["runs"]:
        if f"{run['engine']}/{run['dtype']}" in configs:
            continue
        wanted = (prompt_tokens_for(run["engine"], run["dtype"], args), args.decode_tokens)
        if (run["prompt_tokens"], run["decode_tokens"]) != wanted:
            sys.exit(f"--reuse: {path} has {run['engine']} {run['dtype']} with prompt/decode "
                     f"tokens {run['prompt_tokens']}/{run['decode_tokens']}, this run uses "
                     f"{wanted[0]}/{wanted[1]}")
        runs.append({**run, "reused_from": str(path)})
    return runs


def benchmark(args) -> dict:
    path = args.checkpoint or ensure_checkpoint(checkpoint_path(args.cache_dir, args.layers),
                                                args.layers)
    path = Path(path)
    from openharmony.loader import open_checkpoint

    lock = open_checkpoint(path).tensor_bytes >= LOCK_ABOVE_BYTES
    with big_memory_lock(lock):  # alone on the machine, like the runs
        bandwidth = read_bandwidth(nbytes=args.bandwidth_bytes)
    # The ceiling at the mean context while decoding.
    contexts = {d: prompt_tokens_for("openharmony", d, args) + args.decode_tokens // 2
                for d in DTYPES}
    step_bytes = {"bfloat16": decode_step_bytes(path, contexts["bfloat16"], None),
                  "float32": decode_step_bytes(path, contexts["float32"], 4),
                  # float32 compute on the native kernels: dense weights as stored (bf16).
                  "stored dense": decode_step_bytes(path, contexts["float32"], None)}
    ceilings = {d: bandwidth / b["total"] for d, b in step_bytes.items()}
    configs = [tuple(c.split("/")) for c in args.configs]
    runs = reused_runs(args.reuse, args.configs, path, args) if args.reuse else []
    started = time.perf_counter()
    last_seconds: dict = {}
    for repeat in range(args.repeats):
        # Interleave the engines, and rotate the order each round so that no configuration
        # always runs right after the same other one (page cache, thermal state).
        order = configs[repeat % len(configs):] + configs[:repeat % len(configs)]
        for engine, dtype in order:
            elapsed = time.perf_counter() - started
            if repeat and elapsed + last_seconds[engine, dtype] > args.max_minutes * 60:
                print(f"round {repeat}: skipping {engine} {dtype}: it would end after "
                      f"--max-minutes {args.max_minutes}", file=sys.stderr, flush=True)
                continue
            run_start = time.perf_counter()
            if engine in LLAMA_CPP_REPACK:
                run = run_llama_cpp(engine, args.llama_cpp, args.llama_bench,
                                    args.prompt_tokens, args.decode_tokens, args.prefill_tokens)
            else:
                run = run_subprocess(engine, dtype, path, prompt_tokens_for(engine, dtype, args),
                                     args.decode_tokens, lock, args.prefill_tokens)
            last_seconds[engine, dtype] = time.perf_counter() - run_start
            run["round"], run["seconds"] = repeat, last_seconds[engine, dtype]
            runs.append(run)
            print(f"round {repeat}: {engine} {dtype}: load {_num(run['load_s'], '.1f')} s, prefill "
                  f"{run['prefill_tok_s']:.2f} tok/s, decode {_num(run['decode_tok_s'], '.3f')}"
                  f" tok/s, VmHWM {run['vm_hwm_bytes'] / 1e9:.2f} GB "
                  f"({last_seconds[engine, dtype]:.0f} s)", file=sys.stderr, flush=True)
    settings = {"checkpoint": str(path), "prompt_tokens": args.prompt_tokens,
                "bf16_prompt_tokens": args.bf16_prompt_tokens,
                "decode_tokens": args.decode_tokens, "context_for_ceiling": contexts,
                "prefill_tokens": args.prefill_tokens, "threads": threads(),
                "llama_cpp_gguf": str(args.llama_cpp) if args.llama_cpp else None,
                "repeats_asked": args.repeats, "max_minutes": args.max_minutes,
                "configs_measured": args.configs,
                "reused_from": str(args.reuse) if args.reuse else None,
                "seconds": time.perf_counter() - started, "machine": machine()}
    return summarize(runs, ceilings, bandwidth, step_bytes, settings)


def machine() -> dict:
    import mlx.core as mx
    import mlx_lm

    cpu = next((line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem_kb * 1024,
            "mlx": mx.__version__, "mlx_lm": mlx_lm.__version__,
            "device": str(mx.default_device())}


# -- profile ------------------------------------------------------------------------------

PARTS = ("embedding", "attention", "router", "experts", "lm_head", "sampling")


def _timed(seconds: dict, part: str, *arrays) -> None:
    """Evaluate `arrays` (the barrier), charging the time since the last barrier to `part`."""
    import mlx.core as mx

    mx.eval(*arrays)
    now = time.perf_counter()
    seconds[part] = seconds.get(part, 0.0) + now - seconds["_last"]
    seconds["_last"] = now


def forward_by_part(model, tokens, caches, seconds: dict) -> tuple[int, "mx.array"]:
    """The forward of `tokens` [1, T] and a greedy pick of the next token, as `Model.__call__`
    and `Block.__call__` compute it, with a barrier after each part; returns the token and
    the last position's logits."""
    import mlx.core as mx

    seconds["_last"] = time.perf_counter()
    x = model.embed_tokens(tokens).astype(model.dtype)
    _timed(seconds, "embedding", x)
    for layer, cache in zip(model.layers, caches):
        # Attention includes its RMSNorm and the residual add; so do the experts.
        x = x + layer.self_attn(layer.input_layernorm(x), cache)
        _timed(seconds, "attention", x, *cache.state)
        h = layer.post_attention_layernorm(x)
        B, T, H = h.shape
        h = h.reshape(B * T, H)
        indices, weights = layer.mlp.router(h)
        _timed(seconds, "router", indices, weights)
        x = x + layer.mlp.experts(h, indices, weights).reshape(B, T, H)
        _timed(seconds, "experts", x)
    # Only the last position's logits are computed, as generate() does after a prefill.
    logits = model.lm_head(model.norm(x[:, -1:])).astype(mx.float32)
    _timed(seconds, "lm_head", logits)
    token = mx.argmax(logits[0, -1])
    _timed(seconds, "sampling", token)
    return token.item(), logits


def profile(path: Path, dtype: str, prompt_tokens: int, decode_tokens: int) -> dict:
    """Seconds per part of one prefill of `prompt_tokens` and per decode step (mean over
    `decode_tokens` steps), with the un-barriered step and generate()'s step for comparison."""
    import mlx.core as mx
    from openharmony.generate import stream_generate
    from openharmony.load import load_model
    from openharmony.tokenizer import load_tokenizer

    model = load_model(path, dtype=dtype)
    prompt = prompt_ids(prompt_tokens, model.config.vocab_size)

    prefill: dict = {}
    caches = model.make_cache()
    start = time.perf_counter()
    token, _ = forward_by_part(model, mx.array([prompt]), caches, prefill)
    prefill_total = time.perf_counter() - start

    decode: dict = {}
    start = time.perf_counter()
    for _ in range(decode_tokens):
        token, _ = forward_by_part(model, mx.array([[token]]), caches, decode)
    decode_step = (time.perf_counter() - start) / decode_tokens

    # The same step without barriers: one graph per token, evaluated once.
    start = time.perf_counter()
    graph_seconds = 0.0
    for _ in range(decode_tokens):
        built = time.perf_counter()
        next_token = mx.argmax(model(mx.array([[token]]), cache=caches)[0, -1])
        graph_seconds += time.perf_counter() - built
        token = next_token.item()
    fused_step = (time.perf_counter() - start) / decode_tokens

    # generate()'s own loop (pipelined, detokenizing) from a fresh prompt.
    times = []
    for _ in stream_generate(model, prompt, tokenizer=load_tokenizer(VOCAB),
                             max_tokens=decode_tokens + 1, temperature=0.0, ignore_eos=True):
        times.append(time.perf_counter())
    generate_step = (times[-1] - times[0]) / decode_tokens

    def per_part(seconds: dict, scale: int) -> dict:
        return {part: seconds.get(part, 0.0) / scale for part in PARTS}

    return {"dtype": dtype, "blas": blas_in_use(), "layers": model.config.num_hidden_layers,
            "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens,
            "prefill_s": per_part(prefill, 1), "prefill_total_s": prefill_total,
            "decode_step_s": per_part(decode, decode_tokens),
            "decode_step_barriered_s": decode_step,
            "decode_step_unbarriered_s": fused_step,
            "decode_graph_build_s": graph_seconds / decode_tokens,
            "generate_step_s": generate_step}


def format_profile(result: dict, step_bytes: dict[str, int]) -> str:
    """The profile as two markdown tables, with decode's achieved GB/s per part."""
    read = {"attention": step_bytes["attention"] + step_bytes["norms"],
            "router": step_bytes["router"], "experts": step_bytes["experts"],
            "lm_head": step_bytes["lm_head"], "embedding": step_bytes["embedding"]}
    decode, prefill = result["decode_step_s"], result["prefill_s"]
    decode_sum, prefill_sum = sum(decode.values()), sum(prefill.values())
    lines = [f"openharmony {result['dtype']} (BLAS: {result['blas']}), {result['layers']} "
             f"layers, prompt "
             f"{result['prompt_tokens']} tokens, {result['decode_tokens']} decode steps",
             "", "| part | decode ms/token | share | bytes read (MB) | GB/s "
             "| prefill s | share | prefill tok/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for part in PARTS:
        seconds = decode[part]
        gbs = read.get(part, 0) / seconds / 1e9 if seconds and part in read else None
        lines.append(
            f"| {part} | {seconds * 1e3:.1f} | {seconds / decode_sum:.1%} "
            f"| {read.get(part, 0) / 1e6:.0f} | {_num(gbs, '.2f')} | {prefill[part]:.2f} "
            f"| {prefill[part] / prefill_sum:.1%} "
            f"| {result['prompt_tokens'] / prefill[part] if prefill[part] else 0:.0f} |")
    lines += ["", f"decode step: sum of parts {decode_sum * 1e3:.1f} ms; the same step without "
              f"barriers {result['decode_step_unbarriered_s'] * 1e3:.1f} ms, of which "
              f"{result['decode_graph_build_s'] * 1e3:.1f} ms building the graph in Python; "
              f"generate()'s step {result['generate_step_s'] * 1e3:.1f} ms",
              f"prefill: sum of parts {prefill_sum:.2f} s "
              f"({result['prompt_tokens'] / prefill_sum:.1f} tok/s)"]
    return "\n".join(lines)


def profile_main(args) -> None:
    path = args.checkpoint or ensure_checkpoint(checkpoint_path(args.cache_dir, args.layers),
                                                args.layers)
    from openharmony.loader import open_checkpoint

    lock = open_checkpoint(path).tensor_bytes >= LOCK_ABOVE_BYTES
    context = args.prompt_tokens + args.decode_tokens // 2
    report = {}
    for dtype in args.profile_dtypes:
        with big_memory_lock(lock):
            result = profile(Path(path), dtype, args.prompt_tokens, args.decode_tokens)
        step_bytes = decode_step_bytes(Path(path), context, 4 if dtype == "float32" else None)
        print(format_profile(result, step_bytes), end="\n\n", flush=True)
        report[dtype] = {**result, "decode_step_bytes": step_bytes}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


# -- command line -------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path,
                   help="use this checkpoint folder instead of the cached random 20b one")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help="where the random checkpoints are written once (default bench_cache/)")
    p.add_argument("--layers", type=int,
                   help="truncate the 20b shapes to this many layers (a quick look)")
    p.add_argument("--configs", nargs="+", choices=CONFIGS,
                   help="engine/dtype pairs to measure (default: each engine's default dtype "
                        "and float32; openharmony on its native kernels and on MLX's; with "
                        "--llama-cpp also llama.cpp repacked and in place)")
    p.add_argument("--llama-cpp", type=Path, metavar="GGUF",
                   help="compare llama.cpp on this GGUF of the checkpoint "
                        "(`scripts/llama_cpp.py convert`)")
    p.add_argument("--llama-bench", type=Path,
                   help="the llama-bench binary (default: the one `scripts/llama_cpp.py build` "
                        "built in --cache-dir)")
    p.add_argument("--prefill-tokens", type=int, nargs="*", default=[128, 512],
                   help="prompt lengths openharmony and llama.cpp also prefill warm, from an "
                        "empty cache (the comparison with llama-bench's prefill tests)")
    p.add_argument("--prompt-tokens", type=int, default=512,
                   help="prompt length of the float32 runs (prefill is measured on it)")
    p.add_argument("--bf16-prompt-tokens", type=int, default=16,
                   help="prompt length of the bfloat16 runs: mlx-lm prefills the 20b shapes in "
                        "bfloat16 at ~0.12 tok/s on MLX's CPU, so 16 tokens take ~2 min and "
                        "512 would take ~70 min per run")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="rounds (each runs every config)")
    p.add_argument("--max-minutes", type=float, default=60.0,
                   help="after the first round, skip a run that would end after this many "
                        "minutes (judged by its previous duration)")
    p.add_argument("--reuse", type=Path,
                   help="take the runs of the configurations not in --configs from this "
                        "earlier --json report (same checkpoint and token counts)")
    p.add_argument("--profile-dtypes", nargs="+", choices=DTYPES, default=["float32"],
                   help="compute dtypes of openharmony to --profile")
    p.add_argument("--bandwidth-bytes", type=int, default=1 << 30,
                   help="buffer size of the bandwidth measurement")
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("--profile", action="store_true",
                   help="time openharmony's decode and prefill by layer part instead")
    p.add_argument("--worker", nargs=2, metavar=("ENGINE", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker and args.checkpoint is None:
        p.error("--worker needs --checkpoint")
    for name in ("prompt_tokens", "bf16_prompt_tokens", "decode_tokens", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if any(n < 1 for n in args.prefill_tokens):
        p.error("--prefill-tokens must be at least 1")
    if args.configs is None:
        args.configs = [*DEFAULT_CONFIGS, *(f"{engine}/bfloat16" for engine in LLAMA_CPP_REPACK
                                            if args.llama_cpp)]
    if any(c.split("/")[0] in LLAMA_CPP_REPACK for c in args.configs) and not args.worker:
        if args.llama_cpp is None:
            p.error("the llama.cpp configurations need --llama-cpp GGUF")
        if not args.llama_cpp.is_file():
            p.error(f"--llama-cpp {args.llama_cpp}: no such file")
        if args.llama_bench is None:
            tree = _llama_cpp_script().find_tree(args.cache_dir)
            args.llama_bench = _llama_cpp_script().bench_binary(tree)
        if not args.llama_bench.is_file():
            p.error(f"no llama-bench at {args.llama_bench}: run `scripts/llama_cpp.py build`")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        engine, dtype = args.worker
        print(json.dumps(measure(engine, dtype, args.checkpoint, args.prompt_tokens,
                                 args.decode_tokens, args.prefill_tokens)))
        return
    if args.profile:
        profile_main(args)
        return
    summary = benchmark(args)
    print(format_table(summary))
    print(f"\n(took {summary['settings']['seconds'] / 60:.1f} min)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
