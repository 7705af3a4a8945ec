"""Sampling: option validation, exact filter supports and penalties on hand-made logits,
the distribution actually sampled, and seeds."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from openharmony.errors import OpenHarmonyError
from openharmony.sampling import (Sampler, SamplingError, SamplingOptions, apply_min_p,
                                  apply_top_k, apply_top_p, log_probabilities)

# Probabilities 0.4, 0.25, 0.15, 0.1, 0.06, 0.04 in a shuffled order.
PROBS = np.array([0.1, 0.4, 0.04, 0.25, 0.06, 0.15])
LOGITS = mx.array(np.log(PROBS)[None].astype(np.float32) + 3.0)  # any offset: same softmax


def support(logits: mx.array) -> set[int]:
    return {int(i) for i in np.flatnonzero(np.isfinite(np.array(logits[0])))}


@pytest.mark.parametrize("k, expected", [
    (1, {1}), (2, {1, 3}), (3, {1, 3, 5}), (5, {0, 1, 3, 4, 5}), (6, set(range(6))),
    (0, set(range(6))), (99, set(range(6)))])
def test_top_k_support(k, expected):
    assert support(apply_top_k(LOGITS, k)) == expected


@pytest.mark.parametrize("p, expected", [
    # Sorted: 0.4 (1), 0.25 (3), 0.15 (5), 0.1 (0), 0.06 (4), 0.04 (2); cumulative
    # 0.4, 0.65, 0.8, 0.9, 0.96, 1.0: keep the smallest prefix whose mass reaches p.
    (0.3, {1}), (0.5, {1, 3}), (0.7, {1, 3, 5}), (0.85, {0, 1, 3, 5}),
    (0.95, {0, 1, 3, 4, 5}), (0.97, set(range(6))), (1.0, set(range(6)))])
def test_top_p_support(p, expected):
    assert support(apply_top_p(LOGITS, p)) == expected


@pytest.mark.parametrize("p, expected", [
    # Relative to the top probability 0.4: 1, 0.625, 0.375, 0.25, 0.15, 0.1.
    (0.0, set(range(6))), (0.12, {0, 1, 3, 4, 5}), (0.3, {1, 3, 5}), (0.5, {1, 3}),
    (0.7, {1}), (1.0, {1})])
def test_min_p_support(p, expected):
    assert support(apply_min_p(LOGITS, p)) == expected


def test_filters_compose_in_order_on_the_renormalized_distribution():
    # top_k=4 leaves 0.4, 0.25, 0.15, 0.1, renormalized to 0.444, 0.278, 0.167, 0.111: there
    # top_p=0.7 is reached by the first two (0.722); unfiltered it takes three (0.65 < 0.7).
    sampler = Sampler(SamplingOptions(temperature=1.0, top_k=4, top_p=0.7), 6, seed=0)
    assert support(sampler.process(LOGITS)) == {1, 3}
    assert support(apply_top_p(LOGITS, 0.7)) == {1, 3, 5}


def test_sampled_frequencies_follow_the_tempered_filtered_distribution():
    n = 20000
    options = SamplingOptions(temperature=2.0, top_k=4)
    tokens = np.array(Sampler(options, 6, seed=1)(mx.broadcast_to(LOGITS, (n, 6))))
    kept = [1, 3, 5, 0]
    tempered = PROBS[kept] ** 0.5
    expected = tempered / tempered.sum()
    observed = np.array([(tokens == t).mean() for t in kept])
    assert set(np.unique(tokens)) == set(kept)
    np.testing.assert_allclose(observed, expected, atol=0.015)  # ~4 standard deviations


def test_temperature_zero_is_argmax():
    sampler = Sampler(SamplingOptions(temperature=0, top_k=3), 6, seed=0)
    assert [sampler(LOGITS).item() for _ in range(5)] == [1] * 5


def force(token: int, vocab: int = 5) -> mx.array:
    logits = np.zeros((1, vocab), np.float32)
    logits[0, token] = 100.0
    return mx.array(logits)


def test_penalties_change_exactly_the_seen_tokens():
    logits = mx.array([[2.0, -1.0, 0.5, 3.0, -2.0]])
    options = SamplingOptions(temperature=0, repetition_penalty=2.0, frequency_penalty=0.5,
                              presence_penalty=0.25)
    sampler = Sampler(options, 5, prompt_tokens=[0, 1], seed=0)
    assert [sampler(force(t)).item() for t in (3, 3, 2)] == [3, 3, 2]
    # Seen: 0, 1 (prompt), 2 (once), 3 (twice); 4 never.
    #   repetition 2:   2/2, -1*2, 0.5/2, 3/2, -2       = 1.0, -2.0, 0.25, 1.5, -2.0
    #   frequency 0.5:  minus 0.5 x count (0, 0, 1, 2, 0) = 1.0, -2.0, -0.25, 0.5, -2.0
    #   presence 0.25:  minus 0.25 if generated          = 1.0, -2.0, -0.5, 0.25, -2.0
    expected = [[1.0, -2.0, -0.5, 0.25, -2.0]]
    np.testing.assert_allclose(np.array(sampler.process(logits)), expected, rtol=1e-6)
    assert sampler(logits).item() == 0  # token 3 led before the penalties


def test_penalties_off_leave_logits_alone():
    logits = mx.array([[2.0, -1.0, 0.5, 3.0, -2.0]])
    sampler = Sampler(SamplingOptions(temperature=0), 5, prompt_tokens=[0, 1, 3], seed=0)
    sampler(force(3))
    assert np.array_equal(np.array(sampler.process(logits)), np.array(logits))


def test_seed_reproduces_a_run_and_leaves_global_random_state_alone():
    options = SamplingOptions(temperature=1.0)
    flat = mx.zeros((1, 1000))

    def run(seed):
        sampler = Sampler(options, 1000, seed=seed)
        return [sampler(flat).item() for _ in range(30)]

    mx.random.seed(123)
    first = run(7)
    global_draw = mx.random.uniform(shape=(4,))
    mx.random.seed(999)  # the global seed does not matter to a seeded sampler
    assert run(7) == first
    assert run(8) != first
    mx.random.seed(123)  # and the sampler did not consume global random numbers
    assert mx.array_equal(mx.random.uniform(shape=(4,)), global_draw)
    assert len(set(first)) > 20  # a flat distribution really is sampled


def test_unseeded_samplers_differ():
    flat = mx.zeros((1, 1000))
    a, b = (Sampler(SamplingOptions(), 1000) for _ in range(2))
    assert [a(flat).item() for _ in range(10)] != [b(flat).item() for _ in range(10)]


def test_log_probabilities():
    tokens = mx.array([1, 4], dtype=mx.uint32)
    logits = mx.concatenate([LOGITS, LOGITS * 0.5], axis=0)
    got = np.array(log_probabilities(logits, tokens))
    half = np.array(LOGITS[0]) * 0.5
    expected = [math.log(0.4), half[4] - np.log(np.exp(half).sum())]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"min_p": -0.1}, "min_p"),
    ({"min_p": 1.1}, "min_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
])
def test_invalid_options_raise_a_clear_error(kwargs, fragment):
    with pytest.raises(SamplingError, match=fragment) as info:
        SamplingOptions(**kwargs)
    assert isinstance(info.value, OpenHarmonyError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("seed", [-1, 2 ** 64, 1.5, "7"])
def test_invalid_seed(seed):
    with pytest.raises(SamplingError, match="seed"):
        Sampler(SamplingOptions(), 10, seed=seed)


def test_boundary_values_are_valid():
    SamplingOptions(temperature=0, top_p=1.0, top_k=0, min_p=1.0, repetition_penalty=0.5,
                    presence_penalty=-2, frequency_penalty=2)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": float("nan")}, "temperature must be a finite number, got nan"),
    ({"top_p": float("inf")}, "top_p must be a finite number, got inf"),
    ({"min_p": float("-inf")}, "min_p must be a finite number, got -inf"),
    ({"repetition_penalty": float("nan")}, "repetition_penalty must be a finite number"),
    ({"presence_penalty": float("nan")}, "presence_penalty must be a finite number, got nan"),
    ({"frequency_penalty": float("inf")}, "frequency_penalty must be a finite number"),
    # A NumPy scalar prints like a number: the message says why it is refused.
    ({"temperature": np.float32(0.5)}, "temperature must be a finite number (a Python int or "
                                       "float), got np.float32(0.5) of type float32"),
    ({"top_k": np.int64(5)}, "top_k must be an integer, got np.int64(5) of type int64"),
])
def test_non_finite_and_wrongly_typed_options_say_so(kwargs, message):
    with pytest.raises(SamplingError) as raised:
        SamplingOptions(**kwargs)
    assert message in str(raised.value)
