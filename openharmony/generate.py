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
* One request's per-token logic (sampling, log-probabilities, stops, text, stats) is
  `Decoding`: `stream_generate` steps one alone, the server's batch (openharmony/batch.py)
  steps several with one forward per token.
* Text: streamed through the tokenizer's UTF-8-safe detokenizer (a character split across
  tokens comes out whole) and held back while it could be the start of a stop string, so the
  text deltas concatenate to exactly the final text. Token in, token out: a token-id prompt
  with `detokenize=False` and no `tokenizer` loads no vocabulary (it works offline).
* Bad input raises `GenerationError` (or `SamplingError`) at the call, naming the argument:
  token ids that are not integers (1.5, "7" and True are refused, not coerced) or outside the
  model's vocabulary (text prompts included: a tokenizer larger than the model's vocabulary
  cannot overrun its embedding table), unknown stop tokens. Logits that are not finite (NaN
  weights, an overflow) stop generation with `NonFiniteLogitsError` instead of being sampled:
  the check is computed on the device with each token and read with it, no extra sync.
"""

from __future__ import annotations

import dataclasses
import time
import functools
from dataclasses import dataclass
from typing import Iterator, Sequence

import mlx.core as mx
import numpy as np

from .cache import PromptCache
from .errors import OpenHarmonyError
from .memory import check_prompt_fits  # issue 20's memory guard
from .sampling import Sampler, SamplingOptions, log_probabilities


MAX_TOP_LOGPROBS = 20  # as OpenAI's API


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


def stream_generate(model, prompt: str | Sequence[int], **options) -> Iterator[GenerationChunk]:
    """Yield one `GenerationChunk` per generated token; `options` are `make_decoding`'s.

    Bad input raises here, at the call; the work starts with the first `next()`.
    """
    return stream_decoding(make_decoding(model, prompt, **options))


def make_decoding(
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
    stop_tokens: Sequence[int | str] = (),
    stop_strings: Sequence[str] = (),
    ignore_eos: bool = False,
    prompt_cache: PromptCache | None = None,
    prefill_chunk: int = 512,
    logprobs: bool = False,
    top_logprobs: int = 0,
    detokenize: bool = True,
    kv_bits: int | None = None,
    kv_dtype=None,
) -> "Decoding":
    """The checked decoding state of one request (what `stream_generate` steps alone, and the
    server's batch steps with others).

    `prompt`: text (encoded with `tokenizer`, special tokens such as <|start|> allowed) or
    token ids (Python or NumPy integers, or a 1-D integer array). `tokenizer`: default
    `load_tokenizer()`, loaded only when text is involved: not for a token-id prompt with
    `detokenize=False` (token in, token out, offline). Sampling: `sampling`
    and/or the single options (which override it); see `openharmony.sampling`. `seed`:
    reproducible sampling. `stop_tokens` (ids, or special-token names such as "<|end|>") are
    added to the model's eos tokens (config.eos_token_id and <|return|>, <|endoftext|>,
    <|call|>) unless `ignore_eos`. `prompt_cache`: reuse the common
    prefix with the previous call on it. `logprobs`: each chunk's log-probability of its token
    under the model's own distribution (before penalties, temperature and filters).
    `top_logprobs=k` (0 to 20): also the k most likely tokens of each step under that
    distribution, with their log-probabilities. `detokenize=False`: chunks carry no text, for
    callers that decode the tokens themselves (the harmony parser of a chat turn), so that no
    token is decoded twice.
    `kv_bits` (4 or 8) / `kv_dtype`: the KV cache's storage (`Model.make_cache`, docs/cache.md);
    with a `prompt_cache`, they must be the options it was made with (or left out).
    """
    if not isinstance(detokenize, bool):
        raise GenerationError(f"detokenize must be True or False, got {detokenize!r}")
    if tokenizer is None and (isinstance(prompt, str) or detokenize):
        from .tokenizer import load_tokenizer

        try:
            tokenizer = load_tokenizer()
        except OpenHarmonyError as e:
            if isinstance(prompt, str):
                raise
            raise GenerationError(f"{e}; with token ids, detokenize=False needs no "
                                  "vocabulary") from None
    config = model.config
    prompt_ids = _prompt_ids(prompt, tokenizer, config.vocab_size)
    if sampling is not None and not isinstance(sampling, SamplingOptions):
        raise GenerationError(f"sampling must be a SamplingOptions, got "
                              f"{type(sampling).__name__}")
    for name, flag in (("ignore_eos", ignore_eos), ("logprobs", logprobs)):
        if not isinstance(flag, bool):
            raise GenerationError(f"{name} must be True or False, got {flag!r}")
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
    elif not isinstance(prompt_cache, PromptCache):
        raise GenerationError(f"prompt_cache must be a PromptCache, got "
                              f"{type(prompt_cache).__name__}")
    elif prompt_cache.model is not model:
        raise GenerationError("prompt_cache was made for another model")
    elif any(prompt_cache.cache_options.get(name) != value
             for name, value in cache_options.items()):
        raise GenerationError(f"prompt_cache was made with cache options "
                              f"{prompt_cache.cache_options}, not {cache_options}")
    # Issue 20's memory guard: a prompt whose KV cache and prefill cannot fit is refused here,
    # before anything is allocated (PromptMemoryError; the CLI prints it, the server: 400).
    check_prompt_fits(model, len(prompt_ids), caches=prompt_cache.caches,
                      cache_options=prompt_cache.cache_options, prefill_chunk=prefill_chunk)
    sampler = Sampler(options, config.vocab_size, prompt_tokens=prompt_ids, seed=seed,
                      group=getattr(model, "group", None))
    return Decoding(model, prompt_ids, tokenizer, max_tokens, sampler, stop_ids, stop_matcher,
                    prompt_cache, prefill_chunk, logprobs, top_logprobs, detokenize)


def stream_decoding(decoding: "Decoding") -> Iterator[GenerationChunk]:
    """Decode one request alone: each step runs the model on its last token and samples the
    next (pipelined: step i+1 is queued before token i is read back, see the module
    docstring)."""
    mx.reset_peak_memory()
    decoding.prefill()
    model = decoding.model

    def step() -> None:
        # The input was sampled from vocab_size logits: no range check (and no host sync).
        logits = model(decoding.next_input.reshape(1, 1), cache=decoding.caches,
                       check_ids=False)[:, -1, :]
        mx.async_eval(decoding.sample(logits) + decoding.prompt_cache.state)

    step()
    while True:
        if decoding.needs_step:  # queue the next step before reading this token
            step()
        chunk = decoding.read()
        yield chunk
        if chunk.finish_reason is not None:
            return


class Decoding:
    """One request's decoding state, stepped by `stream_generate` (alone) or by the server's
    batch (with other requests' rows in one forward): the one implementation of what happens
    per token.

        decoding.prefill()                  # the prompt into its own prompt cache
        while ...:
            if decoding.needs_step:         # it wants another token after the queued ones
                logits = <the model on decoding.next_input with decoding.caches>  # [1, V]
                mx.async_eval(decoding.sample(logits) + <the caches' state>)
            chunk = decoding.read()         # the oldest sampled token, read back: text,
                                            # stops, stats; chunk.finish_reason at the end

    `sample` queues a lazy token; `read` blocks on the oldest queued one. Between them the
    caller may queue the next step first (pipelining), so up to two tokens are in flight.
    A decoding that stops being stepped (finished, or its client left) leaves its prompt
    cache consistent: the cache holds exactly the tokens `read` has recorded.
    """

    def __init__(self, model, prompt_ids: list[int], tokenizer, max_tokens: int,
                 sampler: Sampler, stop_ids: set[int], stop_matcher: "StopStrings",
                 prompt_cache: PromptCache, prefill_chunk: int, logprobs: bool,
                 top_logprobs: int, detokenize: bool) -> None:
        self.model, self.prompt_ids, self.tokenizer = model, prompt_ids, tokenizer
        self.max_tokens, self.sampler, self.stop_ids = max_tokens, sampler, stop_ids
        self.stop_matcher, self.prompt_cache = stop_matcher, prompt_cache
        self.prefill_chunk = prefill_chunk
        self.logprobs, self.top_logprobs = logprobs, top_logprobs
        self.detokenize = detokenize
        self.generated = 0  # tokens read so far
        self.finish_reason: str | None = None
        # Sampled tokens not read yet, oldest first: [token, finite, scores, fed to the caches].
        self._queued: list[list] = []
        self.next_input: mx.array | None = None  # the token the next step feeds [1]

    @property
    def caches(self) -> list:
        return self.prompt_cache.caches

    def prefill(self) -> None:
        """Reuse the prompt cache's prefix and compute the rest of the prompt but its last
        token (only the caches are wanted, so only they are evaluated: the lm_head of these
        positions is never computed)."""
        self._start_time = time.perf_counter()
        self._first_token_time = None
        self.reused = self.prompt_cache.reuse(self.prompt_ids)
        rest = self.prompt_ids[self.reused:]
        for begin in range(0, len(rest) - 1, self.prefill_chunk):
            chunk = rest[begin:min(begin + self.prefill_chunk, len(rest) - 1)]
            self.model(mx.array([chunk]), cache=self.caches)
            mx.eval(self.prompt_cache.state)
            self.prompt_cache.add_tokens(chunk)
        self.prompt_cache.snapshot()
        self.next_input = mx.array(rest[-1:], dtype=mx.uint32)
        self._detokenizer = (self.tokenizer.detokenizer() if self.tokenizer is not None
                             else None)

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
        caches): the token, the sampler's state, the log-probabilities asked for."""
        if self._queued:
            self._queued[-1][3] = True  # the input was the last queued token
        else:  # the first step: the input was the prompt's last token
            self.prompt_cache.add_tokens(self.prompt_ids[-1:])
        token = self.sampler(logits)
        finite = mx.isfinite(logits).all()  # read with the token: no extra wait
        scores = []
        if self.logprobs or self.top_logprobs:
            scores.append(log_probabilities(logits, token))
        if self.top_logprobs:
            step_logits = logits[0].astype(mx.float32)
            all_logprobs = step_logits - mx.logsumexp(step_logits)
            top = mx.argpartition(-all_logprobs, self.top_logprobs - 1)[:self.top_logprobs]
            scores += [top, all_logprobs[top]]
        self._queued.append([token, finite, scores, False])
        self.next_input = token
        return [token, finite, *self.sampler.state, *scores]

    def read(self) -> GenerationChunk:
        """The oldest queued token, read back (the one place decoding blocks), as a chunk."""
        token, finite, scores, fed = self._queued.pop(0)
        token_id = _read_token(token)
        if not finite.item():
            raise NonFiniteLogitsError(
                f"the model's logits are not finite (NaN or inf) for generated token "
                f"{self.generated + 1} (position {len(self.prompt_ids) + self.generated}); "
                "generation stopped rather than sample from them. The weights are broken (e.g. "
                "an MXFP4 scale byte 255, which is NaN) or the computation overflowed")
        if self._first_token_time is None:
            self._first_token_time = time.perf_counter()
        if fed:
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
        logprob = scores[0].item() if scores else None
        top = None
        if self.top_logprobs:
            top = sorted(zip(scores[1].tolist(), scores[2].tolist()), key=lambda t: -t[1])
        return GenerationChunk(token=token_id, text=text, logprob=logprob, top_logprobs=top,
                               finish_reason=finish_reason, stats=stats,
                               reused_prompt_tokens=self.reused if count == 1 else None)


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
        source = "the text prompt encodes to token id"
    else:
        ids = _token_ids(prompt, "prompt")
        source = "prompt token id"
    if not ids:
        raise GenerationError("the prompt is empty: generation needs at least one token")
    # On the host, before anything reaches the device: an id past the embedding table would
    # read memory outside it.
    bad = next((i for i, t in enumerate(ids) if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise GenerationError(f"{source} {ids[bad]} (at position {bad}) is outside the model's "
                              f"vocabulary (0 .. {vocab_size - 1})")
    return ids


def _token_ids(values, name: str) -> list[int]:
    """Token ids as Python ints: Python or NumPy integers, or a 1-D integer array. Floats,
    strings and bools are refused rather than coerced ([1.5, 2] is not [1, 2])."""
    if isinstance(values, (mx.array, np.ndarray)):
        kind = values.dtype
        integer = (mx.issubdtype(kind, mx.integer) if isinstance(values, mx.array)
                   else np.issubdtype(kind, np.integer))
        if values.ndim != 1 or not integer:
            raise GenerationError(f"{name} must be a 1-D array of integer token ids, got "
                                  f"{values.ndim}-D {str(kind).removeprefix('mlx.core.')}")
        return [int(t) for t in values.tolist()]
    if isinstance(values, (bytes, dict)) or not hasattr(values, "__iter__"):
        raise GenerationError(f"{name} must be a string or a sequence of token ids, got "
                              f"{type(values).__name__}")
    ids = list(values)
    for i, t in enumerate(ids):
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise GenerationError(f"{name}[{i}] must be an integer token id, got {t!r}")
    return [int(t) for t in ids]


def _sampling_options(sampling: SamplingOptions | None, **overrides) -> SamplingOptions:
    base = sampling if sampling is not None else SamplingOptions()
    given = {name: value for name, value in overrides.items() if value is not None}
    return dataclasses.replace(base, **given) if given else base


def _stop_token_ids(stop_tokens, config, tokenizer, ignore_eos: bool) -> set[int]:
    """Ids that end generation. `stop_tokens` holds ids or special-token names ("<|end|>")."""
    if isinstance(stop_tokens, (str, int)):
        stop_tokens = [stop_tokens]
    ids = set()
    for i, t in enumerate(_list(stop_tokens, "stop_tokens")):
        if isinstance(t, str):
            special = _special_ids(tokenizer)
            if t not in special:
                raise GenerationError(f"stop_tokens[{i}] {t!r} is not a special token (such as "
                                      "'<|end|>'); use stop_strings to stop at text")
            ids.add(special[t])
        elif isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or t < 0:
            raise GenerationError(f"stop_tokens[{i}] must be a token id (an integer >= 0) or a "
                                  f"special-token name, got {t!r}")
        else:
            ids.add(int(t))
    if not ignore_eos:
        eos = config.eos_token_id
        ids.update(() if eos is None else (eos,) if isinstance(eos, int) else eos)
        ids.update(tokenizer.eos_token_ids if tokenizer is not None else _harmony_eos_ids())
    return ids


def _list(values, name: str) -> list:
    if isinstance(values, (bytes, dict)) or not hasattr(values, "__iter__"):
        raise GenerationError(f"{name} must be a list, got {type(values).__name__}")
    return list(values)


def _special_ids(tokenizer) -> dict[str, int]:
    return tokenizer.special_ids if tokenizer is not None else _harmony_special_ids()


@functools.cache
def _harmony_special_ids() -> dict[str, int]:
    """o200k_harmony's special tokens from tiktoken's definition, without the vocabulary."""
    from .tokenizer import o200k_harmony_definition

    return dict(o200k_harmony_definition()["special_tokens"])


def _harmony_eos_ids() -> tuple[int, ...]:
    """What `Tokenizer.eos_token_ids` gives, without the vocabulary."""
    from .tokenizer import EOS_TOKEN_NAMES

    return tuple(_harmony_special_ids()[name] for name in EOS_TOKEN_NAMES)
