"""One request (`DecodeRequest`) and its per-token decoding (`Decoding`): sampling (under a
constraint's mask), log-probabilities, stops, text, stats; and what it yields
(`GenerationChunk`) or raises.

`openharmony.generate.stream_generate` steps one alone, the server's batch
(openharmony/batch.py) steps several with one forward per token; see openharmony/generate.py
for how a call runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import mlx.core as mx

from .cache import PromptCache
from .errors import OpenHarmonyError
from .sampling import Sampler, SamplingOptions, log_probabilities


class GenerationError(OpenHarmonyError, ValueError):
    """A generation request that cannot run as asked (empty prompt, bad max_tokens, ...)."""


class ContextLengthError(GenerationError):
    """The prompt plus max_tokens do not fit in the model's context."""


class NonFiniteLogitsError(GenerationError):
    """The model produced NaN or infinite logits: there is no distribution to sample from."""


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    reused_prompt_tokens: int  # taken from the prompt cache, not computed
    prompt_seconds: float  # from the call until the first token was known
    prompt_tokens_per_second: float  # computed prompt tokens / prompt_seconds
    generated_tokens: int
    generation_seconds: float  # from the first token to the last
    generation_tokens_per_second: float  # tokens after the first / generation_seconds
    peak_memory_bytes: int  # mx.get_peak_memory() over the call


@dataclass(frozen=True)
class GenerationChunk:
    """One generated token. The last chunk of a stream has `finish_reason` and `stats`."""

    token: int
    text: str  # the new text; may be "" (held back, or detokenize=False)
    logprob: float | None = None  # log-probability under the model (with logprobs=True)
    # With top_logprobs=k: the k most likely tokens and their log-probabilities, most likely first.
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop_token" | "stop_string" | "length"
    stats: GenerationStats | None = None
    # On the first chunk: the prompt tokens taken from the prompt cache (known before the end,
    # for a caller that may stop the stream early).
    reused_prompt_tokens: int | None = None


@dataclass(frozen=True)
class DecodeRequest:
    """What one request asks for, checked: `openharmony.generate.make_decoding` builds it from
    its keywords (the one place they are checked), `Decoding` runs it. Plain values only; the
    state that changes per token (sampler, detokenizer, stop matcher) lives in `Decoding`."""

    prompt_ids: tuple[int, ...]  # within the model's vocabulary, at least one
    max_tokens: int = 256
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()  # the eos tokens included (unless ignore_eos)
    stop_strings: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    detokenize: bool = True
    prefill_chunk: int = 512
    kv_bits: int | None = None  # the prompt cache's storage, when `Decoding` makes it
    kv_dtype: object = None
    # mask() / advance(token), or None. The one stateful part: a request is decoded once.
    constraint: object = None

    @property
    def cache_options(self) -> dict:
        return {name: value for name, value in
                (("kv_bits", self.kv_bits), ("kv_dtype", self.kv_dtype)) if value is not None}


