"""The OpenAI wire formats: request JSON -> a harmony conversation and generation options, and
a chat turn's events -> Responses API items and events, or Chat Completions messages and chunks.

Every check of a request field raises `ApiError` naming the field (`param`), so a bad request
gets one clear 400 and nothing runs. The shapes follow OpenAI's API reference and the openai
SDK's types; harmony specifics:

* the analysis channel is reasoning (`reasoning` items; `message.reasoning` and
  `message.reasoning_content`), never `content`; the final channel (and commentary preambles
  without a recipient) is the text; a message to a recipient is a tool call;
* tools become harmony function tools: `function` as given, `custom` (free-form, e.g. Codex's
  `apply_patch`) as a function of one string `input` whose calls come back as
  `custom_tool_call` items, `namespace` flattened to its tools; built-in tools the server does
  not run (`web_search`, ...) are left out;
* history keeps the chain-of-thought rule of OpenAI's harmony guide: openai-harmony drops past
  analysis once a final answer follows it and keeps it while tool calls are in progress.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..chat import REASONING, TEXT, TOOL_CALL, Chat, ChatOptions, FunctionTool, tool_name
from ..sampling import SamplingError, SamplingOptions

RESPONSES_DEFAULT_EFFORT = "low"  # as OpenAI's gpt-oss reference server (gpt_oss.responses_api)
CHAT_DEFAULT_EFFORT = "medium"  # the OpenAI API's default
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
    """`body[name]`, checked to be of `kind` (a type or a tuple of them); null is the default."""
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
        grammar = (tool.get("format") or {}).get("definition")
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
    include_usage: bool = False
    call_names: dict[str, str] = field(default_factory=dict)  # call_id -> function name

    def turn_options(self, max_tokens: int) -> dict[str, Any]:
        return dict(max_tokens=max_tokens, sampling=self.sampling, seed=self.seed,
                    logprobs=self.logprobs, stop=self.stop)


def responses_request(body: Mapping, tokenizer, previous=None) -> TurnRequest:
    """A Responses API request; `previous` is the stored (messages, call_names) of
    `previous_response_id`, whose conversation this one continues."""
    tools = read_tools(body.get("tools"), body.get("tool_choice"))
    developer = get(body, "instructions", str)
    chat = Chat(tokenizer, ChatOptions(reasoning_effort=reasoning_effort(
        body, RESPONSES_DEFAULT_EFFORT), tools=tools.functions))
    call_names = {}
    if previous is not None:
        chat.messages.extend(previous[0])
        call_names.update(previous[1])
    items = body.get("input")
    if items is None:
        raise invalid("input", "input is required")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    if not isinstance(items, list):
        raise invalid("input", "input must be a string or an array of items")
    instructions = [developer] if developer else []
    for i, item in enumerate(items):
        _add_input_item(chat, item, f"input[{i}]", call_names, instructions)
    chat.options.developer = "\n\n".join(instructions) or None
    # Accepted and not needed: `include` (reasoning content is always included),
    # `prompt_cache_key` (caching is automatic), `metadata`, `client_metadata`, `text`,
    # `parallel_tool_calls` (harmony makes one call per reply); `store` is read by the app.
    return TurnRequest(chat=chat, max_tokens=positive_int(body, "max_output_tokens"),
                       sampling=sampling_options(body), seed=seed(body),
                       stream=get(body, "stream", bool, False), tools=tools,
                       call_names=call_names)


def _add_input_item(chat: Chat, item, param: str, call_names: dict, instructions: list) -> None:
    if not isinstance(item, dict):
        raise invalid(param, f"{param} must be an object")
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        text = text_of(item.get("content", ""), f"{param}.content")
        if role == "user":
            chat.add_user(text)
        elif role == "assistant":
            chat.add_assistant(text)
        elif role in ("system", "developer"):
            instructions.append(text)  # harmony has one developer message, at the top
        else:
            raise invalid(f"{param}.role", f"{param}.role must be user, assistant, system or "
                          f"developer, got {role!r}")
    elif kind == "reasoning":
        content = item.get("content") or item.get("summary") or []
        text = text_of(content, f"{param}.content")
        if text:
            chat.add_reasoning(text)
    elif kind in ("function_call", "custom_tool_call"):
        name = get(item, "name", str, param=f"{param}.name")
        if not name:
            raise invalid(f"{param}.name", f"{param}.name is required")
        if kind == "function_call":
            arguments = get(item, "arguments", str, "", param=f"{param}.arguments")
        else:
            arguments = json.dumps({"input": get(item, "input", str, "", param=f"{param}.input")})
        chat.add_tool_call(name, arguments)
        call_id = get(item, "call_id", str, param=f"{param}.call_id")
        if call_id:
            call_names[call_id] = name
    elif kind in ("function_call_output", "custom_tool_call_output"):
        call_id = get(item, "call_id", str, param=f"{param}.call_id")
        if call_id not in call_names:
            raise invalid(f"{param}.call_id", f"{param}.call_id {call_id!r} matches no "
                          "function_call before it")
        output = item.get("output", "")
        if not isinstance(output, str):
            output = text_of(output, f"{param}.output")
        chat.add_tool_result(call_names[call_id], output)
    elif kind == "item_reference":
        raise invalid(f"{param}.type", "item_reference is not supported: send the items, or "
                      "previous_response_id")
    elif isinstance(kind, str) and (kind.endswith("_call") or kind.endswith("_call_output")):
        pass  # calls of built-in tools the server does not run
    else:
        raise invalid(f"{param}.type", f"input item type {kind!r} is not supported")


def chat_request(body: Mapping, tokenizer) -> TurnRequest:
    """A Chat Completions request."""
    tools = read_tools(body.get("tools"), body.get("tool_choice"))
    chat = Chat(tokenizer, ChatOptions(reasoning_effort=reasoning_effort(
        body, CHAT_DEFAULT_EFFORT), tools=tools.functions))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "messages must be a non-empty array")
    instructions, call_names = [], {}
    for i, message in enumerate(messages):
        _add_chat_message(chat, message, f"messages[{i}]", call_names, instructions)
    chat.options.developer = "\n\n".join(instructions) or None
    n = get(body, "n", int, 1)
    if n != 1:
        raise invalid("n", f"n must be 1, got {n}")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise invalid("stop", "stop must be a non-empty string or an array of them")
    top_logprobs = get(body, "top_logprobs", int, 0)
    if top_logprobs:
        raise invalid("top_logprobs", "top_logprobs is not supported (logprobs of the chosen "
                      "tokens are: logprobs=true)")
    max_tokens = positive_int(body, "max_completion_tokens") or positive_int(body, "max_tokens")
    stream_options = get(body, "stream_options", dict, {})
    return TurnRequest(chat=chat, max_tokens=max_tokens, sampling=sampling_options(body),
                       seed=seed(body), stream=get(body, "stream", bool, False), tools=tools,
                       stop=stop, logprobs=get(body, "logprobs", bool, False),
                       include_usage=get(stream_options, "include_usage", bool, False,
                                         param="stream_options.include_usage"),
                       call_names=call_names)


def _add_chat_message(chat: Chat, message, param: str, call_names: dict,
                      instructions: list) -> None:
    if not isinstance(message, dict):
        raise invalid(param, f"{param} must be an object")
    role = message.get("role")
    content = message.get("content")
    if role in ("system", "developer"):
        instructions.append(text_of(content or "", f"{param}.content"))
    elif role == "user":
        chat.add_user(text_of(content or "", f"{param}.content"))
    elif role == "assistant":
        reasoning = message.get("reasoning") or message.get("reasoning_content")
        if reasoning:
            chat.add_reasoning(text_of(reasoning, f"{param}.reasoning"))
        tool_calls = get(message, "tool_calls", list, [], param=f"{param}.tool_calls")
        if content:
            chat.add_assistant(text_of(content, f"{param}.content"),
                               channel="commentary" if tool_calls else "final")
        for j, call in enumerate(tool_calls):
            where = f"{param}.tool_calls[{j}]"
            function = get(call, "function", dict, param=f"{where}.function") or {}
            name = get(function, "name", str, param=f"{where}.function.name")
            if not name:
                raise invalid(f"{where}.function.name", f"{where}.function.name is required")
            chat.add_tool_call(name, get(function, "arguments", str, "{}",
                                         param=f"{where}.function.arguments"))
            call_id = get(call, "id", str, param=f"{where}.id")
            if call_id:
                call_names[call_id] = name
    elif role in ("tool", "function"):
        call_id = get(message, "tool_call_id", str, param=f"{param}.tool_call_id")
        name = call_names.get(call_id) or get(message, "name", str, param=f"{param}.name")
        if not name:
            raise invalid(f"{param}.tool_call_id", f"{param}.tool_call_id {call_id!r} matches no "
                          "tool call before it")
        chat.add_tool_result(name, text_of(content or "", f"{param}.content"))
    else:
        raise invalid(f"{param}.role", f"{param}.role {role!r} is not one of system, developer, "
                      "user, assistant, tool")


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


# -- the Responses API: events -> items and SSE events ---------------------------------------


class ResponseBuilder:
    """Builds a Responses API response from a turn's events, and the streaming events that
    describe it on the way. `feed(event)` and `finish(turn)` return the SSE events to send
    (a non-streaming request ignores them and takes `response()`)."""

    def __init__(self, request: TurnRequest, body: Mapping, model_id: str):
        self.request = request
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.output: list[dict[str, Any]] = []
        self._current: dict[str, Any] | None = None  # the item being streamed
        self._index = None  # its event message_index
        self._sequence = 0
        self.reasoning_tokens = 0
        self.usage: Usage | None = None
        self.status = "in_progress"
        self.error = None
        self.incomplete = None
        self._echo = {
            "model": model_id,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": request.chat.options.reasoning_effort, "summary": None},
            "temperature": request.sampling.temperature, "top_p": request.sampling.top_p,
            "tools": body.get("tools") or [], "tool_choice": body.get("tool_choice", "auto"),
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "store": body.get("store", True), "metadata": body.get("metadata") or {},
            "text": body.get("text") or {"format": {"type": "text"}}, "truncation": "disabled",
        }

    def response(self) -> dict[str, Any]:
        return {"id": self.id, "object": "response", "created_at": self.created_at,
                "status": self.status, "error": self.error,
                "incomplete_details": self.incomplete, "output": self.output,
                "usage": self.usage.responses() if self.usage else None, **self._echo}

    def _event(self, kind: str, **fields) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        return [self._event("response.created", response=self.response()),
                self._event("response.in_progress", response=self.response())]

    def feed(self, event) -> list[dict[str, Any]]:
        events = []
        if event.message_index != self._index:
            events += self._close_item()
            events += self._open_item(event)
            self._index = event.message_index
        item = self._current
        where = dict(item_id=item["id"], output_index=len(self.output) - 1)
        if item["type"] == "reasoning":
            self.reasoning_tokens += 1
            item["content"][0]["text"] += event.delta
            events.append(self._event("response.reasoning_text.delta", content_index=0,
                                      delta=event.delta, **where))
        elif item["type"] == "message":
            item["content"][0]["text"] += event.delta
            events.append(self._event("response.output_text.delta", content_index=0,
                                      delta=event.delta, logprobs=[], **where))
        elif item["type"] == "function_call":
            item["arguments"] += event.delta
            events.append(self._event("response.function_call_arguments.delta",
                                      delta=event.delta, **where))
        else:  # custom_tool_call: the JSON text of its one argument, decoded when it is done
            item["_arguments"] += event.delta
        return events

    def _open_item(self, event) -> list[dict[str, Any]]:
        if event.kind == REASONING:
            item = {"type": "reasoning", "id": new_id("rs"), "summary": [],
                    "content": [{"type": "reasoning_text", "text": ""}], "status": "in_progress"}
        elif event.kind == TEXT:
            item = {"type": "message", "id": new_id("msg"), "role": "assistant",
                    "status": "in_progress",
                    "content": [{"type": "output_text", "text": "", "annotations": [],
                                 "logprobs": []}]}
        else:
            name = tool_name(event.recipient)
            if name in self.request.tools.custom:
                item = {"type": "custom_tool_call", "id": new_id("ctc"),
                        "call_id": new_id("call"), "name": name, "input": "",
                        "status": "in_progress", "_arguments": ""}
            else:
                item = {"type": "function_call", "id": new_id("fc"), "call_id": new_id("call"),
                        "name": name, "arguments": "", "status": "in_progress"}
        self.output.append(item)
        self._current = item
        events = [self._event("response.output_item.added", output_index=len(self.output) - 1,
                              item=_public(item, empty=True))]
        if item["type"] in ("reasoning", "message"):
            events.append(self._event("response.content_part.added", item_id=item["id"],
                                      output_index=len(self.output) - 1, content_index=0,
                                      part=dict(item["content"][0], text="")))
        return events

    def _close_item(self) -> list[dict[str, Any]]:
        item = self._current
        if item is None:
            return []
        self._current = None
        item["status"] = "completed"
        where = dict(item_id=item["id"], output_index=len(self.output) - 1)
        events = []
        if item["type"] in ("reasoning", "message"):
            part = item["content"][0]
            kind = "reasoning_text" if item["type"] == "reasoning" else "output_text"
            extra = {} if kind == "reasoning_text" else {"logprobs": []}
            events += [self._event(f"response.{kind}.done", content_index=0, text=part["text"],
                                   **extra, **where),
                       self._event("response.content_part.done", content_index=0, part=part,
                                   **where)]
        elif item["type"] == "function_call":
            events.append(self._event("response.function_call_arguments.done",
                                      arguments=item["arguments"], name=item["name"], **where))
        else:
            item["input"] = _custom_input(item.pop("_arguments"))
            events += [self._event("response.custom_tool_call_input.delta", delta=item["input"],
                                   **where),
                       self._event("response.custom_tool_call_input.done", input=item["input"],
                                   **where)]
        events.append(self._event("response.output_item.done",
                                  output_index=len(self.output) - 1, item=_public(item)))
        return events

    def finish(self, turn) -> list[dict[str, Any]]:
        events = self._close_item()
        self.usage = Usage.of(turn, self.reasoning_tokens)
        if turn.finish_reason == "length":
            self.status, self.incomplete = "incomplete", {"reason": "max_output_tokens"}
            return events + [self._event("response.incomplete", response=self.response())]
        self.status = "completed"
        return events + [self._event("response.completed", response=self.response())]

    def fail(self, code: str, message: str) -> list[dict[str, Any]]:
        events = self._close_item()
        self.status, self.error = "failed", {"code": code, "message": message}
        return events + [self._event("response.failed", response=self.response())]

    def history(self) -> list:
        """The conversation after this response, for a later previous_response_id: the
        request's messages and the reply's (reasoning included; the chain-of-thought rule
        applies when it is rendered)."""
        chat = Chat(self.request.chat.tokenizer)
        chat.messages = list(self.request.chat.messages)
        call_names = dict(self.request.call_names)
        for item in self.output:
            if item["type"] == "reasoning":
                chat.add_reasoning(item["content"][0]["text"])
            elif item["type"] == "message":
                chat.add_assistant(item["content"][0]["text"])
            elif item["type"] == "function_call":
                chat.add_tool_call(item["name"], item["arguments"])
                call_names[item["call_id"]] = item["name"]
            else:
                chat.add_tool_call(item["name"], json.dumps({"input": item["input"]}))
                call_names[item["call_id"]] = item["name"]
        return [chat.messages, call_names]


def _public(item: dict[str, Any], empty: bool = False) -> dict[str, Any]:
    """An item as sent (without private fields); `empty`: as first announced."""
    item = {k: v for k, v in item.items() if not k.startswith("_")}
    if empty:
        if "content" in item:
            item["content"] = []
        for name in ("arguments", "input"):
            if name in item:
                item[name] = ""
    return item


def _custom_input(arguments: str) -> str:
    """A custom tool's input from the model's call `{"input": "..."}`; the text as written
    when the model wrote something else."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get("input"), str):
        return value["input"]
    return arguments


