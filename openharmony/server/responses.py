"""The Responses API (what Codex CLI speaks): request JSON -> a harmony conversation, and a
chat turn's events -> output items and the streaming events that describe them."""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

from ..chat import REASONING, TEXT, Chat, ChatOptions, tool_name
from .protocol import (
    TurnRequest, Usage, get, invalid, new_id, positive_int, read_formats, read_tools,
    reasoning_effort, sampling_options, seed, text_of,
)

DEFAULT_EFFORT = "low"  # as OpenAI's gpt-oss reference server (gpt_oss.responses_api)


def responses_request(body: Mapping, tokenizer, previous=None) -> TurnRequest:
    """A Responses API request; `previous` is the stored (messages, call_names) of
    `previous_response_id`, whose conversation this one continues."""
    # Function tools are strict unless they say otherwise, as in OpenAI's Responses API.
    tools = read_tools(body.get("tools"), body.get("tool_choice"), strict_default=True)
    text_format = get(get(body, "text", dict, {}), "format", dict, param="text.format")
    tool_choice = body.get("tool_choice")
    read_formats(tools, read_tools(body.get("tools"), None, strict_default=True), text_format,
                 tool_choice, "text.format")
    developer = get(body, "instructions", str)
    chat = Chat(tokenizer, ChatOptions(reasoning_effort=reasoning_effort(
        body, DEFAULT_EFFORT), tools=tools.functions))
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
    # `prompt_cache_key` (caching is automatic), `metadata`, `client_metadata`,
    # `parallel_tool_calls` (harmony makes one call per reply); `store` is read by the app.
    return TurnRequest(chat=chat, max_tokens=positive_int(body, "max_output_tokens"),
                       sampling=sampling_options(body), seed=seed(body),
                       stream=get(body, "stream", bool, False), tools=tools,
                       call_names=call_names, response_format=text_format,
                       tool_choice=tool_choice)


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
            chat.add_tool_call(name, get(item, "arguments", str, "", param=f"{param}.arguments"))
        else:  # a custom tool's input is the call's message as is
            chat.add_tool_call(name, get(item, "input", str, "", param=f"{param}.input"),
                               custom=True)
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
        else:  # custom_tool_call: its input, as the model writes it
            item["input"] += event.delta
            events.append(self._event("response.custom_tool_call_input.delta",
                                      delta=event.delta, **where))
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
                        "status": "in_progress"}
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
            events.append(self._event("response.custom_tool_call_input.done",
                                      input=item["input"], **where))
        events.append(self._event("response.output_item.done",
                                  output_index=len(self.output) - 1, item=_public(item)))
        return events

    def finish(self, turn) -> list[dict[str, Any]]:
        events = self._close_item()
        self.usage = Usage.of(turn, self.reasoning_tokens)
        if turn.finish_reason == "length":
            self.status, self.incomplete = "incomplete", {"reason": "max_output_tokens"}
        else:
            self.status = "completed"
        # As OpenAI's streaming reference: a reply cut by max_output_tokens ends the stream
        # with response.incomplete (its status and incomplete_details say why).
        return events + [self._event(f"response.{self.status}", response=self.response())]

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
                chat.add_tool_call(item["name"], item["input"], custom=True)
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


def sse(event: Mapping[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
