"""Smoke test of scripts/bench.py on the tiny checkpoint: the script runs end to end, its JSON
holds every figure, the ratios follow from the figures, the bytes of a decode step match the
safetensors headers, and both engines decode the same greedy tokens."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ALL_CONFIGS = ["openharmony/float32", "openharmony/bfloat16", "mlx-lm/float32",
               "mlx-lm/bfloat16"]


def run_bench(checkpoint: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--checkpoint", str(checkpoint), "--repeats", "1",
         "--prompt-tokens", "12", "--bf16-prompt-tokens", "7", "--decode-tokens", "5",
         "--bandwidth-bytes", str(1 << 24), "--json", str(out), *extra],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def report_path(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    done = run_bench(tiny_checkpoint, out, "--configs", *ALL_CONFIGS)
    assert "| openharmony | float32 (default) |" in done.stdout
    return out


@pytest.fixture(scope="module")
def report(report_path):
    return json.loads(report_path.read_text())


def header_bytes(folder: Path) -> dict[str, int]:
    """Bytes of each stored tensor, straight from the safetensors headers."""
    sizes = {}
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                begin, end = entry["data_offsets"]
                sizes[name] = end - begin
    return sizes


def test_every_configuration_is_measured(report):
    assert set(report["results"]) == {"openharmony/float32", "openharmony/bfloat16",
                                      "mlx-lm/float32", "mlx-lm/bfloat16"}
    for key, entry in report["results"].items():
        assert entry["runs"] == 1
        for field in ("load_s", "prefill_tok_s", "decode_tok_s", "vm_hwm_bytes",
                      "mlx_peak_bytes", "ceiling_share"):
            assert entry[field] > 0, (key, field)
    assert report["results"]["openharmony/float32"]["default"]
    assert report["results"]["mlx-lm/bfloat16"]["default"]
    assert not report["results"]["mlx-lm/float32"]["default"]
    assert len(report["runs"]) == 4
    assert all(len(run["tokens"]) == 5 for run in report["runs"])
    assert {run["dtype"]: run["prompt_tokens"] for run in report["runs"]} == {
        "float32": 12, "bfloat16": 7}
    # mlx-lm runs on the BLAS MLX ships with; openharmony on the one openharmony.blas picks.
    from openharmony import blas

    expected = "mkl" if blas.find_mkl() and os.environ.get(blas.ENV_VAR) != "mlx" else "mlx"
    assert {(run["engine"], run["blas"]) for run in report["runs"]} == {
        ("openharmony", expected), ("mlx-lm", "mlx")}
    machine = report["settings"]["machine"]
    assert machine["cores"] >= 1 and machine["ram_bytes"] > 0 and machine["mlx"] == mx.__version__


def test_ratios_follow_from_the_figures(report):
    results, ratios = report["results"], report["ratios"]
    for dtype in ("float32", "bfloat16"):
        ours, theirs = results[f"openharmony/{dtype}"], results[f"mlx-lm/{dtype}"]
        row = ratios[f"openharmony/{dtype} vs mlx-lm/{dtype}"]
        for field in ("load_s", "prefill_tok_s", "decode_tok_s", "vm_hwm_bytes"):
            assert math.isclose(row[field], ours[field] / theirs[field]), (dtype, field)
        for entry in (ours, theirs):
            # float32 on the native kernels reads the dense weights as stored (bf16).
            native = entry["kernels"] == ["native"]
            basis = "stored dense" if native else dtype
            assert entry["ceiling_basis"] == basis
            ceiling = report["bandwidth_bytes_s"] / report["decode_step_bytes"][basis]["total"]
            assert math.isclose(report["ceiling_decode_tok_s"][basis], ceiling)
            assert math.isclose(entry["ceiling_share"], entry["decode_tok_s"] / ceiling)
    assert ratios["openharmony/float32 vs mlx-lm/float32"]["prompt_tokens"] == [12, 12]
    defaults = ratios["defaults: openharmony/float32 vs mlx-lm/bfloat16"]
    assert defaults["prompt_tokens"] == [12, 7]
    assert math.isclose(defaults["decode_tok_s"], results["openharmony/float32"]["decode_tok_s"]
                        / results["mlx-lm/bfloat16"]["decode_tok_s"])


def test_both_engines_decode_the_same_greedy_tokens_in_float32(report):
    # Same weights, same prompt, greedy: a different token means different work was timed.
    ours, theirs = (next(r["tokens"] for r in report["runs"]
                         if r["engine"] == engine and r["dtype"] == "float32")
                    for engine in ("openharmony", "mlx-lm"))
    assert ours == theirs
    assert report["same_greedy_tokens"]["float32"] == {"leading_equal": 5, "of": 5}


def test_decode_step_bytes_match_the_headers(bench, tiny_checkpoint, tiny_config):
    c = tiny_config
    stored = header_bytes(tiny_checkpoint)
    context = 20  # longer than the tiny sliding window of 8
    expected = {"attention": 0, "router": 0, "experts": 0, "norms": 0}
    for name, size in stored.items():
        if ".self_attn." in name:
            expected["attention"] += size
        elif ".mlp.router." in name:
            expected["router"] += size
        elif ".mlp.experts." in name:  # the 4 chosen experts of 8
            expected["experts"] += size * c.num_experts_per_tok // c.num_local_experts
        elif "layernorm" in name or name == "model.norm.weight":
            expected["norms"] += size
    expected["lm_head"] = stored["lm_head.weight"]
    expected["embedding"] = stored["model.embed_tokens.weight"] // c.vocab_size
    kv_positions = sum(min(context, c.sliding_window) if t == "sliding_attention" else context
                       for t in c.layer_types)
    expected["kv_cache"] = 2 * kv_positions * c.num_key_value_heads * c.head_dim * 2  # bf16
    expected["total"] = sum(expected.values())
    assert bench.decode_step_bytes(tiny_checkpoint, context, None) == expected

    in_float32 = bench.decode_step_bytes(tiny_checkpoint, context, 4)
    # Every dense tensor of the tiny checkpoint is bf16: float32 doubles them; the MXFP4
    # blocks and scales (uint8) stay, the expert biases double.
    expert_bias = sum(size for name, size in stored.items() if name.endswith("_bias")
                      and ".experts." in name) * c.num_experts_per_tok // c.num_local_experts
    assert in_float32["attention"] == 2 * expected["attention"]
    assert in_float32["lm_head"] == 2 * expected["lm_head"]
    assert in_float32["kv_cache"] == 2 * expected["kv_cache"]
    assert in_float32["experts"] == expected["experts"] + expert_bias


def test_read_bandwidth_is_a_plausible_rate(bench):
    rate = bench.read_bandwidth(nbytes=1 << 24, tries=2)
    assert 1e8 < rate < 1e13  # between 0.1 GB/s and 10 TB/s


def test_profile_computes_the_models_own_forward(bench, tiny_checkpoint):
    from openharmony.load import load_model

    model = load_model(tiny_checkpoint, dtype="float32")
    prompt = bench.prompt_ids(9, model.config.vocab_size)
    seconds: dict = {}
    caches = model.make_cache()
    token, logits = bench.forward_by_part(model, mx.array([prompt]), caches, seconds)
    expected = model(mx.array([prompt]))[:, -1:]
    # The profile's lm_head runs on the last position only (a matrix-vector product), the
    # model's on all of them (a GEMM): with MKL as the BLAS the two round differently, by up
    # to ~1e-6 on logits of size ~3. Any mistake in the parts moves them by far more.
    assert mx.allclose(logits, expected, rtol=1e-5, atol=1e-5).item()
    assert token == int(mx.argmax(expected[0, -1]))
    # And a decode step on the caches it filled, against the full forward of prompt + token.
    next_token, logits = bench.forward_by_part(model, mx.array([[token]]), caches, seconds)
    expected = model(mx.array([prompt + [token]]))[:, -1:]
    assert mx.allclose(logits, expected, rtol=1e-5, atol=1e-5).item()
    assert next_token == int(mx.argmax(expected[0, -1]))
    assert set(seconds) - {"_last"} == set(bench.PARTS)
    assert all(seconds[part] > 0 for part in bench.PARTS)


def test_profile_mode_writes_every_part(tiny_checkpoint, tmp_path):
    out = tmp_path / "profile.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--profile", "--checkpoint", str(tiny_checkpoint),
         "--prompt-tokens", "10", "--decode-tokens", "3", "--profile-dtypes", "float32",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())["float32"]
    for phase in ("prefill_s", "decode_step_s"):
        assert set(result[phase]) == {"embedding", "attention", "router", "experts", "lm_head",
                                      "sampling"}
    assert sum(result["decode_step_s"].values()) <= result["decode_step_barriered_s"]
    assert "| experts |" in done.stdout


def test_reuse_carries_the_other_configurations_over(report_path, tiny_checkpoint, tmp_path):
    out = tmp_path / "again.json"
    run_bench(tiny_checkpoint, out, "--configs", "openharmony/float32", "--reuse",
              str(report_path))
    again, earlier = json.loads(out.read_text()), json.loads(report_path.read_text())
    fresh = [r for r in again["runs"] if "reused_from" not in r]
    reused = [r for r in again["runs"] if "reused_from" in r]
    assert [(r["engine"], r["dtype"]) for r in fresh] == [("openharmony", "float32")]
    assert sorted((r["engine"], r["dtype"], r["load_s"]) for r in reused) == sorted(
        (r["engine"], r["dtype"], r["load_s"]) for r in earlier["runs"]
        if (r["engine"], r["dtype"]) != ("openharmony", "float32"))
    assert set(again["results"]) == set(earlier["results"])

    # Runs of other token counts cannot be mixed in.
    refused = subprocess.run(
        [sys.executable, str(SCRIPT), "--checkpoint", str(tiny_checkpoint), "--repeats", "1",
         "--prompt-tokens", "12", "--bf16-prompt-tokens", "7", "--decode-tokens", "4",
         "--configs", "openharmony/float32", "--reuse", str(report_path)],
        capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "--reuse" in refused.stderr


def test_mlx_lm_float32_casts_every_floating_parameter(bench, tiny_checkpoint):
    from mlx.utils import tree_flatten

    for dtype, floating in (("float32", mx.float32), ("bfloat16", mx.bfloat16)):
        model = bench._load_mlx_lm(tiny_checkpoint, dtype)
        dtypes = {value.dtype for _, value in tree_flatten(model.parameters())}
        assert dtypes == {floating, mx.uint32, mx.uint8}, dtype  # MXFP4 stays packed


def test_llama_cpp_is_compared_beside_openharmony(tiny_checkpoint, tmp_path):
    # llama-bench's part is a stand-in that prints a real llama-bench output (tests/data/), so
    # this checks what bench.py makes of it: the runs, the ratios and the ceiling shares.
    from test_llama_cpp import SAMPLE, write_stand_in

    binary = write_stand_in(tmp_path / "llama-bench")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "bench.json"
    done = run_bench(tiny_checkpoint, out, "--configs", "openharmony/float32",
                     "llama.cpp/bfloat16", "llama.cpp-no-repack/bfloat16",
                     "--prompt-tokens", "512", "--prefill-tokens", "128", "512",
                     "--decode-tokens", "32", "--llama-cpp", str(gguf),
                     "--llama-bench", str(binary))
    report = json.loads(out.read_text())
    sample = json.loads(SAMPLE.read_text())
    sample_rate = {(t["n_prompt"], t["n_gen"]): t["avg_ts"] for t in sample}

    # Each llama.cpp engine ran llama-bench once, on the GGUF, openharmony's thread count,
    # the prefill lengths and the decode length asked, repacked or not.
    calls = [json.loads(line) for line in Path(f"{binary}.args").read_text().splitlines()]
    threads = report["settings"]["threads"]
    assert sorted(c[c.index("--repack") + 1] for c in calls) == ["0", "1"]
    for call in calls:
        options = dict(zip(call[::2], call[1::2]))
        assert (options["-m"], options["-t"], options["-p"], options["-n"]) == (
            str(gguf), str(threads), "128,512", "32")

    results = report["results"]
    for engine in ("llama.cpp", "llama.cpp-no-repack"):
        entry = results[f"{engine}/bfloat16"]
        assert entry["decode_tok_s"] == sample_rate[0, 32]
        assert entry["prefill_tok_s"] == sample_rate[512, 0]
        assert entry["prefill_tok_s_at"] == {"128": sample_rate[128, 0],
                                             "512": sample_rate[512, 0]}
        assert entry["load_s"] > 0 and entry["vm_hwm_bytes"] > 0
        assert entry["ceiling_basis"] == "bfloat16"  # MXFP4 experts, bf16 dense: as stored
        assert math.isclose(entry["ceiling_share"], entry["decode_tok_s"]
                            / report["ceiling_decode_tok_s"]["bfloat16"])
    ours = results["openharmony/float32"]
    assert set(ours["prefill_tok_s_at"]) == {"128", "512"}
    assert all(v > 0 for v in ours["prefill_tok_s_at"].values())
    for engine in ("llama.cpp", "llama.cpp-no-repack"):
        row = report["ratios"][f"openharmony/float32 vs {engine}/bfloat16"]
        assert math.isclose(row["decode_tok_s"], ours["decode_tok_s"] / sample_rate[0, 32])
        for n in (128, 512):
            assert math.isclose(row["prefill_tok_s_at"][str(n)],
                                ours["prefill_tok_s_at"][str(n)] / sample_rate[n, 0])
    assert "| llama.cpp-no-repack | bfloat16 (default) | ggml |" in done.stdout
    assert "| openharmony/float32 vs llama.cpp/bfloat16 |" in done.stdout
