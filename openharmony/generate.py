"""`generate()` and `stream_generate()`: a prompt in, tokens and text out.

    from openharmony.generate import generate
    result = generate(model, "The capital of France is", max_tokens=32, temperature=0)
    print(result.text, result.finish_reason, result.stats)

How a call runs:

* Prefix reuse: with `prompt_cache=PromptCache(model)` passed to successive calls, each call
  only computes the part of its prompt that differs from the tokens the caches already hold
  (see `openharmony.cache.PromptCache`; exact also after the sliding-window caches wrapped).
* Prefill: the prompt except its last token goes through the model `prefill_chunk` tokens at a
  time, and only the caches are evaluated, so the logits of those positions are never computed
  and memory stays bounded by the chunk size whatever the prompt length.
* Decode: pipelined. Step i+1 (the forward of token i and the sampling of token i+1) is queued
  with `mx.async_eval` before token i is read back to the host, so the device never waits for
  the host's bookkeeping (detokenizing, stop checks, yielding) between tokens.
* Stops: a stop token (the model's eos tokens by default, plus `stop_tokens`) ends generation
  with finish_reason "stop_token": its id is the last of `tokens`, and it adds no text. A stop
  string ends it with "stop_string": the text ends right before the stop string (which is not
  part of it), while `tokens` ends with the token that completed it. Otherwise "length" after
  `max_tokens` tokens.
* Text: streamed through the tokenizer's UTF-8-safe detokenizer (a character split across
  tokens comes out whole) and held back while it could be the start of a stop string, so the
  text deltas concatenate to exactly the final text.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import mlx.core as mx

from .cache import PromptCache
from .errors import OpenHarmonyError
from .sampling import Sampler, SamplingOptions, log_probabilities


MAX_TOP_LOGPROBS = 20  # as OpenAI's API


class GenerationError(OpenHarmonyError, ValueError):
    """A generation request that cannot run as asked (empty prompt, bad max_tokens, ...)."""


class ContextLengthError(GenerationError):
    """The prompt plus max_tokens do not fit in the model's context."""


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
    text: str  # the new text; may be "" (held back) or hold several characters
    logprob: float | None = None  # log-probability under the model (with logprobs=True)
    # With top_logprobs=k: the k most likely tokens and their log-probabilities, most likely first.
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop_token" | "stop_string" | "length"
    stats: GenerationStats | None = None
    # On the first chunk: the prompt tokens taken from the prompt cache (known before the end,
    # for a caller that may stop the stream early).
    reused_prompt_tokens: int | None = None


@dataclass(frozen=True)
class GenerationResult:
    text: str
    tokens: list[int]
    finish_reason: str
    stats: GenerationStats
    logprobs: list[float] | None = None


def generate(model, prompt: str | Sequence[int], **kwargs) -> GenerationResult:
    """Generate a completion of `prompt` (text or token ids); the arguments of
    `stream_generate`."""
    text, tokens, logprobs = [], [], []
    for chunk in stream_generate(model, prompt, **kwargs):
        text.append(chunk.text)
        tokens.append(chunk.token)
        logprobs.append(chunk.logprob)
    return GenerationResult(text="".join(text), tokens=tokens, finish_reason=chunk.finish_reason,
                            stats=chunk.stats,
                            logprobs=logprobs if kwargs.get("logprobs") else None)


