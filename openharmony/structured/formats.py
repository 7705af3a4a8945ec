"""OpenAI's ways of asking for a format, read into what `ReplyConstraint` enforces: one
reading for the server's two APIs, the Python API and the CLI.

* `response_format` (Chat Completions) / `text.format` (Responses): {"type": "text"},
  {"type": "json_object"}, {"type": "json_schema", "json_schema": {"name", "schema",
  "strict"}} (Chat Completions) or {"type": "json_schema", "name", "schema", "strict"}
  (Responses). The schema is enforced whether `strict` is set or not.
* tools: a function's `parameters` when it is `strict`, any JSON object when not; a custom
  tool's `format` {"type": "grammar", "syntax": "lark" | "regex", "definition": ...}.
* `tool_choice`: "auto", "none", "required", or a named function or custom tool
  ({"type": "function", "name": ...}, {"type": "function", "function": {"name": ...}},
  {"type": "custom", "name": ...}).

Each error is a ConstraintError naming the field.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .grammar import ConstraintError, Grammar, any_json_object, compile_grammar, json_schema
from .harmony import TOOL_CHOICES, ReplyFormat, ToolFormat

RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


def response_format_grammar(value, param: str = "response_format") -> Grammar | None:
    """The grammar of the final answer asked for by `value` (None: free text)."""
    if value is None or isinstance(value, Grammar):
        return value
    if not isinstance(value, Mapping):
        raise ConstraintError(f"{param} must be an object, got {value!r}", param)
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return any_json_object()
    if kind == "json_schema":
        nested = value.get("json_schema")
        spec, where = (nested, f"{param}.json_schema") if nested is not None else (value, param)
        if not isinstance(spec, Mapping):
            raise ConstraintError(f"{where} must be an object", where)
        if "schema" not in spec:
            raise ConstraintError(f"{where}.schema is required", f"{where}.schema")
        return json_schema(spec["schema"], f"{where}.schema")
    raise ConstraintError(f"{param}.type must be one of {', '.join(RESPONSE_FORMAT_TYPES)}, "
                          f"got {kind!r}", f"{param}.type")


def tool_grammar(tool) -> Grammar | None:
    """What the body of a call of `tool` (a chat.FunctionTool) must be."""
    where = tool.source or f"the tool {tool.name!r}"
    if tool.custom:
        spec = tool.format or {"type": "text"}
        if not isinstance(spec, Mapping) or spec.get("type") not in ("text", "grammar"):
            raise ConstraintError(f"{where}.format.type must be text or grammar",
                                  f"{where}.format.type")
        if spec["type"] == "text":
            return None
        prefix = f"{where}.format"
        if isinstance(spec.get("grammar"), Mapping):  # Chat Completions nests it
            spec, prefix = spec["grammar"], f"{prefix}.grammar"
        syntax = spec.get("syntax")
        if syntax not in ("lark", "regex"):
            raise ConstraintError(f"{prefix}.syntax must be lark or regex, got {syntax!r}",
                                  f"{prefix}.syntax")
        return compile_grammar(syntax, spec.get("definition"), f"{prefix}.definition")
    if tool.strict:
        return json_schema(tool.parameters if tool.parameters is not None
                           else {"type": "object", "properties": {}},
                           f"{where}.parameters")
    return any_json_object()


def read_tool_choice(value, tools: Sequence, param: str = "tool_choice"
                     ) -> tuple[str, str | None]:
    """(tool_choice, the named tool or None) from OpenAI's `tool_choice`."""
    if value is None:
        return "auto", None
    if isinstance(value, str):
        if value not in TOOL_CHOICES:
            raise ConstraintError(f"{param} must be one of {', '.join(TOOL_CHOICES)} or a "
                                  f"named tool, got {value!r}", param)
        if value == "required" and not tools:
            raise ConstraintError(f"{param} is 'required' but no tools are given", param)
        return value, None
    if not isinstance(value, Mapping) or value.get("type") not in ("function", "custom"):
        raise ConstraintError(f"{param} must be auto, none, required, or {{\"type\": "
                              f"\"function\" or \"custom\", \"name\": ...}}", param)
    named = value.get(value["type"]) if isinstance(value.get(value["type"]), Mapping) \
        else value
    name = named.get("name")
    found = next((t for t in tools if t.name == name), None)
    if found is None:
        offered = ", ".join(t.name for t in tools) or "none"
        raise ConstraintError(f"{param} names the tool {name!r}, which is not in tools "
                              f"(offered: {offered})", param)
    if found.custom != (value["type"] == "custom"):
        raise ConstraintError(f"{param} names {name!r} as a {value['type']} tool, but it is "
                              f"a {'custom' if found.custom else 'function'} tool", param)
    return "required", name


def reply_format(tools: Sequence = (), response_format=None, tool_choice: Any = None,
                 param: str = "response_format") -> ReplyFormat | None:
    """What a chat turn binds (None: nothing). `tools` are chat.FunctionTools."""
    choice, named = read_tool_choice(tool_choice, tools)
    if choice == "required" and named is not None:
        choice = "auto"  # `named` binds the headers
    reply = ReplyFormat(
        final=response_format_grammar(response_format, param),
        tools=tuple(ToolFormat(t.name, tool_grammar(t), raw=t.custom) for t in tools),
        tool_choice=choice, named=named)
    return reply if reply.binds_anything else None


def reply_constraint(tokenizer, vocab_size: int, tools: Sequence = (), response_format=None,
                     tool_choice=None):
    """The `ReplyConstraint` of a chat turn with these tools (chat.FunctionTools or their
    dicts) and formats, or None when it binds nothing."""
    from ..chat import FunctionTool
    from .grammar import vocabulary
    from .harmony import ReplyConstraint

    tools = [t if isinstance(t, FunctionTool) else FunctionTool.from_dict(t) for t in tools]
    found = reply_format(tools, response_format, tool_choice)
    if found is None:
        return None
    return ReplyConstraint(vocabulary(tokenizer, vocab_size), found)
