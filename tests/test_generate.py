"""generate() / stream_generate() on tiny random-weight checkpoints.

References: the step-by-step argmax of the model's full forward (checked against transformers in
test_model.py), with a plain full cache on every layer, cold runs for prefix reuse, and hand-written
expectations for stops and text streaming, where a `Steered` model (the real model with the
logits of chosen positions pushed to chosen tokens) makes the generated tokens known.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from openharmony.cache import KVCache, PromptCache, RotatingKVCache
from openharmony.config import FULL, SLIDING
from openharmony.errors import OpenHarmonyError
from openharmony.generate import (ContextLengthError, GenerationError, StopStrings, generate,
                                  stream_generate)

# Not `import openharmony.generate`: the package exports a function of that name.
generate_module = importlib.import_module("openharmony.generate")
decoding_module = importlib.import_module("openharmony.decoding")
from openharmony.load import load_model
from openharmony.testing.random_checkpoint import write_random_checkpoint
from openharmony.sampling import SamplingError, SamplingOptions
from openharmony.tokenizer import load_tokenizer

from vocab import VOCAB, requires_vocab




pytestmark = requires_vocab


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB)


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_config):
    assert tiny_config.sliding_window == 8  # the prompt lengths below are chosen around it
    # Four layers, sliding below full below sliding: the upper sliding layer's keys depend on
    # positions beyond its window through the full layer, the case prefix reuse must get right.
    config = dataclasses.replace(tiny_config, num_hidden_layers=4,
                                 layer_types=(SLIDING, FULL, SLIDING, FULL))
    path = write_random_checkpoint(tmp_path_factory.mktemp("gen") / "hf", config, seed=3)
    return load_model(path, mx.float32)


@pytest.fixture(scope="module")
def vocab_model(tiny_vocab_checkpoint):
    return load_model(tiny_vocab_checkpoint, mx.float32)


def random_prompt(n: int, seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(3, 1024, n)]


def greedy_reference(model, prompt, n):
    """Tokens and their log-probabilities, one full forward per token. Every layer gets a fresh
    full cache, so the sliding window is applied by the mask alone (no rotating cache)."""
    seq, tokens, logprobs = list(prompt), [], []
    for _ in range(n):
        full_caches = [KVCache() for _ in range(model.config.num_hidden_layers)]
        logits = model(mx.array([seq]), full_caches)[0, -1]
        token = int(mx.argmax(logits).item())
        tokens.append(token)
        logprobs.append((logits[token] - mx.logsumexp(logits)).item())
        seq.append(token)
    return tokens, logprobs


def greedy(model, prompt, tokenizer, max_tokens, **kwargs):
    return generate(model, prompt, tokenizer=tokenizer, max_tokens=max_tokens, temperature=0,
                    ignore_eos=True, **kwargs)


class Steered:
    """The real model; the logits predicting generated token i are pushed to `script[i]`."""

    def __init__(self, model, prompt_length: int, script=(), **config_changes):
        self.model, self.prompt_length, self.script = model, prompt_length, list(script)
        self.config = dataclasses.replace(model.config, **config_changes)
        self.calls: list[int] = []  # tokens per call

    def make_cache(self):
        return self.model.make_cache()

    def __call__(self, tokens, cache=None, **kwargs):
        logits = self.model(tokens, cache, **kwargs)
        self.calls.append(tokens.shape[1])
        index = cache[0].offset - self.prompt_length  # the generated token these logits pick
        if 0 <= index < len(self.script):
            push = np.zeros(self.config.vocab_size, np.float32)
            push[self.script[index]] = 1e4
            logits = logits + mx.array(push)
        return logits


def byte_tokens(tokenizer, data: bytes) -> list[int]:
    return [tokenizer.encoding.encode_single_token(bytes([b])) for b in data]


# -- greedy parity -----------------------------------------------------------------------


def test_model_makes_rotating_caches_on_sliding_layers(model):
    assert [type(c) for c in model.make_cache()] == [RotatingKVCache, KVCache] * 2


@pytest.mark.parametrize("prefill_chunk", [3, 8, 13, 512])
def test_greedy_generation_matches_the_full_forward(model, tokenizer, prefill_chunk):
    prompt = random_prompt(21, seed=1)  # longer than the window; generation crosses it again
    expected, expected_logprobs = greedy_reference(model, prompt, 14)
    assert len(set(expected)) > 4  # the reference is not degenerate
    result = greedy(model, prompt, tokenizer, 14, prefill_chunk=prefill_chunk, logprobs=True)
    assert result.tokens == expected
    assert result.finish_reason == "length"
    np.testing.assert_allclose(result.logprobs, expected_logprobs, atol=1e-4)


def test_one_token_prompt(model, tokenizer):
    result = greedy(model, [17], tokenizer, 12)
    assert result.tokens == greedy_reference(model, [17], 12)[0]


def test_prefill_never_computes_the_logits_of_prompt_positions(vocab_model, tokenizer):
    # Logits of a 1500-token prompt over the real vocabulary would take 1500 x 201088 x 4 bytes
    # (1.2 GB); the chunked prefill evaluates only the caches, so the peak stays near the
    # weights (2 x 201088 x 64 float32 embeddings: 103 MB) plus one token's logits.
    # The peak is process-wide: what earlier tests left alive counts too, so the bound is on
    # what the call adds to the memory in use before it (the weights among it).
    prompt = [int(t) for t in np.random.default_rng(11).integers(0, 199998, 1500)]
    weights = sum(v.nbytes for _, v in tree_flatten(vocab_model.parameters()))
    gc.collect()
    in_use = mx.get_active_memory()
    assert in_use >= weights
    result = greedy(vocab_model, prompt, tokenizer, 2, prefill_chunk=256)
    assert result.stats.prompt_tokens == 1500
    assert result.stats.peak_memory_bytes < in_use + 64 * 2 ** 20


def test_stats(model, tokenizer):
    result = greedy(model, random_prompt(21, seed=1), tokenizer, 6)
    s = result.stats
    assert (s.prompt_tokens, s.reused_prompt_tokens, s.generated_tokens) == (21, 0, 6)
    assert s.prompt_tokens_per_second > 0 and s.generation_tokens_per_second > 0
    assert s.prompt_seconds > 0 and s.generation_seconds > 0 and s.peak_memory_bytes > 0


# -- prefix reuse ------------------------------------------------------------------------

# After a first call (a 20-token prompt, 12 tokens generated: the caches hold 31 positions and
# the sliding ones have wrapped), a second prompt built from the first call's tokens.
REUSE_CASES = {
    # name: (second prompt from (first prompt, generated), prompt tokens reused)
    "whole history": (lambda p, g: p + g + [5, 6], 31),
    "diverges at the last held position": (lambda p, g: p + g[:10] + [5, 6], 30),
    "diverges inside the reply, after wrapping": (lambda p, g: p + g[:4] + [5, 6, 7], 19),
    "diverges inside the first prompt": (lambda p, g: p[:-1] + [5, 6], 19),
    "diverges early": (lambda p, g: p[:3] + [5, 6, 7], 0),
    "same prompt again": (lambda p, g: list(p), 19),
}


@pytest.mark.parametrize("case", REUSE_CASES.values(), ids=REUSE_CASES.keys())
def test_prefix_reuse_gives_the_tokens_of_a_cold_run(model, tokenizer, case):
    make_prompt, reused = case
    first = random_prompt(20, seed=2)
    cache = PromptCache(model)
    generated = greedy(model, first, tokenizer, 12, prompt_cache=cache).tokens
    assert len(cache.tokens) == 31 and cache.caches[0].offset == 31
    second = make_prompt(first, generated)

    warm = greedy(model, second, tokenizer, 12, prompt_cache=cache, logprobs=True)
    cold = greedy(model, second, tokenizer, 12, logprobs=True)
    assert warm.stats.reused_prompt_tokens == reused
    assert warm.tokens == cold.tokens == greedy_reference(model, second, 12)[0]
    np.testing.assert_allclose(warm.logprobs, cold.logprobs, atol=1e-5)


def test_prefix_reuse_before_the_window_wrapped(model, tokenizer):
    first = random_prompt(4, seed=4)
    cache = PromptCache(model)
    greedy(model, first, tokenizer, 3, prompt_cache=cache)  # 6 positions held, window 8
    second = first[:2] + [9, 10, 11]
    warm = greedy(model, second, tokenizer, 10, prompt_cache=cache)
    assert warm.stats.reused_prompt_tokens == 2  # trimmed directly, no snapshot needed
    assert warm.tokens == greedy_reference(model, second, 10)[0]


def test_a_conversation_reuses_each_previous_turn(model, tokenizer):
    cache = PromptCache(model)
    prompt, reused = random_prompt(11, seed=5), []
    for turn, kept in enumerate([8, 3, 8, 3]):
        result = greedy(model, prompt, tokenizer, 9, prompt_cache=cache)
        assert result.tokens == greedy_reference(model, prompt, 9)[0], f"turn {turn}"
        reused.append(result.stats.reused_prompt_tokens)
        # The next prompt keeps the first `kept` tokens of the reply (a chat template may
        # drop part of it), then adds a user message.
        prompt = prompt + result.tokens[:kept] + random_prompt(6, seed=10 + turn)
    # Turn 1 diverges at the last position the caches hold (11 + 8): they trim exactly.
    # Turn 2 diverges 5 positions earlier, beyond what the wrapped sliding caches can undo:
    # the snapshot taken after turn 1's prefill (its prompt 25 tokens, minus the last) is used.
    assert reused == [0, 19, 24, 42]


def test_a_stream_stopped_early_leaves_the_prompt_cache_consistent(model, tokenizer):
    first = random_prompt(20, seed=12)
    cache = PromptCache(model)
    stream = stream_generate(model, first, tokenizer=tokenizer, max_tokens=50, temperature=0,
                             ignore_eos=True, prompt_cache=cache)
    taken = [next(stream).token for _ in range(3)]
    stream.close()
    # The three tokens delivered are in the caches (the step after the third was queued).
    assert cache.tokens == first + taken and cache.caches[1].offset == 23
    second = first + taken + [5]
    warm = greedy(model, second, tokenizer, 8, prompt_cache=cache)
    assert warm.stats.reused_prompt_tokens == 23
    assert warm.tokens == greedy_reference(model, second, 8)[0]


def test_without_detokenizing_the_tokens_are_the_same_and_no_text_comes(model, tokenizer):
    prompt = random_prompt(12, seed=21)
    cache = PromptCache(model)
    chunks = list(stream_generate(model, prompt, tokenizer=tokenizer, max_tokens=6,
                                  temperature=0, ignore_eos=True, detokenize=False,
                                  prompt_cache=cache))
    assert [c.token for c in chunks] == greedy_reference(model, prompt, 6)[0]
    assert all(c.text == "" for c in chunks) and chunks[-1].finish_reason == "length"
    # The first chunk says how much of the prompt came from the cache (the rest: None).
    again = list(stream_generate(model, prompt + [7], tokenizer=tokenizer, max_tokens=2,
                                 temperature=0, prompt_cache=cache))
    assert [c.reused_prompt_tokens for c in chunks] == [0] + [None] * 5
    # (The caches went past position 12, wrapping the window: the snapshot at 11 is used.)
    assert again[0].reused_prompt_tokens == again[-1].stats.reused_prompt_tokens == 11
    with pytest.raises(GenerationError, match="stop_strings"):
        stream_generate(model, prompt, tokenizer=tokenizer, detokenize=False, stop_strings=["x"])


def test_top_logprobs_are_the_full_forwards_most_likely_tokens(model, tokenizer):
    prompt = random_prompt(10, seed=31)
    chunks = list(stream_generate(model, prompt, tokenizer=tokenizer, max_tokens=3,
                                  temperature=0, ignore_eos=True, top_logprobs=5))
    seq = list(prompt)
    for chunk in chunks:
        logits = np.array(model(mx.array([seq]), [KVCache() for _ in model.layers])[0, -1])
        reference = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        best = np.argsort(-reference)[:5]
        assert [t for t, _ in chunk.top_logprobs] == best.tolist()
        np.testing.assert_allclose([v for _, v in chunk.top_logprobs], reference[best],
                                   rtol=1e-4, atol=1e-5)
        assert chunk.logprob == pytest.approx(chunk.top_logprobs[0][1])  # greedy: the best
        seq.append(chunk.token)
    with pytest.raises(GenerationError, match="top_logprobs"):
        stream_generate(model, prompt, tokenizer=tokenizer, top_logprobs=21)


def test_prompt_cache_of_another_model_is_rejected(model, vocab_model, tokenizer):
    with pytest.raises(GenerationError, match="another model"):
        greedy(vocab_model, [1, 2, 3], tokenizer, 2, prompt_cache=PromptCache(model))


# -- sampling through generate -------------------------------------------------------------


def test_seeded_sampling_is_reproducible(model, tokenizer):
    prompt = random_prompt(10, seed=6)

    def run(seed):
        return generate(model, prompt, tokenizer=tokenizer, max_tokens=12, temperature=1.5,
                        seed=seed, ignore_eos=True).tokens

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_single_options_override_sampling(model, tokenizer):
    prompt = random_prompt(10, seed=6)
    result = generate(model, prompt, tokenizer=tokenizer, max_tokens=6, ignore_eos=True,
                      sampling=SamplingOptions(temperature=1.5, top_k=5), temperature=0)
    assert result.tokens == greedy_reference(model, prompt, 6)[0]
    with pytest.raises(SamplingError, match="top_p"):
        generate(model, prompt, tokenizer=tokenizer, top_p=0)


# -- decode pipelining ------------------------------------------------------------------


def test_next_step_is_queued_before_a_token_is_read(model, tokenizer, monkeypatch):
    events = []  # ("step", n): the model called for decode step n; ("read", n): token n read
    steered = Steered(model, prompt_length=10)
    real_call, real_read = Steered.__call__, decoding_module._read_token

    def call(self, tokens, cache=None, **kwargs):
        if self.calls:  # after the one prefill call
            events.append(("step", len(self.calls)))
        return real_call(self, tokens, cache, **kwargs)

    def read(token):
        events.append(("read", sum(kind == "read" for kind, _ in events) + 1))
        return real_read(token)

    monkeypatch.setattr(Steered, "__call__", call)
    monkeypatch.setattr(decoding_module, "_read_token", read)
    tokens = greedy(steered, random_prompt(10, seed=7), tokenizer, 5).tokens
    assert len(tokens) == 5 and steered.calls == [9, 1, 1, 1, 1, 1]
    # Step n computes token n; step n+1 is queued before token n is read, none past the last.
    assert events == [("step", 1), ("step", 2), ("read", 1), ("step", 3), ("read", 2),
                      ("step", 4), ("read", 3), ("step", 5), ("read", 4), ("read", 5)]


# -- stops -------------------------------------------------------------------------------


def test_stop_conditions(model, tokenizer):
    prompt = random_prompt(10, seed=8)
    script = [40, 41, 42, 43, 44, 45]

    def run(max_tokens=6, **kwargs):
        steered = Steered(model, len(prompt), script, eos_token_id=kwargs.pop("eos", 2))
        return generate(steered, prompt, tokenizer=tokenizer, max_tokens=max_tokens,
                        temperature=0, **kwargs)

    result = run(eos=42)  # the model's eos stops by default and is the last token
    assert (result.tokens, result.finish_reason) == ([40, 41, 42], "stop_token")
    assert result.text == tokenizer.decode([40, 41])
    result = run(eos=(7, 43))  # a tuple of eos ids
    assert (result.tokens, result.finish_reason) == ([40, 41, 42, 43], "stop_token")
    result = run(eos=42, ignore_eos=True)
    assert (result.tokens, result.finish_reason) == (script, "length")
    result = run(stop_tokens=[41])
    assert (result.tokens, result.finish_reason) == ([40, 41], "stop_token")
    result = run(max_tokens=4)
    assert (result.tokens, result.finish_reason) == (script[:4], "length")
    assert result.text == tokenizer.decode(script[:4])


def test_stop_string_ends_the_text_before_it(model, tokenizer):
    prompt = random_prompt(10, seed=9)
    script = byte_tokens(tokenizer, b"x<sto!y<stop>z")
    steered = Steered(model, len(prompt), script)
    chunks = list(stream_generate(steered, prompt, tokenizer=tokenizer, max_tokens=20,
                                  temperature=0, stop_strings=["<stop>", "never"]))
    # "<sto" is held back until "!" shows it is no stop string; "<stop>" is never emitted.
    assert [c.text for c in chunks] == ["x", "", "", "", "", "<sto!", "y"] + [""] * 6
    assert [c.token for c in chunks] == script[:13]  # up to the token completing the stop
    assert chunks[-1].finish_reason == "stop_string"
    assert all(c.finish_reason is None for c in chunks[:-1])
    result = generate(Steered(model, len(prompt), script), prompt, tokenizer=tokenizer,
                      max_tokens=20, temperature=0, stop_strings=["<stop>"])
    assert (result.text, result.finish_reason, len(result.tokens)) == ("x<sto!y", "stop_string",
                                                                        13)


@pytest.mark.parametrize("pieces, stops, expected", [
    # (text fed per token, stop strings, [(emitted, stopped) per feed]); the last feed is final
    (["ab", "c<", "st", "op>xyz"], ["<stop>"], [("ab", False), ("c", False), ("", False),
                                                  ("", True)]),
    (["abcXYZ"], ["XYZ", "bc"], [("a", True)]),  # the earliest stop string wins
    (["a<", "s"], ["<stop>"], [("a", False), ("<s", False)]),  # the end releases held text
    (["aa", "ab"], ["aab", "b"], [("", False), ("a", True)]),  # "aab" at 1 before "b" at 3
])
def test_stop_string_matcher(pieces, stops, expected):
    matcher = StopStrings(stops)
    got = [matcher.feed(piece, final=i == len(pieces) - 1) for i, piece in enumerate(pieces)]
    assert got == expected


def test_context_overflow_is_a_clear_error(model, tokenizer):
    small = Steered(model, 0, max_position_embeddings=32)
    prompt = random_prompt(30, seed=10)
    with pytest.raises(ContextLengthError, match="context of 32 tokens"):
        greedy(small, prompt, tokenizer, 3)
    assert len(greedy(small, prompt, tokenizer, 2).tokens) == 2


@pytest.mark.parametrize("prompt, kwargs, fragment", [
    ([], {}, "empty"),
    ([1, 1024], {}, "outside the model's vocabulary"),
    ([1, 2], {"max_tokens": 0}, "max_tokens"),
    ([1, 2], {"prefill_chunk": 0}, "prefill_chunk"),
    ([1, 2], {"stop_strings": [""]}, "stop strings"),
    ([1, 2], {"max_tokens": 2.0}, "max_tokens must be a positive integer, got 2.0"),
    ([1, 2], {"sampling": {"temperature": 0}}, "sampling must be a SamplingOptions, got dict"),
    ([1, 2], {"ignore_eos": "yes"}, "ignore_eos must be True or False, got 'yes'"),
    ([1, 2], {"logprobs": 1}, "logprobs must be True or False, got 1"),
    ([1, 2], {"prompt_cache": []}, "prompt_cache must be a PromptCache, got list"),
])
def test_invalid_requests(model, tokenizer, prompt, kwargs, fragment):
    with pytest.raises(GenerationError, match=fragment) as info:
        stream_generate(model, prompt, tokenizer=tokenizer, **kwargs)  # at the call, not later
    assert isinstance(info.value, OpenHarmonyError) and isinstance(info.value, ValueError)
    with pytest.raises(GenerationError, match=fragment):
        generate(model, prompt, tokenizer=tokenizer, **kwargs)


# -- text ------------------------------------------------------------------------------


def test_utf8_streaming_never_splits_a_character(vocab_model, tokenizer):
    prompt = tokenizer.encode("Say hello:")
    # h, then é as two single-byte tokens, "llo", " 😀" (one token), and half of a 4-byte
    # character when max_tokens runs out.
    script = (byte_tokens(tokenizer, b"h\xc3\xa9") + tokenizer.encode("llo")
              + tokenizer.encode(" 😀") + byte_tokens(tokenizer, b"\xf0\x9f"))
    assert len(script) == 7
    steered = Steered(vocab_model, len(prompt), script)
    chunks = list(stream_generate(steered, prompt, tokenizer=tokenizer, max_tokens=7,
                                  temperature=0))
    assert [c.text for c in chunks] == ["h", "", "é", "llo", " 😀", "", "\ufffd"]
    assert chunks[-1].finish_reason == "length"
    assert "".join(c.text for c in chunks) == b"h\xc3\xa9llo \xf0\x9f\x98\x80\xf0\x9f".decode(
        "utf-8", errors="replace")


def test_text_prompt_is_encoded_with_special_tokens(vocab_model, tokenizer):
    text = "<|start|>user<|message|>Hi"
    ids = tokenizer.encode(text, allow_special=True)
    assert ids[0] == tokenizer.special_ids["<|start|>"] and len(ids) == 4
    from_text = greedy(vocab_model, text, tokenizer, 4)
    assert from_text.stats.prompt_tokens == 4
    assert from_text.tokens == greedy(vocab_model, ids, tokenizer, 4).tokens
    assert from_text.text == tokenizer.decode(from_text.tokens)


def test_default_tokenizer_comes_from_the_environment(vocab_model, tokenizer, monkeypatch):
    monkeypatch.setenv("OPENHARMONY_VOCAB", str(VOCAB))
    result = generate(vocab_model, "Hello", max_tokens=3, temperature=0, ignore_eos=True)
    assert result.tokens == greedy(vocab_model, tokenizer.encode("Hello"), tokenizer, 3).tokens
    assert result.text == tokenizer.decode(result.tokens)


# -- bad input, named; NaN logits; no vocabulary for token in, token out (issue 13) ---------


@pytest.mark.parametrize("prompt, fragment", [
    ([1.5, 2], "prompt[0] must be an integer token id, got 1.5"),
    ([2.0, 2], "prompt[0] must be an integer token id, got 2.0"),
    (["7", 2], "prompt[0] must be an integer token id, got '7'"),
    ([1, True], "prompt[1] must be an integer token id, got True"),
    ([[1, 2]], "prompt[0] must be an integer token id, got [1, 2]"),
    (np.array([1.0, 2.0]), "prompt must be a 1-D array of integer token ids, got 1-D float64"),
    (mx.array([[1, 2]]), "prompt must be a 1-D array of integer token ids, got 2-D int32"),
    (7, "prompt must be a string or a sequence of token ids, got int"),
    ([1, -1], "prompt token id -1 (at position 1) is outside the model's vocabulary"),
    ([1, 1024], "prompt token id 1024 (at position 1) is outside the model's vocabulary "
                "(0 .. 1023)"),
])
def test_prompt_ids_of_the_wrong_type_or_range_are_refused(model, tokenizer, prompt, fragment):
    with pytest.raises(GenerationError) as raised:
        stream_generate(model, prompt, tokenizer=tokenizer)
    assert fragment in str(raised.value)


def test_numpy_and_mlx_integer_prompts_are_the_ids_they_hold(model, tokenizer):
    prompt = random_prompt(6, seed=11)
    expected = greedy(model, prompt, tokenizer, 3).tokens
    for given in ([np.int64(t) for t in prompt], np.array(prompt, np.int32),
                  mx.array(prompt, dtype=mx.uint32)):
        assert greedy(model, given, tokenizer, 3).tokens == expected


def test_text_prompt_beyond_a_small_vocabulary_is_refused(model, tokenizer):
    text = "some text"
    ids = tokenizer.encode(text)  # o200k ids, most beyond the tiny model's 1024 rows
    position = next(i for i, t in enumerate(ids) if t >= 1024)
    with pytest.raises(GenerationError) as raised:
        generate(model, text, tokenizer=tokenizer)
    assert (f"the text prompt encodes to token id {ids[position]} (at position {position}) is "
            "outside the model's vocabulary (0 .. 1023)") in str(raised.value)


def test_stop_tokens_take_special_token_names(vocab_model, tokenizer):
    prompt = tokenizer.encode("Hi")
    end = tokenizer.special_ids["<|end|>"]
    script = tokenizer.encode(" there") + [end, 5, 6]
    for stop in (["<|end|>"], "<|end|>", [end], [np.int64(end)]):
        result = generate(Steered(vocab_model, len(prompt), script), prompt, tokenizer=tokenizer,
                          max_tokens=5, temperature=0, stop_tokens=stop)
        assert (result.tokens[-1], result.finish_reason) == (end, "stop_token"), stop
        assert result.text == " there"


@pytest.mark.parametrize("stop, fragment", [
    (["<|nope|>"], "stop_tokens[0] '<|nope|>' is not a special token"),
    ([3, "end"], "stop_tokens[1] 'end' is not a special token"),
    ([1.5], "stop_tokens[0] must be a token id (an integer >= 0) or a special-token name, "
            "got 1.5"),
    ([-3], "stop_tokens[0] must be a token id"),
    (None, "stop_tokens must be a list, got NoneType"),
])
def test_bad_stop_tokens_are_named(model, tokenizer, stop, fragment):
    with pytest.raises(GenerationError) as raised:
        stream_generate(model, [1, 2], tokenizer=tokenizer, stop_tokens=stop)
    assert fragment in str(raised.value)


class NaNLogitsAt(Steered):
    """The real model, whose logits for generated token `at` (1-based) hold one NaN."""

    def __init__(self, model, prompt_length, at, value=float("nan")):
        super().__init__(model, prompt_length)
        self.at, self.value = at, value

    def __call__(self, tokens, cache=None, **kwargs):
        logits = self.model(tokens, cache, **kwargs)
        if cache[0].offset - self.prompt_length == self.at - 1:
            poison = np.zeros(self.config.vocab_size, np.float32)
            poison[7] = self.value
            logits = logits + mx.array(poison)
        return logits


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("temperature", [0, 1.0])
def test_non_finite_logits_stop_generation_with_a_clear_error(model, tokenizer, value,
                                                              temperature):
    prompt = random_prompt(5, seed=12)
    stream = stream_generate(NaNLogitsAt(model, len(prompt), at=3, value=value), prompt,
                             tokenizer=tokenizer, max_tokens=10, temperature=temperature,
                             ignore_eos=True)
    expected = greedy(model, prompt, tokenizer, 2).tokens
    got = [next(stream).token, next(stream).token]  # tokens 1 and 2 are sound
    if temperature == 0:
        assert got == expected
    with pytest.raises(generate_module.NonFiniteLogitsError,
                       match=r"not finite \(NaN or inf\) for generated token 3 \(position 7\)"):
        next(stream)


def test_token_in_token_out_needs_no_vocabulary(model, tokenizer, monkeypatch):
    import openharmony.tokenizer as tokenizer_module
    from openharmony.tokenizer import MISSING_VOCAB_HELP

    def offline(*args, **kwargs):
        raise OpenHarmonyError(MISSING_VOCAB_HELP)

    monkeypatch.setattr(tokenizer_module, "load_tokenizer", offline)
    prompt = random_prompt(8, seed=13)
    expected = greedy(model, prompt, tokenizer, 4)
    result = generate(model, prompt, max_tokens=4, temperature=0, ignore_eos=True,
                      detokenize=False)
    assert result.tokens == expected.tokens and result.text == ""
    chunks = list(stream_generate(model, prompt, max_tokens=2, temperature=0,
                                  stop_tokens=["<|end|>"], detokenize=False))
    assert [c.text for c in chunks] == ["", ""]
    # eos ids come from tiktoken's definition of o200k_harmony, as the tokenizer gives them.
    assert generate_module._harmony_eos_ids() == tokenizer.eos_token_ids
    with pytest.raises(GenerationError, match="detokenize=False needs no vocabulary"):
        generate(model, prompt, max_tokens=2)  # text wanted: the vocabulary is needed
    with pytest.raises(OpenHarmonyError, match="vocabulary is not available"):
        generate(model, "text", max_tokens=2)