"""The `openharmony` CLI through typer's CliRunner, on tiny checkpoints with the real vocabulary.

Generation is checked on a "bigram" checkpoint: the tiny-vocab random checkpoint with its
attention and expert outputs zeroed, so the next token depends on the current token only, and
with embedding and lm_head rows set so that each token of a chosen chain is followed by the
next one. What the model says is then known in advance (from the chains below), independently
of the generation code: "The" -> " sky is blue." and, in a chat, "Hello".
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import reduce
from operator import getitem
from pathlib import Path

import pytest
import tiktoken
from safetensors import safe_open
from typer.testing import CliRunner

from hub_stand_in import HubStandIn
from openharmony.cli import app
from openharmony.cli.output import ReplyPrinter
from openharmony.memory import checkpoint_summary
from openharmony.errors import OpenHarmonyError
from openharmony.testing import bigram_chains, write_bigram_checkpoint
from openharmony.tokenizer import load_tokenizer

from vocab import VOCAB, requires_vocab

REPO_ROOT = Path(__file__).resolve().parents[1]




pytestmark = requires_vocab

RAW_TEXT = "The sky is blue."
CHAT_ANSWER = "Hello"


@pytest.fixture(autouse=True)
def vocab_env(monkeypatch):
    monkeypatch.setenv("OPENHARMONY_VOCAB", str(VOCAB))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB)


def cli_chains(tokenizer) -> dict[int, int]:
    """token -> the token the bigram model must produce after it."""
    special = tokenizer.special_ids
    raw = tokenizer.encode(RAW_TEXT) + [special["<|endoftext|>"]]
    # The reply to a harmony prompt, which ends with <|start|>assistant.
    chat = (tokenizer.encode("assistant") + [special["<|channel|>"]] + tokenizer.encode("final")
            + [special["<|message|>"]] + tokenizer.encode(CHAT_ANSWER) + [special["<|return|>"]])
    return bigram_chains(raw, chat)


@pytest.fixture(scope="module")
def bigram_checkpoint(tmp_path_factory, tiny_vocab_checkpoint, tokenizer) -> Path:
    return write_bigram_checkpoint(tiny_vocab_checkpoint,
                                   tmp_path_factory.mktemp("bigram") / "hf",
                                   cli_chains(tokenizer))


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def assert_one_line_error(result, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def stats_lines(stderr: str) -> list[tuple[int, int, int]]:
    """(prompt tokens, reused prompt tokens, generated tokens) of each --verbose stats line."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("prompt: "):
            words = line.split()
            found.append((int(words[1]), int(words[3].lstrip("(")),
                          int(words[words.index("generation:") + 1])))
    return found


# -- generate ------------------------------------------------------------------------------


def test_generate_raw_streams_the_continuation(bigram_checkpoint):
    result = run("generate", "The", "--model", str(bigram_checkpoint), "--temperature", "0",
                 "--max-tokens", "20", "--verbose")
    assert result.exit_code == 0, result.output
    assert result.stdout == " sky is blue.\n"
    # 1 prompt token; " sky", " is", " blue", "." and <|endoftext|> (which ends it, no text).
    assert stats_lines(result.stderr) == [(1, 0, 5)]


