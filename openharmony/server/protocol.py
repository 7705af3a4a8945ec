"""What the two OpenAI APIs share: the error object, reading and checking request fields,
tools, and the request a turn runs (`TurnRequest`) and its token usage.

Every check of a request field raises `ApiError` naming the field (`param`), so a bad request
gets one clear 400 and nothing runs. Harmony specifics of the wire formats:

* the analysis channel is reasoning (`reasoning` items; `message.reasoning` and
  `message.reasoning_content`), never `content`; the final channel (and commentary preambles
  without a recipient) is the text; a message to a recipient is a tool call;
* tools become harmony function tools: `function` as given, `custom` (free-form, e.g. Codex's
  `apply_patch`) as a function of one string `input` whose calls come back as
  `custom_tool_call` items, `namespace` flattened to its tools; built-in tools the server does
  not run (`web_search`, ...) are left out;
* history keeps the chain-of-thought rule of OpenAI's harmony guide: openai-harmony drops past
  analysis once a final answer follows it and keeps it while tool calls are in progress.

The API-specific halves: `responses.py` (the Responses API) and `chat_completions.py`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..chat import Chat, FunctionTool
from ..sampling import SamplingError, SamplingOptions

CUSTOM_TOOL_PARAMETERS = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The tool's free-form input."}},
    "required": ["input"],
}


class ApiError(Exception):
    """An error response: OpenAI's error object with its HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def invalid(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# -- reading fields --------------------------------------------------------------------------


_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
               list: "an array", dict: "an object"}


def get(body: Mapping, name: str, kind, default=None, param: str | None = None):
    """`body[name]`, checked to be of `kind` (a type or a tuple of them); null is the default.
    A `body` that is not an object is refused, named by `param` less its last part."""
    if not isinstance(body, Mapping):
        where = (param or name).rpartition(".")[0] or param or name
        raise invalid(where, f"{where} must be an object")
    value = body.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        wanted = " or ".join(_TYPE_NAMES[k] for k in kinds)
        raise invalid(param or name, f"{param or name} must be {wanted}, got {value!r}")
    return value


def positive_int(body: Mapping, name: str) -> int | None:
    value = get(body, name, int)
    if value is not None and value < 1:
        raise invalid(name, f"{name} must be at least 1, got {value}")
    return value


def sampling_options(body: Mapping) -> SamplingOptions:
    """temperature, top_p, presence_penalty and frequency_penalty, ranged as SamplingOptions."""
    given = {}
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = get(body, name, float)
        if value is not None:
            given[name] = value
    try:
        return SamplingOptions(**given)
    except SamplingError as error:
        raise invalid(error.param or "sampling", str(error)) from None


def seed(body: Mapping) -> int | None:
    value = get(body, "seed", int)
    if value is not None and not 0 <= value < 2 ** 64:
        raise invalid("seed", f"seed must be in [0, 2**64), got {value}")
    return value


def reasoning_effort(body: Mapping, default: str) -> str:
    reasoning = get(body, "reasoning", dict, {})
    effort = get(reasoning, "effort", str, param="reasoning.effort")
    flat = get(body, "reasoning_effort", str)
    effort = effort or flat or default
    if effort == "minimal":  # newer OpenAI models' lowest level: gpt-oss's lowest is low
        effort = "low"
    if effort not in ("low", "medium", "high"):
        raise invalid("reasoning.effort" if flat is None else "reasoning_effort",
                      f"reasoning effort must be low, medium or high, got {effort!r}")
    return effort


