"""`openharmony serve` under load, faults and hostile input (issue 23): real sockets on
loopback, bounded in count and time, on the scripted bigram checkpoints of test_server.py.

In-process servers (a thread of this process) for the requests; `python -m openharmony serve`
in a subprocess for what only the command does: signals, exit codes, a busy port.
"""

from __future__ import annotations

import gc
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from openharmony.chat import Chat, ChatOptions, FunctionTool
from openharmony.server.render import MAX_WORD_CHARS, render_conversation
from openharmony.testing import bigram_chains, write_bigram_checkpoint
from openharmony.testing.server import Server, reply_tokens
from openharmony.tokenizer import load_tokenizer
from vocab import VOCAB, requires_vocab

pytestmark = requires_vocab

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB)


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_vocab_checkpoint, tokenizer):
    started = {}

    def get(kind, **options):
        key = (kind, tuple(sorted(options.items())))
        if key not in started:
            folder = write_bigram_checkpoint(
                tiny_vocab_checkpoint, tmp_path_factory.mktemp(kind) / "hf",
                bigram_chains(tokenizer.encode("assistant") + reply_tokens(tokenizer, kind)))
            started[key] = Server(folder, tokenizer, **options)
        return started[key]

    yield get
    for server in started.values():  # all at once: each waits for its threads and workers
        server._server.should_exit = True
    for server in started.values():
        server.stop()
    started.clear()
    gc.collect()


# -- raw HTTP on loopback ---------------------------------------------------------------------


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None,
            timeout: float = 30) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def post_json(port: int, path: str, body) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, text = request(port, "POST", path, raw)
    return status, json.loads(text)


def open_stream(port: int, body: dict, path: str = "/v1/chat/completions") -> socket.socket:
    """A streaming request sent on a raw socket (its reply not read yet)."""
    raw = json.dumps(dict(body, stream=True)).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
    return sock


