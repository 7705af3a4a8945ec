"""openharmony.decoding: a `DecodeRequest` run by a `Decoding`, stepped by hand.

Reference: the step-by-step argmax of the model's full forward (no cache, no decoding; the
forward is checked against transformers in test_model.py). The misuses the API leaves open
(reading before sampling, sampling logits of no forward) are clear errors.
"""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import pytest

from openharmony.decoding import DecodeRequest, Decoding, GenerationError
from openharmony.generate import make_decoding
from openharmony.load import load_model
from openharmony.sampling import SamplingOptions
from openharmony.testing.random_checkpoint import write_random_checkpoint

GREEDY = SamplingOptions(temperature=0)
PROMPT = (5, 17, 3, 250, 11, 9, 40, 2, 77, 8, 13)  # longer than the sliding window of 8


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_config):
    path = write_random_checkpoint(tmp_path_factory.mktemp("decoding") / "hf", tiny_config,
                                   seed=5)
    return load_model(path, mx.float32)


def full_forward_greedy(model, prompt, count: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(count):
        tokens.append(int(mx.argmax(model(mx.array([tokens]))[0, -1]).item()))
    return tokens[len(prompt):]


def step(model, decoding: Decoding) -> None:
    logits = model(decoding.next_input.reshape(1, 1), cache=decoding.caches)[:, -1, :]
    mx.async_eval(decoding.sample(logits) + decoding.prompt_cache.state)


def test_a_request_decoded_by_hand_prefills_on_first_use(model):
    """No prefill() call: the first next_input puts the prompt into the caches."""
    request = DecodeRequest(prompt_ids=PROMPT, max_tokens=6, sampling=GREEDY, detokenize=False)
    decoding = Decoding(model, request)
    assert all(c.offset == 0 for c in decoding.prompt_cache.caches)  # nothing computed yet
    tokens, finish = [], None
    while finish is None:
        if decoding.needs_step:
            step(model, decoding)
        chunk = decoding.read()
        tokens.append(chunk.token)
        finish = chunk.finish_reason
    assert tokens == full_forward_greedy(model, PROMPT, 6)
    assert finish == "length"


def test_prefill_runs_once(model):
    decoding = Decoding(model, DecodeRequest(prompt_ids=PROMPT, sampling=GREEDY,
                                             detokenize=False))
    decoding.prefill()
    offsets = [c.offset for c in decoding.caches]
    decoding.prefill()
    _ = decoding.next_input
    assert [c.offset for c in decoding.caches] == offsets == [len(PROMPT) - 1] * len(offsets)


def test_reading_before_sampling_is_a_clear_error(model):
    decoding = Decoding(model, DecodeRequest(prompt_ids=PROMPT, max_tokens=1, sampling=GREEDY,
                                             detokenize=False))
    with pytest.raises(RuntimeError, match=r"read\(\) with no token sampled"):
        decoding.read()
    step(model, decoding)
    assert decoding.read().finish_reason == "length"
    with pytest.raises(RuntimeError, match="the decoding finished: length"):
        decoding.read()


def test_sampling_logits_of_no_forward_is_a_clear_error(model):
    decoding = Decoding(model, DecodeRequest(prompt_ids=PROMPT, sampling=GREEDY,
                                             detokenize=False))
    logits = mx.zeros((1, model.config.vocab_size))
    with pytest.raises(RuntimeError, match="run the model on it first"):
        decoding.sample(logits)


def test_make_decoding_builds_a_frozen_request_of_its_keywords(model):
    decoding = make_decoding(model, list(PROMPT), max_tokens=3, temperature=0, seed=7,
                             stop_tokens=[42], ignore_eos=True, top_logprobs=2,
                             detokenize=False, prefill_chunk=4)
    request = decoding.request
    assert request == DecodeRequest(prompt_ids=PROMPT, max_tokens=3, sampling=GREEDY, seed=7,
                                    stop_ids=frozenset({42}), top_logprobs=2,
                                    detokenize=False, prefill_chunk=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.max_tokens = 5


def test_detokenizing_needs_a_tokenizer(model):
    with pytest.raises(GenerationError, match="needs a tokenizer"):
        Decoding(model, DecodeRequest(prompt_ids=PROMPT))
