"""scripts/llama_cpp.py without llama.cpp: parsing a real llama-bench JSON output (captured on
this project's machine, tests/data/), the llama-bench command, the load time and peak memory
taken from a process, and the tokenizer given to the converter, against tiktoken's
o200k_harmony."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "llama_cpp.py"
# llama-bench -p 128,512 -n 32 -r 2 --repack 1 -t 2 -o json as it printed it (this build, on the
# GGUF that `llama_cpp.py convert` made of the tiny-vocab preset, 2026-12-01).
SAMPLE = REPO / "tests" / "data" / "llama_bench_tiny.json"
VOCAB = Path(os.environ.get("OPENHARMONY_VOCAB", "/work/shared/vocab/o200k_base.tiktoken"))


@pytest.fixture(scope="module")
def llama_cpp():
    spec = importlib.util.spec_from_file_location("llama_cpp_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_reads_every_test_of_a_real_output(llama_cpp):
    text = SAMPLE.read_text()
    parsed = llama_cpp.parse_bench_json(text)
    tests = json.loads(text)
    assert [(t["n_prompt"], t["n_gen"]) for t in tests] == [(128, 0), (512, 0), (0, 32)]
    # avg_ts is llama-bench's mean over its repetitions of tokens / seconds of each one.
    for test in tests:
        tokens = test["n_prompt"] + test["n_gen"]
        rates = [tokens / (ns / 1e9) for ns in test["samples_ns"]]
        assert test["avg_ts"] == pytest.approx(statistics.mean(rates), rel=1e-5)
    assert parsed["prefill_tok_s_at"] == {128: tests[0]["avg_ts"], 512: tests[1]["avg_ts"]}
    assert parsed["decode_tok_s"] == tests[2]["avg_ts"]
    assert parsed["decode_tokens"] == 32
    assert parsed["repack"] is True
    assert parsed["threads"] == tests[0]["n_threads"]
    assert parsed["model_size"] == tests[0]["model_size"]


def test_parse_refuses_tests_it_does_not_run(llama_cpp):
    tests = json.loads(SAMPLE.read_text())
    at_depth = [dict(tests[0], n_depth=512)]
    with pytest.raises(ValueError, match="depth"):
        llama_cpp.parse_bench_json(json.dumps(at_depth))
    combined = [dict(tests[0], n_gen=32)]
    with pytest.raises(ValueError, match="combined"):
        llama_cpp.parse_bench_json(json.dumps(combined))
    with pytest.raises(ValueError, match="more than one decode"):
        llama_cpp.parse_bench_json(json.dumps([tests[2], tests[2]]))


def test_bench_command_uses_llama_benchs_options(llama_cpp, tmp_path):
    command = llama_cpp.bench_command(Path("/x/llama-bench"), Path("/m.gguf"), threads=2,
                                      prompt_tokens=[128, 512], decode_tokens=32, repack=False)
    # llama-bench's usage: -m model, -t threads, -p/-n comma lists of prompt and generation
    # lengths, --repack <0|1>, -r repetitions, -o output format, --progress to stderr.
    assert command == ["/x/llama-bench", "-m", "/m.gguf", "-t", "2", "-p", "128,512",
                       "-n", "32", "--repack", "0", "-r", "1", "-o", "json", "--progress"]
    repacked = llama_cpp.bench_command(Path("b"), Path("m"), threads=1, prompt_tokens=[64],
                                       decode_tokens=8, repack=True, repetitions=3)
    assert repacked[repacked.index("--repack") + 1] == "1"
    assert repacked[repacked.index("-r") + 1] == "3"


def write_stand_in(path: Path, *, exit_status: int = 0, allocate_mb: int = 0,
                   sleep_s: float = 0.0) -> Path:
    """An executable that behaves as llama-bench does on its streams: the progress line after
    loading on stderr (after `sleep_s`), the sample JSON on stdout; it holds `allocate_mb`
    of touched memory, and records its arguments next to itself."""
    path.write_text(f"""#!{sys.executable}