def test_generate_max_tokens_cuts_the_text(bigram_checkpoint):
    result = run("generate", "The", "-m", str(bigram_checkpoint), "--temperature", "0",
                 "--max-tokens", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout == " sky is\n"


def test_generate_chat_prints_the_final_answer(bigram_checkpoint):
    for extra in ([], ["--show-reasoning", "--reasoning-effort", "high", "--system", "You are "
                       "terse.", "--developer", "Answer briefly.", "--dtype", "float32"]):
        result = run("generate", "--chat", "Hi!", "-m", str(bigram_checkpoint),
                     "--temperature", "0", *extra)
        assert result.exit_code == 0, result.output
        assert result.stdout == CHAT_ANSWER + "\n"


def test_generate_sampling_options_are_accepted(bigram_checkpoint):
    # The bigram logits (80 for the right token, 0 elsewhere) make every filter keep it alone.
    result = run("generate", "The", "-m", str(bigram_checkpoint), "--temperature", "0.7",
                 "--top-p", "0.9", "--top-k", "5", "--min-p", "0.1", "--repetition-penalty",
                 "1.1", "--presence-penalty", "0.5", "--frequency-penalty", "0.5", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == " sky is blue.\n"


def test_precision_reaches_load_model_from_every_command(bigram_checkpoint, monkeypatch):
    # --precision fast is handed to load_model (which runs the model: the bigram's answer is
    # unchanged), and a bad value is refused by typer with the choices.
    import openharmony.load as load_module

    seen = []
    real = load_module.load_model

    def spy(*args, **kwargs):
        seen.append(kwargs.get("precision"))
        return real(*args, **kwargs)
    monkeypatch.setattr(load_module, "load_model", spy)
    result = run("generate", "The", "-m", str(bigram_checkpoint), "--temperature", "0",
                 "--precision", "fast")
    assert result.exit_code == 0, result.output
    assert result.stdout == " sky is blue.\n" and seen == ["fast"]
    result = run("chat", "-m", str(bigram_checkpoint), "--precision", "exact", input="")
    assert seen[-1] == "exact", result.output
    for command in ("generate", "chat", "serve"):
        assert "--precision" in run(command, "--help").stdout
    result = run("generate", "The", "-m", str(bigram_checkpoint), "--precision", "int4")
    assert result.exit_code == 2 and "exact" in result.stderr and "fast" in result.stderr


# -- chat ----------------------------------------------------------------------------------


def test_chat_turns_reuse_the_prompt_and_reset_forgets(bigram_checkpoint):
    script = "Hi!\nAnd again?\n/reset\nAfter the reset.\n/exit\nNever read.\n"
    result = run("chat", "-m", str(bigram_checkpoint), "--temperature", "0", "--verbose",
                 input=script)
    assert result.exit_code == 0, result.output
    assert result.stdout.count(CHAT_ANSWER) == 3
    turns = stats_lines(result.stderr)
    assert len(turns) == 3
    (first_prompt, first_reused, first_generated), second, third = turns
    assert first_reused == 0 and first_generated == 5  # <|channel|> final <|message|> Hello <|return|>
    # Turn 2's prompt holds turn 1 and its answer; at least turn 1's prompt is not recomputed.
    assert second[0] > first_prompt + 4
    assert second[1] >= first_prompt - 1
    # After /reset the conversation starts over: nothing to reuse, and the prompt is short again.
    assert third[1] == 0
    assert third[0] < second[0]
    assert "(new conversation)" in result.stderr


def test_chat_ends_at_end_of_input(bigram_checkpoint):
    result = run("chat", "-m", str(bigram_checkpoint), "--temperature", "0", input="Hi!\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.count(CHAT_ANSWER) == 1


def test_ctrl_c_stops_the_answer_not_the_chat(bigram_checkpoint, monkeypatch):
    generate_module = importlib.import_module("openharmony.generate")  # not the exported function

    real = generate_module.stream_decoding
    calls = []

    def interrupted_once(*args, **kwargs):
        calls.append(1)
        for i, chunk in enumerate(real(*args, **kwargs)):
            if len(calls) == 1 and i == 2:
                raise KeyboardInterrupt
            yield chunk

    fresh = run("chat", "-m", str(bigram_checkpoint), "--temperature", "0", "--verbose",
                input="Hi!\n")
    monkeypatch.setattr(generate_module, "stream_decoding", interrupted_once)
    result = run("chat", "-m", str(bigram_checkpoint), "--temperature", "0", "--verbose",
                 input="Hi!\nHi!\n")
    assert result.exit_code == 0, result.output
    assert "\nstopped\n" in result.stderr
    assert len(calls) == 2
    assert result.stdout.count(CHAT_ANSWER) == 1  # the second turn's answer
    # The stopped turn was forgotten: the second turn's prompt is a first turn's prompt.
    assert [turn[0] for turn in stats_lines(result.stderr)] == [
        turn[0] for turn in stats_lines(fresh.stderr)]


def test_reply_printer_hides_reasoning_and_shows_tool_calls(tokenizer, capsys):
    """Events from the real harmony parser on a completion rendered by openai-harmony."""
    from openai_harmony import Message, Role

    from openharmony.chat import ChatStreamParser

    encoding = tokenizer.harmony()
    messages = [
        Message.from_role_and_content(Role.ASSISTANT, "Think first.").with_channel("analysis"),
        Message.from_role_and_content(Role.ASSISTANT, '{"city": "Paris"}')
        .with_channel("commentary").with_recipient("functions.get_weather"),
        Message.from_role_and_content(Role.ASSISTANT, "Let me look.").with_channel("commentary"),
        Message.from_role_and_content(Role.ASSISTANT, "It is sunny.").with_channel("final"),
    ]
    start = tokenizer.encode("<|start|>assistant", allow_special=True)
    completion = []
    for message in messages:
        tokens = encoding.render(message)
        assert tokens[:2] == start
        completion += tokens[2:] if not completion else tokens
    outputs = {}
    for show in (False, True):
        parser, printer = ChatStreamParser(tokenizer), ReplyPrinter(show)
        for token in completion:
            event = parser.feed(token)
            if event is not None:
                printer(event)
        printer.end()
        outputs[show] = capsys.readouterr().out
    # A commentary message without a recipient is a preamble meant for the user.
    assert outputs[False] == ('[tool call] functions.get_weather {"city": "Paris"}\n'
                              "Let me look.\nIt is sunny.\n")
    assert outputs[True] == ("[analysis] Think first.\n"
                             '[tool call] functions.get_weather {"city": "Paris"}\n'
                             "Let me look.\nIt is sunny.\n")


# -- info ----------------------------------------------------------------------------------


def expected_info(folder: Path, dtype_bytes: int, context: int) -> dict[str, int]:
    """The numbers `info` must print, computed here from the safetensors headers and config.
    (The weights' bytes as the model holds them: test_info_weight_memory_is_what_the_loaded_
    model_holds, against a loaded model.)"""
    config = json.loads((folder / "config.json").read_text())
    files = sorted(folder.glob("*.safetensors"))
    total = experts = embedding = 0
    for file in files:
        with safe_open(file, "pt") as f:
            for name in f.keys():
                tensor = f.get_slice(name)
                numel = math.prod(tensor.get_shape())
                if tensor.get_dtype() == "U8":  # MXFP4: two 4-bit weights per byte of blocks
                    count = 2 * numel if name.endswith("_blocks") else 0
                else:
                    count = numel
                total += count
                experts += count if ".experts." in name else 0
                embedding += count if "embed_tokens" in name else 0
    top_k, num_experts = config["num_experts_per_tok"], config["num_local_experts"]
    per_position = 2 * config["num_key_value_heads"] * config["head_dim"] * dtype_bytes
    kv = sum(per_position * (min(context, config["sliding_window"])
                             if kind == "sliding_attention" else context)
             for kind in config["layer_types"])
    return {
        "parameters": total,
        "active_parameters": total - embedding - experts + experts * top_k // num_experts,
        "bytes_on_disk": sum(f.stat().st_size for f in files),
        "kv_cache_bytes": kv,
    }


@pytest.mark.parametrize("dtype, dtype_bytes", [("float32", 4), ("bfloat16", 2)])
@pytest.mark.parametrize("fixture", ["tiny_vocab_checkpoint", "tiny_sharded_checkpoint"])
def test_info_numbers(request, fixture, dtype, dtype_bytes):
    folder = request.getfixturevalue(fixture)
    result = run("info", str(folder), "--dtype", dtype, "--context", "100", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    expected = expected_info(folder, dtype_bytes, context=100)
    assert {key: got[key] for key in expected} == expected
    assert got["memory_bytes"] == got["weight_bytes"] + expected["kv_cache_bytes"]
    config = json.loads((folder / "config.json").read_text())
    assert got["layers"] == config["num_hidden_layers"]
    assert got["vocab_size"] == config["vocab_size"]


def test_info_takes_the_model_as_an_option_too(tiny_checkpoint):
    positional = run("info", str(tiny_checkpoint), "--json")
    assert positional.exit_code == 0, positional.output
    for flag in ("--model", "-m"):
        assert steady_info(run("info", flag, str(tiny_checkpoint), "--json").stdout) == (
            steady_info(positional.stdout))
    line = assert_one_line_error(run("info", str(tiny_checkpoint), "-m", str(tiny_checkpoint)),
                                 2)
    assert "'MODEL' / '--model'" in line


def steady_info(text: str) -> dict:
    """info's JSON without what this machine's free memory moves (issue 20's "fits here")."""
    s = json.loads(text)
    for name in ("memory_limit", *(f"kv_cache.{v}.largest_context" for v in s["kv_cache"])):
        *path, last = name.split(".")
        reduce(getitem, path, s).pop(last)
    return s


def test_info_text(tiny_checkpoint):
    result = run("info", str(tiny_checkpoint), "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    from openharmony import runtime

    labels = [line.split("  ")[0] for line in result.stdout.splitlines()]
    assert labels == ["checkpoint", "layers", "experts", "sizes", "attention", "max context",
                      "parameters", "on disk", "memory", "KV cache", "fits here",
                      *(["in place"] if runtime.select().reads_mapped else [])]
    assert "8 per layer, 4 per token" in result.stdout
    assert "(bfloat16)" in result.stdout and "(8192 tokens)" in result.stdout


class _HeadersOnly:
    """A checkpoint as `info` sees it, from a config's tensor shapes (no file at all)."""

    def __init__(self, config):
        from openharmony.model import engine_shapes

        self.config, self.path, self.layout, self.files, self.total_bytes = (
            config, "-", "hf", (), 0)
        self._shapes = engine_shapes(config)

    def names(self):
        return list(self._shapes)

    def shape(self, name):
        return self._shapes[name]

    def dtype(self, name):
        import mlx.core as mx

        return mx.uint8 if name.endswith((".blocks", ".scales")) else mx.bfloat16

    def nbytes(self, name):
        return math.prod(self._shapes[name]) * self.dtype(name).size


@pytest.mark.parametrize("preset, total, active", [("20b", 20.91, 3.61),
                                                   ("120b", 116.83, 5.13)])
def test_parameter_counts_match_the_published_ones(preset, total, active):
    """OpenAI's model card: gpt-oss-20b 20.91B total / 3.61B active, 120b 116.83B / 5.13B."""
    from openharmony.testing.random_checkpoint import PRESETS

    summary = checkpoint_summary(_HeadersOnly(PRESETS[preset]), "bfloat16", 4096)
    assert round(summary["parameters"] / 1e9, 2) == total
    assert round(summary["active_parameters"] / 1e9, 2) == active


# -- errors --------------------------------------------------------------------------------


def test_missing_model_folder(tmp_path):
    line = assert_one_line_error(run("generate", "x", "-m", str(tmp_path / "nope")))
    assert line == f"error: model folder not found: {tmp_path / 'nope'}"
    assert_one_line_error(run("info", str(tmp_path / "nope")))


def test_hub_id_not_in_cache_for_info(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    line = assert_one_line_error(run("info", "someone/not-cached"))
    assert line == "error: someone/not-cached is not in the local Hugging Face cache"


@pytest.mark.parametrize("args, code, fragment", [
    (["--temperature", "-1"], 2, "Invalid value for '--temperature'"),
    (["--reasoning-effort", "extreme"], 2, "Invalid value for '--reasoning-effort'"),
    (["--dtype", "float8"], 2, "Invalid value for '--dtype'"),
    (["--max-tokens", "0"], 2, "Invalid value for '--max-tokens'"),
    (["--no-such-flag"], 2, "No such option: --no-such-flag"),
    (["--presence-penalty", "3"], 2, "presence_penalty must be in [-2, 2], got 3.0"),
    (["--temperature", "nan"], 2, "temperature must be a finite number, got nan"),
    (["--temp", "inf"], 2, "temperature must be a finite number, got inf"),
    (["--top-p", "nan"], 2, "top_p must be a finite number, got nan"),
    (["--top-p", "0"], 2, "top_p must be in (0, 1]"),
    (["--min-p", "-inf"], 2, "min_p must be a finite number, got -inf"),
    (["--repetition-penalty", "0"], 2, "repetition_penalty must be > 0"),
    (["--frequency-penalty", "nan"], 2, "frequency_penalty must be a finite number, got nan"),
    (["--temperature", "warm"], 2, "could not convert string to float: 'warm'"),
])
def test_bad_flag_values(tmp_path, args, code, fragment):
    # A model that does not exist: the flag must be refused before any loading.
    result = run("generate", "The", "-m", str(tmp_path / "no-model"), *args)
    line = assert_one_line_error(result, code)
    assert fragment in line


def test_unknown_command_and_missing_prompt():
    assert "No such command 'generat'" in assert_one_line_error(run("generat", "x"), 2)
    line = assert_one_line_error(run("generate"), 2)  # CliRunner's stdin: empty, not a terminal
    assert "'PROMPT'" in line and "stdin is empty" in line


# -- the conventions of mlx-lm and llama.cpp: -p/--prompt, --temp, -n, stdin ---------------


@pytest.mark.parametrize("args, stdin", [
    (["-p", "The"], None),
    (["--prompt", "The"], None),
    (["-"], "The\n"),  # trailing newlines are dropped, as "$(cat)" does
    ([], "The"),  # no prompt at all: stdin (a pipe)
])
def test_prompt_sources(bigram_checkpoint, args, stdin):
    result = run("generate", *args, "--model", str(bigram_checkpoint), "--temp", "0", "-n", "3",
                 input=stdin)
    assert result.exit_code == 0, result.output
    assert result.stdout == " sky is blue\n"


def test_prompt_given_twice_is_refused(tmp_path):
    line = assert_one_line_error(run("generate", "The", "-p", "A", "-m", str(tmp_path)), 2)
    assert "'PROMPT' / '--prompt'" in line and "both given" in line


def test_no_prompt_on_a_terminal_says_where_a_prompt_goes(monkeypatch):
    from openharmony.cli.generate import read_prompt

    class Terminal:
        def isatty(self):
            return True

        def read(self):
            raise AssertionError("a terminal must not be read as the prompt")

    monkeypatch.setattr(sys, "stdin", Terminal())
    with pytest.raises(Exception) as raised:
        read_prompt(None)
    message = raised.value.format_message()
    assert "'PROMPT'" in message and "--prompt" in message and "stdin" in message


def test_help_lists_the_aliases():
    result = run("generate", "--help")
    assert result.exit_code == 0, result.output
    for flag in ("-p, --prompt", "--temperature, --temp", "-n, --max-tokens", "-m, --model"):
        assert flag in result.stdout, flag
    # Readable: no line wider than a terminal's 80 columns, no markup boxes.
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "╭" not in result.stdout
    for command in ("info", "download"):
        assert "-m, --model" in run(command, "--help").stdout


def test_no_vocabulary_offline(bigram_checkpoint, monkeypatch, tmp_path):
    def no_network(url):
        raise ConnectionError(f"cannot reach {url}")

    monkeypatch.delenv("OPENHARMONY_VOCAB")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    line = assert_one_line_error(run("generate", "The", "-m", str(bigram_checkpoint)))
    assert "OPENHARMONY_VOCAB" in line and "--vocab" in line


def test_vocab_flag(bigram_checkpoint, monkeypatch, tmp_path):
    monkeypatch.delenv("OPENHARMONY_VOCAB")
    missing = tmp_path / "missing.tiktoken"
    line = assert_one_line_error(run("--vocab", str(missing), "generate", "The", "-m",
                                     str(bigram_checkpoint)))
    assert str(missing) in line
    result = run("--vocab", str(VOCAB), "generate", "The", "-m", str(bigram_checkpoint),
                 "--temperature", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout == " sky is blue.\n"


def test_corrupt_checkpoint(tiny_vocab_checkpoint, tmp_path):
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_vocab_checkpoint, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    for args in (["info", str(folder)], ["generate", "The", "-m", str(folder)]):
        line = assert_one_line_error(run(*args))
        assert "model.safetensors" in line


def test_debug_shows_the_traceback(tmp_path):
    result = run("--debug", "info", str(tmp_path / "nope"))
    assert result.exit_code == 1
    assert isinstance(result.exception, OpenHarmonyError)  # raised, not turned into a line
    assert result.stderr == ""


# -- entry points --------------------------------------------------------------------------


def test_python_dash_m_and_console_script(tiny_checkpoint):
    module = subprocess.run([sys.executable, "-m", "openharmony", "info", str(tiny_checkpoint)],
                            capture_output=True, text=True, timeout=120)
    assert module.returncode == 0, module.stderr
    assert module.stdout.startswith("checkpoint")
    error = subprocess.run([sys.executable, "-m", "openharmony", "info", "--context", "x"],
                           capture_output=True, text=True, timeout=120)
    assert error.returncode == 2
    assert error.stderr.count("\n") == 1 and error.stderr.startswith("error: ")
    script = Path(sys.executable).with_name("openharmony")
    if script.exists():  # installed with pip install -e .
        console = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                                 timeout=120)
        assert console.returncode == 0
        assert all(name in console.stdout for name in ("generate", "chat", "download", "info"))


def test_download_and_run_script(bigram_checkpoint):
    script = REPO_ROOT / "scripts" / "download_and_run.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "MODEL": str(bigram_checkpoint), "SKIP_INSTALL": "1",
           "VENV": str(Path(sys.executable).parent.parent),
           "OPENHARMONY_ARGS": "--temperature 0 --max-tokens 10", "OPENHARMONY_VOCAB": str(VOCAB)}
    result = subprocess.run(["bash", str(script), "Hi!"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == CHAT_ANSWER + "\n"


def test_chat_survives_an_answer_that_breaks_the_format(tiny_vocab_checkpoint, tokenizer,
                                                        tmp_path):
    """A model that answers <|return|> right after <|start|>assistant (no channel, no
    message): each turn reports it and the chat goes on until the end of input."""
    chains = {tokenizer.encode("assistant")[0]: tokenizer.special_ids["<|return|>"]}
    broken = write_bigram_checkpoint(tiny_vocab_checkpoint, tmp_path / "broken", chains)
    result = run("chat", "-m", str(broken), "--temperature", "0", input="Hi!\nAgain?\n")
    assert result.exit_code == 0, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert all(line.startswith("error: the completion is not in the harmony format")
               for line in errors)


def test_sigint_stops_the_answer_in_a_real_process(tiny_vocab_checkpoint):
    """Ctrl-C as a real signal: the random checkpoint would talk for 100000 tokens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "openharmony", "chat", "-m", str(tiny_vocab_checkpoint),
         "--max-tokens", "100000", "--temperature", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OPENHARMONY_VOCAB": str(VOCAB)})
    try:
        assert process.stderr.readline().startswith("Type a message")  # the model is loaded
        process.stdin.write("Hi!\n")
        process.stdin.flush()
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        process.stdin.write("/exit\n")
        process.stdin.flush()
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert stderr.splitlines()[-1] == "stopped"


def test_hub_id_is_downloaded_once_then_used_from_the_cache(bigram_checkpoint, tmp_path,
                                                            monkeypatch):
    from huggingface_hub import constants

    files = {p.name: p.read_bytes() for p in bigram_checkpoint.iterdir()}
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with HubStandIn("tests/bigram", files) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert "not in the local Hugging Face cache" in assert_one_line_error(
            run("info", "tests/bigram"))
        for _ in range(2):
            result = run("generate", "The", "-m", "tests/bigram", "--temperature", "0")
            assert result.exit_code == 0, result.output
            assert result.stdout == " sky is blue.\n"
        assert len(hub.gets("model.safetensors")) == 1  # the second run used the cache
        info = run("info", "tests/bigram", "--json")
        assert info.exit_code == 0, info.output
        assert json.loads(info.stdout)["bytes_on_disk"] == len(files["model.safetensors"])


def test_info_is_the_same_for_both_layouts(tiny_checkpoint, tiny_original_checkpoint):
    summaries = []
    for folder in (tiny_checkpoint, tiny_original_checkpoint):
        result = run("info", str(folder), "--json", "--dtype", "bfloat16")
        assert result.exit_code == 0, result.output
        summaries.append(steady_info(result.stdout))
    hf, original = summaries
    assert (hf["layout"], original["layout"]) == ("hf", "original")
    differ = {"path", "layout", "files", "bytes_on_disk"}
    assert {k: v for k, v in hf.items() if k not in differ} == {
        k: v for k, v in original.items() if k not in differ}
    assert hf["parameters"] == expected_info(tiny_checkpoint, 2, 8192)["parameters"]


@pytest.mark.parametrize("max_tokens, answer", [(2, ""), (3, ""), (4, CHAT_ANSWER + "\n")])
def test_chat_reply_cut_by_max_tokens(bigram_checkpoint, max_tokens, answer):
    """The reply is <|channel|> final <|message|> Hello <|return|>: cut inside the header,
    after it, and after the answer's only token."""
    result = run("generate", "--chat", "Hi!", "-m", str(bigram_checkpoint), "--temperature",
                 "0", "--max-tokens", str(max_tokens))
    assert result.exit_code == 0, result.output
    assert result.stdout == answer
    assert result.stderr == f"(the reply reached --max-tokens {max_tokens})\n"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_info_weight_memory_is_what_the_loaded_model_holds(tiny_checkpoint, dtype):
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from openharmony.load import load_model

    result = run("info", str(tiny_checkpoint), "--json", "--dtype", dtype)
    assert result.exit_code == 0, result.output
    from openharmony import native, runtime

    model = load_model(tiny_checkpoint, getattr(mx, dtype))
    held = sum(array.nbytes for _, array in tree_flatten(model.parameters()))
    in_place = sum(t.nbytes for _, module in model.named_modules() for t in module.values()
                   if native.is_mapped(t))
    summary = json.loads(result.stdout)
    assert summary["weight_bytes"] == held + in_place
    assert summary["weight_bytes_in_place"] == in_place
    assert (in_place > 0) == runtime.select().reads_mapped


def test_info_kv_cache_is_what_the_caches_hold(tiny_checkpoint):
    """After 512 positions (a multiple of the full-attention cache's growth step, so no slack)
    the caches hold exactly the estimate: all positions on full layers, the window on
    sliding ones."""
    import mlx.core as mx

    from openharmony.load import load_model

    context = 512
    result = run("info", str(tiny_checkpoint), "--json", "--dtype", "float32", "--context",
                 str(context))
    assert result.exit_code == 0, result.output
    model = load_model(tiny_checkpoint, mx.float32)
    caches = model.make_cache()
    model(mx.arange(context).reshape(1, context) % model.config.vocab_size, cache=caches)
    held = sum(array.nbytes for cache in caches for array in cache.state)
    assert json.loads(result.stdout)["kv_cache_bytes"] == held


def test_info_kv_cache_per_token_for_each_storage(tmp_path, tiny_config, tiny_checkpoint):
    """For each storage `info` reports (float as computed, bf16, 8-bit, 4-bit), the bytes at
    the context are what such caches hold after that many positions, and the bytes per token
    what 256 more positions add (512 and 768: multiples of the growth step, so no slack)."""
    import dataclasses

    import mlx.core as mx

    from openharmony.load import load_model
    from openharmony.testing.random_checkpoint import write_random_checkpoint

    config = dataclasses.replace(tiny_config, head_dim=64)  # a quantized cache needs 32 | D
    path = write_random_checkpoint(tmp_path / "hf", config, seed=0)
    result = run("info", str(path), "--json", "--dtype", "float32", "--context", "512")
    assert result.exit_code == 0, result.output
    reported = json.loads(result.stdout)["kv_cache"]
    options = {"float32": {}, "bfloat16": {"kv_dtype": "bfloat16"}, "8-bit": {"kv_bits": 8},
               "4-bit": {"kv_bits": 4}}
    assert list(reported) == list(options)
    model = load_model(path, mx.float32)
    tokens = mx.arange(768).reshape(1, 768) % config.vocab_size
    for name, cache_options in options.items():
        caches = model.make_cache(**cache_options)
        held = []
        for chunk in (tokens[:, :512], tokens[:, 512:]):
            model(chunk, cache=caches)
            held.append(sum(array.nbytes for cache in caches for array in cache.state))
        assert reported[name]["bytes"] == held[0], name
        assert reported[name]["bytes_per_token"] == (held[1] - held[0]) / 256, name
    text = run("info", str(path), "--dtype", "float32", "--context", "512").stdout
    per_token = reported["8-bit"]["bytes_per_token"] / 1024
    assert f"8-bit {per_token:.1f} KiB" in text
    # head_dim 16 cannot be quantized: only the float storages are reported.
    result = run("info", str(tiny_checkpoint), "--json", "--dtype", "float32")
    assert list(json.loads(result.stdout)["kv_cache"]) == ["float32", "bfloat16"]
