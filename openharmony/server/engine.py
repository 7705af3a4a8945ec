"""The generation thread: concurrent requests decode as one batch (continuous batching), each
on the prompt cache that already holds the longest prefix of its prompt.

Why one thread: MLX evaluates one graph at a time on a device, so concurrent Python threads
would only interleave their steps. Instead the thread keeps up to `max_batch` requests
running and steps all of them with one forward of the model per token (openharmony/batch.py),
so the streams share each read of the weights. A request joins between two steps: its prompt
is prefilled alone on its own prompt cache, then its next step is in the batch. It leaves
between two steps when its turn ends (a stop token, a stop string, max_tokens) or its client
went away; the others go on. Each row samples with its own options, seed, stops and logprobs:
the per-token code is `openharmony.generate.Decoding` and `ChatTurn.feed`, as for a request
decoded alone. Requests beyond the batch wait in a FIFO queue of `max_queue`. Admission is
exact: `submit` counts every request it admitted and that has not ended (running, being
prefilled, waiting), and raises `QueueFull` (the app answers 429) beyond `max_batch +
max_queue`. A waiting request whose client went away (`cancel`) leaves the queue at once.

`shut_down` (SIGTERM, Ctrl-C) ends every running turn at its next step with `ShuttingDown`
(which carries the turn so far, for the request's reply and log) and every waiting one at once,
so that the app can end each stream properly before the server closes its connections.

The pool of `PromptCache`s is what makes multi-turn conversations and agent loops cheap: the
next request of a conversation starts with the previous prompt and reply, so the cache that
served it reuses all of that (exact also after the sliding-window caches wrapped: the
`PromptCache` guarantee) and only the new tokens are computed. Several conversations keep
their own caches; the pool is bounded by the bytes of the caches' keys and values, and the
least recently used cache is dropped first.

Events cross from the generation thread to the request's event loop through
`loop.call_soon_threadsafe`; a request whose client went away sets `cancelled`, and the
thread drops its row before the next step.

Expert parallel (docs/distributed.md): only rank 0 serves, and it decodes one turn at a time
(`max_batch` is 1): before each turn its generation thread broadcasts the turn (prompt and
options) to the other ranks, which run `follow`: the same turns on the same cache pool, so
every forward has all ranks. A cancelled turn then runs to its end (the others cannot know
where rank 0 stopped); its events are dropped. (Batching there would need every step's joins
and leaves broadcast as well; not done.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from .. import batch
from ..cache import PromptCache
from ..chat import ChatTurn
from ..errors import OpenHarmonyError
from ..parallel import broadcast_text
from ..sampling import SamplingOptions

log = logging.getLogger("openharmony.server")


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


class ShuttingDown(Exception):
    """The server is stopping: the turn ended where it was (`turn`: None if it never ran)."""

    def __init__(self, turn: ChatTurn | None = None):
        super().__init__("the server is shutting down")
        self.turn = turn


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
    `max_bytes=0` keeps none: every request computes its whole prompt (a cache-less server).
    `cache_options` go to every `PromptCache` (`kv_bits=8`: quantized KV caches, docs/cache.md)."""

    def __init__(self, model, max_bytes: int, **cache_options):
        self.model = model
        self.max_bytes = max_bytes
        self.cache_options = cache_options
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
                return PromptCache(self.model, **self.cache_options)
            reused = common_prefix(best.tokens, prompt)
            if reused == 0 or len(best.tokens) - reused > reused:
                return PromptCache(self.model, **self.cache_options)
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


@dataclass(eq=False)
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
    admitted: bool = True  # counted by the engine's admission until it ends

    def post(self, kind: str, value) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the request's loop is closed: nobody is listening
            self.cancelled = True


@dataclass(eq=False)
class Row:
    """A running request of the batch: its job, its chat turn, the prompt cache it holds."""

    job: Job
    turn: ChatTurn
    cache: PromptCache


