"""How much memory a checkpoint needs: its weights as loaded, and the KV cache for a context.

Computed from the config and the safetensors headers only (no weight is read), for
`openharmony info` and for the server's `/v1/models`.

The long-prompt guard (issue 20) lives here too: `prompt_memory` (what a prompt's prefill
needs), `memory_limit` (what this process may still allocate: available memory, a cgroup's
memory.max, an address-space limit) and `check_prompt_fits`, which the Python API
(`make_decoding`), the CLI (through it) and the server (before queueing) call, so a prompt that
cannot fit is refused with `PromptMemoryError` before anything is allocated, never by the OOM
killer; `largest_context` is what `openharmony info` prints per cache type.
"""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path
from typing import Any

from . import runtime
from .cache import BITS, default_group_size, kv_dtype_of
from .config import ModelConfig
from .errors import InputError
from .runtime import placement
from .runtime.dtypes import compute_dtype

# Full-attention caches grow in steps of this many positions (cache/kv.py, KVCache.step).
GROWTH_STEP = 256


class PromptMemoryError(InputError):
    """A prompt whose KV cache and prefill need more memory than this process may use."""


def kv_cache_bytes(config: ModelConfig, dtype_size: int, context: int,
                   kv_bits: int | None = None) -> int:
    """Bytes of the keys and values of `context` positions, in `dtype_size`-byte elements.

    Sliding-window layers hold at most `sliding_window` positions; full-attention layers all.
    `kv_bits`: the full-attention layers quantized as `make_caches(kv_bits=...)` stores them
    (`kv_vector_bytes`); the sliding ones stay float.
    """
    sliding_layers = sum(config.is_sliding(i) for i in range(config.num_hidden_layers))
    full_layers = config.num_hidden_layers - sliding_layers
    full = kv_vector_bytes(config.head_dim, dtype_size, kv_bits)
    sliding = config.head_dim * dtype_size
    return 2 * config.num_key_value_heads * (
        full_layers * context * full
        + sliding_layers * min(context, config.sliding_window) * sliding)


def kv_vector_bytes(head_dim: int, dtype_size: int, kv_bits: int | None = None) -> int:
    """Bytes one cached key (or value) vector of one kv head takes: head_dim entries of
    `dtype_size` bytes, or with `kv_bits` (openharmony/cache/quantized.py) head_dim entries of
    kv_bits bits plus a scale and a bias per group (the default group size), in the compute
    dtype (`dtype_size`), as `mx.quantize` returns them."""
    if kv_bits is None:
        return head_dim * dtype_size
    return head_dim * kv_bits // 8 + 2 * (head_dim // default_group_size(head_dim)) * dtype_size


def kv_cache_variants(config: ModelConfig, dtype: str, dtype_size: int,
                      context: int, budget: int | None = None) -> dict[str, dict]:
    """Per KV-cache storage `info` reports: bytes per token (what each position past the
    sliding window adds: the full-attention layers) and bytes at `context`. The float cache
    as computed (named `dtype`, elements of `dtype_size` bytes), bf16 storage when that is
    narrower (`kv_dtype="bfloat16"`), and 8- and 4-bit full-attention layers (`kv_bits`,
    sliding layers float) when head_dim allows a quantized cache. With `budget` (bytes), also
    the longest prompt each one can prefill in it (`largest_context`)."""
    variants = {dtype: {"dtype_size": dtype_size}}
    if dtype_size > 2:
        variants["bfloat16"] = {"dtype_size": 2}
    if config.head_dim % 32 == 0:
        variants.update({f"{bits}-bit": {"dtype_size": dtype_size, "kv_bits": bits}
                         for bits in sorted(BITS, reverse=True)})
    full_layers = sum(not config.is_sliding(i) for i in range(config.num_hidden_layers))
    return {name: {"bytes_per_token": 2 * config.num_key_value_heads * full_layers
                   * kv_vector_bytes(config.head_dim, options["dtype_size"],
                                     options.get("kv_bits")),
                   "bytes": kv_cache_bytes(config, context=context, **options),
                   "largest_context": None if budget is None else largest_context(
                       config, budget, dtype_size=dtype_size,
                       kv_dtype_size=options["dtype_size"], kv_bits=options.get("kv_bits"))}
            for name, options in variants.items()}


