"""Logits processors and the sampler.

For one sequence, each step turns the model's last logits [.., V] into a token:

1. penalties on tokens already seen: `repetition_penalty` (CTRL / transformers: a seen token's
   logit is divided by it when positive, multiplied when negative; "seen" means in the prompt
   or generated so far), then `presence_penalty` (subtracted once from every token generated
   so far) and `frequency_penalty` (subtracted once per time it was generated), as OpenAI's API;
2. temperature 0: the argmax of the penalized logits (greedy; the filters below do not matter);
3. otherwise the logits are divided by `temperature` and filtered in turn, each filter on the
   distribution the previous one left (renormalized): `top_k` keeps the k most likely tokens,
   `top_p` the smallest set of most likely tokens whose probability reaches top_p, `min_p`
   the tokens at least min_p times as likely as the most likely one; then one token is drawn.
   Tokens tied with the last one kept are kept too.

Randomness comes from a per-sampler `mx.random.key` split at each step: a seed reproduces a
run, and no global random state is read or changed.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field, fields
from typing import Iterable

import mlx.core as mx

from .errors import OpenHarmonyError
from .parallel import broadcast_from_rank0


class SamplingError(OpenHarmonyError, ValueError):
    """A sampling option (temperature, top_p, a seed, ...) with a value outside its range.

    `param` names the option (the server reports it as the error's `param`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SamplingError(f"{name} must be a finite number, got {value!r}", param=name)
    return float(value)


@dataclass(frozen=True)
class OptionRange:
    """The values a sampling option accepts, and what they mean: the one description of each
    option, read by the validation below, the CLI's flags and the server's JSON fields."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the bound itself is excluded
    integer: bool = False
    help: str = ""

    def check(self, name: str, value) -> None:
        if self.integer:
            if isinstance(value, bool) or not isinstance(value, int):
                raise SamplingError(f"{name} must be an integer, got {value!r}", param=name)
        else:
            value = _number(name, value)
        too_low = self.low is not None and (value <= self.low if self.low_open
                                            else value < self.low)
        too_high = self.high is not None and value > self.high
        if too_low or too_high:
            raise SamplingError(f"{name} must be {self.describe()}, got {value} ({self.help})",
                                param=name)

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_plain(self.low)}"
        return f"in {'(' if self.low_open else '['}{_plain(self.low)}, {_plain(self.high)}]"


def _plain(number: float) -> str:
    return f"{number:g}"


def _option(default, low=None, high=None, *, low_open=False, integer=False, help=""):
    return field(default=default, metadata={"range": OptionRange(low, high, low_open, integer,
                                                                 help)})


@dataclass(frozen=True)
class SamplingOptions:
    """How to pick each token; validated on construction. The defaults sample from the model's
    own distribution (temperature 1, no filter, no penalty), as OpenAI recommends for gpt-oss.

    Each field's range and meaning is `option_range(name)`; the CLI's flags and the server's
    JSON fields are built from them, so names, defaults and ranges are written only here.
    """

    temperature: float = _option(1.0, 0, help="0 is greedy")
    top_k: int = _option(0, 0, integer=True, help="keep the k most likely tokens; 0 is off")
    top_p: float = _option(1.0, 0, 1, low_open=True, help="nucleus sampling; 1 is off")
    min_p: float = _option(0.0, 0, 1, help="drop tokens below min_p x the top probability; "
                                           "0 is off")
    repetition_penalty: float = _option(1.0, 0, low_open=True, help="1 is off")
    presence_penalty: float = _option(0.0, -2, 2, help="0 is off")
    frequency_penalty: float = _option(0.0, -2, 2, help="0 is off")

    def __post_init__(self) -> None:
        for option in fields(self):
            option.metadata["range"].check(option.name, getattr(self, option.name))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_history(self) -> bool:
        return (self.repetition_penalty != 1 or self.presence_penalty != 0
                or self.frequency_penalty != 0)


SAMPLING_OPTION_NAMES = tuple(option.name for option in fields(SamplingOptions))


def option_range(name: str) -> OptionRange:
    """The range and meaning of the SamplingOptions field `name`."""
    return next(o.metadata["range"] for o in fields(SamplingOptions) if o.name == name)


# -- processors: logits [..., V] -> logits, -inf where a token is ruled out --------------------


def apply_penalties(logits: mx.array, in_prompt: mx.array, counts: mx.array,
                    options: SamplingOptions) -> mx.array:
    """`in_prompt` bool [V]: the token occurs in the prompt; `counts` [V]: times generated."""
    generated = counts > 0
    if options.repetition_penalty != 1:
        penalty = options.repetition_penalty
        penalized = mx.where(logits > 0, logits / penalty, logits * penalty)
        logits = mx.where(in_prompt | generated, penalized, logits)
    if options.frequency_penalty:
        logits = logits - options.frequency_penalty * counts
    if options.presence_penalty:
        logits = logits - options.presence_penalty * generated.astype(logits.dtype)
    return logits


def apply_top_k(logits: mx.array, k: int) -> mx.array:
    if k == 0 or k >= logits.shape[-1]:
        return logits
    kth_largest = mx.topk(logits, k, axis=-1).min(axis=-1, keepdims=True)
    return mx.where(logits >= kth_largest, logits, -mx.inf)


def apply_top_p(logits: mx.array, p: float) -> mx.array:
    if p == 1:
        return logits
    probs = mx.softmax(logits, axis=-1)
    order = mx.argsort(-logits, axis=-1)
    sorted_probs = mx.take_along_axis(probs, order, axis=-1)
    # Keep a token while the mass of the more likely ones is still short of p: the smallest
    # prefix of the sorted tokens whose mass reaches p (never empty: the first has mass 0).
    mass_before = mx.cumsum(sorted_probs, axis=-1) - sorted_probs
    smallest_kept = mx.where(mass_before < p, sorted_probs, mx.inf).min(axis=-1, keepdims=True)
    return mx.where(probs >= smallest_kept, logits, -mx.inf)


def apply_min_p(logits: mx.array, p: float) -> mx.array:
    if p == 0:
        return logits
    # prob >= p * max_prob, in log space: logit >= max_logit + log(p).
    threshold = logits.max(axis=-1, keepdims=True) + math.log(p)
    return mx.where(logits >= threshold, logits, -mx.inf)


def log_probabilities(logits: mx.array, tokens: mx.array) -> mx.array:
    """log softmax(logits)[token] for logits [B, V] and tokens [B]."""
    chosen = mx.take_along_axis(logits, tokens.reshape(-1, 1).astype(mx.int32), axis=-1)[:, 0]
    return chosen - mx.logsumexp(logits, axis=-1)


class Sampler:
    """Picks tokens for one sequence; holds the random key and the penalties' token history.

    `sampler(logits [1, V]) -> tokens [1]` (lazy, uint32) records the token it returns, so the
    penalties of the next call see it; nothing is read back to the host. With a distributed
    `group` the tokens are rank 0's on every rank (evaluated then: a collective).
    """

    def __init__(self, options: SamplingOptions, vocab_size: int,
                 prompt_tokens: Iterable[int] = (), seed: int | None = None,
                 group: mx.distributed.Group | None = None) -> None:
        self.options = options
        self.group = group
        if seed is None:
            seed = secrets.randbits(63)
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
            raise SamplingError(f"seed must be an integer in [0, 2**64), got {seed!r}",
                                param="seed")
        self._key = mx.random.key(seed)
        self._counts = self._in_prompt = None
        if options.uses_history:
            self._counts = mx.zeros((vocab_size,), mx.float32)
            in_prompt = mx.zeros((vocab_size,), mx.bool_)
            prompt = [t for t in prompt_tokens if 0 <= t < vocab_size]
            if prompt:
                in_prompt[mx.array(prompt)] = True
            self._in_prompt = in_prompt

    def process(self, logits: mx.array) -> mx.array:
        """Penalties, temperature and filters: the logits the token is drawn from."""
        o = self.options
        if o.uses_history:
            logits = apply_penalties(logits, self._in_prompt, self._counts, o)
        if o.greedy:
            return logits
        logits = logits / o.temperature
        return apply_min_p(apply_top_p(apply_top_k(logits, o.top_k), o.top_p), o.min_p)

    def __call__(self, logits: mx.array) -> mx.array:
        logits = self.process(logits.astype(mx.float32))
        if self.options.greedy:
            tokens = mx.argmax(logits, axis=-1).astype(mx.uint32)
        else:
            self._key, step_key = mx.random.split(self._key)
            tokens = mx.random.categorical(logits, axis=-1, key=step_key).astype(mx.uint32)
        if self.group is not None:
            # Expert parallel (openharmony/parallel): every rank takes rank 0's token, so ranks
            # never diverge, whatever their seeds or (on different chips) their logits' rounding.
            tokens = broadcast_from_rank0(tokens, self.group, "agreeing on the sampled token")
        if self._counts is not None:
            self._counts = self._counts.at[tokens].add(1)
        return tokens

    @property
    def state(self) -> list[mx.array]:
        """The arrays the next call depends on (to evaluate along with the tokens)."""
        return [self._key] + ([self._counts] if self._counts is not None else [])