def status_of(sock: socket.socket) -> int:
    """The status of the reply on `sock`, read up to the end of its headers."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return int(data.split(b" ", 2)[1])


def is_error_object(body: dict) -> bool:
    return set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}


ENDLESS = {"model": "bigram", "messages": [{"role": "user", "content": "Go"}],
           "max_tokens": 100000, "temperature": 0}


# -- admission and queueing (items 1, 2) ---------------------------------------------------------


def test_a_burst_is_admitted_exactly_to_batch_plus_queue(servers):
    server = servers("endless", max_batch=8, max_queue=2)
    socks = [open_stream(server.port, ENDLESS) for _ in range(14)]
    try:
        statuses = sorted(status_of(s) for s in socks)
    finally:
        for s in socks:
            s.close()
    assert statuses == [200] * 10 + [429] * 4


def test_a_waiting_client_that_leaves_frees_its_place_at_once(servers):
    server = servers("endless", max_batch=1, max_queue=2)
    running = open_stream(server.port, ENDLESS)
    assert status_of(running) == 200
    waiting = [open_stream(server.port, ENDLESS) for _ in range(2)]
    try:
        assert [status_of(s) for s in waiting] == [200, 200]  # a stream starts while it waits
        for s in waiting:
            s.close()  # they time out and go away ...
        time.sleep(0.5)
        # ... and two new requests take their places; a third is one too many.
        again = [open_stream(server.port, ENDLESS) for _ in range(3)]
        assert sorted(status_of(s) for s in again) == [200, 200, 429]
        for s in again:
            s.close()
    finally:
        running.close()


# -- request size and work on the event loop (items 3, 4, 5) ------------------------------------


def test_a_body_over_the_cap_gets_413_before_it_is_read(servers):
    server = servers("answer", max_request_bytes=10**6)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(50 * 10**6))
    conn.endheaders()  # and not one byte of the 50 MB
    reply = conn.getresponse()
    assert reply.status == 413 and is_error_object(json.loads(reply.read()))
    conn.close()

    # Chunked: refused once past the cap, not after reading everything.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    for _ in range(10**6 // len(chunk) + 2):
        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    assert status_of(sock) == 413
    sock.close()


def test_the_default_cap_follows_the_context(servers):
    server = servers("answer")  # context 131072 tokens: the default cap is 2.1 MB
    big = {"model": "bigram", "messages": [{"role": "user", "content": "hi"}],
           "metadata": {"note": "x" * 1_500_000}, "max_tokens": 0}
    status, body = post_json(server.port, "/v1/chat/completions", big)  # 1.5 MB: read
    assert status == 400 and body["error"]["param"] == "max_tokens", body
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Length", str(50 * 10**6))
    conn.endheaders()
    assert conn.getresponse().status == 413


def test_health_answers_while_a_pathological_prompt_is_tokenized(servers):
    """openai-harmony's tokenizer is quadratic in the length of one word and holds the GIL:
    the worst prompt under the word cap (20 words of just under MAX_WORD_CHARS) is
    tokenized off the event loop while /health and the others go on. (It asks for the whole
    context, so that it is refused once tokenized: the test times the tokenizer, not a
    prefill.)"""
    server = servers("answer")
    word = "a" * (MAX_WORD_CHARS - 1)
    worst = {"model": "bigram", "max_tokens": 131072,
             "messages": [{"role": "user", "content": " ".join([word] * 20)}]}
    done = {}
    thread = threading.Thread(target=lambda: done.update(
        result=post_json(server.port, "/v1/chat/completions", worst)))
    started = time.perf_counter()
    thread.start()
    waits = []
    while thread.is_alive() and len(waits) < 50:
        t = time.perf_counter()
        assert request(server.port, "GET", "/health", timeout=5)[0] == 200
        waits.append(time.perf_counter() - t)
        time.sleep(0.05)
    thread.join(timeout=120)
    took = time.perf_counter() - started
    assert done["result"][1]["error"]["code"] == "context_length_exceeded"
    assert len(waits) >= 3, f"the prompt took only {took:.2f} s: not a worst case"
    assert max(waits) < 0.5, (max(waits), took)


def test_one_word_over_the_cap_and_too_many_messages_are_refused_before_tokenizing(servers):
    server = servers("answer")
    started = time.perf_counter()
    status, body = post_json(server.port, "/v1/chat/completions", {
        "model": "bigram", "messages": [{"role": "user", "content": "a" * 150000}]})
    assert status == 400 and body["error"]["param"] == "messages", body
    status, body = post_json(server.port, "/v1/responses", {
        "model": "bigram", "input": [{"role": "user", "content": ""}] * 10001})
    assert status == 400 and body["error"]["param"] == "input", body
    status, body = post_json(server.port, "/v1/responses", {  # 3.3 MB: over the size cap
        "model": "bigram", "input": [{"role": "user", "content": ""}] * 100000})
    assert status == 413 and body["error"]["code"] == "request_too_large", body
    assert time.perf_counter() - started < 5  # not tokenized: refused at once


def test_a_tokenizer_panic_is_a_400_not_a_crash(tokenizer):
    """openai-harmony panics (a BaseException) on 2 MB of one character: the render returns
    the error; the server's caps keep such text from reaching it at all."""
    chat = Chat(tokenizer)
    chat.add_user("a" * 2_000_000)
    with pytest.raises(ValueError, match="tokenizer failed"):
        render_conversation(tokenizer, chat.conversation().to_json(), check_words=False)


def test_the_workers_render_what_chat_renders(tokenizer):
    """The worker gets the conversation as JSON: the tokens are openai-harmony's own."""
    chat = Chat(tokenizer, ChatOptions(reasoning_effort="high", developer="Be brief.",
                                       tools=[FunctionTool("get_weather", "The weather.", {
                                           "type": "object",
                                           "properties": {"city": {"type": "string"}}})]))
    chat.add_user("Weather in Paris?")
    chat.add_reasoning("Call the tool.")
    chat.add_tool_call("get_weather", '{"city": "Paris"}')
    chat.add_tool_result("get_weather", "sunny")
    chat.add_assistant("Sunny.")
    chat.add_user("And now?")
    assert render_conversation(tokenizer, chat.conversation().to_json()) == chat.render()


# -- 400, not 500, for bad input (items 6-9) ---------------------------------------------------


