"""openharmony.batch: several requests decoded by one forward per token.

References: transformers' GptOss (tests/reference.py) for the batched logits, and each request
decoded alone by `generate` (itself checked against the model's full forward in
test_generate.py) for the tokens, log-probabilities and finish reasons of a batch.
"""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest

from openharmony.batch import Batch, batch_caches
from openharmony.cache import PromptCache
from openharmony.config import FULL, SLIDING
from openharmony.generate import generate, make_decoding
from openharmony.load import load_model
from openharmony.testing.random_checkpoint import write_random_checkpoint
from openharmony.tokenizer import load_tokenizer

from openharmony.testing.reference import load_reference, reference_logits
from vocab import VOCAB, requires_vocab

pytestmark = requires_vocab
TOLERANCE = 1e-4  # max |logit difference| against transformers in float32 (as test_model.py)

# Prompts around the sliding window of 8: short, wrapped once, wrapped several times.
PROMPTS = [[5, 17, 3], list(range(100, 112)), [7, 300, 11, 950, 2, 64] * 4]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_config):
    assert tiny_config.sliding_window == 8
    # head_dim 32 (tiny's is 16) so that the quantized caches (groups of 32) apply too.
    config = dataclasses.replace(tiny_config, num_hidden_layers=4, head_dim=32,
                                 layer_types=(SLIDING, FULL, SLIDING, FULL))
    return write_random_checkpoint(tmp_path_factory.mktemp("batch") / "hf", config, seed=4)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint, mx.float32)


def prefilled(model, prompt, **cache_options) -> list:
    caches = model.make_cache(**cache_options)
    model(mx.array([prompt[:-1]]), cache=caches)
    return caches


def test_batched_logits_equal_each_rows_own_and_the_reference(model, checkpoint):
    """One forward of three rows at positions 2, 11 and 23 (different offsets, sliding caches
    wrapped differently) gives each row the logits of its own forward, and transformers'."""
    rows = [prefilled(model, p) for p in PROMPTS]
    last = mx.array([[p[-1]] for p in PROMPTS])
    batched = model(last, cache=batch_caches(rows))[:, 0]
    assert [c.offset for c in rows[0]] == [len(PROMPTS[0])] * 4  # each row's caches advanced
    reference = load_reference(checkpoint)
    for i, prompt in enumerate(PROMPTS):
        alone = model(mx.array([prompt[-1:]]), cache=prefilled(model, prompt))[0, 0]
        assert mx.array_equal(batched[i], alone)
        expected = reference_logits(reference, np.array([prompt]))[0, -1]
        assert np.abs(np.array(batched[i]) - expected).max() <= TOLERANCE


@pytest.mark.parametrize("cache_options", [{"kv_bits": 8}, {"kv_bits": 4, "quantize_sliding": True},
                                           {"kv_dtype": "bfloat16"}])
def test_batched_logits_with_every_cache_storage(model, cache_options):
    rows = [prefilled(model, p, **cache_options) for p in PROMPTS]
    batched = model(mx.array([[p[-1]] for p in PROMPTS]), cache=batch_caches(rows))[:, 0]
    for i, prompt in enumerate(PROMPTS):
        alone = model(mx.array([prompt[-1:]]), cache=prefilled(model, prompt, **cache_options))
        assert mx.array_equal(batched[i], alone[0, 0])


def run_batch(batch: Batch, joins: dict[int, list] = (), leave: dict = ()) -> dict:
    """Step `batch` until it is empty; `joins[n]`: decodings that join before step n;
    `leave[decoding]`: leaves once it has that many chunks. Returns decoding -> chunks."""
    joins, leave = dict(joins), dict(leave)
    chunks: dict = {d: [] for ds in joins.values() for d in ds}
    n = 0
    while len(batch) or any(k >= n for k in joins):
        for decoding in joins.get(n, []):
            batch.join(decoding)
        for decoding, chunk in batch.step():
            chunks[decoding].append(chunk)
            if len(chunks[decoding]) == leave.get(decoding):
                batch.leave(decoding)
        n += 1
    return chunks


REQUESTS = [  # (prompt, options): greedy, seeded sampling, filters with logprobs
    (PROMPTS[0], dict(temperature=0, max_tokens=12)),
    (PROMPTS[1], dict(temperature=1.0, seed=5, max_tokens=9, logprobs=True)),
    (PROMPTS[2], dict(temperature=0.8, top_p=0.9, top_k=40, seed=7, max_tokens=15,
                      logprobs=True, top_logprobs=3, repetition_penalty=1.3)),
    (PROMPTS[1][:5], dict(temperature=0, max_tokens=1)),  # read without a second step
]