def stream_generate(
    model,
    prompt: str | Sequence[int],
    *,
    tokenizer=None,
    max_tokens: int = 256,
    sampling: SamplingOptions | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    seed: int | None = None,
    stop_tokens: Sequence[int] = (),
    stop_strings: Sequence[str] = (),
    ignore_eos: bool = False,
    prompt_cache: PromptCache | None = None,
    prefill_chunk: int = 512,
    logprobs: bool = False,
    top_logprobs: int = 0,
    detokenize: bool = True,
    kv_bits: int | None = None,
    kv_dtype=None,
) -> Iterator[GenerationChunk]:
    """Yield one `GenerationChunk` per generated token.

    `prompt`: text (encoded with `tokenizer`, special tokens such as <|start|> allowed) or
    token ids. `tokenizer`: default `load_tokenizer()`. Sampling: `sampling` and/or the single
    options (which override it); see `openharmony.sampling`. `seed`: reproducible sampling.
    `stop_tokens` are added to the model's eos tokens (config.eos_token_id and the tokenizer's
    <|return|>, <|endoftext|>, <|call|>) unless `ignore_eos`. `prompt_cache`: reuse the common
    prefix with the previous call on it. `logprobs`: each chunk's log-probability of its token
    under the model's own distribution (before penalties, temperature and filters).
    `top_logprobs=k` (0 to 20): also the k most likely tokens of each step under that
    distribution, with their log-probabilities. `detokenize=False`: chunks carry no text, for
    callers that decode the tokens themselves (the harmony parser of a chat turn), so that no
    token is decoded twice.
    `kv_bits` (4 or 8) / `kv_dtype`: the KV cache's storage (`Model.make_cache`, docs/cache.md);
    with a `prompt_cache`, they must be the options it was made with (or left out).
    """
    if tokenizer is None:
        from .tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    config = model.config
    prompt_ids = _prompt_ids(prompt, tokenizer, config.vocab_size)
    options = _sampling_options(sampling, temperature=temperature, top_k=top_k, top_p=top_p,
                                min_p=min_p, repetition_penalty=repetition_penalty,
                                presence_penalty=presence_penalty,
                                frequency_penalty=frequency_penalty)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise GenerationError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
        raise GenerationError(f"prefill_chunk must be a positive integer, got {prefill_chunk!r}")
    if len(prompt_ids) + max_tokens > config.max_position_embeddings:
        raise ContextLengthError(
            f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceed the "
            f"model's context of {config.max_position_embeddings} tokens")
    stop_ids = _stop_token_ids(stop_tokens, config, tokenizer, ignore_eos)
    if (isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int)
            or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS):
        raise GenerationError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], "
                              f"got {top_logprobs!r}")
    stop_matcher = StopStrings(stop_strings)
    if stop_strings and not detokenize:
        raise GenerationError("stop_strings need the text: they cannot go with detokenize=False")
    cache_options = {name: value for name, value in
                     (("kv_bits", kv_bits), ("kv_dtype", kv_dtype)) if value is not None}
    if prompt_cache is None:
        prompt_cache = PromptCache(model, **cache_options)  # bad kv options raise here
    elif prompt_cache.model is not model:
        raise GenerationError("prompt_cache was made for another model")
    elif any(prompt_cache.cache_options.get(name) != value
             for name, value in cache_options.items()):
        raise GenerationError(f"prompt_cache was made with cache options "
                              f"{prompt_cache.cache_options}, not {cache_options}")
    sampler = Sampler(options, config.vocab_size, prompt_tokens=prompt_ids, seed=seed)
    # Bad input raises here, at the call; the work starts with the first `next()`.
    return _stream(model, prompt_ids, tokenizer, max_tokens, sampler, stop_ids, stop_matcher,
                   prompt_cache, prefill_chunk, logprobs, top_logprobs, detokenize)


