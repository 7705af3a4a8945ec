"""`openharmony serve` through the real openai SDK, on a server on a free loopback port.

The models are bigram checkpoints (`openharmony.testing.write_bigram_checkpoint`): each token
is followed by a chosen one, so the reply to any harmony prompt (which ends with
`<|start|>assistant`) is known in advance: a final answer, an analysis message, a function
call `to=functions.get_weather <|constrain|>json<|message|>{...}<|call|>`, or a final answer
that never ends. Expected token counts come from openai-harmony's own renderer.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from openai_harmony import (Author, Conversation, DeveloperContent, Message, ReasoningEffort,
                            RenderConversationConfig, Role, SystemContent, ToolDescription)

from openharmony.cache import PromptCache
from openharmony.generate import generate
from openharmony.load import load_model
from openharmony.server.engine import CachePool
from openharmony.testing import write_bigram_checkpoint
from openharmony.testing.server import (ANSWER, ARGUMENTS, THOUGHT, WEATHER_TOOL, Server, chains,
                                        reply_tokens)
from openharmony.tokenizer import load_tokenizer
from vocab import VOCAB, requires_vocab

pytestmark = requires_vocab

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB)


def make_server(tmp_path_factory, tiny_vocab_checkpoint, tokenizer, kind, **options):
    folder = write_bigram_checkpoint(tiny_vocab_checkpoint, tmp_path_factory.mktemp(kind) / "hf",
                                     chains(tokenizer, kind))
    return Server(folder, tokenizer, **options)


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_vocab_checkpoint, tokenizer):
    started = {}

    def get(kind, **options):
        key = (kind, tuple(sorted(options.items())))
        if key not in started:
            started[key] = make_server(tmp_path_factory, tiny_vocab_checkpoint, tokenizer, kind,
                                       **options)
        return started[key]

    yield get
    while started:
        started.popitem()[1].stop()
    gc.collect()  # the apps' reference cycles hold the models: free them for later tests


# -- the reference prompts, rendered by openai-harmony itself ---------------------------------


def system(effort: str) -> Message:
    content = (SystemContent.new().with_reasoning_effort(
        {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM,
         "high": ReasoningEffort.HIGH}[effort])
        .with_knowledge_cutoff("2024-06")
        .with_conversation_start_date(time.strftime("%Y-%m-%d")))
    return Message.from_role_and_content(Role.SYSTEM, content)


def developer(instructions=None, tools=()) -> list[Message]:
    if instructions is None and not tools:
        return []
    content = DeveloperContent.new()
    if instructions is not None:
        content = content.with_instructions(instructions)
    if tools:
        content = content.with_function_tools([
            ToolDescription.new(t["name"], t.get("description", ""), t.get("parameters"))
            for t in tools])
    return [Message.from_role_and_content(Role.DEVELOPER, content)]


def user(text):
    return Message.from_role_and_content(Role.USER, text)


def call(arguments=ARGUMENTS):
    return (Message.from_role_and_content(Role.ASSISTANT, arguments).with_channel("commentary")
            .with_recipient("functions.get_weather").with_content_type("<|constrain|>json"))


def result(text):
    return (Message.from_author_and_content(Author.new(Role.TOOL, "functions.get_weather"), text)
            .with_channel("commentary").with_recipient("assistant"))


def rendered(tokenizer, messages, keep_analysis=False) -> list[int]:
    config = RenderConversationConfig(auto_drop_analysis=not keep_analysis)
    return tokenizer.harmony().render_conversation_for_completion(
        Conversation.from_messages(messages), Role.ASSISTANT, config)


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, str]:
    """A raw request (for what the SDK would not send): status and body text."""
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def common_prefix(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# -- the Responses API ---------------------------------------------------------------------


def test_models_and_health(servers):
    server = servers("answer")
    assert [m.id for m in server.client().models.list()] == ["bigram"]
    assert http("GET", server.url + "/health") == (200, '{"status":"ok"}')


def test_responses_answer(servers, tokenizer):
    response = servers("answer").client().responses.create(
        model="bigram", input="Hi!", instructions="Be brief.", temperature=0)
    assert response.status == "completed"
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == ANSWER
    prompt = rendered(tokenizer, [system("low"), *developer("Be brief."), user("Hi!")])
    assert response.usage.input_tokens == len(prompt)
    assert response.usage.output_tokens == len(reply_tokens(tokenizer, "answer"))
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_responses_stream_events(servers):
    with servers("answer").client().responses.stream(model="bigram", input="Hi!",
                                                     temperature=0) as stream:
        events = list(stream)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == ANSWER
    assert [t for t in types if "delta" not in t] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == ANSWER


def test_reasoning_never_reaches_the_content(servers):
    server = servers("reasoning")
    response = server.client().responses.create(model="bigram", input="Hi!", temperature=0,
                                                reasoning={"effort": "high"})
    assert [item.type for item in response.output] == ["reasoning"]
    assert response.output[0].content[0].text == THOUGHT
    assert response.output_text == ""
    assert response.usage.output_tokens_details.reasoning_tokens == len(
        server.engine.tokenizer.encode(THOUGHT))
    with server.client().responses.stream(model="bigram", input="Hi!", temperature=0) as stream:
        types = [e.type for e in stream]
    assert "response.reasoning_text.delta" in types and "response.output_text.delta" not in types
    completion = server.client().chat.completions.create(
        model="bigram", messages=[{"role": "user", "content": "Hi!"}], temperature=0)
    message = completion.choices[0].message
    assert message.content is None
    assert message.reasoning == message.reasoning_content == THOUGHT


def test_function_call_and_its_result(servers, tokenizer):
    server = servers("tool")
    client = server.client()
    first = client.responses.create(model="bigram", input="Weather in Paris?",
                                    tools=[WEATHER_TOOL], temperature=0)
    (item,) = first.output
    assert item.type == "function_call" and item.name == "get_weather"
    assert item.arguments == ARGUMENTS and json.loads(item.arguments) == {"city": "Paris"}
    assert first.usage.input_tokens_details.cached_tokens == 0
    prompt1 = rendered(tokenizer, [system("low"), *developer(tools=[WEATHER_TOOL]),
                                   user("Weather in Paris?")])
    assert first.usage.input_tokens == len(prompt1)

    # The follow-up with the tool's output: everything up to the reply is reused.
    follow_up = [{"type": "message", "role": "user", "content": "Weather in Paris?"},
                 {"type": "function_call", "name": "get_weather", "arguments": item.arguments,
                  "call_id": item.call_id},
                 {"type": "function_call_output", "call_id": item.call_id, "output": "sunny"}]
    second = client.responses.create(model="bigram", input=follow_up, tools=[WEATHER_TOOL],
                                     temperature=0)
    prompt2 = rendered(tokenizer, [system("low"), *developer(tools=[WEATHER_TOOL]),
                                   user("Weather in Paris?"), call(), result("sunny")])
    held = prompt1 + reply_tokens(tokenizer, "tool")  # what the cache holds after turn 1
    assert second.usage.input_tokens == len(prompt2)
    assert second.usage.input_tokens_details.cached_tokens == min(
        common_prefix(held, prompt2), len(prompt2) - 1)
    assert second.usage.input_tokens_details.cached_tokens > len(prompt1)

    # The same turn through previous_response_id (the server's store).
    third = client.responses.create(
        model="bigram", previous_response_id=first.id, tools=[WEATHER_TOOL], temperature=0,
        input=[{"type": "function_call_output", "call_id": item.call_id, "output": "sunny"}])
    assert third.usage.input_tokens == len(prompt2)
    assert third.usage.input_tokens_details.cached_tokens == len(prompt2) - 1


def test_tool_types_codex_sends(servers):
    client = servers("tool").client()
    tools = [{"type": "custom", "name": "get_weather", "description": "Free-form.",
              "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
             {"type": "namespace", "name": "mcp", "tools": [dict(WEATHER_TOOL, name="other")]},
             {"type": "web_search"}, {"type": "local_shell"}]
    response = client.responses.create(model="bigram", input="Weather?", tools=tools,
                                       temperature=0)
    (item,) = response.output
    assert item.type == "custom_tool_call" and item.name == "get_weather"
    assert item.input == ARGUMENTS  # not {"input": ...}: the text as the model wrote it
    again = client.responses.create(model="bigram", tools=tools, temperature=0, input=[
        {"type": "custom_tool_call", "name": "get_weather", "input": "x", "call_id": "c1"},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "ok"}])
    assert again.status == "completed"


def test_chain_of_thought_rule(servers, tokenizer):
    client = servers("answer").client()
    thought = {"type": "reasoning", "summary": [],
               "content": [{"type": "reasoning_text", "text": "Earlier thought."}]}
    analysis = Message.from_role_and_content(Role.ASSISTANT, "Earlier thought.").with_channel(
        "analysis")
    # A final answer followed the analysis: it is dropped.
    done = client.responses.create(model="bigram", temperature=0, input=[
        {"role": "user", "content": "Q1"}, thought,
        {"role": "assistant", "content": [{"type": "output_text", "text": "A1"}]},
        {"role": "user", "content": "Q2"}])
    final = Message.from_role_and_content(Role.ASSISTANT, "A1").with_channel("final")
    assert done.usage.input_tokens == len(rendered(
        tokenizer, [system("low"), user("Q1"), final, user("Q2")], keep_analysis=True))
    # A chain of tool calls is in progress: it is kept.
    going = client.responses.create(model="bigram", temperature=0, tools=[WEATHER_TOOL], input=[
        {"role": "user", "content": "Q1"}, thought,
        {"type": "function_call", "name": "get_weather", "arguments": ARGUMENTS,
         "call_id": "c1"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"}])
    assert going.usage.input_tokens == len(rendered(
        tokenizer, [system("low"), *developer(tools=[WEATHER_TOOL]), user("Q1"), analysis,
                    call(), result("sunny")], keep_analysis=True))


# -- Chat Completions ------------------------------------------------------------------------


def test_chat_completion_answer_and_follow_up(servers, tokenizer):
    client = servers("answer").client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    first = client.chat.completions.create(model="bigram", messages=messages, temperature=0,
                                           reasoning_effort="high", seed=1)
    choice = first.choices[0]
    assert choice.message.content == ANSWER and choice.finish_reason == "stop"
    prompt1 = rendered(tokenizer, [system("high"), *developer("Be brief."), user("Hi!")])
    assert first.usage.prompt_tokens == len(prompt1)
    messages += [{"role": "assistant", "content": ANSWER}, {"role": "user", "content": "More?"}]
    second = client.chat.completions.create(model="bigram", messages=messages, temperature=0,
                                            reasoning_effort="high")
    answer = Message.from_role_and_content(Role.ASSISTANT, ANSWER).with_channel("final")
    prompt2 = rendered(tokenizer, [system("high"), *developer("Be brief."), user("Hi!"),
                                   answer, user("More?")])
    held = prompt1 + reply_tokens(tokenizer, "answer")
    assert second.usage.prompt_tokens == len(prompt2)
    assert second.usage.prompt_tokens_details.cached_tokens == common_prefix(held, prompt2) > 0


def test_chat_completion_stream(servers):
    client = servers("answer").client()
    chunks = list(client.chat.completions.create(
        model="bigram", messages=[{"role": "user", "content": "Hi!"}], temperature=0,
        stream=True, stream_options={"include_usage": True}, logprobs=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0
    logprobs = [entry for c in chunks if c.choices and c.choices[0].logprobs
                for entry in c.choices[0].logprobs.content]
    assert "".join(entry.token for entry in logprobs) == ANSWER
    assert all(entry.logprob <= 0 for entry in logprobs)
    completion = client.chat.completions.create(
        model="bigram", messages=[{"role": "user", "content": "Hi!"}], temperature=0,
        logprobs=True, top_logprobs=3)
    (entry,) = completion.choices[0].logprobs.content  # "Hello" is one token
    assert entry.token == ANSWER and len(entry.top_logprobs) == 3
    assert entry.top_logprobs[0].token == ANSWER  # greedy picked the most likely token
    assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    assert entry.top_logprobs[1].logprob <= entry.top_logprobs[0].logprob


def test_chat_completion_tool_calls(servers):
    client = servers("tool").client()
    tool = {"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items()
                                             if k != "type"}}
    messages = [{"role": "user", "content": "Weather?"}]
    completion = client.chat.completions.create(model="bigram", messages=messages,
                                                tools=[tool], temperature=0)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (tool_call,) = choice.message.tool_calls
    assert tool_call.function.name == "get_weather"
    assert tool_call.function.arguments == ARGUMENTS
    chunks = list(client.chat.completions.create(model="bigram", messages=messages, tools=[tool],
                                                 temperature=0, stream=True))
    calls = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather" and calls[0].id
    assert "".join(d.function.arguments or "" for d in calls) == ARGUMENTS
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # The call and its result go back in; the turn runs.
    messages += [{"role": "assistant", "content": None, "tool_calls": [tool_call.model_dump()]},
                 {"role": "tool", "tool_call_id": tool_call.id, "content": "sunny"}]
    again = client.chat.completions.create(model="bigram", messages=messages, tools=[tool],
                                           temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens > completion.usage.prompt_tokens


def test_stop_string_cuts_the_answer(servers):
    completion = servers("answer").client().chat.completions.create(
        model="bigram", messages=[{"role": "user", "content": "Hi!"}], temperature=0,
        stop=["llo"])
    assert completion.choices[0].message.content == "He"
    assert completion.choices[0].finish_reason == "stop"
    # "o" could begin "o!": it is held back, then sent when the answer ends without it.
    chunks = list(servers("answer").client().chat.completions.create(
        model="bigram", messages=[{"role": "user", "content": "Hi!"}], temperature=0,
        stop="o!", stream=True))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert deltas == ["Hell", "o"]


# -- serving many requests -----------------------------------------------------------------


def test_concurrent_requests_get_their_own_answers(servers):
    answer, tool = servers("answer"), servers("tool")

    def ask(i):
        if i % 2:
            return answer.client().chat.completions.create(
                model="bigram", messages=[{"role": "user", "content": f"Question {i}"}],
                temperature=0).choices[0].message.content
        return tool.client().responses.create(model="bigram", input=f"Question {i}",
                                              tools=[WEATHER_TOOL], temperature=0
                                              ).output[0].arguments

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert answers == [ARGUMENTS if i % 2 == 0 else ANSWER for i in range(8)]


def test_disconnect_stops_generation_and_a_full_queue_gets_429(servers):
    server = servers("endless", max_queue=1, max_batch=1)  # one runs, one waits
    client = server.client()
    with client.responses.stream(model="bigram", input="Go", max_output_tokens=100000,
                                 temperature=0) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break  # generating now; one more request may wait, the next is refused
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(client.responses.create, model="bigram", input="Next",
                                  max_output_tokens=5, temperature=0)
            time.sleep(0.3)
            with pytest.raises(openai.RateLimitError) as refused:
                client.responses.create(model="bigram", input="Third", temperature=0)
            assert refused.value.response.headers["retry-after"]
            assert refused.value.body["code"] == "rate_limit_exceeded"
            stream.close()  # the client goes away: its generation stops
            assert waiting.result(timeout=60).status == "incomplete"
    assert server.engine.generated_tokens < 5000  # far from the 100000 asked for


def test_streams_share_a_batch_and_one_leaving_lets_the_others_go_on(servers):
    """Two streams decode as one batch (max_batch=2); a third request waits in the queue, a
    fourth gets 429; the first client leaves: its row stops, the second stream goes on to its
    own end and the waiting request joins the batch in the freed row."""
    server = servers("endless", max_batch=2, max_queue=1)
    client = server.client()
    before = server.engine.generated_tokens

    def started(stream):
        for event in stream:
            if event.type == "response.output_text.delta":
                return event.delta

    with client.responses.stream(model="bigram", input="One", max_output_tokens=100000,
                                 temperature=0) as first, \
            client.responses.stream(model="bigram", input="Two", max_output_tokens=300,
                                    temperature=0) as second:
        assert started(first) == started(second) == " la"  # both are generating
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(client.responses.create, model="bigram", input="Three",
                                  max_output_tokens=5, temperature=0)
            time.sleep(0.3)
            with pytest.raises(openai.RateLimitError):
                client.responses.create(model="bigram", input="Four", temperature=0)
            first.close()  # the first client goes away
            events = list(second)
            third = waiting.result(timeout=60)
    assert server.engine.batch.largest == 2
    done = events[-1].response
    assert done.status == "incomplete" and done.usage.output_tokens == 300
    assert done.output_text == " la" * (300 - 3)  # after <|channel|>final<|message|>
    assert third.status == "incomplete" and third.output_text == " la" * 2
    assert len(server.engine.batch) == 0
    assert server.engine.generated_tokens - before < 10000  # the first stopped early


def test_cache_pool_keeps_recent_conversations_within_its_bytes(tiny_checkpoint, tokenizer):
    model = load_model(tiny_checkpoint)

    def conversation(first_token):
        cache = PromptCache(model)
        prompt = [first_token] + list(range(10, 40))
        generate(model, prompt, tokenizer=tokenizer, max_tokens=2, temperature=0,
                 prompt_cache=cache)
        return cache, prompt

    (a, prompt_a), (b, prompt_b), (c, prompt_c) = (conversation(t) for t in (1, 2, 3))
    one = sum(array.nbytes for array in a.state)
    pool = CachePool(model, max_bytes=2 * one)
    for cache in (a, b, c):
        pool.put(cache)
    assert len(pool) == 2  # a, the least recently used, is gone
    assert pool.take(prompt_b + [5]) is b
    assert pool.take(prompt_c) is c
    assert pool.take(prompt_a) not in (a, b, c)  # a new, empty cache
    # A prompt that shares only a short start with a cached conversation (the same system
    # prompt, another conversation) gets a new cache: the conversation keeps its own.
    pool.put(b)
    pool.put(c)
    assert pool.take(prompt_c[:5] + [1, 2, 3]) not in (b, c) and len(pool) == 2
    assert pool.take(prompt_c[:-1] + [9]) is c
    cacheless = CachePool(model, max_bytes=0)
    cacheless.put(a)
    assert len(cacheless) == 0 and cacheless.take(prompt_a) is not a


def test_a_non_streaming_client_that_disconnects_stops_its_generation(servers):
    server = servers("endless")
    before = server.engine.generated_tokens
    body = json.dumps({"model": "bigram", "messages": [{"role": "user", "content": "Go on"}],
                       "max_tokens": 100000, "temperature": 0}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(1.0)  # generating
    after = server.client().chat.completions.create(
        model="bigram", messages=[{"role": "user", "content": "Go on"}], max_tokens=3,
        temperature=0)
    assert after.choices[0].finish_reason == "length"
    assert server.engine.generated_tokens - before < 5000  # far from the 100000 asked for


# -- errors ----------------------------------------------------------------------------------


def test_errors(servers):
    server = servers("answer")
    client = server.client()
    with pytest.raises(openai.NotFoundError) as error:
        client.responses.create(model="gpt-5", input="Hi")
    assert error.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model="bigram", input="Hi", temperature=-1)
    assert error.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="bigram", messages=[{"role": "user",
                                                                  "content": "Hi"}], top_p=0)
    assert error.value.body["param"] == "top_p"
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model="bigram", input="Hi", max_output_tokens=10 ** 6)
    assert error.value.body["code"] == "context_length_exceeded"
    # OpenAI's wording, which clients match (litellm's ContextWindowExceededError) ...
    message = error.value.body["message"]
    prompt = int(re.search(r"\((\d+) in the messages", message).group(1))
    context = server.engine.model.config.max_position_embeddings
    assert message == (f"This model's maximum context length is {context} tokens. However, you "
                       f"requested {prompt + 10 ** 6} tokens ({prompt} in the messages, "
                       f"{10 ** 6} in the completion). Please reduce the length of the messages "
                       "or completion.")
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model="bigram", input=[{"type": "function_call_output",
                                                        "call_id": "nope", "output": "x"}])
    assert error.value.body["param"] == "input[0].call_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="bigram", input="Hi", previous_response_id="resp_nope")
    # ... and a stream that cannot fit gets the same 400 before any event, as from OpenAI.
    with pytest.raises(openai.BadRequestError) as error:
        with client.responses.stream(model="bigram", input="Hi", max_output_tokens=10 ** 6):
            pass
    assert error.value.body["code"] == "context_length_exceeded"
    for body in (b"{not json", b"[1]"):
        status, text = http("POST", server.url + "/v1/chat/completions", body)
        assert status == 400 and "Traceback" not in text
        assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}
    status, text = http("GET", server.url + "/v1/nothing-here")
    assert status == 404 and json.loads(text)["error"]["message"]
    # ... and it keeps serving.
    assert client.responses.create(model="bigram", input="Hi", temperature=0).output_text \
        == ANSWER


def test_api_key(servers):
    server = servers("answer", api_key="sesame")
    with pytest.raises(openai.AuthenticationError) as error:
        server.client(api_key="wrong").models.list()
    assert error.value.body["code"] == "invalid_api_key"
    assert http("GET", server.url + "/v1/models")[0] == 401
    assert [m.id for m in server.client(api_key="sesame").models.list()] == ["bigram"]


# -- the command ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(folder: Path, port: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OPENHARMONY_VOCAB=str(VOCAB))
    process = subprocess.Popen(
        [sys.executable, "-m", "openharmony", "serve", "--model", str(folder), "--port",
         str(port), *extra], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            http("GET", f"http://127.0.0.1:{port}/health")
            return process
        except OSError:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the server did not start")


def test_serve_command_logs_requests_and_stops_on_sigterm(tmp_path, tiny_vocab_checkpoint,
                                                          tokenizer):
    folder = write_bigram_checkpoint(tiny_vocab_checkpoint, tmp_path / "hf",
                                     chains(tokenizer, "answer"))
    port = free_port()
    process = start_serve(folder, port, "--api-key", "k")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k",
                               max_retries=0)
        assert client.chat.completions.create(
            model="hf", messages=[{"role": "user", "content": "Hi"}], temperature=0
        ).choices[0].message.content == ANSWER
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then ends the process by the signal it caught (as it should).
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
    log = process.stderr.read()
    line = next(line for line in log.splitlines() if "POST /v1/chat/completions" in line)
    generated = len(reply_tokens(tokenizer, "answer"))
    assert " 200 prompt=" in line and f" generated={generated} " in line, log
    assert "Traceback" not in log and "stopped: the generation thread has ended" in log


# -- Codex CLI ----------------------------------------------------------------------------------


def codex_binary() -> str | None:
    local = REPO_ROOT / ".codex-cli" / "node_modules" / ".bin" / "codex"
    return str(local) if local.exists() else shutil.which("codex")


CODEX_CONFIG = """\
model = "bigram"
model_provider = "openharmony"

[model_providers.openharmony]
name = "openharmony"
base_url = "{url}/v1"
wire_api = "responses"
"""


@pytest.mark.skipif(codex_binary() is None, reason="Codex CLI is not installed (scripts/test.sh "
                    "installs it with npm into .codex-cli/; npm or its registry was missing)")
def test_codex_exec_gets_the_answer(servers, tmp_path):
    """Codex CLI with a custom model provider on the Responses API: its real request (its
    instructions, its tools of every type, streaming) gets the model's answer."""
    server = servers("answer")
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(CODEX_CONFIG.format(url=server.url))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CODEX_HOME": str(home)}
    done = subprocess.run([codex_binary(), "exec", "--skip-git-repo-check", "Say hello"],
                          cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ANSWER, done.stderr
