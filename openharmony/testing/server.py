"""A server in a thread of this process on a free loopback port, and the bigram replies that
make its answers known in advance: what the server tests and `scripts/server_prompt_tokens.py`
share. The openai SDK (the `test` extra) is imported only by `client()`."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from ..load import load_model
from ..server.app import create_app
from ..server.run import HEADER_TIMEOUT_SECONDS, KEEP_ALIVE_SECONDS, uvicorn_server
from .scripted import bigram_chains

ANSWER = "Hello"
THOUGHT = "Let me think."
ARGUMENTS = '{"city": "Paris"}'
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "The weather.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def reply_tokens(tokenizer, kind: str) -> list[int]:
    """What each checkpoint writes after `<|start|>assistant`."""
    s, encode = tokenizer.special_ids, tokenizer.encode
    if kind == "answer":
        return ([s["<|channel|>"]] + encode("final") + [s["<|message|>"]] + encode(ANSWER)
                + [s["<|return|>"]])
    if kind == "reasoning":
        return ([s["<|channel|>"]] + encode("analysis") + [s["<|message|>"]] + encode(THOUGHT)
                + [s["<|return|>"]])
    if kind == "tool":
        return (encode(" to=functions.get_weather") + [s["<|channel|>"]] + encode("commentary ")
                + [s["<|constrain|>"]] + encode("json") + [s["<|message|>"]] + encode(ARGUMENTS)
                + [s["<|call|>"]])
    if kind == "endless":  # " la" follows itself
        return [s["<|channel|>"]] + encode("final") + [s["<|message|>"]] + encode(" la" * 2)
    raise ValueError(kind)


def chains(tokenizer, kind: str) -> dict[int, int]:
    """The bigram chains of a checkpoint that replies `reply_tokens(tokenizer, kind)`."""
    return bigram_chains(tokenizer.encode("assistant") + reply_tokens(tokenizer, kind))


class Server:
    """A server in a thread of this process, on a free loopback port."""

    def __init__(self, folder: Path, tokenizer, model_id: str = "bigram", *,
                 header_timeout: float = HEADER_TIMEOUT_SECONDS,
                 keep_alive: float = KEEP_ALIVE_SECONDS, **options):
        self.app = create_app(load_model(folder), tokenizer, model_id, **options)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # uvicorn configured as `openharmony serve` configures it (openharmony.server.run).
        self._server = uvicorn_server(self.app, header_timeout=header_timeout,
                                      keep_alive=keep_alive, grace=1)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        daemon=True)
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)

    @property
    def engine(self):
        return self.app.state.engine

    def client(self, **options):
        """An openai SDK client of this server."""
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=options.pop("api_key", "none"),
                             max_retries=0, **options)

    def stop(self):
        self._server.should_exit = True
        self._thread.join(timeout=10)
