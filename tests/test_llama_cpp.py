"""The anchors without building them: a real llama-bench JSON output (captured on this
project's machine, tests/data/) read as measurements, the commands against llama-bench's
documented options, and the tokenizer given to the converter, against tiktoken's
o200k_harmony."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

from openharmony.bench import llama_bench, llama_build

REPO = Path(__file__).resolve().parent.parent
# llama-bench -p 128,512 -n 32 -r 2 --repack 1 -t 2 -o json as it printed it (this build, on the
# GGUF that `llama_cpp.py convert` made of the tiny-vocab preset, 2026-12-01).
SAMPLE = REPO / "tests" / "data" / "llama_bench_tiny.json"
# llama-bench -p 0 -n 16 -d 0,64 -fa 1 --repack 1 -r 1 -t 2 -o json (llama.cpp 0c1e570).
DEPTH_SAMPLE = REPO / "tests" / "data" / "llama_bench_depth_tiny.json"
VOCAB = Path(os.environ.get("OPENHARMONY_VOCAB", "/work/shared/vocab/o200k_base.tiktoken"))


def test_parse_reads_every_test_of_a_real_output():
    text = SAMPLE.read_text()
    tests = json.loads(text)
    assert [(t["n_prompt"], t["n_gen"]) for t in tests] == [(128, 0), (512, 0), (0, 32)]
    # avg_ts is llama-bench's mean over its repetitions of tokens / seconds of each one.
    for test in tests:
        tokens = test["n_prompt"] + test["n_gen"]
        rates = [tokens / (ns / 1e9) for ns in test["samples_ns"]]
        assert test["avg_ts"] == pytest.approx(statistics.mean(rates), rel=1e-5)
    found = llama_bench.parse("llama.cpp", text)
    assert [(m["kind"], m["tokens"], m["depth"], m["tok_s"]) for m in found] == [
        ("prefill", 128, 0, tests[0]["avg_ts"]), ("prefill", 512, 0, tests[1]["avg_ts"]),
        ("decode", 32, 0, tests[2]["avg_ts"])]
    assert llama_bench.build_info(text)["n_threads"] == tests[0]["n_threads"]


def test_parse_reads_depths_of_both_anchors():
    # llama.cpp: `-p 0 -n 16 -d 0,64` as it printed it (the tiny-vocab GGUF, 2026-12-06).
    text = DEPTH_SAMPLE.read_text()
    tests = json.loads(text)
    assert [(m["kind"], m["tokens"], m["depth"], m["tok_s"])
            for m in llama_bench.parse("llama.cpp", text)] == [
        ("decode", 16, 0, tests[0]["avg_ts"]), ("decode", 16, 64, tests[1]["avg_ts"])]
    test = json.loads(SAMPLE.read_text())[2]
    # ik_llama.cpp's -gp 2048,32: a test named tg32@pp2048 with both counts and no n_depth.
    gp = {k: v for k, v in test.items() if k != "n_depth"}
    gp.update(n_prompt=2048, test="tg32@pp2048")
    (m,) = llama_bench.parse("ik_llama.cpp", json.dumps([gp]))
    assert (m["kind"], m["tokens"], m["depth"]) == ("decode", 32, 2048)
    combined = dict(test, n_prompt=512, test="pp512+tg32")
    with pytest.raises(ValueError, match="combined"):
        llama_bench.parse("llama.cpp", json.dumps([combined]))


def test_commands_use_each_anchors_options():
    binary, gguf = Path("/x/llama-bench"), Path("/m.gguf")
    # llama-bench's usage: -m model, -t threads, -p/-n comma lists of prompt and generation
    # lengths, -d depths, -fa flash attention, --repack <0|1>, -r repetitions, -o format.
    assert llama_bench.prefill_command("llama.cpp", binary, gguf, threads=2,
                                       lengths=[512, 2048]) == [
        "/x/llama-bench", "-m", "/m.gguf", "-t", "2", "-fa", "1", "--repack", "1",
        "-p", "512,2048", "-n", "0", "-r", "1", "-o", "json"]
    assert llama_bench.decode_command("llama.cpp", binary, gguf, threads=2, depths=[0, 2048],
                                      repetitions=2) == [
        "/x/llama-bench", "-m", "/m.gguf", "-t", "2", "-fa", "1", "--repack", "1",
        "-p", "0", "-n", "16", "-d", "0,2048", "-r", "2", "-o", "json"]
    # ik_llama.cpp: -rtr run-time repacking, -fmoe fused MoE; no -d, but -gp <prompt,gen>.
    assert llama_bench.decode_command("ik_llama.cpp", binary, gguf, threads=2,
                                      depths=[0, 2048, 8192]) == [
        "/x/llama-bench", "-m", "/m.gguf", "-t", "2", "-fa", "1", "-rtr", "1", "-fmoe", "1",
        "-p", "0", "-n", "16", "-gp", "2048,16", "-gp", "8192,16", "-r", "1", "-o", "json"]
    no_zero = llama_bench.decode_command("ik_llama.cpp", binary, gguf, threads=1, depths=[512])
    assert no_zero[no_zero.index("-n") + 1] == "0"


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    if not VOCAB.is_file():
        pytest.skip(f"no o200k_base vocabulary at {VOCAB}")
    folder = tmp_path_factory.mktemp("tokenizer")
    llama_build.write_tokenizer(folder, VOCAB)
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


def test_converter_input_links_the_checkpoint(tiny_sharded_checkpoint,
                                              tokenizer_folder, tmp_path):
    # A checkpoint with a tokenizer of its own: the converter gets that one.
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    for file in [*tiny_sharded_checkpoint.iterdir(), *tokenizer_folder.iterdir()]:
        (checkpoint / file.name).symlink_to(file)
    folder = llama_build.converter_input(checkpoint, tmp_path / "input", VOCAB)
    names = {f.name for f in folder.iterdir()}
    assert names == {f.name for f in checkpoint.iterdir()}
    for name in names:
        assert (folder / name).resolve() == (checkpoint / name).resolve()
    # Again into the same folder: the links are replaced, not refused.
    assert llama_build.converter_input(checkpoint, folder, VOCAB) == folder


def test_convert_command_keeps_the_dense_dtype():
    command = llama_build.convert_command(Path("/tree"), Path("/in"), Path("/out.gguf"))
    assert command[1:] == ["/tree/convert_hf_to_gguf.py", "/in", "--outfile", "/out.gguf",
                           "--outtype", "bf16"]


def test_converter_input_writes_a_tokenizer_where_the_checkpoint_has_none(
        tiny_sharded_checkpoint, tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(llama_build, "write_tokenizer",
                        lambda folder, vocab: written.append((folder, vocab)))
    folder = llama_build.converter_input(tiny_sharded_checkpoint, tmp_path / "input", VOCAB)
    assert written == [(folder, VOCAB)]
    assert {f.name for f in folder.iterdir()} == {f.name for f in tiny_sharded_checkpoint.iterdir()}