class Decoding:
    """One request's decoding state, stepped by `stream_generate` (alone) or by the server's
    batch (with other requests' rows in one forward): the one implementation of what happens
    per token.

        decoding = Decoding(model, request, tokenizer, prompt_cache)  # or make_decoding(...)
        while ...:
            if decoding.needs_step:         # it wants another token after the queued ones
                logits = <the model on decoding.next_input with decoding.caches>  # [1, V]
                mx.async_eval(decoding.sample(logits) + <the caches' state>)
            chunk = decoding.read()         # the oldest sampled token, read back: text,
                                            # stops, stats; chunk.finish_reason at the end

    The prompt goes into its prompt cache on first use (the first `next_input` or `caches`),
    or earlier by `prefill()` (the batch calls it at join, so a failing prefill leaves the
    batch alone). `sample` queues a lazy token; `read` blocks on the oldest queued one and
    raises RuntimeError when nothing is queued. Between them the caller may queue the next
    step first (pipelining), so up to two tokens are in flight. A decoding that stops being
    stepped (finished, or its client left) leaves its prompt cache consistent: the cache holds
    exactly the tokens `read` has recorded.
    """

    def __init__(self, model, request: DecodeRequest, tokenizer=None,
                 prompt_cache: PromptCache | None = None) -> None:
        if request.detokenize and tokenizer is None:
            raise GenerationError("a request with detokenize=True needs a tokenizer")
        self.model, self.request, self.tokenizer = model, request, tokenizer
        self.prompt_ids = list(request.prompt_ids)
        self.max_tokens, self.stop_ids = request.max_tokens, request.stop_ids
        self.logprobs, self.top_logprobs = request.logprobs, request.top_logprobs
        self.detokenize, self.constraint = request.detokenize, request.constraint
        self.sampler = Sampler(request.sampling, model.config.vocab_size,
                               prompt_tokens=self.prompt_ids, seed=request.seed,
                               group=getattr(model, "group", None))
        self.stop_matcher = StopStrings(request.stop_strings)
        self.prompt_cache = (prompt_cache if prompt_cache is not None
                             else PromptCache(model, **request.cache_options))
        self.generated = 0  # tokens read so far
        self.finish_reason: str | None = None
        self._queued: list[_Step] = []  # the steps whose token is not read yet, oldest first
        self._next_input: mx.array | None = None  # the token the next step feeds [1]
        self._prefilled = False

    @property
    def caches(self) -> list:
        self.prefill()
        return self.prompt_cache.caches

    @property
    def next_input(self) -> mx.array:
        """The token the next step feeds [1] (the prompt's last, then each sampled one)."""
        self.prefill()
        return self._next_input

    def prefill(self) -> None:
        """Reuse the prompt cache's prefix and compute the rest of the prompt but its last
        token (only the caches are wanted, so only they are evaluated: the lm_head of these
        positions is never computed). Done once: later calls return at once."""
        if self._prefilled:
            return
        self._start_time = time.perf_counter()
        self._first_token_time = None
        self.reused = self.prompt_cache.reuse(self.prompt_ids)
        rest = self.prompt_ids[self.reused:]
        for begin in range(0, len(rest) - 1, self.request.prefill_chunk):
            chunk = rest[begin:min(begin + self.request.prefill_chunk, len(rest) - 1)]
            self.model(mx.array([chunk]), cache=self.prompt_cache.caches)
            mx.eval(self.prompt_cache.state)
            self.prompt_cache.add_tokens(chunk)
        self.prompt_cache.snapshot()
        self._next_input = mx.array(rest[-1:], dtype=mx.uint32)
        self._detokenizer = (self.tokenizer.detokenizer() if self.tokenizer is not None
                             else None)
        self._prefilled = True

    @property
    def queued(self) -> int:
        """Tokens sampled and not read yet (0, 1, or 2 while pipelined)."""
        return len(self._queued)

    @property
    def needs_step(self) -> bool:
        """Whether another token is wanted after the ones already sampled."""
        return (self.finish_reason is None
                and self.generated + len(self._queued) < self.max_tokens)

    def sample(self, logits: mx.array) -> list[mx.array]:
        """The model has just run `next_input` through `caches`; `logits` [1, V] are its
        output. Queues the next token (lazy) and returns the arrays to evaluate (besides the
        caches): the token, the sampler's state, the log-probabilities asked for.

        With a constraint whose mask needs a token not read yet, the token is drawn by the
        `read` of that token instead (the logits are evaluated meanwhile)."""
        if not self._prefilled:
            raise RuntimeError("Decoding.sample() takes the logits of the model run on "
                               "decoding.next_input: read next_input (which prefills the "
                               "prompt) and run the model on it first")
        if self._queued:
            self._queued[-1].fed = True  # the input was the last queued token
        else:  # the first step: the input was the prompt's last token
            self.prompt_cache.add_tokens(self.prompt_ids[-1:])
        step = _Step(logits=logits, finite=mx.isfinite(logits).all())  # read with the token
        self._queued.append(step)
        if self.constraint is not None and len(self._queued) > 1:
            return [logits, step.finite]
        return self._draw(step)

    def _draw(self, step: "_Step") -> list[mx.array]:
        """Sample the step's token from its logits (masked by the constraint)."""
        logits = step.logits
        allowed = self.constraint.mask() if self.constraint is not None else None
        step.token = self.sampler(logits if allowed is None
                                  else mx.where(allowed, logits, -mx.inf))
        if self.logprobs or self.top_logprobs:  # the model's own distribution, unmasked
            step.scores.append(log_probabilities(logits, step.token))
        if self.top_logprobs:
            step_logits = logits[0].astype(mx.float32)
            all_logprobs = step_logits - mx.logsumexp(step_logits)
            top = mx.argpartition(-all_logprobs, self.top_logprobs - 1)[:self.top_logprobs]
            step.scores += [top, all_logprobs[top]]
        step.logits = None
        self._next_input = step.token
        return [step.token, step.finite, *self.sampler.state, *step.scores]

    def read(self) -> GenerationChunk:
        """The oldest queued token, read back (the one place decoding blocks), as a chunk."""
        if not self._queued:
            raise RuntimeError("Decoding.read() with no token sampled: call sample() with the "
                               "model's logits for next_input first" + (
                                   f" (the decoding finished: {self.finish_reason})"
                                   if self.finish_reason is not None else ""))
        step = self._queued.pop(0)
        token_id = _read_token(step.token)
        if not step.finite.item():
            raise NonFiniteLogitsError(
                f"the model's logits are not finite (NaN or inf) for generated token "
                f"{self.generated + 1} (position {len(self.prompt_ids) + self.generated}); "
                "generation stopped rather than sample from them. The weights are broken (e.g. "
                "an MXFP4 scale byte 255, which is NaN) or the computation overflowed")
        if self._first_token_time is None:
            self._first_token_time = time.perf_counter()
        if step.fed:
            self.prompt_cache.add_tokens([token_id])  # the step that fed it ran
        self.generated += 1
        count, max_tokens, detokenizer = self.generated, self.max_tokens, self._detokenizer

        finish_reason = None
        if not self.detokenize:
            text = ""
            if token_id in self.stop_ids:
                finish_reason = "stop_token"
            elif count == max_tokens:
                finish_reason = "length"
        elif token_id in self.stop_ids:
            finish_reason, text = "stop_token", detokenizer.finish()
        else:
            text = detokenizer.add(token_id)
            if count == max_tokens:
                finish_reason, text = "length", text + detokenizer.finish()
        text, stopped = self.stop_matcher.feed(text, final=finish_reason is not None)
        if stopped:
            finish_reason = "stop_string"
        self.finish_reason = finish_reason
        if self.constraint is not None:
            self.constraint.advance(token_id)
            if finish_reason is None and self._queued and self._queued[0].token is None:
                mx.async_eval(self._draw(self._queued[0]))  # its mask is known now

        stats = None
        if finish_reason is not None:
            end_time = time.perf_counter()
            prompt_seconds = self._first_token_time - self._start_time
            generation_seconds = end_time - self._first_token_time
            stats = GenerationStats(
                prompt_tokens=len(self.prompt_ids),
                reused_prompt_tokens=self.reused,
                prompt_seconds=prompt_seconds,
                prompt_tokens_per_second=(len(self.prompt_ids) - self.reused) / prompt_seconds,
                generated_tokens=count,
                generation_seconds=generation_seconds,
                generation_tokens_per_second=((count - 1) / generation_seconds
                                              if count > 1 and generation_seconds > 0 else 0.0),
                peak_memory_bytes=mx.get_peak_memory(),
            )
        scores = step.scores
        logprob = scores[0].item() if scores else None
        top = None
        if self.top_logprobs:
            top = sorted(zip(scores[1].tolist(), scores[2].tolist()), key=lambda t: -t[1])
        return GenerationChunk(token=token_id, text=text, logprob=logprob, top_logprobs=top,
                               finish_reason=finish_reason, stats=stats,
                               reused_prompt_tokens=self.reused if count == 1 else None)


