"""Chat Completions (Open WebUI, LangChain, most SDK snippets): request JSON -> a harmony
conversation, and a chat turn's events -> a chat completion or its stream of chunks."""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

from ..chat import REASONING, TEXT, Chat, ChatOptions, tool_name
from ..generate import MAX_TOP_LOGPROBS
from .protocol import (
    TurnRequest, Usage, get, invalid, new_id, positive_int, read_formats, read_tools,
    reasoning_effort, sampling_options, seed, text_of,
)

# Consecutive analysis messages in one reasoning text: the Responses API returns them as
# separate reasoning items (as OpenAI's reference server); one string needs a separator.
REASONING_SEPARATOR = "\n\n"

DEFAULT_EFFORT = "medium"  # the OpenAI API's default


def chat_request(body: Mapping, tokenizer) -> TurnRequest:
    """A Chat Completions request."""
    tools = read_tools(body.get("tools"), body.get("tool_choice"))
    response_format, tool_choice = body.get("response_format"), body.get("tool_choice")
    read_formats(tools, read_tools(body.get("tools"), None), response_format, tool_choice,
                 "response_format")
    chat = Chat(tokenizer, ChatOptions(reasoning_effort=reasoning_effort(
        body, DEFAULT_EFFORT), tools=tools.functions))
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
    logprobs = get(body, "logprobs", bool, False)
    top_logprobs = get(body, "top_logprobs", int, 0)
    if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise invalid("top_logprobs", f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got "
                      f"{top_logprobs}")
    if top_logprobs and not logprobs:
        raise invalid("top_logprobs", "top_logprobs needs logprobs: true")
    max_tokens = positive_int(body, "max_completion_tokens") or positive_int(body, "max_tokens")
    stream_options = get(body, "stream_options", dict, {})
    return TurnRequest(chat=chat, max_tokens=max_tokens, sampling=sampling_options(body),
                       seed=seed(body), stream=get(body, "stream", bool, False), tools=tools,
                       stop=stop, logprobs=logprobs, top_logprobs=top_logprobs,
                       include_usage=get(stream_options, "include_usage", bool, False,
                                         param="stream_options.include_usage"),
                       call_names=call_names, response_format=response_format,
                       tool_choice=tool_choice)


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
            if isinstance(call, dict) and call.get("type") == "custom":  # its input as is
                custom = get(call, "custom", dict, {}, param=f"{where}.custom")
                name = get(custom, "name", str, param=f"{where}.custom.name")
                if not name:
                    raise invalid(f"{where}.custom.name", f"{where}.custom.name is required")
                chat.add_tool_call(name, get(custom, "input", str, "",
                                             param=f"{where}.custom.input"), custom=True)
                call_names[get(call, "id", str, "", param=f"{where}.id")] = name
                continue
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
            delta = event.delta
            if new_message and self.reasoning:  # another analysis message
                delta = REASONING_SEPARATOR + delta
            self.reasoning.append(delta)
            return [self.chunk({"reasoning": delta, "reasoning_content": delta})]
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
        entry = self._token_logprob(event.token, event.logprob)
        entry["top_logprobs"] = [self._token_logprob(token, logprob)
                                 for token, logprob in event.top_logprobs or ()]
        return entry

    def _token_logprob(self, token: int, logprob: float) -> dict[str, Any]:
        token_bytes = self.tokenizer.token_bytes(token)
        return {"token": token_bytes.decode("utf-8", errors="replace"), "logprob": logprob,
                "bytes": list(token_bytes)}

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
        if self.tool_calls:  # a custom tool's call in its own shape (streams have none)
            message["tool_calls"] = [
                {"id": c["id"], "type": "custom", "custom": {
                    "name": c["function"]["name"], "input": c["function"]["arguments"]}}
                if c["function"]["name"] in self.request.tools.custom else c
                for c in self.tool_calls]
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason(turn),
                  "logprobs": {"content": self.logprobs} if self.request.logprobs else None}
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model_id, "choices": [choice],
                "usage": Usage.of(turn, self.reasoning_tokens).chat()}


def chat_sse(chunk: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(chunk)}\n\n"
