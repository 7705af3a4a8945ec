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
* Structured output: `json_schema=` (a JSON Schema) or `grammar=` (Lark; `regex=` a regular
  expression) holds the whole completion to that language, then a stop token (llguidance,
  openharmony/structured). A chat turn passes its own harmony-aware `constraint` instead
  (`openharmony.chat.ChatTurn`). A constrained token's mask depends on the token before it,
  so its sampling waits for that token to be read back; the model's forward is still queued
  before the read, so the mask is computed on the host while the forward runs.
* Bad input raises `GenerationError` (or `SamplingError`) at the call, naming the argument:
  token ids that are not integers (1.5, "7" and True are refused, not coerced) or outside the
  model's vocabulary (text prompts included: a tokenizer larger than the model's vocabulary
  cannot overrun its embedding table), unknown stop tokens. Logits that are not finite (NaN
  weights, an overflow) stop generation with `NonFiniteLogitsError` instead of being sampled:
  the check is computed on the device with each token and read with it, no extra sync.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Iterator, Sequence

import mlx.core as mx
import numpy as np

from .cache import PromptCache
from .decoding import (ContextLengthError, DecodeRequest, Decoding, GenerationChunk,
                       GenerationError, GenerationStats, NonFiniteLogitsError, StopStrings)
from .errors import OpenHarmonyError
from .memory import check_prompt_fits  # issue 20's memory guard
from .sampling import SamplingOptions

__all__ = ["ContextLengthError", "DecodeRequest", "Decoding", "GenerationChunk", "GenerationError",
           "GenerationResult", "GenerationStats", "NonFiniteLogitsError", "StopStrings",
           "generate", "make_decoding", "stream_decoding", "stream_generate"]


MAX_TOP_LOGPROBS = 20  # as OpenAI's API


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
    json_schema=None,
    grammar: str | None = None,
    regex: str | None = None,
    constraint=None,
) -> "Decoding":
    """The checked decoding state of one request (what `stream_generate` steps alone, and the
    server's batch steps with others): the keywords checked once, here, into a frozen
    `DecodeRequest`, run by a `Decoding` on `prompt_cache` (a new one by default).

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
    `json_schema` (a dict) / `grammar` (Lark) / `regex`: the completion is a document of that
    language, then a stop token (at most one of the three). `constraint`: any object with
    `mask()` (a bool mx.array over the vocabulary, or None: any token) and `advance(token)`,
    asked before and told after each token (what a chat turn's `ReplyConstraint` is).
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
    asked = {name: value for name, value in
             (("json_schema", json_schema), ("grammar", grammar), ("regex", regex),
              ("constraint", constraint)) if value is not None}
    if len(asked) > 1:
        raise GenerationError(f"at most one of json_schema, grammar, regex and constraint, got "
                              f"{', '.join(asked)}")
    if asked and "constraint" not in asked:
        constraint = _grammar_constraint(*asked.popitem(), tokenizer, config.vocab_size,
                                         stop_ids)
    request = DecodeRequest(
        prompt_ids=tuple(prompt_ids), max_tokens=max_tokens, sampling=options, seed=seed,
        stop_ids=frozenset(stop_ids), stop_strings=tuple(stop_matcher.stop_strings),
        logprobs=logprobs, top_logprobs=top_logprobs, detokenize=detokenize,
        prefill_chunk=prefill_chunk, kv_bits=kv_bits, kv_dtype=kv_dtype, constraint=constraint)
    return Decoding(model, request, tokenizer, prompt_cache)  # a bad seed raises here


def _grammar_constraint(kind: str, source, tokenizer, vocab_size: int, stop_ids: set[int]):
    """The whole completion in a grammar, then a stop token."""
    from .structured import grammar as structured

    if tokenizer is None:
        from .tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    try:
        compiled = structured.compile_grammar("lark" if kind == "grammar" else kind, source,
                                              kind)
    except structured.ConstraintError as error:
        raise GenerationError(str(error)) from None
    return structured.GrammarConstraint(structured.vocabulary(tokenizer, vocab_size),
                                        compiled, sorted(stop_ids))


def stream_decoding(decoding: "Decoding") -> Iterator[GenerationChunk]:
    """Decode one request alone: each step runs the model on its last token and samples the
    next (pipelined: step i+1 is queued before token i is read back, see the module
    docstring)."""
    mx.reset_peak_memory()
    decoding.prefill()  # now, at the first next() (else at the first use of next_input)
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