@dataclass(eq=False)
class _Step:
    """One decoding step whose token is not read yet."""

    finite: mx.array  # whether the step's logits were finite (read with the token)
    logits: mx.array | None = None  # kept until the token is drawn from them
    token: mx.array | None = None  # [1] uint32, lazy; None until drawn
    scores: list = field(default_factory=list)  # log-probabilities asked for
    fed: bool = False  # a later step ran the model on this token


def _read_token(token: mx.array) -> int:
    """Wait for a token and bring it to the host (the one place decoding blocks)."""
    return token.item()


class StopStrings:
    """Finds stop strings in streamed text, holding back text that may begin one."""

    def __init__(self, stop_strings: Sequence[str]) -> None:
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        for s in stop_strings:
            if not isinstance(s, str) or not s:
                raise GenerationError(f"stop strings must be non-empty strings, got {s!r}")
        self.stop_strings = list(stop_strings)
        self.pending = ""

    def feed(self, text: str, final: bool) -> tuple[str, bool]:
        """Add streamed text; returns (text safe to emit, whether a stop string was found)."""
        self.pending += text
        found = [i for i in (self.pending.find(s) for s in self.stop_strings) if i >= 0]
        if found:
            emit, self.pending = self.pending[:min(found)], ""
            return emit, True
        cut = len(self.pending) - (0 if final else self._longest_stop_prefix_suffix())
        emit, self.pending = self.pending[:cut], self.pending[cut:]
        return emit, False

    def _longest_stop_prefix_suffix(self) -> int:
        """The length of the longest end of the pending text that begins some stop string."""
        longest = max((len(s) for s in self.stop_strings), default=1) - 1
        for n in range(min(longest, len(self.pending)), 0, -1):
            tail = self.pending[-n:]
            if any(s.startswith(tail) for s in self.stop_strings):
                return n
        return 0