def sse(event: Mapping[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


# -- Chat Completions: events -> a message and chunks ------------------------------------------


class ChatCompletionBuilder:
    """Builds a chat completion from a turn's events; `feed` returns the stream's deltas."""

    def __init__(self, request: TurnRequest, model_id: str, tokenizer):
        self.request = request
        self.tokenizer = tokenizer
        self.id = new_id("chatcmpl")
        self.created = int(time.time())
        self.model_id = model_id
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.logprobs: list[dict[str, Any]] = []
        self.reasoning_tokens = 0
        self._index = None

    def chunk(self, delta: dict | None, finish_reason=None, usage=None) -> dict[str, Any]:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish_reason}]
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model_id, "choices": choices}
        if usage is not None or self.request.include_usage:
            chunk["usage"] = usage
        return chunk

    def start(self) -> list[dict[str, Any]]:
        return [self.chunk({"role": "assistant", "content": ""})]

    def feed(self, event) -> list[dict[str, Any]]:
        new_message = event.message_index != self._index
        self._index = event.message_index
        if event.kind == REASONING:
            self.reasoning_tokens += 1
            self.reasoning.append(event.delta)
            return [self.chunk({"reasoning": event.delta, "reasoning_content": event.delta})]
        if event.kind == TEXT:
            self.content.append(event.delta)
            delta = {"content": event.delta}
            if self.request.logprobs and event.token is not None:
                entry = self._logprob(event)
                self.logprobs.append(entry)
                chunk = self.chunk(delta)
                chunk["choices"][0]["logprobs"] = {"content": [entry]}
                return [chunk]
            return [self.chunk(delta)]
        if new_message:
            call = {"id": new_id("call"), "type": "function",
                    "function": {"name": tool_name(event.recipient), "arguments": ""}}
            self.tool_calls.append(call)
            first = {"index": len(self.tool_calls) - 1, "id": call["id"], "type": "function",
                     "function": {"name": call["function"]["name"], "arguments": ""}}
            out = [self.chunk({"tool_calls": [first]})]
        else:
            out = []
        self.tool_calls[-1]["function"]["arguments"] += event.delta
        out.append(self.chunk({"tool_calls": [{"index": len(self.tool_calls) - 1,
                                               "function": {"arguments": event.delta}}]}))
        return out

    def _logprob(self, event) -> dict[str, Any]:
        token_bytes = self.tokenizer.token_bytes(event.token)
        return {"token": token_bytes.decode("utf-8", errors="replace"),
                "logprob": event.logprob, "bytes": list(token_bytes), "top_logprobs": []}

    def finish_reason(self, turn) -> str:
        return "tool_calls" if self.tool_calls and turn.finish_reason != "length" \
            else turn.finish_reason

    def finish(self, turn) -> list[dict[str, Any]]:
        usage = Usage.of(turn, self.reasoning_tokens).chat()
        chunks = [self.chunk({}, finish_reason=self.finish_reason(turn))]
        if self.request.include_usage:
            chunks.append(self.chunk(None, usage=usage))
        return chunks

    def completion(self, turn) -> dict[str, Any]:
        reasoning = "".join(self.reasoning) or None
        message = {"role": "assistant", "content": "".join(self.content) or None,
                   "reasoning": reasoning, "reasoning_content": reasoning}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason(turn),
                  "logprobs": {"content": self.logprobs} if self.request.logprobs else None}
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model_id, "choices": [choice],
                "usage": Usage.of(turn, self.reasoning_tokens).chat()}


def chat_sse(chunk: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(chunk)}\n\n"