def _stream(model, prompt_ids: list[int], tokenizer, max_tokens: int, sampler: Sampler,
            stop_ids: set[int], stop_matcher: "StopStrings",
            prompt_cache: PromptCache, prefill_chunk: int,
            logprobs: bool, top_logprobs: int,
            detokenize: bool) -> Iterator[GenerationChunk]:
    mx.reset_peak_memory()
    start_time = time.perf_counter()
    reused = prompt_cache.reuse(prompt_ids)
    caches = prompt_cache.caches
    rest = prompt_ids[reused:]

    # Every prompt token but the last: only the caches are wanted, so only they are evaluated
    # (the lm_head of these positions is never computed).
    for begin in range(0, len(rest) - 1, prefill_chunk):
        chunk = rest[begin:min(begin + prefill_chunk, len(rest) - 1)]
        model(mx.array([chunk]), cache=caches)
        mx.eval(prompt_cache.state)
        prompt_cache.add_tokens(chunk)
    prompt_cache.snapshot()

    def step(token: mx.array) -> tuple[mx.array, list[mx.array]]:
        """Queue the next token; also its log-probability and the top ones when asked for."""
        logits = model(token.reshape(1, 1), cache=caches)[:, -1, :]
        next_token = sampler(logits)
        scores = []
        if logprobs or top_logprobs:
            scores.append(log_probabilities(logits, next_token))
        if top_logprobs:
            step_logits = logits[0].astype(mx.float32)
            all_logprobs = step_logits - mx.logsumexp(step_logits)
            top = mx.argpartition(-all_logprobs, top_logprobs - 1)[:top_logprobs]
            scores += [top, all_logprobs[top]]
        mx.async_eval([next_token, *sampler.state, *prompt_cache.state, *scores])
        return next_token, scores

    token, scores = step(mx.array([rest[-1]], dtype=mx.uint32))
    prompt_cache.add_tokens(rest[-1:])
    detokenizer = tokenizer.detokenizer()
    first_token_time = None
    for count in range(1, max_tokens + 1):
        if count < max_tokens:  # queue the next step before reading this token
            next_token, next_scores = step(token)
        token_id = _read_token(token)
        if first_token_time is None:
            first_token_time = time.perf_counter()
        if count < max_tokens:
            prompt_cache.add_tokens([token_id])  # the step just queued feeds it to the caches

        finish_reason = None
        if not detokenize:
            text = ""
            if token_id in stop_ids:
                finish_reason = "stop_token"
            elif count == max_tokens:
                finish_reason = "length"
        elif token_id in stop_ids:
            finish_reason, text = "stop_token", detokenizer.finish()
        else:
            text = detokenizer.add(token_id)
            if count == max_tokens:
                finish_reason, text = "length", text + detokenizer.finish()
        text, stopped = stop_matcher.feed(text, final=finish_reason is not None)
        if stopped:
            finish_reason = "stop_string"

        stats = None
        if finish_reason is not None:
            end_time = time.perf_counter()
            prompt_seconds = first_token_time - start_time
            generation_seconds = end_time - first_token_time
            stats = GenerationStats(
                prompt_tokens=len(prompt_ids),
                reused_prompt_tokens=reused,
                prompt_seconds=prompt_seconds,
                prompt_tokens_per_second=(len(prompt_ids) - reused) / prompt_seconds,
                generated_tokens=count,
                generation_seconds=generation_seconds,
                generation_tokens_per_second=((count - 1) / generation_seconds
                                              if count > 1 and generation_seconds > 0 else 0.0),
                peak_memory_bytes=mx.get_peak_memory(),
            )
        logprob = scores[0].item() if scores else None
        top = None
        if top_logprobs:
            top = sorted(zip(scores[1].tolist(), scores[2].tolist()), key=lambda t: -t[1])
        yield GenerationChunk(token=token_id, text=text, logprob=logprob, top_logprobs=top,
                              finish_reason=finish_reason, stats=stats,
                              reused_prompt_tokens=reused if count == 1 else None)
        if finish_reason is not None:
            return
        token, scores = next_token, next_scores


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


def _prompt_ids(prompt, tokenizer, vocab_size: int) -> list[int]:
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt, allow_special=True)
    else:
        try:
            ids = [int(t) for t in prompt]
        except (TypeError, ValueError):
            raise GenerationError("prompt must be a string or a sequence of token ids") from None
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise GenerationError(f"prompt token id {bad[0]} is outside the model's vocabulary "
                                  f"(0 .. {vocab_size - 1})")
    if not ids:
        raise GenerationError("the prompt is empty: generation needs at least one token")
    return ids


def _sampling_options(sampling: SamplingOptions | None, **overrides) -> SamplingOptions:
    base = sampling if sampling is not None else SamplingOptions()
    given = {name: value for name, value in overrides.items() if value is not None}
    return dataclasses.replace(base, **given) if given else base


def _stop_token_ids(stop_tokens: Sequence[int], config, tokenizer, ignore_eos: bool) -> set[int]:
    ids = {int(t) for t in stop_tokens}
    if not ignore_eos:
        eos = config.eos_token_id
        ids.update(() if eos is None else (eos,) if isinstance(eos, int) else eos)
        ids.update(getattr(tokenizer, "eos_token_ids", ()))
    return ids