def checkpoint_summary(checkpoint, dtype: str, context: int,
                       kernels=None) -> dict[str, Any]:
    """Parameter counts, bytes on disk and the memory to run `checkpoint`, from its headers.

    Parameters count every weight once, MXFP4 expert weights included (two 4-bit values per
    stored byte; their scales are not parameters). Active parameters per token leave out the
    embedding table (a lookup) and count the experts at num_experts_per_tok / num_experts.
    Memory: every tensor as a model of compute `dtype` on `kernels` (default: what
    `runtime.select()` picks) holds it (the placement table, runtime/placement.py): dense
    weights in their held dtype, MXFP4 blocks and scales as stored, plus the KV cache for
    `context` positions (sliding window layers hold at most `sliding_window` of them). Of the
    weights, `weight_bytes_in_place` are used in place from the checkpoint's mapping (page
    cache, shared by every process of the checkpoint), the rest is the model's own memory.
    """
    c = checkpoint.config
    compute = compute_dtype(dtype)
    held = placement.table(checkpoint, compute, runtime.select() if kernels is None else kernels)
    total = experts = embedding = weight_bytes = in_place_bytes = 0
    for name in checkpoint.names():
        shape = checkpoint.shape(name)
        if held[name].in_place:
            in_place_bytes += checkpoint.nbytes(name)
        if name.endswith(".scales"):
            weight_bytes += checkpoint.nbytes(name)
            continue
        if name.endswith(".blocks"):
            count = math.prod(shape) * 2
            weight_bytes += checkpoint.nbytes(name)
        else:
            count = math.prod(shape)
            weight_bytes += count * held[name].dtype.size
        total += count
        if ".mlp.experts." in name:
            experts += count
        if name == "embed_tokens.weight":
            embedding += count
    active = total - embedding - experts + experts * c.num_experts_per_tok // c.num_local_experts
    sliding_layers = sum(c.is_sliding(i) for i in range(c.num_hidden_layers))
    kv_bytes = kv_cache_bytes(c, compute.size, context)
    limit, bound = memory_limit()
    return {
        "path": str(checkpoint.path),
        "layout": checkpoint.layout,
        "files": len(checkpoint.files),
        "layers": c.num_hidden_layers,
        "sliding_layers": sliding_layers,
        "sliding_window": c.sliding_window,
        "experts": c.num_local_experts,
        "experts_per_token": c.num_experts_per_tok,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "attention_heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_context": c.max_position_embeddings,
        "parameters": total,
        "active_parameters": active,
        "expert_parameters": experts,
        "bytes_on_disk": checkpoint.total_bytes,
        "dtype": dtype,
        "context": context,
        "weight_bytes": weight_bytes,
        "weight_bytes_in_place": in_place_bytes,
        "kv_cache_bytes": kv_bytes,
        "kv_cache": kv_cache_variants(c, dtype, compute.size, context,
                                      budget=max(0, limit - weight_bytes)),
        "memory_limit": limit,
        "memory_limit_bound": bound,
        "memory_bytes": weight_bytes + kv_bytes,
    }


# -- the long-prompt guard ------------------------------------------------------------------


