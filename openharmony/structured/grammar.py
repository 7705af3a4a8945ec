"""Grammars through llguidance: compiling JSON schemas, Lark and regex, and the token mask of
one grammar as the model writes it.

llguidance (the structured-output engine of llama.cpp and vLLM) compiles a grammar into a
lazy lexer and Earley parser over the o200k_harmony vocabulary and computes the set of tokens
that keep the text in the grammar's language (tens of microseconds per token). `Matcher` is
one grammar being matched; `Grammar` is a compiled, checked grammar (cheap to match many
times). Bad grammars raise `ConstraintError` naming what is wrong, as llguidance reports it
(an unsupported JSON Schema keyword is named, never ignored: llguidance's `lenient` is off).

JSON is written with bounded whitespace: between two JSON tokens at most one space, or one
newline and up to 20 spaces of indentation. A model (a weak one especially) cannot loop on
whitespace inside a document, and both compact and pretty-printed JSON stay possible.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import mlx.core as mx
import numpy as np

from ..errors import OpenHarmonyError

# Between JSON tokens: nothing, one space, or a newline and an indentation of up to 20 spaces.
JSON_WHITESPACE = r"(\n {0,20}| )?"
JSON_OPTIONS = {"whitespace_pattern": JSON_WHITESPACE, "lenient": False}
SYNTAXES = ("json_schema", "lark", "regex")


class ConstraintError(OpenHarmonyError, ValueError):
    """A schema, grammar or output format that cannot be enforced; `param` names the field
    (the server reports it as the error's `param`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Grammar:
    """A checked grammar: `syntax` ("json_schema", "lark" or "regex"), its `source` (a schema
    dict or the grammar's text) and llguidance's compiled form."""

    syntax: str
    source: Any
    compiled: str

    def describe(self) -> str:
        return json.dumps(self.source) if self.syntax == "json_schema" else self.source


def compile_grammar(syntax: str, source, param: str | None = None) -> Grammar:
    """Compile and check a grammar; raises ConstraintError naming `param` when it is bad."""
    import llguidance

    where = param or syntax
    if syntax == "json_schema":
        if isinstance(source, bool) or not isinstance(source, Mapping):
            raise ConstraintError(f"{where} must be a JSON Schema object, got {source!r}",
                                  param)
        source = dict(source)
        try:
            compiled = llguidance.LLMatcher.grammar_from_json_schema(source,
                                                                      defaults=JSON_OPTIONS)
        except (ValueError, TypeError) as error:
            raise ConstraintError(f"{where} is not a valid JSON Schema: {error}", param) from None
    elif syntax in ("lark", "regex"):
        if not isinstance(source, str) or not source.strip():
            raise ConstraintError(f"{where} must be a non-empty {syntax} grammar", param)
        compiled = (llguidance.LLMatcher.grammar_from_lark(source) if syntax == "lark"
                    else llguidance.LLMatcher.grammar_from_regex(source))
    else:
        raise ConstraintError(f"the grammar syntax {syntax!r} is not one of "
                              f"{', '.join(SYNTAXES)}", param)
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(compiled)
    if failed:
        what = "JSON Schema" if syntax == "json_schema" else f"{syntax} grammar"
        detail = " ".join(" ".join(messages).split())
        raise ConstraintError(f"{where}: the {what} cannot be enforced: {detail}", param)
    return Grammar(syntax, source, compiled)


def json_schema(schema, param: str | None = None) -> Grammar:
    return compile_grammar("json_schema", schema, param)


ANY_JSON_OBJECT = {"type": "object"}


@functools.cache
def any_json_object() -> Grammar:
    return json_schema(ANY_JSON_OBJECT)


# -- the vocabulary, as llguidance sees it -------------------------------------------------

_vocab_lock = threading.Lock()


class Vocabulary:
    """o200k_harmony for llguidance (built once per tokenizer: about 2 s), and the masks that
    do not depend on a grammar. `size` is the model's vocabulary: masks have that length."""

    def __init__(self, tokenizer, size: int) -> None:
        from llguidance.tiktoken import lltokenizer_from_encoding

        self.tokenizer, self.size = tokenizer, size
        self.special = tokenizer.special_ids
        self.llg = lltokenizer_from_encoding(tokenizer.encoding,
                                             eos_token=self.special["<|endoftext|>"])
        self.words = (self.llg.vocab_size + 31) // 32
        text = np.ones(size, dtype=bool)  # every token but the special ones
        text[[i for i in self.special.values() if i < size]] = False
        text[tokenizer.n_vocab:] = False  # ids the tokenizer does not have
        self._text = text

    def text_mask(self, ends: Iterable[int] = ()) -> mx.array:
        """Any text (no special token) or one of the special tokens `ends`."""
        mask = self._text.copy()
        mask[[t for t in ends if t < self.size]] = True
        return mx.array(mask)

    def only(self, tokens: Iterable[int]) -> mx.array:
        mask = np.zeros(self.size, dtype=bool)
        mask[[t for t in tokens if t < self.size]] = True
        return mx.array(mask)

    def from_bits(self, words: np.ndarray) -> np.ndarray:
        """llguidance's bitmask (int32 words, bit i of word w is token 32w+i) as bools [size]."""
        bits = np.unpackbits(words.view(np.uint8), bitorder="little").astype(bool)
        if len(bits) >= self.size:
            return bits[:self.size]
        return np.concatenate([bits, np.zeros(self.size - len(bits), dtype=bool)])


@functools.cache
def _vocabulary(tokenizer, size: int) -> Vocabulary:
    return Vocabulary(tokenizer, size)


def vocabulary(tokenizer, size: int) -> Vocabulary:
    with _vocab_lock:  # requests may arrive together: build it once
        return _vocabulary(tokenizer, size)


class Matcher:
    """One grammar being matched token by token: `mask(ends)` the tokens allowed next (the
    special tokens `ends` once the text is complete), `consume(token)` to go on."""

    def __init__(self, vocab: Vocabulary, grammar: Grammar | str) -> None:
        import llguidance

        compiled = grammar.compiled if isinstance(grammar, Grammar) else grammar
        self.vocab = vocab
        self._matcher = llguidance.LLMatcher(vocab.llg, compiled, log_level=0)
        self._check()
        self._words = np.zeros(vocab.words, dtype=np.int32)

    def _check(self) -> None:
        if self._matcher.is_error():
            raise ConstraintError(f"the grammar failed: {self._matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """The text so far is a whole sentence of the grammar."""
        return self._matcher.is_accepting()

    def mask(self, ends: Iterable[int] = ()) -> mx.array:
        allowed = np.zeros(self.vocab.size, dtype=bool)
        if not self._matcher.is_stopped():
            self._matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
            self._check()
            allowed = self.vocab.from_bits(self._words)
            eos = self.vocab.special["<|endoftext|>"]
            if eos < self.vocab.size:
                allowed[eos] = False  # the grammar's end is `ends`, not llguidance's eos
        if self._matcher.is_accepting():
            allowed[[t for t in ends if t < self.vocab.size]] = True
        if not allowed.any():  # e.g. a grammar that needs a token the model cannot write
            raise ConstraintError("no token can continue the constrained output")
        return mx.array(allowed)

    def consume(self, token: int) -> None:
        self._matcher.consume_token(token)
        self._check()


class GrammarConstraint:
    """The whole output in a grammar, then one of `ends` (the stop tokens): what
    `generate(json_schema=..., grammar=...)` enforces on a plain completion."""

    def __init__(self, vocab: Vocabulary, grammar: Grammar, ends: Iterable[int]) -> None:
        self._matcher = Matcher(vocab, grammar)
        self._ends = list(ends)
        self._done = False

    def mask(self) -> mx.array:
        return self._matcher.mask(self._ends)

    def advance(self, token: int) -> None:
        if token in self._ends:
            self._done = True
        elif not self._done:
            self._matcher.consume(token)