def test_concurrent_requests_follow_the_reference_model(model, tokenizer, checkpoint):
    """Four requests decoded by one forward per token: each row's log-probabilities are
    transformers' for its own prompt and tokens (before penalties, temperature and filters),
    its greedy tokens transformers' argmax, and its text the vocabulary's decoding of its
    tokens; rows that mixed up positions, caches or samplers would break these."""
    batch = Batch(model)
    decodings = [make_decoding(model, p, tokenizer=tokenizer, **o) for p, o in REQUESTS]
    chunks = run_batch(batch, {0: decodings})
    assert batch.largest == 4
    reference = load_reference(checkpoint)
    for (prompt, options), decoding in zip(REQUESTS, decodings):
        got = chunks[decoding]
        tokens = [c.token for c in got]
        assert len(tokens) == options["max_tokens"] and got[-1].finish_reason == "length"
        assert "".join(c.text for c in got) == tokenizer.decode(tokens)
        # Row t: the distribution the t-th token was drawn from.
        logits = reference_logits(reference, np.array([prompt + tokens]))[0, len(prompt) - 1:-1]
        high = logits.max(-1, keepdims=True)
        log_p = logits - high - np.log(np.exp(logits - high).sum(-1, keepdims=True))
        if options["temperature"] == 0:
            assert tokens == log_p.argmax(-1).tolist()
        if options.get("logprobs"):
            np.testing.assert_allclose([c.logprob for c in got],
                                       log_p[np.arange(len(tokens)), tokens], atol=1e-4)
        for chunk, row in zip(got, log_p) if options.get("top_logprobs") else ():
            assert [t for t, _ in chunk.top_logprobs] == np.argsort(-row)[:3].tolist()


def test_requests_join_mid_generation_and_leave_while_others_go_on(model, tokenizer):
    """b joins after a has 4 tokens; c stops on a stop token, d on a stop string, e leaves
    early (a client gone); every request still gets its tokens alone, and a left or stopped
    request's prompt cache holds exactly its prompt and the tokens it read (reusable)."""
    a_alone = generate(model, PROMPTS[0], tokenizer=tokenizer, temperature=0, max_tokens=14)
    c_tokens = generate(model, PROMPTS[1], tokenizer=tokenizer, temperature=0,
                        max_tokens=10).tokens
    d_alone = generate(model, PROMPTS[2], tokenizer=tokenizer, temperature=1.0, seed=3,
                       max_tokens=10)
    stop_string = d_alone.text[len(d_alone.text) // 2:][:2]
    assert stop_string.strip()
    d_text = generate(model, PROMPTS[2], tokenizer=tokenizer, temperature=1.0, seed=3,
                      max_tokens=10, stop_strings=[stop_string])
    assert d_text.finish_reason == "stop_string"

    caches = {name: PromptCache(model) for name in "abcde"}

    def start(name, prompt, **options):
        return make_decoding(model, prompt, tokenizer=tokenizer, prompt_cache=caches[name],
                             **options)

    a = start("a", PROMPTS[0], temperature=0, max_tokens=14)
    b = start("b", PROMPTS[0] + [9, 9], temperature=0, max_tokens=5)
    c = start("c", PROMPTS[1], temperature=0, max_tokens=10, stop_tokens=[c_tokens[3]])
    d = start("d", PROMPTS[2], temperature=1.0, seed=3, max_tokens=10,
              stop_strings=[stop_string])
    e = start("e", PROMPTS[1], temperature=0, max_tokens=10)
    batch = Batch(model)
    chunks = run_batch(batch, {0: [a, c, d, e], 5: [b]}, leave={e: 3})

    assert [ch.token for ch in chunks[a]] == a_alone.tokens
    b_alone = generate(model, PROMPTS[0] + [9, 9], tokenizer=tokenizer, temperature=0,
                       max_tokens=5)
    assert [ch.token for ch in chunks[b]] == b_alone.tokens
    first = c_tokens.index(c_tokens[3])
    assert [ch.token for ch in chunks[c]] == c_tokens[:first + 1]
    assert chunks[c][-1].finish_reason == "stop_token"
    assert "".join(ch.text for ch in chunks[d]) == d_text.text
    assert [ch.token for ch in chunks[d]] == d_text.tokens
    assert [ch.token for ch in chunks[e]] == c_tokens[:3]
    assert batch.largest == 4 and len(batch) == 0

    # The caches of the rows that left early hold their prompt and every token read, so a
    # follow-up reuses all of it and continues as a cold run would.
    for name, prompt in (("c", PROMPTS[1]), ("e", PROMPTS[1])):
        read = [ch.token for ch in chunks[{"c": c, "e": e}[name]]]
        assert caches[name].tokens == prompt + read
        follow_up = prompt + read + [42]
        warm = generate(model, follow_up, tokenizer=tokenizer, temperature=0, max_tokens=4,
                        prompt_cache=caches[name])
        assert warm.stats.reused_prompt_tokens == len(follow_up) - 1
        cold = generate(model, follow_up, tokenizer=tokenizer, temperature=0, max_tokens=4)
        assert warm.tokens == cold.tokens
