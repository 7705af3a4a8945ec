"""Prompts rendered and tokenized off the event loop, with the work bounded before it starts.

openai-harmony renders a conversation into tokens holding the GIL, and its tokenizer takes
time quadratic in the length of one word (one piece of the o200k split: a run of letters, of
punctuation or of whitespace): 100k characters of one letter take seconds, and 2 MB of one
character make it panic (a Rust stack overflow in its regex, raised as pyo3's
`PanicException`, a `BaseException`, so `except Exception` misses it). So:

* prompts are rendered in worker processes (`Renderer`): a thread would still hold the GIL,
  and every other client, `/health` included, would wait;
* before rendering, a text with a run of more than `MAX_WORD_CHARS` letters, punctuation or
  whitespace is refused (at that length one word takes well under a second), so no render
  can be pathological and the panic is never reached; it is still caught, narrowly, in case.

Refusals are `ValueError`s whose message is for the client (the app answers 400).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from openai_harmony import Conversation, Role

from ..chat import Chat
from ..tokenizer import Tokenizer, load_tokenizer

MAX_WORD_CHARS = 10_000
RENDER_WORKERS = 2  # one pathological-but-allowed prompt does not hold up the others

# A run longer than the cap, matched only where a run starts (the lookbehind) so that the
# scan stays linear; it runs only on a text with a long stretch free of whitespace (str.split
# finds those at C speed) or with a long whitespace run.
_LONG_RUN = re.compile("|".join(
    rf"(?<!{cls}){cls}{{{MAX_WORD_CHARS + 1}}}" for cls in (r"[^\W\d_]", r"(?:[^\w\s]|_)")))
_LONG_SPACE = re.compile(rf"\s{{{MAX_WORD_CHARS + 1}}}")


def has_long_word(text: str) -> bool:
    """Whether `text` has a run of more than MAX_WORD_CHARS letters, punctuation or
    whitespace (a superset of the o200k pieces that long)."""
    if len(text) <= MAX_WORD_CHARS:
        return False
    if _LONG_SPACE.search(text):
        return True
    return max(map(len, text.split())) > MAX_WORD_CHARS and bool(_LONG_RUN.search(text))


def render_conversation(tokenizer: Tokenizer, conversation_json: str,
                        check_words: bool = True) -> list[int]:
    """The prompt tokens of a conversation (`Chat.conversation().to_json()`), as `Chat.render`
    makes them; `ValueError` when a word is longer than MAX_WORD_CHARS or openai-harmony
    refuses the text."""
    if check_words:
        _check_words(conversation_json)
    try:
        conversation = Conversation.from_json(conversation_json)
        return tokenizer.harmony().render_conversation_for_completion(conversation,
                                                                      Role.ASSISTANT)
    except RecursionError:
        raise ValueError("the conversation nests too deeply to render (a tool's "
                         "parameters?)") from None
    except ValueError as error:
        raise ValueError(f"openai-harmony cannot render the conversation: {error}") from None
    except BaseException as error:
        if type(error).__name__ != "PanicException":  # pyo3's, from openai-harmony's Rust
            raise
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"openai-harmony's tokenizer failed on the prompt ({first_line})"
                         ) from None


def _check_words(conversation_json: str) -> None:
    """Every text that will be tokenized (messages, instructions, tools), checked for runs
    over the cap."""
    stack = [json.loads(conversation_json)]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if has_long_word(value):
                raise ValueError(
                    f"a word (a run of letters, punctuation or whitespace) is longer than "
                    f"{MAX_WORD_CHARS} characters: openai-harmony's tokenizer takes time "
                    "quadratic in a word's length")
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


# -- the worker processes ---------------------------------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def _start_worker(vocab_path) -> None:
    global _worker_tokenizer
    # Ctrl-C reaches the whole process group: the server stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["RUST_BACKTRACE"] = "0"  # a panic is reported to the client, in one line
    _worker_tokenizer = load_tokenizer(vocab_path)
    _worker_tokenizer.harmony()


def _render_in_worker(conversation_json: str) -> list[int]:
    return render_conversation(_worker_tokenizer, conversation_json)


def _conversation_json(chat: Chat) -> str:
    return chat.conversation().to_json()


def _ready() -> None:
    pass


class Renderer:
    """Renders chats in `workers` processes (spawned: the server's threads are not forked)."""

    def __init__(self, tokenizer: Tokenizer, workers: int = RENDER_WORKERS):
        self._vocab_path = tokenizer.vocab_path
        self._workers = workers
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(self._vocab_path,))

    def start(self) -> None:
        """Start a worker now, so that the first request does not wait for it."""
        self._pool.submit(_ready)

    async def render(self, chat: Chat) -> list[int]:
        """The prompt tokens of `chat`; ValueError as `render_conversation`. Its JSON is made
        in a thread (Python code, which leaves the event loop its turns), the tokens in a
        worker process (openai-harmony's Rust code holds the GIL throughout)."""
        text = await asyncio.to_thread(_conversation_json, chat)
        pool = self._pool
        try:
            return await asyncio.wrap_future(pool.submit(_render_in_worker, text))
        except BrokenProcessPool:  # a worker died (killed, out of memory): start anew
            if self._pool is pool:
                self._pool = self._new_pool()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