def prompt_memory(config: ModelConfig, tokens: int, *, dtype_size: int = 4,
                  kv_bits: int | None = None, kv_dtype_size: int | None = None,
                  prefill_chunk: int = 512, native_attention: bool = True) -> dict[str, int]:
    """Bytes a prefill of `tokens` positions needs: the KV cache (full-attention buffers grown
    in steps of GROWTH_STEP; `kv_bits`/`kv_dtype_size` as `make_caches` stores them), one full
    layer's buffer again while it grows (the copy), and the working memory of a chunk: the
    activations of one layer for `prefill_chunk` positions, twice over (MLX frees them as the
    graph runs; this bounds the live ones), plus, on MLX's attention (not the native kernel),
    its scores and probabilities [heads, chunk, tokens] in float32."""
    chunk = max(1, min(prefill_chunk, tokens))
    positions = -(-tokens // GROWTH_STEP) * GROWTH_STEP
    kv = kv_cache_bytes(config, kv_dtype_size or dtype_size, positions, kv_bits)
    full_layers = sum(not config.is_sliding(i) for i in range(config.num_hidden_layers))
    growth = kv // max(1, full_layers) if full_layers else 0
    heads, kv_heads, D = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    per_position = (4 * config.hidden_size + 3 * (heads + 2 * kv_heads) * D
                    + config.num_experts_per_tok * (3 * config.intermediate_size
                                                    + config.hidden_size)
                    + config.num_local_experts)
    working = 2 * chunk * per_position * max(dtype_size, 4)
    if not native_attention:
        working += 2 * heads * chunk * tokens * 4
    return {"kv_cache": kv, "growth": growth, "working": working,
            "total": kv + growth + working}


def memory_limit() -> tuple[int, str]:
    """The bytes this process may still allocate, and what bounds it: the system's available
    memory (MemAvailable), a cgroup's memory.max less its usage (a container), or an
    address-space limit (`ulimit -v`, RLIMIT_AS) less the address space in use."""
    limits = []
    meminfo = _read_fields("/proc/meminfo")
    if "MemAvailable" in meminfo:
        limits.append((meminfo["MemAvailable"] * 1024, "available memory"))
    else:  # no /proc (macOS): physical memory
        limits.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                       "physical memory"))
    cgroup = _cgroup_room()
    if cgroup is not None:
        limits.append((cgroup, "the cgroup's memory.max"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        in_use = _read_fields("/proc/self/status").get("VmSize", 0) * 1024
        limits.append((max(0, soft - in_use), "the address-space limit (ulimit -v)"))
    return min(limits)


def check_prompt_fits(model, tokens: int, *, caches: list | None = None,
                      cache_options: dict | None = None, prefill_chunk: int = 512) -> None:
    """Raise `PromptMemoryError` when a prompt of `tokens` positions cannot be prefilled into
    `model`'s caches (`caches`: those it will extend, whose buffers are already held; or new
    ones made with `cache_options`) within `memory_limit()`. One line: the prompt length, the
    memory needed and available, and the remedies."""
    options = cache_options or {}
    kv_dtype = kv_dtype_of(options.get("kv_dtype"))
    dtype_size = getattr(getattr(model, "dtype", None), "size", 4)  # the compute dtype's
    need = prompt_memory(model.config, tokens, dtype_size=dtype_size,
                         kv_bits=options.get("kv_bits"),
                         kv_dtype_size=kv_dtype.size if kv_dtype is not None else None,
                         prefill_chunk=prefill_chunk,
                         native_attention=not getattr(getattr(model, "kernels", None),
                                                      "materializes_scores", True))
    held = sum(cache.nbytes for cache in caches or [])
    needed = max(0, need["total"] - held)
    available, bound = memory_limit()
    if needed > available:
        remedy = ("a shorter prompt" if options.get("kv_bits") else
                  "an 8-bit KV cache (--kv-bits 8, kv_bits=8) or a shorter prompt")
        raise PromptMemoryError(
            f"the prompt ({tokens} tokens) needs {_gb(needed)} of memory (KV cache "
            f"{_gb(need['kv_cache'])}, prefill working memory "
            f"{_gb(need['working'] + need['growth'])}) but {_gb(available)} is available "
            f"({bound}); use {remedy}")


def largest_context(config: ModelConfig, budget: int, **options) -> int:
    """The longest prompt whose `prompt_memory` (with these options) fits in `budget` bytes,
    up to the model's context."""
    low, high = 0, config.max_position_embeddings
    while low < high:
        middle = (low + high + 1) // 2
        if prompt_memory(config, middle, **options)["total"] <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _read_fields(path: str) -> dict[str, int]:
    """`Name: value kB` lines (/proc/meminfo, /proc/self/status) -> {name: value}."""
    fields = {}
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if value.split() and value.split()[0].isdigit():
                fields[name] = int(value.split()[0])
    except OSError:
        pass
    return fields


def _cgroup_room() -> int | None:
    """memory.max less memory.current of this process's cgroup v2 and its ancestors (the
    tightest), or v1's memory.limit_in_bytes less usage; None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            folder = Path("/sys/fs/cgroup") / path.lstrip("/")
            names = ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):  # v1
            folder = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            names = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        for level in [folder, *folder.parents]:
            try:
                limit = (level / names[0]).read_text().strip()
                usage = int((level / names[1]).read_text().strip())
            except (OSError, ValueError):
                continue
            if limit.isdigit() and int(limit) < 2**60:
                rooms.append(max(0, int(limit) - usage))
            if level == Path("/sys/fs/cgroup") or level == Path("/sys/fs/cgroup/memory"):
                break
    return min(rooms) if rooms else None
