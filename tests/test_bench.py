"""openharmony.bench against facts it does not compute itself: the page cache as util-linux's
`fincore` reports it, peak memory of a process that holds a known allocation, the bytes of a
decode step from the safetensors headers, a read rate timed here, the crippled-anchor rule on
figures chosen here, and a whole benchmark on the tiny checkpoint with llama-bench stand-ins
that print real llama-bench output."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openharmony.bench import harness, report, runner, traffic
from openharmony.config import ModelConfig

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"


def fincore_bytes(file: Path) -> int:
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(file)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


@pytest.mark.skipif(shutil.which("fincore") is None, reason="no fincore (util-linux)")
def test_eviction_empties_the_page_cache_as_fincore_sees_it(tmp_path):
    file = tmp_path / "data.bin"
    file.write_bytes(os.urandom(16 << 20))
    with open(file, "rb") as f:
        f.read()  # now cached (written and read back)
    cached = fincore_bytes(file)
    assert cached > 8 << 20  # the kernel may drop a little of it on its own
    assert abs(harness.resident_bytes(file) - cached) <= 1 << 20
    harness.evict([file])
    assert fincore_bytes(file) == 0
    assert harness.resident_bytes(file) == 0
    with open(file, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)  # no readahead racing us
        f.read(4 << 20)  # a quarter back
    assert harness.resident_bytes(file) == fincore_bytes(file) == 4 << 20


def test_run_measured_reports_the_peak_memory_of_the_process():
    held = 300 << 20
    script = (f"import sys; b = bytearray({held}); b[::4096] = b'\\1' * len(b[::4096]); "
              "print('out'); print('err', file=sys.stderr)")
    # From a small parent, as scripts/bench.py is: a forked child's peak counts the pages it
    # shares with its parent until it execs, and this test process has grown large.
    measure = ("import json, sys; from openharmony.bench import harness; "
               f"print(json.dumps(harness.run_measured([sys.executable, '-c', {script!r}])))")
    done = subprocess.run([sys.executable, "-c", measure], capture_output=True, text=True,
                          check=True)
    out, err, peak = json.loads(done.stdout)
    assert out == "out\n" and err == "err\n"
    assert held <= peak < held + (200 << 20)  # the interpreter itself is a few tens of MB
    with pytest.raises(RuntimeError, match="exit status 3(.|\n)*last words"):
        harness.run_measured([sys.executable, "-c",
                              "import sys; print('last words', file=sys.stderr); sys.exit(3)"])


def test_read_bandwidth_is_bytes_over_the_best_seconds(monkeypatch):
    # A clock where the k-th measured pass takes (k + 1) * 10 ms: the best is the first.
    ticks = iter([0.0, 0.01, 1.0, 1.02, 2.0, 2.03])
    monkeypatch.setattr(harness.time, "perf_counter", lambda: next(ticks))
    nbytes = 8 << 20
    assert harness.read_bandwidth(nbytes, threads_=2, tries=3) == pytest.approx(nbytes / 0.01)


def test_read_bandwidth_is_a_plausible_rate():
    rate = harness.read_bandwidth(1 << 24, tries=2)
    assert 1e8 < rate < 1e13  # between 0.1 GB/s and 10 TB/s: bytes per second, not GB or bits


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


def test_step_bytes_match_the_headers(tiny_checkpoint, tiny_config):
    c = tiny_config
    stored = header_bytes(tiny_checkpoint)
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
    step = traffic.StepBytes.of(tiny_checkpoint)
    assert step.weights == expected
    depth = 20  # longer than the tiny sliding window of 8
    positions = sum(min(depth, c.sliding_window) if t == "sliding_attention" else depth
                    for t in c.layer_types)
    per_position = 2 * c.num_key_value_heads * c.head_dim  # keys and values
    assert step.total(depth, "bf16") == sum(expected.values()) + positions * per_position * 2
    assert step.total(depth, "float") == sum(expected.values()) + positions * per_position * 4
    assert step.total(0, "8bit") == sum(expected.values())


def _decode(engine: str, tok_s: float, depth: int = 0, **extra) -> dict:
    return {"engine": engine, "kind": "decode", "tokens": 16, "depth": depth, "tok_s": tok_s,
            "peak_rss_bytes": 1, **extra}


def test_an_anchor_under_half_the_machines_bandwidth_is_suspect(tiny_checkpoint):
    step = traffic.StepBytes.of(tiny_checkpoint)
    bytes0 = step.total(0, "f16")
    machine = 1e11
    # llama.cpp reads at 30% of the machine, ik_llama.cpp at 80%: figures chosen here.
    result = {"bandwidth_bytes_s": machine, "measurements": [
        _decode("openharmony", 0.2 * machine / step.total(0, "float"), kv="float"),
        _decode("llama.cpp", 0.3 * machine / bytes0),
        _decode("ik_llama.cpp", 0.8 * machine / bytes0),
        {"engine": "openharmony", "kind": "prefill", "tokens": 512, "depth": 0, "tok_s": 10.0,
         "kv": "float", "peak_rss_bytes": 1},
        {"engine": "llama.cpp", "kind": "prefill", "tokens": 512, "depth": 0, "tok_s": 40.0,
         "peak_rss_bytes": 1},
        {"engine": "ik_llama.cpp", "kind": "prefill", "tokens": 512, "depth": 0, "tok_s": 20.0,
         "peak_rss_bytes": 1}]}
    found = report.annotate(result, step)
    shares = {m["engine"]: m["machine_share"] for m in found if m["kind"] == "decode"}
    assert shares == pytest.approx({"openharmony": 0.2, "llama.cpp": 0.3, "ik_llama.cpp": 0.8})
    lines = report.ratio_lines(found)
    clean = [line for line in lines if "SUSPECT" not in line]
    assert clean == ["ratio prefill 512: openharmony/ik_llama.cpp = 0.50x",
                     "ratio decode d0: openharmony/ik_llama.cpp = 0.25x"]
    suspect = [line for line in lines if "SUSPECT" in line]
    assert len(suspect) == 2 and all("openharmony/llama.cpp = SUSPECT (crippled anchor"
                                     in line and "30%" in line for line in suspect)


def write_stand_in(path: Path, sample: Path) -> Path:
    """An executable that prints `sample` (a real llama-bench JSON output) as llama-bench
    does, and records its arguments next to itself."""
    path.write_text(f"""#!{sys.executable}