NESTED = b"[" * 100000 + b"]" * 100000
BAD_BODIES = [
    ("whole body nested", "/v1/chat/completions", NESTED, None),
    ("messages nested", "/v1/chat/completions", b'{"messages": ' + NESTED + b"}", "messages"),
    ("input nested", "/v1/responses", b'{"input": ' + NESTED + b"}", "input"),
    ("tool parameters nested", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
     b'"function": {"name": "f", "parameters": ' + b'{"a": ' * 500 + b"1" + b"}" * 500
     + b"}}]}", "tools"),
    ("huge integer", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}",
     "max_tokens"),
    ("lone surrogate", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages[0].content"),
    ("tool_calls of strings", "/v1/chat/completions",
     json.dumps({"messages": [{"role": "user", "content": "hi"},
                              {"role": "assistant", "tool_calls": ["x"]}]}).encode(),
     "messages[1].tool_calls[0]"),
    ("function not an object", "/v1/chat/completions",
     json.dumps({"messages": [{"role": "user", "content": "hi"}],
                 "tools": [{"type": "function", "function": "x"}]}).encode(),
     "tools[0].function"),
    ("custom tool format", "/v1/responses",
     json.dumps({"input": "hi", "tools": [{"type": "custom", "name": "t",
                                           "format": "zz"}]}).encode(), "tools[0].format"),
    ("model a number", "/v1/chat/completions",
     json.dumps({"model": 5, "messages": [{"role": "user", "content": "hi"}]}).encode(),
     "model"),
    ("previous_response_id a list", "/v1/responses",
     json.dumps({"input": "hi", "previous_response_id": ["a"]}).encode(),
     "previous_response_id"),
]