import json, sys, time
open({str(path) + '.args'!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")
time.sleep({sleep_s})
print("llama-bench: benchmark 1/3: starting", file=sys.stderr, flush=True)
print("llama-bench: benchmark 1/3: warmup prompt run", file=sys.stderr, flush=True)
held = bytearray({allocate_mb} << 20)
for i in range(0, len(held), 4096):
    held[i] = 1
sys.stdout.write(open({str(SAMPLE)!r}).read())
print("stand-in done", file=sys.stderr)
sys.exit({exit_status})
""")
    path.chmod(0o755)
    return path


def test_run_bench_times_the_load_and_reads_the_peak_memory(llama_cpp, tmp_path):
    binary = write_stand_in(tmp_path / "llama-bench", allocate_mb=300, sleep_s=0.4)
    result = llama_cpp.run_bench([str(binary), "-o", "json"])
    assert result["load_s"] >= 0.4
    assert 300 << 20 <= result["vm_hwm_bytes"] < 2 << 30
    parsed = llama_cpp.parse_bench_json(SAMPLE.read_text())
    assert {k: result[k] for k in parsed} == parsed
    assert result["raw_json"] == json.loads(SAMPLE.read_text())


def test_run_bench_reports_a_failure_with_its_stderr(llama_cpp, tmp_path):
    binary = write_stand_in(tmp_path / "llama-bench", exit_status=3)
    with pytest.raises(RuntimeError, match="exit status 3(.|\n)*stand-in done"):
        llama_cpp.run_bench([str(binary)])


@pytest.fixture(scope="module")
def tokenizer_folder(llama_cpp, tmp_path_factory):
    if not VOCAB.is_file():
        pytest.skip(f"no o200k_base vocabulary at {VOCAB}")
    folder = tmp_path_factory.mktemp("tokenizer")
    llama_cpp.write_tokenizer(folder, VOCAB)
    return folder


def test_the_converters_tokenizer_encodes_as_o200k_harmony(tokenizer_folder):
    from transformers import AutoTokenizer

    from openharmony.tokenizer import load_tokenizer, o200k_harmony_definition

    ours = AutoTokenizer.from_pretrained(tokenizer_folder)
    reference = load_tokenizer(VOCAB).encoding  # tiktoken's own BPE
    texts = ["Hello world", "  indented\n\ttabs\r\n", "naïve café — 3.14159 x 1234567",
             "我想在apple工作", "I've 'RE told you: don't!", "🦙🦙 emoji\u200d🌫️"]
    for text in texts:
        assert ours.encode(text, add_special_tokens=False) == reference.encode(text), text
    # Every special id is a special token of ours named as tiktoken names it (id 200018 has
    # two names there, <|endofprompt|> and <|reserved_200018|>; one of them here).
    names = {}
    for name, token_id in o200k_harmony_definition()["special_tokens"].items():
        names.setdefault(token_id, set()).add(name)
    assert min(names) == reference.n_vocab - len(names) == 199998
    for token_id, tiktoken_names in names.items():
        assert ours.convert_ids_to_tokens(token_id) in tiktoken_names, token_id
    assert len(ours) == reference.n_vocab
    assert ours.encode("<|start|>user<|message|>", add_special_tokens=False) == \
        reference.encode("<|start|>user<|message|>", allowed_special="all")


def test_converter_input_links_the_checkpoint(llama_cpp, tiny_sharded_checkpoint,
                                              tokenizer_folder, tmp_path):
    # A checkpoint with a tokenizer of its own: the converter gets that one.
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    for file in [*tiny_sharded_checkpoint.iterdir(), *tokenizer_folder.iterdir()]:
        (checkpoint / file.name).symlink_to(file)
    folder = llama_cpp.converter_input(checkpoint, tmp_path / "input", VOCAB)
    names = {f.name for f in folder.iterdir()}
    assert names == {f.name for f in checkpoint.iterdir()}
    for name in names:
        assert (folder / name).resolve() == (checkpoint / name).resolve()
    # Again into the same folder: the links are replaced, not refused.
    assert llama_cpp.converter_input(checkpoint, folder, VOCAB) == folder


def test_convert_command_keeps_the_dense_dtype(llama_cpp):
    command = llama_cpp.convert_command(Path("/tree"), Path("/in"), Path("/out.gguf"))
    assert command[1:] == ["/tree/convert_hf_to_gguf.py", "/in", "--outfile", "/out.gguf",
                           "--outtype", "bf16"]


def test_converter_input_writes_a_tokenizer_where_the_checkpoint_has_none(
        llama_cpp, tiny_sharded_checkpoint, tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(llama_cpp, "write_tokenizer",
                        lambda folder, vocab: written.append((folder, vocab)))
    folder = llama_cpp.converter_input(tiny_sharded_checkpoint, tmp_path / "input", VOCAB)
    assert written == [(folder, VOCAB)]
    assert {f.name for f in folder.iterdir()} == {f.name for f in tiny_sharded_checkpoint.iterdir()}
