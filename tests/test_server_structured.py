"""Structured outputs through the server, with the real openai SDK as the client.

The models are bigram checkpoints (see tests/test_server.py) whose unconstrained reply breaks
what each request asks: plain text where a schema is asked, `get_weather({"city": ...})`
where a strict schema has other keys or another tool is named, a preamble where a call is
required. Only real enforcement passes. Under a mask a bigram model takes its scripted token
when allowed, else the allowed token of lowest id (all other logits are equal), so every
schema here has a finite language and the constrained path is deterministic. Outputs are
validated with `jsonschema` (independent of llguidance, which enforced them), a patch with a
regular expression written from Codex's apply_patch grammar.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from openharmony.testing import bigram_chains, write_bigram_checkpoint
from openharmony.testing.server import ANSWER, THOUGHT, Server, reply_tokens
from test_server import CODEX_CONFIG, codex_binary
from vocab import requires_vocab

pytestmark = requires_vocab

DATA = Path(__file__).parent / "data"
# Codex CLI 0.171.0's apply_patch, as it sends it (captured from its request to a stub server
# on 127.0.0.1 with model "gpt-5.5", whose tools include the freeform apply_patch).
APPLY_PATCH = json.loads((DATA / "codex_apply_patch.json").read_text())


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    sure: bool


VERDICT = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]},
                                            "sure": {"type": "boolean"}},
           "required": ["answer", "sure"], "additionalProperties": False}
UNIT = {"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["unit"], "additionalProperties": False}
LOOKUP_ARGS = {"type": "object", "properties": {"table": {"enum": ["a", "b"]}},
               "required": ["table"], "additionalProperties": False}


def chat_tool(name, parameters, strict=True):
    return {"type": "function", "function": {"name": name, "description": name,
                                             "parameters": parameters, "strict": strict}}


def responses_tool(name, parameters, strict=True):
    return {"type": "function", "name": name, "description": name, "parameters": parameters,
            "strict": strict}


# A patch as Codex's grammar defines it (start: begin_patch hunk+ end_patch), written out.
_LINE = r"[^\n]*\n"
PATCH = re.compile(
    r"\*\*\* Begin Patch\n("
    r"\*\*\* Add File: [^\n]+\n(\+" + _LINE + r")+"
    r"|\*\*\* Delete File: [^\n]+\n"
    r"|\*\*\* Update File: [^\n]+\n(\*\*\* Move to: [^\n]+\n)?"
    r"((@@|@@ [^\n]+)\n|[+\- ]" + _LINE + r")*(\*\*\* End of File\n)?"
    r")+\*\*\* End Patch\n?")


def scripted(tokenizer, kind: str) -> list[list[int]]:
    """The token sequences each model's chains follow (after the prompt's `assistant`)."""
    s, encode = tokenizer.special_ids, tokenizer.encode
    if kind == "answer":  # a plain answer; "{" is followed by "}" where JSON is forced
        return [encode("assistant") + reply_tokens(tokenizer, kind), encode("{") + encode("}")]
    if kind == "tool":
        return [encode("assistant") + reply_tokens(tokenizer, kind)]
    if kind == "preamble":  # text for the user on the commentary channel, and no call
        return [encode("assistant") + [s["<|channel|>"]] + encode("commentary")
                + [s["<|message|>"]] + encode(ANSWER) + [s["<|return|>"]]]
    if kind == "reason_then_call":
        # Reasons, then calls get_weather with its reasoning as the arguments (the body after
        # <|message|> goes on as the analysis did). Its second header spells the role
        # "ass"+"istant" and has no channel, so it does not run into the first header's.
        return [encode("assistant") + [s["<|channel|>"]] + encode("analysis")
                + [s["<|message|>"]] + encode(THOUGHT) + [s["<|end|>"], s["<|start|>"]]
                + encode("ass") + encode("istant") + encode(" to=functions.get_weather")
                + [s["<|constrain|>"]] + encode("json") + [s["<|message|>"]]]
    if kind == "reasoning_loop":  # one analysis message after another
        return [encode("assistant") + [s["<|channel|>"]] + encode("analysis")
                + [s["<|message|>"]] + encode(THOUGHT)
                + [s["<|end|>"], s["<|start|>"]] + encode("assistant")]
    if kind == "patch":  # calls get_weather; and where a patch is forced, writes one
        return scripted(tokenizer, "tool") + [
            encode("!") + encode("hello.txt") + [198] + encode("***") + encode(" End")
            + encode(" Patch") + [198], encode("+") + encode("hi") + [198]]
    raise ValueError(kind)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_vocab_checkpoint, tokenizer):
    started = {}

    def get(kind, model_id="bigram"):
        if (kind, model_id) not in started:
            folder = write_bigram_checkpoint(tiny_vocab_checkpoint,
                                             tmp_path_factory.mktemp(kind) / "hf",
                                             bigram_chains(*scripted(tokenizer, kind)))
            started[kind, model_id] = Server(folder, tokenizer, model_id)
        return started[kind, model_id]

    yield get
    for s in started.values():
        s.stop()


@pytest.fixture(scope="module")
def tokenizer():
    from openharmony.tokenizer import load_tokenizer
    from vocab import VOCAB

    return load_tokenizer(VOCAB)


USER = [{"role": "user", "content": "Is it raining?"}]


# -- the final answer ---------------------------------------------------------------------------


def test_chat_completions_parse_returns_the_schema_object(server):
    client = server("answer").client()
    plain = client.chat.completions.create(model="bigram", messages=USER, temperature=0)
    assert plain.choices[0].message.content == ANSWER  # unconstrained: not the schema
    done = client.chat.completions.parse(model="bigram", messages=USER, temperature=0,
                                         response_format=Verdict)
    message = done.choices[0].message
    jsonschema.validate(json.loads(message.content), VERDICT)
    assert isinstance(message.parsed, Verdict)
    assert done.choices[0].finish_reason == "stop"


def test_responses_parse_returns_the_schema_object(server):
    client = server("answer").client()
    done = client.responses.parse(model="bigram", input="Is it raining?", temperature=0,
                                  text_format=Verdict)
    jsonschema.validate(json.loads(done.output_text), VERDICT)
    assert isinstance(done.output_parsed, Verdict) and done.status == "completed"


def test_json_object_and_streams_that_concatenate_to_the_document(server):
    client = server("answer").client()
    done = client.chat.completions.create(model="bigram", messages=USER, temperature=0,
                                          response_format={"type": "json_object"})
    assert isinstance(json.loads(done.choices[0].message.content), dict)
    schema_format = {"type": "json_schema",
                     "json_schema": {"name": "verdict", "schema": VERDICT, "strict": True}}
    chunks = client.chat.completions.create(model="bigram", messages=USER, temperature=0,
                                            stream=True, response_format=schema_format)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), VERDICT)
    with client.responses.stream(model="bigram", input="Is it raining?", temperature=0,
                                 text={"format": {"type": "json_schema", "name": "verdict",
                                                  "schema": VERDICT}}) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    jsonschema.validate(json.loads("".join(deltas)), VERDICT)


def test_max_tokens_inside_the_document_is_length_and_incomplete(server):
    client = server("answer").client()
    schema_format = {"type": "json_schema", "name": "verdict", "schema": VERDICT}
    cut = client.chat.completions.create(
        model="bigram", messages=USER, temperature=0, max_tokens=6,
        response_format={"type": "json_schema", "json_schema": schema_format})
    assert cut.choices[0].finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):  # the document is not complete
        json.loads(cut.choices[0].message.content)
    with client.responses.stream(model="bigram", input="Hi", temperature=0,
                                 max_output_tokens=6, text={"format": schema_format}) as stream:
        events = list(stream)
    assert events[-1].type == "response.incomplete"  # OpenAI's streaming reference
    assert events[-1].response.status == "incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


# -- tool calls ---------------------------------------------------------------------------------


def test_strict_tool_arguments_follow_the_schema_and_others_are_json(server):
    client = server("tool").client()
    strict = client.chat.completions.create(model="bigram", messages=USER, temperature=0,
                                            tools=[chat_tool("get_weather", UNIT)])
    (call,) = strict.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), UNIT)  # not {"city": ...}
    loose = client.chat.completions.create(model="bigram", messages=USER, temperature=0,
                                           tools=[chat_tool("get_weather", UNIT, False)])
    (call,) = loose.choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # free, but JSON
    # The Responses API: strict unless it says otherwise, as OpenAI.
    done = client.responses.create(model="bigram", input="Weather?", temperature=0,
                                   tools=[responses_tool("get_weather", UNIT, strict=None)])
    (item,) = done.output
    jsonschema.validate(json.loads(item.arguments), UNIT)


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_tool_choice_named_required_and_none(server, api):
    tools = {"chat": [chat_tool("get_weather", UNIT), chat_tool("lookup", LOOKUP_ARGS)],
             "responses": [responses_tool("get_weather", UNIT),
                           responses_tool("lookup", LOOKUP_ARGS)]}[api]

    def calls(kind, tool_choice, **options):
        client = server(kind).client()
        if api == "chat":
            done = client.chat.completions.create(model="bigram", messages=USER, tools=tools,
                                                  temperature=0, tool_choice=tool_choice,
                                                  **options)
            return [(c.function.name, json.loads(c.function.arguments))
                    for c in done.choices[0].message.tool_calls or ()]
        done = client.responses.create(model="bigram", input="Weather?", tools=tools,
                                       temperature=0, tool_choice=tool_choice,
                                       max_output_tokens=options.get("max_tokens"))
        return [(i.name, json.loads(i.arguments)) for i in done.output
                if i.type == "function_call"]

    named = ({"type": "function", "function": {"name": "lookup"}} if api == "chat"
             else {"type": "function", "name": "lookup"})
    ((name, arguments),) = calls("tool", named)  # the model calls get_weather unconstrained
    assert name == "lookup"
    jsonschema.validate(arguments, LOOKUP_ARGS)
    assert calls("preamble", "auto") == []  # unconstrained it answers
    ((name, arguments),) = calls("preamble", "required")
    jsonschema.validate(arguments, {"get_weather": UNIT, "lookup": LOOKUP_ARGS}[name])
    assert calls("tool", "none", max_tokens=40) == []


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_reasoning_stays_free_before_a_strict_call(server, api):
    client = server("reason_then_call").client()
    if api == "chat":
        done = client.chat.completions.create(model="bigram", messages=USER, temperature=0,
                                              tools=[chat_tool("get_weather", UNIT)])
        message = done.choices[0].message
        reasoning, (call,) = message.reasoning, message.tool_calls
        arguments = call.function.arguments
    else:
        done = client.responses.create(model="bigram", input="Weather?", temperature=0,
                                       tools=[responses_tool("get_weather", UNIT)])
        thought, call = done.output
        reasoning, arguments = thought.content[0].text, call.arguments
    assert reasoning == THOUGHT  # the analysis channel was not constrained
    jsonschema.validate(json.loads(arguments), UNIT)  # unconstrained: "Let me think...."


def test_custom_tool_input_follows_codex_apply_patch_grammar(server):
    client = server("patch").client()
    done = client.responses.create(model="bigram", input="Add hello.txt", temperature=0,
                                   tools=[APPLY_PATCH],
                                   tool_choice={"type": "custom", "name": "apply_patch"})
    (item,) = done.output
    assert item.type == "custom_tool_call" and item.name == "apply_patch"
    assert PATCH.fullmatch(item.input), item.input
    with client.responses.stream(model="bigram", input="Add hello.txt", temperature=0,
                                 tools=[APPLY_PATCH], tool_choice={"type": "custom",
                                                                   "name": "apply_patch"}) as s:
        deltas = [e.delta for e in s if e.type == "response.custom_tool_call_input.delta"]
    assert "".join(deltas) == item.input
    # Chat Completions: the tool and its call in their nested shapes; the call goes back in.
    chat_patch = {"type": "custom", "custom": {
        "name": "apply_patch", "description": APPLY_PATCH["description"],
        "format": {"type": "grammar", "grammar": {
            "syntax": "lark", "definition": APPLY_PATCH["format"]["definition"]}}}}
    done = client.chat.completions.create(
        model="bigram", messages=USER, temperature=0, tools=[chat_patch],
        tool_choice={"type": "custom", "custom": {"name": "apply_patch"}})
    (call,) = done.choices[0].message.tool_calls
    assert call.type == "custom" and call.custom.input == item.input
    again = client.chat.completions.create(
        model="bigram", temperature=0, tools=[chat_patch], max_tokens=5,
        messages=USER + [{"role": "assistant", "tool_calls": [call.model_dump()]},
                         {"role": "tool", "tool_call_id": call.id, "content": "Done"}])
    assert again.usage.prompt_tokens > done.usage.prompt_tokens
    regex_tool = {"type": "custom", "name": "forecast", "description": "The forecast.",
                  "format": {"type": "grammar", "syntax": "regex",
                             "definition": "(sunny|rainy) in [a-z]{1,8}"}}
    done = client.responses.create(model="bigram", input="Forecast?", temperature=0,
                                   tools=[regex_tool], tool_choice="required")
    (item,) = done.output
    assert re.fullmatch("(sunny|rainy) in [a-z]{1,8}", item.input), item.input


@pytest.mark.skipif(codex_binary() is None, reason="Codex CLI is not installed")
def test_codex_sends_its_freeform_apply_patch_and_gets_the_answer(server, tmp_path):
    """Codex CLI with a model it gives the freeform apply_patch (gpt-5.5): its real request,
    the lark grammar included, compiles, and with tool_choice auto the answer comes free."""
    served = server("answer", model_id="gpt-5.5")
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    config = CODEX_CONFIG.format(url=served.url).replace('model = "bigram"', 'model = "gpt-5.5"')
    (home / "config.toml").write_text(config)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CODEX_HOME": str(home)}
    done = subprocess.run([codex_binary(), "exec", "--skip-git-repo-check", "--sandbox",
                           "workspace-write", "Say hello"], cwd=work, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ANSWER, done.stderr


def test_consecutive_analysis_messages(server):
    client = server("reasoning_loop").client()
    done = client.chat.completions.create(model="bigram", messages=USER, temperature=0,
                                          max_tokens=22)  # 9 tokens a message
    assert done.choices[0].message.reasoning.startswith(f"{THOUGHT}\n\n{THOUGHT}")
    done = client.responses.create(model="bigram", input="Hi", temperature=0,
                                   max_output_tokens=22)
    assert [item.content[0].text for item in done.output[:2]] == [THOUGHT, THOUGHT]


def test_constrained_and_free_requests_share_a_batch(server):
    client = server("answer").client()

    def ask(response_format):
        done = client.chat.completions.create(model="bigram", messages=USER, temperature=0,
                                              response_format=response_format)
        return done.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, [None, {"type": "json_object"}] * 2))
    assert answers[0] == answers[2] == ANSWER
    for text in answers[1::2]:
        assert isinstance(json.loads(text), dict)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, param, words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}},
     "response_format.json_schema.schema", "JSON Schema object"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                  "schema": {"type": "foo"}}}},
     "response_format.json_schema.schema", "foo"),
    ({"response_format": {"type": "yaml"}}, "response_format.type", "yaml"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"if": {"type": "string"}}}}},
     "response_format.json_schema.schema", '"if"'),  # unsupported: named, never ignored
    ({"tools": [chat_tool("get_weather", UNIT)], "tool_choice": {
        "type": "function", "function": {"name": "nope"}}}, "tool_choice", "'nope'"),
    ({"tools": [chat_tool("get_weather", {"type": "object", "properties": {
        "x": {"type": "string", "pattern": "(("}}})]},
     "tools[0].function.parameters", "unclosed group"),
    ({"tool_choice": "required"}, "tool_choice", "no tools"),
    ({"tools": [{"type": "custom", "custom": {"name": "x", "format": {
        "type": "grammar", "grammar": {"syntax": "lark", "definition": "start: nope"}}}}]},
     "tools[0].custom.format.grammar.definition", "nope"),
])
def test_bad_formats_get_a_400_naming_the_field(server, fields, param, words):
    client = server("answer").client()
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="bigram", messages=USER, **fields)
    assert error.value.body["param"] == param
    assert words in error.value.body["message"]


def test_bad_grammars_get_a_400_on_the_responses_api(server):
    client = server("answer").client()
    bad = dict(APPLY_PATCH, format={"type": "grammar", "syntax": "lark",
                                    "definition": "start: undefined_rule"})
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model="bigram", input="Hi", tools=[bad])
    assert error.value.body["param"] == "tools[0].format.definition"
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model="bigram", input="Hi", tools=[APPLY_PATCH],
                                tool_choice={"type": "function", "name": "apply_patch"})
    assert error.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model="bigram", input="Hi",
                                text={"format": {"type": "json_schema", "name": "x"}})
    assert error.value.body["param"] == "text.format.schema"
    # ... and it keeps serving.
    assert client.responses.create(model="bigram", input="Hi", temperature=0).output_text \
        == ANSWER