@pytest.mark.parametrize("name, path, body, param", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_input_gets_400_naming_the_field(servers, name, path, body, param):
    server = servers("answer")
    status, reply = post_json(server.port, path, body)
    assert status == 400 and is_error_object(reply), reply
    assert reply["error"]["param"] == param, reply


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def server_log():
    """The records of the server's and uvicorn's loggers."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("openharmony.server", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)  # as `openharmony serve` sets it: one line per request
    yield handler.records
    for logger, level in zip(loggers, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_bug_is_a_500_logged_once(servers, server_log, monkeypatch):
    server = servers("answer")

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("openharmony.server.app.chat_request", bug)
    status, body = post_json(server.port, "/v1/chat/completions",
                             {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 500 and is_error_object(body) and "a bug" not in json.dumps(body)
    time.sleep(0.2)
    assert len([r for r in server_log if r.exc_info]) == 1


def test_a_client_that_aborts_its_upload_is_one_log_line(servers, server_log):
    server = servers("answer")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"mess")
        time.sleep(0.2)
    time.sleep(0.5)
    lines = [r.getMessage() for r in server_log]
    assert not any(r.exc_info for r in server_log), lines
    assert len(lines) == 1 and "POST /v1/chat/completions 499" in lines[0], lines


# -- connections and auth (items 14, 15) -------------------------------------------------------


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> bool:
    """Whether the server closes `sock` within `seconds`; `trickle` is sent a byte at a time."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    for i in range(10**6):
        if time.monotonic() > deadline:
            return False
        try:
            if i < len(trickle):
                sock.sendall(trickle[i:i + 1])
            if sock.recv(4096) == b"":
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


def test_idle_and_slow_connections_are_closed(servers):
    server = servers("answer")
    short = servers("answer", header_timeout=1, keep_alive=1)  # short, for the test
    with socket.create_connection(("127.0.0.1", short.port)) as idle:
        assert closed_within(idle, 3)  # never sends a request
    with socket.create_connection(("127.0.0.1", short.port)) as slow:
        assert closed_within(slow, 3, trickle=b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " +
                             b"b" * 100)  # a header a byte at a time (slowloris)
    with socket.create_connection(("127.0.0.1", short.port)) as kept:
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(kept) == 200
        assert closed_within(kept, 3)  # keep-alive ends
    assert request(server.port, "GET", "/health")[0] == 200


def test_the_auth_scheme_is_case_insensitive(servers):
    server = servers("answer", api_key="sesame")
    for scheme in ("Bearer", "bearer", "BEARER"):
        headers = {"Authorization": f"{scheme} sesame"}
        assert request(server.port, "GET", "/v1/models", headers=headers)[0] == 200
    assert request(server.port, "GET", "/v1/models",
                   headers={"Authorization": "bearer wrong"})[0] == 401
    assert request(server.port, "GET", "/v1/models",
                   headers={"Authorization": "Basic sesame"})[0] == 401


# -- the command: signals, exit codes, a busy port (items 11, 12, 13) ----------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(folder: Path, port: int, wait: bool = True) -> subprocess.Popen:
    # No Python warnings (the native kernels may be unbuilt here): the log is the server's.
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OPENHARMONY_VOCAB=str(VOCAB),
               PYTHONWARNINGS="ignore")
    process = subprocess.Popen(
        [sys.executable, "-m", "openharmony", "serve", "--model", str(folder), "--port",
         str(port)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while wait and time.time() < deadline:
        try:
            request(port, "GET", "/health", timeout=5)
            return process
        except OSError:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.2)
    return process


@pytest.fixture(scope="module")
def endless_folder(tmp_path_factory, tiny_vocab_checkpoint, tokenizer):
    return write_bigram_checkpoint(
        tiny_vocab_checkpoint, tmp_path_factory.mktemp("endless_cmd") / "bigram",
        bigram_chains(tokenizer.encode("assistant") + reply_tokens(tokenizer, "endless")))


def data_lines(data: bytes) -> list[str]:
    """The `data:` payloads of an SSE reply."""
    return [line[len("data: "):] for line in data.decode(errors="replace").split("\n")
            if line.startswith("data: ")]


def read_to_end(sock: socket.socket, data: bytes = b"") -> bytes:
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


def stopped_mid_stream(folder: Path, signals: list[int]):
    """Start the command, start a Chat Completions stream and a Responses one, send `signals`
    once 5 tokens came: the exit status, each stream's data and the log."""
    port = free_port()
    process = serve(folder, port)
    try:
        chat = open_stream(port, ENDLESS)
        responses = open_stream(port, {"model": "bigram", "input": "Go", "temperature": 0,
                                       "max_output_tokens": 100000}, path="/v1/responses")
        data = b""
        while data.count(b'"content": " la"') < 5:  # tokens are flowing
            chunk = chat.recv(65536)
            assert chunk, data
            data += chunk
        for sig in signals:
            process.send_signal(sig)
            time.sleep(0.05)
        chat_data, responses_data = read_to_end(chat, data), read_to_end(responses)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    return code, data_lines(chat_data), data_lines(responses_data), process.stderr.read()


def test_sigterm_ends_streams_properly(endless_folder):
    code, data, responses, log = stopped_mid_stream(endless_folder, [signal.SIGTERM])
    assert code == -signal.SIGTERM, log  # after a clean shutdown, by the signal it got
    assert data[-1] == "[DONE]", data[-3:]
    last = json.loads(data[-2])
    assert last["error"]["code"] == "server_shutting_down", last
    sent = sum(1 for d in data[:-2] if json.loads(d)["choices"][0]["delta"].get("content"))
    assert sent >= 5
    line = next(line for line in log.splitlines() if "POST /v1/chat/completions" in line)
    generated = int(line.split("generated=")[1].split()[0])
    assert generated >= sent, line  # what was sent, counted (plus the header tokens)
    assert "Traceback" not in log and "CancelledError" not in log, log
    failed = json.loads(responses[-1])
    assert failed["type"] == "response.failed", responses[-3:]
    assert failed["response"]["error"]["code"] == "server_shutting_down"


def test_ctrl_c_twice_exits_130_without_tracebacks(endless_folder):
    """The first Ctrl-C ends the streams as SIGTERM does; the second stops waiting."""
    code, data, _, log = stopped_mid_stream(endless_folder, [signal.SIGINT, signal.SIGINT])
    assert code == 130 and data[-1] == "[DONE]", (code, data[-3:], log)
    assert "Traceback" not in log and "CancelledError" not in log, log


def test_a_busy_port_is_one_error_line(endless_folder):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = serve(endless_folder, taken.getsockname()[1], wait=False)
        code = process.wait(timeout=60)
        log = process.stderr.read()
    assert code == 1, log
    assert log.count("\n") == 1 and log.startswith("error: ") and "serving" not in log, log
