"""Constraining a harmony reply where the request binds it, and nowhere else.

A gpt-oss reply is a sequence of messages, each a header then a body:

    <|channel|>analysis<|message|>...reasoning...<|end|>
    <|start|>assistant<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|call|>
    <|start|>assistant<|channel|>final<|message|>...answer...<|return|>

`ReplyConstraint` follows the reply token by token (the special tokens mark where each part
begins and ends) and binds only:

* the body of a tool call: its tool's JSON schema (a strict function), any JSON object (a
  function that is not strict), or a custom tool's grammar (its input written as is: custom
  tools are free-form, their body is not JSON), then <|call|>;
* the body of the final answer, with `final` (response_format), then <|return|>;
* the headers, with `tool_choice` "none" (no tool call), "required" (a tool call, after any
  reasoning) or a named tool (that one). Reasoning then ends only with <|end|>, so the reply
  cannot end before the call (with "none": not with <|call|>).

The analysis channel is never constrained in what it says: a model that reasons first still
reasons, and its reasoning is returned as usual. With `tool_choice` "auto" the headers are
free, and what the model chooses to write (an answer, a call) is then held to its format.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import mlx.core as mx

from ..chat import tool_name
from .grammar import Grammar, Matcher, Vocabulary, compile_grammar

TOOL_CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class ToolFormat:
    """What a tool's call body must be: `grammar` (None: free), and whether it is a custom
    tool (`raw`: the body is its input as is) or a function (JSON, after <|constrain|>json)."""

    name: str
    grammar: Grammar | None
    raw: bool = False


@dataclass(frozen=True)
class ReplyFormat:
    """What a request binds in the reply: the final answer's grammar, the tools' bodies, and
    tool_choice ("auto", "none", "required"; or `named`: that tool must be called)."""

    final: Grammar | None = None
    tools: tuple[ToolFormat, ...] = ()
    tool_choice: str = "auto"
    named: str | None = None
    _headers: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        assert self.tool_choice in TOOL_CHOICES, self.tool_choice
        assert self.named is None or self.tool(self.named) is not None, self.named

    def tool(self, name: str) -> ToolFormat | None:
        return next((t for t in self.tools if t.name == name), None)

    @property
    def binds_headers(self) -> bool:
        return self.named is not None or self.tool_choice != "auto"

    @property
    def must_call(self) -> bool:
        return self.named is not None or self.tool_choice == "required"

    @property
    def binds_anything(self) -> bool:
        return (self.final is not None or self.binds_headers
                or any(t.grammar is not None for t in self.tools))

    def header_grammar(self, first: bool) -> Grammar | None:
        """The headers the model may write (None: any). A header after the first begins with
        <|start|>assistant: the first's is in the prompt."""
        if not self.binds_headers:
            return None
        if first not in self._headers:
            self._headers[first] = compile_grammar("lark", self._header_lark(first))
        return self._headers[first]

    def _header_lark(self, first: bool) -> str:
        options = ['<|channel|> "analysis" <|message|>']
        if not self.must_call:
            options.append('<|channel|> "final" <|message|>')
        if self.tool_choice != "none":
            called = [self.tool(self.named)] if self.named is not None else self.tools
            for tool in called:  # the recipient after the channel, or before it
                to = json.dumps(f" to=functions.{tool.name}")
                json_type = "" if tool.raw else ' " " <|constrain|> "json"'
                options += [f'<|channel|> "commentary" {to}{json_type} <|message|>',
                            f'{to} <|channel|> "commentary"{json_type} <|message|>']
        prefix = "" if first else '<|start|> "assistant" '
        return f"start: {prefix}header\nheader: " + "\n      | ".join(options) + "\n"


_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")
_RECIPIENT = re.compile(r"to=([^\s<]+)")


def parse_header(text: str) -> tuple[str | None, str | None]:
    """(channel, recipient) of a header's text ('<|channel|>commentary to=functions.f ...')."""
    channel, recipient = _CHANNEL.search(text), _RECIPIENT.search(text)
    return (channel.group(1) if channel else None, recipient.group(1) if recipient else None)


class ReplyConstraint:
    """One reply's constraint, token by token: `mask()` is the tokens allowed next (None: any)
    and `advance(token)` follows the token the model wrote. See the module docstring."""

    def __init__(self, vocab: Vocabulary, reply_format: ReplyFormat) -> None:
        self.vocab, self.format = vocab, reply_format
        special = vocab.special
        self._message, self._end = special["<|message|>"], special["<|end|>"]
        self._start, self._call = special["<|start|>"], special["<|call|>"]
        self._return = special["<|return|>"]
        # A message that is neither a call nor a bound answer: free text, ended only by
        # <|end|> when a call must come, or by anything but <|call|> when none may.
        self._free_text = (vocab.text_mask([self._end]) if reply_format.must_call else
                           vocab.text_mask([self._end, self._return])
                           if reply_format.tool_choice == "none" else None)
        self._done = False
        self._begin_header(first=True)

    def _begin_header(self, first: bool) -> None:
        self._in_header, self._header_tokens = True, []
        grammar = self.format.header_grammar(first)
        self._matcher = Matcher(self.vocab, grammar) if grammar is not None else None
        self._ends: list[int] = []
        self._fixed: mx.array | None = None  # the mask of a body bound without a grammar

    def mask(self) -> mx.array | None:
        if self._done:
            return None
        if self._matcher is not None:
            return self._matcher.mask(self._ends)
        return self._fixed

    def advance(self, token: int) -> None:
        if self._done:
            return
        if self._in_header:
            if self._matcher is not None:
                self._matcher.consume(token)
            self._header_tokens.append(token)
            if token == self._message:
                self._begin_body()
            elif token in (self._return, self._call):
                self._done = True  # a free header that ends the reply (the decoding stops)
            return
        if self._matcher is not None and token not in self._ends:
            self._matcher.consume(token)
        elif token in (self._end, self._start):
            self._begin_header(first=False)
            if token == self._start:  # no <|end|> before it: the next header has begun
                self._header_tokens.append(token)
        elif token in (self._return, self._call) or token in self._ends:
            self._done = True

    def _begin_body(self) -> None:
        channel, recipient = parse_header(self.vocab.tokenizer.decode(self._header_tokens))
        self._in_header, self._matcher, self._fixed, self._ends = False, None, None, []
        grammar = None
        if recipient is not None and recipient not in ("assistant", "user"):
            tool = self.format.tool(tool_name(recipient))
            grammar, self._ends = (tool.grammar if tool else None), [self._call]
        elif channel == "final":
            grammar, self._ends = self.format.final, [self._return]
        else:  # reasoning, or text for the user: free (but for its end, see __init__)
            self._fixed = self._free_text
        if grammar is not None:
            self._matcher = Matcher(self.vocab, grammar)
