"""Issue 20's long-prompt guard (openharmony/memory.py): a prompt whose KV cache and prefill
cannot fit is refused with one clear error before anything is allocated, in the Python API,
the CLI and the server; measured under a real limit (a subprocess with an address-space limit,
RLIMIT_AS), where the process must end normally, not be killed.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlx.core as mx
import pytest

from openharmony import memory
from openharmony.cache import make_caches
from openharmony.testing.random_checkpoint import PRESETS, write_random_checkpoint
from vocab import VOCAB, requires_vocab

REPO = Path(__file__).resolve().parents[1]

# A tiny model with a wide cache: 4 full-attention layers of 8 kv heads of 64 (16 KiB per
# position in float32), and a context long enough to ask for gigabytes.
WIDE = dataclasses.replace(PRESETS["tiny-vocab"], num_hidden_layers=4,
                           layer_types=("full_attention",) * 4,
                           num_attention_heads=8, num_key_value_heads=8, head_dim=64,
                           max_position_embeddings=1 << 20)


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wide") / "ckpt"
    write_random_checkpoint(path, WIDE)
    return path


@pytest.mark.parametrize("options", [{}, {"kv_bits": 8}, {"kv_dtype": "bfloat16"}])
@pytest.mark.parametrize("positions", [1, 256, 700])
def test_the_estimate_holds_what_the_caches_hold(options, positions):
    """The KV part of the estimate is what the caches hold once filled (their arrays' bytes,
    grown in steps), for every cache type."""
    caches = make_caches(WIDE, **options)
    for cache in caches:
        k = mx.zeros((1, WIDE.num_key_value_heads, positions, WIDE.head_dim))
        cache.extend(k, k)
    dtype = options.get("kv_dtype")
    estimate = memory.prompt_memory(WIDE, positions, dtype_size=4, kv_bits=options.get("kv_bits"),
                                    kv_dtype_size=2 if dtype else None)
    assert estimate["kv_cache"] == sum(cache.nbytes for cache in caches)
    assert estimate["total"] > estimate["kv_cache"]


def test_largest_context_is_the_boundary():
    budget = 300 * 2**20
    n = memory.largest_context(WIDE, budget)
    assert memory.prompt_memory(WIDE, n)["total"] <= budget
    assert memory.prompt_memory(WIDE, n + 1)["total"] > budget
    assert memory.largest_context(WIDE, budget, kv_bits=8) > 3 * n  # 3.6x smaller per token


# Run in a fresh process under an address-space limit of what it uses plus `room`: a prompt
# that cannot fit must raise PromptMemoryError (before allocating: the process then still
# generates from a short prompt). With "unguarded", MLX allocates past the limit instead:
# that process dies (a segfault with MLX 0.32), which is what the guard prevents.
LIMITED = textwrap.dedent("""
    import resource, sys
    import mlx.core as mx
    from openharmony.generate import generate
    from openharmony.load import load_model
    from openharmony.memory import PromptMemoryError, _read_fields
    model = load_model(sys.argv[1], "float32")
    mx.eval(model.parameters())
    in_use = _read_fields("/proc/self/status")["VmSize"] * 1024
    resource.setrlimit(resource.RLIMIT_AS, (in_use + int(sys.argv[2]), resource.RLIM_INFINITY))
    if sys.argv[4] == "unguarded":
        mx.eval(mx.zeros((int(sys.argv[2]) // 2,)))  # twice the room
    try:
        generate(model, [1] * int(sys.argv[3]), max_tokens=2)
    except PromptMemoryError as error:
        print("refused:", error)
    print("short prompt:", len(generate(model, [1] * 300, max_tokens=2).tokens), "tokens")
""")


def run_limited(script: str, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENHARMONY_THREADS="1")
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def test_a_prompt_over_an_address_space_limit_is_refused(wide_checkpoint):
    room = 400 * 2**20
    tokens = 60_000  # ~940 MiB of float32 cache
    done = run_limited(LIMITED, wide_checkpoint, room, tokens, "guarded")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    refused = next(line for line in lines if line.startswith("refused:"))
    assert f"the prompt ({tokens} tokens) needs" in refused
    assert "the address-space limit" in refused and "--kv-bits 8" in refused
    assert "short prompt: 2 tokens" in lines
    unguarded = run_limited(LIMITED, wide_checkpoint, room, tokens, "unguarded")
    assert unguarded.returncode != 0 and "short prompt" not in unguarded.stdout  # the limit is real


@requires_vocab
def test_the_cli_says_it_in_one_line(wide_checkpoint):
    script = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), resource.RLIM_INFINITY))
        from openharmony.cli import main
        sys.argv = ["openharmony", "generate", "--model", sys.argv[2], "-p", "a " * 60000,
                    "--max-tokens", "2"]
        main()
    """)
    probe = run_limited("import openharmony.cli, mlx.core; from openharmony.memory import "
                        "_read_fields; print(_read_fields('/proc/self/status')['VmSize'])")
    limit = int(probe.stdout.split()[-1]) * 1024 + 600 * 2**20
    done = run_limited(script, limit, wide_checkpoint)
    assert done.returncode != 0 and done.returncode > 0, done.stderr[-3000:]  # an exit, no signal
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "tokens) needs" in errors[0] and "available" in errors[0] and "--kv-bits 8" in errors[0]


@requires_vocab
def test_the_server_answers_400(wide_checkpoint, monkeypatch):
    """Before queueing: a 400 with an OpenAI error object naming the memory, and the server
    stays up (the limit is made small here; the subprocess tests above show a real one)."""
    from starlette.testclient import TestClient

    from openharmony.load import load_model
    from openharmony.server.app import create_app
    from openharmony.tokenizer import load_tokenizer

    model = load_model(wide_checkpoint, "float32")
    app = create_app(model, load_tokenizer(VOCAB), "wide")
    monkeypatch.setattr(memory, "memory_limit", lambda: (50_000_000, "available memory"))
    with TestClient(app) as client:
        body = {"messages": [{"role": "user", "content": "a " * 5000}], "max_tokens": 2}
        for stream in (False, True):
            answer = client.post("/v1/chat/completions", json=body | {"stream": stream})
            assert answer.status_code == 400
            error = answer.json()["error"]
            assert error["code"] == "insufficient_memory", error
            assert "needs" in error["message"] and "50.0 MB is available" in error["message"]
        monkeypatch.undo()
        body["messages"][0]["content"] = "a"
        assert client.post("/v1/chat/completions", json=body).status_code == 200  # still up