import json, sys
open({str(path) + '.args'!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")
sys.stdout.write(open({str(sample)!r}).read())
""")
    path.chmod(0o755)
    return path


@pytest.mark.skipif(shutil.which("fincore") is None, reason="no fincore (util-linux)")
def test_a_benchmark_evicts_every_engines_files_before_each_run(tiny_checkpoint, tmp_path,
                                                                monkeypatch):
    # A private copy: other tests' models may hold the shared one mapped (unevictable).
    checkpoint = shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(os.urandom(1 << 20))
    binary = write_stand_in(tmp_path / "llama-bench", DATA / "llama_bench_tiny.json")
    plan = runner.Plan(checkpoint=checkpoint, engines=["openharmony", "llama.cpp"],
                       prefill=[8], depths=[0, 12], decode_tokens=4, gguf=gguf,
                       binaries={"llama.cpp": binary}, bandwidth_bytes=1 << 22)
    files = plan.files()
    assert set(files) == {*checkpoint.glob("*.safetensors"), gguf}
    seen = []

    def run_one(engine, what, log):
        # What the page cache holds of every engine's files when a run starts, by fincore;
        # then this run reads them all back in, as a run that leaves its files cached does.
        seen.append(sum(fincore_bytes(f) for f in files))
        for f in files:
            f.read_bytes()
        return real_run_one(engine, what, log)

    real_run_one = runner.run_one
    monkeypatch.setattr(runner, "run_one", run_one)
    result = runner.benchmark(plan, log=lambda line: None)
    assert seen == [0, 0, 0]  # openharmony, llama.cpp prefill, llama.cpp decode
    assert [r["resident_before_bytes"] for r in result["runs"]] == [0, 0, 0]

    ours = {(m["kind"], m["tokens"], m["depth"]) for m in result["measurements"]
            if m["engine"] == "openharmony"}
    assert ours == {("prefill", 8, 0), ("decode", 4, 0), ("decode", 4, 12)}
    assert all(m["tok_s"] > 0 and m["peak_rss_bytes"] > 0 for m in result["measurements"])
    calls = [json.loads(line) for line in Path(f"{binary}.args").read_text().splitlines()]
    assert [c[c.index("-p") + 1] for c in calls] == ["8", "0"]
    # The sample's rates, as llama-bench printed them, are what the report divides by.
    sample = {(t["n_prompt"], t["n_gen"]): t["avg_ts"]
              for t in json.loads((DATA / "llama_bench_tiny.json").read_text())}
    theirs = [m for m in result["measurements"] if m["engine"] == "llama.cpp"]
    assert {(m["kind"], m["tokens"]): m["tok_s"] for m in theirs} == {
        ("prefill", 128): sample[128, 0], ("prefill", 512): sample[512, 0],
        ("decode", 32): sample[0, 32]}
    assert result["cpu"] and result["threads"] == harness.threads()
    assert ModelConfig.from_path(Path(result["checkpoint"])).num_hidden_layers == 2
    assert math.isfinite(result["bandwidth_bytes_s"])


def test_parts_are_timed_through_the_models_own_hook(tiny_checkpoint):
    import mlx.core as mx

    from openharmony.bench import parts
    from openharmony.load import load_model
    from openharmony.model import PARTS

    assert set(parts.GROUP) == set(PARTS)  # every part the model reports has a group
    model = load_model(tiny_checkpoint, dtype="float32")
    seconds: dict = {}
    prompt = mx.array([harness.prompt_ids(9, model.config.vocab_size)])
    logits = parts.timed_forward(model, prompt, model.make_cache(), seconds)
    assert logits.shape == (1, 1, model.config.vocab_size)
    assert set(seconds) == set(parts.GROUPS) and all(s > 0 for s in seconds.values())