def text_of(content, param: str) -> str:
    """A message's content: a string, or a list of text parts (input_text, output_text, text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(param, f"{param} must be a string or an array of content parts")
    texts = []
    for i, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise invalid(f"{param}[{i}]", f"{param}[{i}] must be an object")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "reasoning_text", "summary_text",
                    "refusal"):
            texts.append(get(part, "text" if kind != "refusal" else "refusal", str, "",
                             param=f"{param}[{i}].text"))
        else:
            raise invalid(f"{param}[{i}].type", f"content part type {kind!r} is not supported "
                          "(text only)")
    return "".join(texts)


# -- tools -----------------------------------------------------------------------------------


@dataclass
class Tools:
    """The functions offered to the model, and which of them are custom (free-form) tools."""

    functions: list[FunctionTool] = field(default_factory=list)
    custom: set[str] = field(default_factory=set)


def read_tools(tools, tool_choice) -> Tools:
    found = Tools()
    if tools is None:
        return found
    if not isinstance(tools, list):
        raise invalid("tools", "tools must be an array")
    for i, tool in enumerate(tools):
        _read_tool(tool, f"tools[{i}]", found)
    if tool_choice == "none":  # the model is not told about tools it may not call
        return Tools()
    return found


def _read_tool(tool, param: str, found: Tools) -> None:
    if not isinstance(tool, dict):
        raise invalid(param, f"{param} must be an object")
    kind = tool.get("type")
    if kind == "function":
        spec = tool.get("function", tool)  # Chat Completions nests it, the Responses API not
        if not isinstance(spec, dict):
            raise invalid(f"{param}.function", f"{param}.function must be an object")
        name = get(spec, "name", str, param=f"{param}.name")
        if not name:
            raise invalid(f"{param}.name", f"{param} has no name")
        parameters = get(spec, "parameters", dict, param=f"{param}.parameters")
        found.functions.append(FunctionTool(name, get(spec, "description", str, ""), parameters))
    elif kind == "custom":
        name = get(tool, "name", str, param=f"{param}.name")
        if not name:
            raise invalid(f"{param}.name", f"{param} has no name")
        description = get(tool, "description", str, "")
        grammar = get(get(tool, "format", dict, {}, param=f"{param}.format"), "definition", str,
                      param=f"{param}.format.definition")
        if grammar:  # the model has no grammar-constrained decoding: it reads the grammar
            description += f"\nThe input follows this grammar:\n{grammar}"
        found.functions.append(FunctionTool(name, description, CUSTOM_TOOL_PARAMETERS))
        found.custom.add(name)
    elif kind == "namespace":
        inner = get(tool, "tools", list, [], param=f"{param}.tools")
        for j, sub in enumerate(inner):
            _read_tool(sub, f"{param}.tools[{j}]", found)
    elif isinstance(kind, str):
        pass  # built-in tools (web_search, ...) that this server does not run
    else:
        raise invalid(f"{param}.type", f"{param} has no type")


# -- one request, read --------------------------------------------------------------------


@dataclass
class TurnRequest:
    """What a request asks for, ready for `Engine.submit` (prompt) and the response builders."""

    chat: Chat
    max_tokens: int | None
    sampling: SamplingOptions
    seed: int | None
    stream: bool
    tools: Tools
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    include_usage: bool = False
    call_names: dict[str, str] = field(default_factory=dict)  # call_id -> function name

    def turn_options(self, max_tokens: int) -> dict[str, Any]:
        return dict(max_tokens=max_tokens, sampling=self.sampling, seed=self.seed,
                    logprobs=self.logprobs, top_logprobs=self.top_logprobs, stop=self.stop)


# -- usage -----------------------------------------------------------------------------------


@dataclass
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def of(cls, turn, reasoning_tokens: int) -> Usage:
        return cls(turn.prompt_tokens, turn.reused_prompt_tokens, len(turn.tokens),
                   reasoning_tokens)

    def responses(self) -> dict[str, Any]:
        return {"input_tokens": self.prompt_tokens,
                "input_tokens_details": {"cached_tokens": self.cached_tokens},
                "output_tokens": self.generated_tokens,
                "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
                "total_tokens": self.prompt_tokens + self.generated_tokens}

    def chat(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.generated_tokens,
                "total_tokens": self.prompt_tokens + self.generated_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
                "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens}}
