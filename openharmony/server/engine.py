"""The generation thread: requests run one at a time, from a bounded queue, each on the prompt
cache that already holds the longest prefix of its prompt.

Why one thread: MLX evaluates one graph at a time on a device, and a chat turn is a tight loop
of small steps, so concurrent Python threads would only interleave them. Requests wait in a
FIFO queue of `max_queue`; when it is full, `submit` raises `QueueFull` (the app answers 429).

The pool of `PromptCache`s is what makes multi-turn conversations and agent loops cheap: the
next request of a conversation starts with the previous prompt and reply, so the cache that
served it reuses all of that (exact also after the sliding-window caches wrapped: the
`PromptCache` guarantee) and only the new tokens are computed. Several conversations keep
their own caches; the pool is bounded by the bytes of the caches' keys and values, and the
least recently used cache is dropped first.

Events cross from the generation thread to the request's event loop through
`loop.call_soon_threadsafe`; a request whose client went away sets `cancelled`, and the
thread stops its generation before the next token.

Expert parallel (docs/distributed.md): only rank 0 serves. Before each turn its generation
thread broadcasts the turn (prompt and options) to the other ranks, which run `follow`: the
same turns on the same cache pool, so every forward has all ranks. A cancelled turn then
runs to its end (the others cannot know where rank 0 stopped); its events are dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..cache import PromptCache
from ..chat import ChatTurn
from ..errors import OpenHarmonyError
from ..parallel import broadcast_text
from ..sampling import SamplingOptions

log = logging.getLogger("openharmony.server")


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


def cache_bytes(cache: PromptCache) -> int:
    """Bytes of the keys and values a prompt cache holds now."""
    return sum(array.nbytes for array in cache.state)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class CachePool:
    """Prompt caches of recent conversations, at most `max_bytes` of keys and values in all
    (the most recently used one is always kept), least recently used evicted first.
    `max_bytes=0` keeps none: every request computes its whole prompt (a cache-less server)."""

    def __init__(self, model, max_bytes: int):
        self.model = model
        self.max_bytes = max_bytes
        self._caches: list[PromptCache] = []  # least recently used first
        self._lock = threading.Lock()

    def take(self, prompt: Sequence[int]) -> PromptCache:
        """The cache sharing the longest prefix with `prompt` (out of the pool while in use),
        or a new one.

        A cache goes back to the common prefix when it is reused, so taking one that holds
        another conversation loses that conversation's tokens past the prefix (two agents with
        the same system prompt and tools). It is taken only when that loss is at most what the
        new request reuses; otherwise the new request starts a cache of its own.
        """
        with self._lock:
            best = max(self._caches, key=lambda c: common_prefix(c.tokens, prompt), default=None)
            if best is None:
                return PromptCache(self.model)
            reused = common_prefix(best.tokens, prompt)
            if reused == 0 or len(best.tokens) - reused > reused:
                return PromptCache(self.model)
            self._caches.remove(best)
            return best

    def put(self, cache: PromptCache) -> None:
        if self.max_bytes == 0:
            return
        with self._lock:
            self._caches.append(cache)
            while len(self._caches) > 1 and self.total_bytes() > self.max_bytes:
                self._caches.pop(0)

    def total_bytes(self) -> int:
        return sum(cache_bytes(c) for c in self._caches)

    def __len__(self) -> int:
        return len(self._caches)


@dataclass
class Job:
    """One request's turn: what to generate, and where its events go.

    The generation thread posts ("event", StreamEvent) items, then ("done", ChatTurn) or
    ("error", OpenHarmonyError | Exception), to `events`, an asyncio queue of the request's loop.
    """

    prompt: list[int]
    turn_options: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def post(self, kind: str, value) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the request's loop is closed: nobody is listening
            self.cancelled = True


class Engine:
    """Runs chat turns for the server on one thread; see the module docstring."""

    def __init__(self, model, tokenizer, *, max_queue: int = 16,
                 max_cache_bytes: int = 4 * 10**9):
        self.model = model
        self.tokenizer = tokenizer
        self.pool = CachePool(model, max_cache_bytes)
        self.generated_tokens = 0  # by all turns so far, stopped ones included
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="openharmony-generation",
                                        daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], loop: asyncio.AbstractEventLoop, **turn_options) -> Job:
        """Queue a turn; raises QueueFull when `max_queue` requests are already waiting."""
        job = Job(prompt, turn_options, loop)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job

    def close(self) -> None:
        """Stop the thread after the turn it is running (callers cancel their jobs first)."""
        while True:
            try:  # waiting jobs will not run: tell their requests
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.post("error", OpenHarmonyError("the server is shutting down"))
        self._jobs.put(None)
        self._thread.join(timeout=30)
        group = getattr(self.model, "group", None)
        if group is not None and not self._thread.is_alive():
            broadcast_text(None, group)  # the other ranks' `follow` returns

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not job.cancelled:
                self._run_job(job)

    def _run_job(self, job: Job) -> None:
        group = getattr(self.model, "group", None)
        if group is not None:
            broadcast_text(json.dumps(_turn_to_json(job.prompt, job.turn_options)), group)
        cache = self.pool.take(job.prompt)
        events = turn = None
        try:
            turn = ChatTurn(self.model, self.tokenizer, job.prompt, prompt_cache=cache,
                            **job.turn_options)
            events = iter(turn)
            for event in events:
                if job.cancelled:
                    if group is None:
                        break
                    continue  # every rank must run the turn to its end
                job.post("event", event)
            else:
                job.post("done", turn)
        except OpenHarmonyError as error:  # e.g. a reply that breaks the harmony format
            job.post("error", error)
        except Exception as error:  # a bug: logged here, a generic error for the client
            log.exception("generation failed")
            job.post("error", error)
        finally:
            if events is not None:
                events.close()  # a stopped turn's generation ends here, its cache consistent
                self.generated_tokens += len(turn.tokens)
            self.pool.put(cache)


def _turn_to_json(prompt: list[int], options: dict[str, Any]) -> dict:
    options = dict(options, stop=list(options.get("stop", ())))
    sampling = options.get("sampling")
    options["sampling"] = None if sampling is None else dataclasses.asdict(sampling)
    return {"prompt": list(prompt), "options": options}


def follow(model, tokenizer, max_cache_bytes: int) -> None:
    """Ranks other than 0 of a distributed server: run the turns rank 0's engine announces,
    in its order and on an identical cache pool, until it closes."""
    pool = CachePool(model, max_cache_bytes)
    while (text := broadcast_text(None, model.group)) is not None:
        turn = json.loads(text)
        options = turn["options"]
        if options["sampling"] is not None:
            options["sampling"] = SamplingOptions(**options["sampling"])
        cache = pool.take(turn["prompt"])
        events = None
        try:
            events = iter(ChatTurn(model, tokenizer, turn["prompt"], prompt_cache=cache,
                                   **options))
            for _ in events:
                pass
        except OpenHarmonyError:
            pass  # rank 0 met the same error and reports it
        finally:
            if events is not None:
                events.close()
            pool.put(cache)