class Engine:
    """Runs chat turns for the server on one thread, batched; see the module docstring.

    `max_batch=1` runs the turns one after another."""

    def __init__(self, model, tokenizer, *, max_queue: int = 16,
                 max_cache_bytes: int = 4 * 10**9, kv_bits: int | None = None,
                 max_batch: int = 8):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.model = model
        self.tokenizer = tokenizer
        self._group = getattr(model, "group", None)  # expert parallel: see the module docstring
        self.max_batch = max_batch if self._group is None else 1
        self.pool = CachePool(model, max_cache_bytes, kv_bits=kv_bits)
        self.generated_tokens = 0  # by all turns so far, stopped ones included
        self.batch = batch.Batch(model)
        self.capacity = self.max_batch + max_queue  # running, prefilling and waiting
        self._rows: dict = {}  # Decoding -> Row, the requests in the batch
        self._waiting: deque[Job] = deque()
        self._admitted = 0
        self._stopping = False  # shut_down: end every turn now
        self._closing = False  # close: end the thread once its turns are done
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="openharmony-generation",
                                        daemon=True)
        self._thread.start()

    def full(self) -> bool:
        """Whether `submit` would refuse now (a check before the work of rendering a prompt)."""
        return self._admitted >= self.capacity

    def submit(self, prompt: list[int], loop: asyncio.AbstractEventLoop, **turn_options) -> Job:
        """Queue a turn; raises QueueFull when `max_batch + max_queue` requests are admitted
        and not ended, ShuttingDown once `shut_down` was called."""
        job = Job(prompt, turn_options, loop)
        with self._lock:
            if self._stopping or self._closing:
                raise ShuttingDown()
            if self._admitted >= self.capacity:
                raise QueueFull
            self._admitted += 1
            self._waiting.append(job)
            self._lock.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The job's client went away: a waiting job leaves the queue now, a running one at
        the next step (no-op after its end)."""
        job.cancelled = True
        with self._lock:
            if job.admitted and job in self._waiting:
                self._waiting.remove(job)
                self._release(job)

    def shut_down(self) -> None:
        """End every turn now (see the module docstring); safe from a signal handler: it only
        sets a flag, which the generation thread reads at its next step. Expert parallel:
        turns run to their end, as for a cancel."""
        self._stopping = True

    def close(self) -> None:
        """Stop the thread after the turns it is running (callers cancel their jobs first)."""
        with self._lock:
            waiting = list(self._waiting)  # they will not run: tell their requests
            self._waiting.clear()
            for job in waiting:
                self._release(job)
            self._closing = True
            self._lock.notify()
        for job in waiting:
            job.post("error", ShuttingDown())
        self._thread.join(timeout=30)
        group = getattr(self.model, "group", None)
        if group is not None and not self._thread.is_alive():
            broadcast_text(None, group)  # the other ranks' `follow` returns

    def _release(self, job: Job) -> None:
        """The job no longer counts for admission (called once per job, under the lock)."""
        if job.admitted:
            job.admitted = False
            self._admitted -= 1

    def _run(self) -> None:
        while True:
            with self._lock:
                while not (self._rows or self._waiting or self._closing):
                    self._lock.wait()
                stopping = self._stopping and self._group is None
                if stopping:
                    waiting = list(self._waiting)
                    self._waiting.clear()
                    for job in waiting:
                        self._release(job)
                job = None
                if not stopping and self._waiting and len(self._rows) < self.max_batch:
                    job = self._waiting.popleft()  # joins between steps, one at a time
                if job is None and not self._rows and self._closing:
                    return
            if stopping:
                self._stop_all(waiting)
            elif job is not None:
                if job.cancelled:
                    with self._lock:
                        self._release(job)
                else:
                    self._start(job)
            elif self._rows:
                self._step()

    def _stop_all(self, waiting: list[Job]) -> None:
        for job in waiting:
            job.post("error", ShuttingDown())
        for row in list(self._rows.values()):
            row.job.post("error", ShuttingDown(row.turn))
            self._finish(row)

    def _start(self, job: Job) -> None:
        """The job's turn joins the batch, its prompt prefilled alone (or its error posted)."""
        if self._group is not None:
            broadcast_text(json.dumps(_turn_to_json(job.prompt, job.turn_options)), self._group)
        cache = self.pool.take(job.prompt)
        try:
            turn = ChatTurn(self.model, self.tokenizer, job.prompt, prompt_cache=cache,
                            **job.turn_options)
            self.batch.join(turn.decoding)
        except Exception as error:
            self._fail(job, error)
            self.pool.put(cache)
            with self._lock:
                self._release(job)
            return
        self._rows[turn.decoding] = Row(job, turn, cache)

    def _step(self) -> None:
        """Drop the rows whose client went away, step the rest, post the events of each token
        read; rows whose turn ended leave."""
        for row in list(self._rows.values()):
            if row.job.cancelled and self._group is None:  # distributed: runs to its end
                self._finish(row)
        try:
            ready = self.batch.step()
        except Exception as error:  # a bug: every row of the step fails
            for row in list(self._rows.values()):
                self._fail(row.job, error)
                self._finish(row)
            return
        for decoding, chunk in ready:
            row = self._rows[decoding]
            try:
                for event in row.turn.feed(chunk):
                    if not row.job.cancelled:
                        row.job.post("event", event)
            except Exception as error:  # e.g. a reply that breaks the harmony format
                self._fail(row.job, error)
                self._finish(row)
                continue
            if row.turn.finish_reason is not None:  # also a stop string the decoding
                row.job.post("done", row.turn)      # does not know of
                self._finish(row)

    def _fail(self, job: Job, error: Exception) -> None:
        if not isinstance(error, OpenHarmonyError):  # a bug: logged, the client told in general
            log.exception("generation failed", exc_info=error)
        job.post("error", error)

    def _finish(self, row: Row) -> None:
        """The row leaves the batch; its prompt cache (consistent) goes back to the pool."""
        self.batch.leave(row.turn.decoding)
        del self._rows[row.turn.decoding]
        self.generated_tokens += len(row.turn.tokens)
        self.pool.put(row.cache)
        with self._lock:
            self._release(row.job)


def _turn_to_json(prompt: list[int], options: dict[str, Any]) -> dict:
    options = dict(options, stop=list(options.get("stop", ())))
    sampling = options.get("sampling")
    options["sampling"] = None if sampling is None else dataclasses.asdict(sampling)
    return {"prompt": list(prompt), "options": options}


def follow(model, tokenizer, max_cache_bytes: int, kv_bits: int | None = None) -> None:
    """Ranks other than 0 of a distributed server: run the turns rank 0's engine announces,
    in its order and on an identical cache pool, until it closes."""
    pool = CachePool(model, max_cache_bytes, kv_bits=kv_bits)
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
