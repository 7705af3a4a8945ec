"""openharmony.bench.cache / cache_speed: the KV cache measurements' instruments.

References: NumPy math written from the definitions (max |diff|, top-1 agreement, KL divergence
of softmaxes; an affine grid of 2**bits levels per group), and the caches' own offsets.
"""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np

from openharmony.bench.cache import Agreement, RoundedStorage
from openharmony.bench.cache_speed import cache_bytes, fill
from openharmony.cache import make_caches


def test_agreement_is_the_definitions():
    rng = np.random.default_rng(0)
    reference, candidate = rng.normal(size=(2, 6, 50)).astype(np.float32)
    candidate[:3] = reference[:3] + 0.01 * rng.normal(size=(3, 50))  # three agree surely
    agreement = Agreement()
    agreement.add(mx.array(reference), mx.array(candidate))
    summary = agreement.summary()

    def log_softmax(x):
        x = x.astype(np.float64)
        return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(
            -1, keepdims=True)

    p, q = log_softmax(reference), log_softmax(candidate)
    kl = (np.exp(p) * (p - q)).sum(-1)
    assert summary["positions"] == 6
    np.testing.assert_allclose(summary["max_abs_logit_diff"],
                               np.abs(reference - candidate).max(), rtol=1e-6)
    assert summary["top1_agreement"] == np.mean(reference.argmax(-1) == candidate.argmax(-1))
    np.testing.assert_allclose(summary["mean_kl"], kl.mean(), rtol=1e-4)


def test_rounded_storage_rounds_onto_each_groups_affine_grid():
    x = np.random.default_rng(1).normal(size=(1, 2, 3, 128)).astype(np.float32)
    (rounded,) = RoundedStorage(bits=3, group_size=64).encode(mx.array(x))
    groups = x.reshape(1, 2, 3, 2, 64)
    low, high = groups.min(-1, keepdims=True), groups.max(-1, keepdims=True)
    step = (high - low) / 7
    expected = (np.round((groups - low) / step) * step + low).reshape(x.shape)
    np.testing.assert_allclose(np.array(rounded), expected, atol=1e-5)
    assert len(np.unique(np.array(rounded)[0, 0, 0, :64])) <= 8


def test_fill_puts_the_positions_into_every_cache(tiny_config):
    config = dataclasses.replace(tiny_config, head_dim=32)  # 8-bit groups of 32
    caches = make_caches(config, kv_bits=8)
    fill(caches, config, 40, chunk=16)
    assert [c.offset for c in caches] == [40] * len(caches)
    sizes = cache_bytes(caches, 40)
    assert sizes["nbytes"] == sum(c.nbytes for c in caches) > 0
    assert sizes["full_layers_nbytes"] == sum(c.nbytes for c in caches if not c.bounded)
