"""Structured outputs: constrained decoding through llguidance, harmony-aware.

* `grammar`: compiling JSON schemas, Lark and regex (`compile_grammar`, `json_schema`), and
  matching one grammar token by token (`Matcher`, `GrammarConstraint` for a plain completion);
* `harmony`: `ReplyConstraint`, which binds only the parts of a gpt-oss reply a request asks
  for (the final answer, tool-call bodies, the headers for tool_choice) and leaves the
  reasoning free;
* `formats`: OpenAI's `response_format` / `text.format`, strict and custom tools and
  `tool_choice`, read into a `ReplyFormat`.

A constraint is what `openharmony.decoding.Decoding` asks before each token: `mask()` (a
bool mx.array over the vocabulary, or None for any token) and `advance(token)`.
"""

from .grammar import ConstraintError, Grammar, GrammarConstraint, compile_grammar, json_schema

__all__ = ["ConstraintError", "Grammar", "GrammarConstraint", "compile_grammar", "json_schema"]
