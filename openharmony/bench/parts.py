"""The parts of openharmony's forward, timed through the model's own hook (`Model.__call__`'s
`observe`): the forward that runs is the model's, never a copy of it.

Each part is evaluated as soon as it is built (an `mx.eval` barrier), which charges the time
since the previous barrier to it. Barriers remove the overlap of an unbarriered step and add
host round trips, so the parts add up to a little more than a step; `scripts/profile_model.py`
prints both.
"""

from __future__ import annotations

import time

import mlx.core as mx

# The model's parts (openharmony.model.PARTS) in the groups a profile reports.
GROUP = {"embed": "embedding", "attention_norm": "norms+residual", "attention": "attention",
         "attention_residual": "norms+residual", "experts_norm": "norms+residual",
         "router": "router", "experts": "experts", "experts_residual": "norms+residual",
         "norm": "lm_head", "lm_head": "lm_head"}
GROUPS = ("embedding", "attention", "router", "experts", "norms+residual", "lm_head")
PER_LAYER = {"attention", "router", "experts", "norms+residual"}


def timed_forward(model, tokens: mx.array, cache: list, seconds: dict) -> mx.array:
    """The logits of the last position of `tokens` [B, T] (extending `cache`), with a barrier
    after each part; adds each group's seconds to `seconds`."""
    last = time.perf_counter()

    def observe(part: str, layer, value) -> None:
        nonlocal last
        mx.eval(value)
        now = time.perf_counter()
        seconds[GROUP[part]] = seconds.get(GROUP[part], 0.0) + now - last
        last = now

    mx.synchronize()
    last = time.perf_counter()
    return model(tokens, cache, last_only=True, observe=observe)


def timed_step(model, tokens: mx.array, cache: list) -> tuple[float, mx.array]:
    """(seconds, last position's logits) of one unbarriered forward, evaluated."""
    mx.synchronize()
    start = time.perf_counter()
    logits = model(tokens, cache, last_only=True)
    mx.eval(logits)
    return time.perf_counter() - start, logits
