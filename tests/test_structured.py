"""openharmony.structured through the Python API: `generate(json_schema=... / grammar=... /
regex=...)`, `ChatTurn(response_format=..., tool_choice=...)`, a batch where one request is
constrained and another not, and the errors.

Bigram checkpoints (see tests/test_server.py): their unconstrained output breaks the format
asked for, so only enforcement passes; outputs are checked with `jsonschema` and `re`, never
with llguidance (which enforced them).
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from openharmony import batch
from typer.testing import CliRunner

from openharmony.cache import PromptCache
from openharmony.cli import app
from openharmony.chat import Chat, ChatOptions, ChatTurn, FunctionTool
from openharmony.generate import GenerationError, generate, make_decoding
from openharmony.load import load_model
from openharmony.sampling import SamplingOptions
from openharmony.structured import ConstraintError
from openharmony.testing import bigram_chains, write_bigram_checkpoint
from openharmony.tokenizer import load_tokenizer
from vocab import VOCAB, requires_vocab

pytestmark = requires_vocab

GREEDY = SamplingOptions(temperature=0)
SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]},
                                           "count": {"enum": [1, 2, 3]},
                                           "tags": {"type": "array", "items": {"type": "boolean"},
                                                    "maxItems": 2}},
          "required": ["answer", "count", "tags"], "additionalProperties": False}
TEXT = "The sky is blue"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB)


def write_model(folder, tokenizer, channel: str):
    """Says TEXT after "Hi"; to a chat prompt, "Hello" on `channel` (final: an answer,
    commentary: a preamble, no tool call)."""
    s, encode = tokenizer.special_ids, tokenizer.encode
    chat_reply = (encode("assistant") + [s["<|channel|>"]] + encode(channel)
                  + [s["<|message|>"]] + encode("Hello") + [s["<|return|>"]])
    chains = bigram_chains(encode("Hi") + encode(TEXT) + [s["<|endoftext|>"]], chat_reply)
    return write_bigram_checkpoint(folder[0], folder[1], chains)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tiny_vocab_checkpoint, tokenizer):
    return write_model((tiny_vocab_checkpoint, tmp_path_factory.mktemp("s") / "hf"), tokenizer,
                       "final")


@pytest.fixture(scope="module")
def model(model_folder):
    return load_model(model_folder)


@pytest.fixture(scope="module")
def preamble_model(tmp_path_factory, tiny_vocab_checkpoint, tokenizer):
    return load_model(write_model((tiny_vocab_checkpoint, tmp_path_factory.mktemp("p") / "hf"),
                                  tokenizer, "commentary"))


def test_generate_holds_a_completion_to_a_json_schema(model, tokenizer):
    free = generate(model, "Hi", tokenizer=tokenizer, sampling=GREEDY, max_tokens=20)
    assert free.text == TEXT
    done = generate(model, "Hi", tokenizer=tokenizer, sampling=GREEDY, max_tokens=60,
                    json_schema=SCHEMA)
    jsonschema.validate(json.loads(done.text), SCHEMA)
    assert done.finish_reason == "stop_token"


def test_generate_holds_a_completion_to_a_grammar_or_regex(model, tokenizer):
    lark = 'start: "The " COLOR " sky"\nCOLOR: "red" | "grey"\n'
    done = generate(model, "Hi", tokenizer=tokenizer, sampling=GREEDY, max_tokens=20,
                    grammar=lark)
    assert re.fullmatch("The (red|grey) sky", done.text), done.text
    done = generate(model, "Hi", tokenizer=tokenizer, sampling=GREEDY, max_tokens=20,
                    regex="[0-9]{3}-(ab|cd)")
    assert re.fullmatch("[0-9]{3}-(ab|cd)", done.text), done.text


def test_bad_schemas_and_grammars_raise_at_the_call(model, tokenizer):
    cases = [({"json_schema": {"type": "foo"}}, "foo"),
             ({"json_schema": {"if": {"type": "string"}}}, '"if"'),  # named, not ignored
             ({"json_schema": [1]}, "JSON Schema object"),
             ({"grammar": "start: missing"}, "missing"),
             ({"regex": "(("}, "unclosed group"),
             ({"regex": "a", "grammar": "start: \"a\""}, "at most one")]
    for options, words in cases:
        with pytest.raises(GenerationError, match=re.escape(words)):
            generate(model, "Hi", tokenizer=tokenizer, **options)


def chat_prompt(tokenizer, tools=()):
    chat = Chat(tokenizer, ChatOptions(tools=tools))
    chat.add_user("Is it?")
    return chat.render()


def test_chat_turn_response_format(model, tokenizer):
    turn = ChatTurn(model, tokenizer, chat_prompt(tokenizer), max_tokens=60, sampling=GREEDY,
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "v", "schema": SCHEMA}})
    events = list(turn)
    (message,) = turn.messages
    assert message.channel == "final" and turn.finish_reason == "stop"
    jsonschema.validate(json.loads(message.text), SCHEMA)
    assert "".join(e.delta for e in events) == message.text


def test_chat_turn_tool_choice_forces_a_strict_call(preamble_model, tokenizer):
    tools = [FunctionTool("set", "Sets it.", SCHEMA, strict=True)]
    prompt = chat_prompt(tokenizer, tools)
    free = ChatTurn(preamble_model, tokenizer, prompt, max_tokens=100, sampling=GREEDY,
                    tools=tools)
    list(free)
    assert [m.is_tool_call for m in free.messages] == [False]  # unconstrained: no call
    turn = ChatTurn(preamble_model, tokenizer, prompt, max_tokens=100, sampling=GREEDY,
                    tools=tools, tool_choice="required")
    list(turn)
    call = turn.messages[-1]
    assert turn.finish_reason == "tool_calls" and call.tool_name == "set"
    jsonschema.validate(call.arguments(), SCHEMA)
    with pytest.raises(ConstraintError, match="not in tools"):
        ChatTurn(preamble_model, tokenizer, prompt, max_tokens=10, tools=tools,
                 tool_choice={"type": "function", "name": "other"})


def test_cli_json_schema(model_folder, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    for chat in (["--chat"], []):
        result = CliRunner().invoke(app, ["generate", *chat, "Hi", "-m", str(model_folder),
                                          "--temperature", "0", "--json-schema", str(schema)])
        assert result.exit_code == 0, result.output
        jsonschema.validate(json.loads(result.stdout), SCHEMA)
    schema.write_text("[1]")
    result = CliRunner().invoke(app, ["generate", "--chat", "Hi", "-m", str(model_folder),
                                      "--json-schema", str(schema)])
    assert result.exit_code == 2 and "not a schema object" in result.stderr


def test_a_batch_steps_constrained_and_free_rows_each_as_alone(model, tokenizer):
    def decoding(**options):
        return make_decoding(model, "Hi", tokenizer=tokenizer, sampling=GREEDY, max_tokens=60,
                             prompt_cache=PromptCache(model), **options)

    rows = [decoding(), decoding(json_schema=SCHEMA), decoding(regex="[0-9]{3}")]
    group = batch.Batch(model)
    for row in rows:
        group.join(row)
    texts = {id(row): "" for row in rows}
    while len(group):
        for row, chunk in group.step():
            texts[id(row)] += chunk.text
    free, constrained, digits = (texts[id(row)] for row in rows)
    assert free == TEXT
    jsonschema.validate(json.loads(constrained), SCHEMA)
    assert re.fullmatch("[0-9]{3}", digits)
    assert constrained == generate(model, "Hi", tokenizer=tokenizer, sampling=GREEDY,
                                   max_tokens=60, json_schema=SCHEMA).text


def test_whitespace_between_json_tokens_is_bounded(tmp_path, tiny_vocab_checkpoint, tokenizer):
    """A model that would write spaces forever still finishes the document."""
    space = tokenizer.encode(" ")
    spaces = load_model(write_bigram_checkpoint(tiny_vocab_checkpoint, tmp_path / "hf",
                                                bigram_chains(tokenizer.encode("Hi") + space
                                                              + space)))
    free = generate(spaces, "Hi", tokenizer=tokenizer, sampling=GREEDY, max_tokens=30)
    assert free.finish_reason == "length" and free.text.strip() == ""
    done = generate(spaces, "Hi", tokenizer=tokenizer, sampling=GREEDY, max_tokens=200,
                    json_schema=SCHEMA)
    assert done.finish_reason == "stop_token"
    jsonschema.validate(json.loads(done.text), SCHEMA)
    assert "  " not in done.text  # at most one space between two JSON tokens
