"""The harmony chat format of gpt-oss, through openai-harmony.

openai-harmony is the canonical renderer and parser; this module only turns plain Python
values into its messages and back. A prompt is rendered the way the models were trained:

    <|start|>system<|message|>{identity, knowledge cutoff, date, reasoning effort, channels}<|end|>
    <|start|>developer<|message|># Instructions ... # Tools ...<|end|>      (if any)
    <|start|>user<|message|>...<|end|>
    <|start|>assistant<|channel|>final<|message|>...<|end|>                  (past answers)
    <|start|>functions.NAME to=assistant<|channel|>commentary<|message|>...<|end|>
    <|start|>assistant                                                     (the model goes on)

openai-harmony drops the analysis (chain of thought) of turns that ended in a final answer and
ends past final answers with <|end|> instead of <|return|>. The model's reply ends with
<|return|> (a final answer) or <|call|> (a tool call): `chat_stop_tokens`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyError,
    Message,
    ReasoningEffort,
    Role,
    StreamableParser,
    SystemContent,
    ToolDescription,
)

from .errors import OpenHarmonyError
from .tokenizer import Tokenizer

REASONING_EFFORTS = {
    "low": ReasoningEffort.LOW,
    "medium": ReasoningEffort.MEDIUM,
    "high": ReasoningEffort.HIGH,
}
FUNCTIONS_NAMESPACE = "functions"


def today() -> str:
    return datetime.date.today().isoformat()


# What an assistant message is for, from its header (the CLI's and the server's one rule):
# a recipient but the assistant or the user makes a tool call; the analysis channel is
# reasoning (never shown as the answer); the rest (final answer, preambles) is text.
TOOL_CALL, REASONING, TEXT = "tool_call", "reasoning", "text"


def message_kind(channel: str | None, recipient: str | None) -> str:
    if recipient not in (None, "assistant", "user"):
        return TOOL_CALL
    if channel == "analysis":
        return REASONING
    return TEXT


def tool_name(recipient: str) -> str:
    """A function's name from a recipient ('functions.get_weather' -> 'get_weather'); other
    recipients (built-in tools such as 'browser.search') are returned whole."""
    namespace, _, name = recipient.partition(".")
    return name if namespace == FUNCTIONS_NAMESPACE and name else recipient


@dataclass(frozen=True)
class FunctionTool:
    """A tool the model may call: a name, a description and a JSON schema for arguments.

    `strict`: calls are held to `parameters` (else to any JSON object). `custom`: a free-form
    tool (OpenAI's custom tools, e.g. Codex's apply_patch) whose input is the call's message
    as is, in the language of `format` ({"type": "grammar", "syntax": "lark" | "regex",
    "definition"} or {"type": "text"}). `source`: the request field errors name."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None
    strict: bool = False
    custom: bool = False
    format: Mapping[str, Any] | None = None
    source: str | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> FunctionTool:
        """From `{"name", "description", "parameters", "strict"}`, OpenAI's `{"type":
        "function", "function": {...}}` or `{"type": "custom", "name", "format", ...}`."""
        custom = spec.get("type") == "custom" or bool(spec.get("custom"))
        if spec.get("type") == "function" and "function" in spec:
            spec = spec["function"]
        if not isinstance(spec.get("name"), str) or not spec["name"]:
            raise OpenHarmonyError(f"tool definition {dict(spec)!r} has no name")
        return cls(spec["name"], spec.get("description") or "",
                   None if custom else spec.get("parameters"), bool(spec.get("strict")),
                   custom, spec.get("format"), spec.get("source"))

    def to_harmony(self) -> ToolDescription:
        if not self.custom:
            parameters = dict(self.parameters) if self.parameters is not None else None
            return ToolDescription.new(self.name, self.description, parameters)
        text = f"{self.description}\nA free-form tool: its input is the message, as is (not JSON)."
        if (self.format or {}).get("type") == "grammar":
            grammar = self.format.get("grammar") or self.format  # Chat Completions nests it
            text += (f" The input follows this {grammar.get('syntax', '')} grammar:\n"
                     f"{grammar.get('definition', '')}")
        return ToolDescription.new(self.name, text, None)


@dataclass
class ChatOptions:
    """What goes into the system and developer messages.

    `system` replaces the model identity line ("You are ChatGPT, a large language model trained
    by OpenAI."); `developer` holds the instructions (what other APIs call the system prompt).
    `date` is the conversation start date (today by default, None to leave it out).
    """

    reasoning_effort: str = "medium"
    system: str | None = None
    developer: str | None = None
    tools: Sequence[FunctionTool | Mapping[str, Any]] = ()
    date: str | None = field(default_factory=today)
    knowledge_cutoff: str = "2024-06"

    def __post_init__(self):
        if self.reasoning_effort not in REASONING_EFFORTS:
            raise OpenHarmonyError(
                f"reasoning effort {self.reasoning_effort!r} is not one of low, medium, high"
            )
        self.tools = tuple(
            tool if isinstance(tool, FunctionTool) else FunctionTool.from_dict(tool)
            for tool in self.tools
        )

    def system_message(self) -> Message:
        content = (
            SystemContent.new()
            .with_reasoning_effort(REASONING_EFFORTS[self.reasoning_effort])
            .with_knowledge_cutoff(self.knowledge_cutoff)
        )
        if self.system is not None:
            content = content.with_model_identity(self.system)
        if self.date is not None:
            content = content.with_conversation_start_date(self.date)
        return Message.from_role_and_content(Role.SYSTEM, content)

    def developer_message(self) -> Message | None:
        if self.developer is None and not self.tools:
            return None
        content = DeveloperContent.new()
        if self.developer is not None:
            content = content.with_instructions(self.developer)
        if self.tools:
            content = content.with_function_tools([tool.to_harmony() for tool in self.tools])
        return Message.from_role_and_content(Role.DEVELOPER, content)


@dataclass(frozen=True)
class ParsedMessage:
    """One message of a completion: its channel, its text, and the recipient of a tool call."""

    role: str
    channel: str | None
    text: str
    recipient: str | None = None
    content_type: str | None = None

    @property
    def kind(self) -> str:
        """`message_kind` of an assistant message (TOOL_CALL, REASONING or TEXT)."""
        return message_kind(self.channel, self.recipient)

    @property
    def is_tool_call(self) -> bool:
        return self.role == "assistant" and self.kind == TOOL_CALL

    @property
    def tool_name(self) -> str | None:
        """The called function without its namespace ('functions.get_weather' -> 'get_weather')."""
        return tool_name(self.recipient) if self.is_tool_call else None

    def arguments(self) -> Any:
        """The tool call's arguments decoded from JSON."""
        if not self.is_tool_call:
            raise OpenHarmonyError(f"{self.channel} message is not a tool call")
        try:
            return json.loads(self.text)
        except json.JSONDecodeError as error:
            raise OpenHarmonyError(
                f"arguments of the call to {self.recipient} are not JSON: {error}"
            ) from error

    @classmethod
    def from_harmony(cls, message: Message) -> ParsedMessage:
        text = "".join(part.text for part in message.content)
        return cls(
            role=message.author.role.value,
            channel=message.channel,
            text=text,
            recipient=message.recipient,
            content_type=message.content_type,
        )

    def to_harmony(self) -> Message:
        message = Message.from_role_and_content(Role(self.role), self.text)
        if self.channel is not None:
            message = message.with_channel(self.channel)
        if self.recipient is not None:
            message = message.with_recipient(self.recipient)
        if self.content_type is not None:
            message = message.with_content_type(self.content_type)
        return message


class Chat:
    """A conversation with gpt-oss, rendered to prompt tokens by openai-harmony."""

    def __init__(self, tokenizer: Tokenizer, options: ChatOptions | None = None):
        self.tokenizer = tokenizer
        self.options = options if options is not None else ChatOptions()
        self.messages: list[Message] = []

    def add_user(self, text: str) -> None:
        self.messages.append(Message.from_role_and_content(Role.USER, text))

    def add_assistant(self, text: str, channel: str = "final") -> None:
        """A past assistant message given as text, by default a final answer."""
        message = Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel)
        self.messages.append(message)

    def add_assistant_messages(self, parsed: Iterable[ParsedMessage]) -> None:
        """The model's reply as `parse_completion` returned it (analysis, calls, final)."""
        self.messages.extend(message.to_harmony() for message in parsed)

    def add_reasoning(self, text: str) -> None:
        """Past chain of thought (the analysis channel); openai-harmony drops it from the
        prompt once a final answer follows it."""
        self.add_assistant(text, channel="analysis")

    def add_tool_call(self, name: str, arguments: str, custom: bool = False) -> None:
        """A past call of function `name` with `arguments` (JSON text; a `custom` tool's input
        as is), as the model writes it: `<|start|>assistant to=functions.NAME<|channel|>
        commentary <|constrain|>json<|message|>...<|call|>` (no <|constrain|>json if custom)."""
        message = (Message.from_role_and_content(Role.ASSISTANT, arguments)
                   .with_channel("commentary").with_recipient(
                       name if "." in name else f"{FUNCTIONS_NAMESPACE}.{name}"))
        self.messages.append(message if custom
                             else message.with_content_type("<|constrain|>json"))

    def add_tool_result(self, name: str, content: str | Any) -> None:
        """The output of tool `name` ('get_weather' or 'functions.get_weather') for the model.

        Content that is not a string is sent as JSON.
        """
        if "." not in name:
            name = f"{FUNCTIONS_NAMESPACE}.{name}"
        if not isinstance(content, str):
            content = json.dumps(content)
        message = (
            Message.from_author_and_content(Author.new(Role.TOOL, name), content)
            .with_channel("commentary")
            .with_recipient("assistant")
        )
        self.messages.append(message)

    def conversation(self) -> Conversation:
        """The whole conversation as openai-harmony's Conversation, system message first."""
        header = [self.options.system_message(), self.options.developer_message()]
        return Conversation.from_messages([m for m in header if m is not None] + self.messages)

    def render(self) -> list[int]:
        """Prompt tokens for the assistant's next reply, ending with <|start|>assistant."""
        encoding = self.tokenizer.harmony()
        return encoding.render_conversation_for_completion(self.conversation(), Role.ASSISTANT)


def chat_stop_tokens(tokenizer: Tokenizer) -> list[int]:
    """The tokens that end an assistant reply: <|return|> and <|call|>."""
    return tokenizer.harmony().stop_tokens_for_assistant_actions()


def parse_completion(tokenizer: Tokenizer, tokens: Sequence[int]) -> list[ParsedMessage]:
    """The messages of a completion (the tokens generated after `<|start|>assistant`).

    A completion cut short (no stop token) gives its last message as far as it got; one cut
    inside a message header is an error. An empty completion has no messages.
    """
    if not tokens:
        return []
    encoding = tokenizer.harmony()
    try:
        messages = encoding.parse_messages_from_completion_tokens(list(tokens), Role.ASSISTANT)
    except HarmonyError as error:
        raise OpenHarmonyError(f"the completion is not in the harmony format: {error}") from error
    return [ParsedMessage.from_harmony(message) for message in messages]


@dataclass(frozen=True)
class StreamEvent:
    """New text of the message being generated, with where it goes. `message_index` counts
    the completion's messages (a new index is a new message); `token` added the text, with
    its `logprob` and the step's `top_logprobs` [(token, log-probability)] when computed."""

    channel: str | None
    recipient: str | None
    content_type: str | None
    delta: str
    message_index: int = 0
    token: int | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None

    @property
    def kind(self) -> str:
        """`message_kind` of the message (TOOL_CALL, REASONING or TEXT)."""
        return message_kind(self.channel, self.recipient)


class ChatStreamParser:
    """Parses a completion one token at a time, as it is generated.

    `feed(token)` returns a `StreamEvent` when the token adds message text (None for header
    and control tokens). `messages` are the completed messages so far; `finish()` closes an
    unfinished last message and returns all of them, equal to `parse_completion(all tokens)`.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._parser = StreamableParser(tokenizer.harmony(), Role.ASSISTANT)
        self._fed_any = False

    def feed(self, token: int, logprob: float | None = None,
             top_logprobs: list[tuple[int, float]] | None = None) -> StreamEvent | None:
        self._fed_any = True
        try:
            self._parser.process(token)
        except HarmonyError as error:
            raise OpenHarmonyError(
                f"token {token} breaks the harmony format of the completion: {error}"
            ) from error
        delta = self._parser.last_content_delta
        if not delta:
            return None
        return StreamEvent(
            channel=self._parser.current_channel,
            recipient=self._parser.current_recipient,
            content_type=self._parser.current_content_type,
            delta=delta,
            message_index=len(self._parser.messages),
            token=token,
            logprob=logprob,
            top_logprobs=top_logprobs,
        )

    @property
    def messages(self) -> list[ParsedMessage]:
        return [ParsedMessage.from_harmony(message) for message in self._parser.messages]

    def current_message(self) -> ParsedMessage:
        """The message being written, as far as it got."""
        p = self._parser
        return ParsedMessage(role="assistant", channel=p.current_channel, text=p.current_content,
                             recipient=p.current_recipient, content_type=p.current_content_type)

    def finish(self) -> list[ParsedMessage]:
        if not self._fed_any:
            return []
        try:
            self._parser.process_eos()
        except HarmonyError as error:
            raise OpenHarmonyError(
                f"the completion is not in the harmony format: {error}"
            ) from error
        return self.messages


class ChatTurn:
    """One assistant turn: generate the reply to a rendered conversation and parse it, as it
    streams, into reasoning / text / tool-call events. The CLI's chat and the server run this.

        turn = ChatTurn(model, tokenizer, chat.render(), max_tokens=512, prompt_cache=cache)
        for event in turn:          # StreamEvents, one per token that adds message text
            ...
        turn.messages, turn.finish_reason, turn.stats

    Each token is decoded once, by the harmony parser (the generation produces no text).
    `finish_reason`: "tool_calls" (the reply ended with <|call|>), "stop" (<|return|>, or a
    `stop` string in the text for the user, which is then cut before it), "length"
    (`max_tokens`). A reply cut by `max_tokens` keeps its complete messages and the last one
    as far as it got (dropped if cut inside its header). Bad arguments raise here; a reply
    that breaks the harmony format raises OpenHarmonyError while iterating; closing it early
    leaves `prompt_cache` consistent. `response_format` (OpenAI's) binds the final answer,
    `tools` (`FunctionTool`s or dicts) the calls, `tool_choice` what may be called (see
    openharmony/structured); the reasoning stays free. Bad formats raise `ConstraintError`.

    Iterating decodes the turn alone. The server's batch instead steps `turn.decoding` (an
    `openharmony.decoding.Decoding`) with other requests' and hands each chunk to `turn.feed`
    until `turn.finish_reason` is set: the same code per token either way.
    """

    def __init__(self, model, tokenizer: Tokenizer, prompt: Sequence[int], *,
                 max_tokens: int, sampling=None, seed: int | None = None,
                 prompt_cache=None, logprobs: bool = False, top_logprobs: int = 0,
                 stop: Sequence[str] = (), tools: Sequence = (), response_format=None,
                 tool_choice=None):
        from .generate import StopStrings, make_decoding
        from .structured.formats import reply_constraint

        self.tokenizer = tokenizer
        self.prompt_tokens = len(prompt)
        self._stop = StopStrings(stop)
        self.decoding = make_decoding(
            model, prompt, tokenizer=tokenizer, max_tokens=max_tokens, sampling=sampling,
            seed=seed, stop_tokens=chat_stop_tokens(tokenizer), prompt_cache=prompt_cache,
            logprobs=logprobs, top_logprobs=top_logprobs, detokenize=False,
            constraint=reply_constraint(tokenizer, model.config.vocab_size, tools,
                                        response_format, tool_choice))
        self._parser = ChatStreamParser(tokenizer)
        self._call_token = tokenizer.special_ids["<|call|>"]
        self._last_text = None  # the latest event of text for the user (stop strings apply)
        self.tokens: list[int] = []  # the generated tokens
        self.reused_prompt_tokens = 0  # prompt tokens taken from the prompt cache
        self.messages: list[ParsedMessage] | None = None
        self.finish_reason: str | None = None
        self.stats = None  # GenerationStats, at the end (None after a stop string)

    def __iter__(self) -> Iterator[StreamEvent]:
        from .generate import stream_decoding  # looked up here: a test may wrap it

        chunks = stream_decoding(self.decoding)
        try:
            for chunk in chunks:
                yield from self.feed(chunk)
                if self.finish_reason is not None:
                    return
        finally:
            chunks.close()  # frees the generation; the prompt cache stays valid

    def feed(self, chunk) -> list[StreamEvent]:
        """The events of one generated chunk; sets `finish_reason` (and `messages`, `stats`)
        when the turn is over, after which nothing more may be fed."""
        assert self.finish_reason is None, "the turn is over"
        if chunk.reused_prompt_tokens is not None:
            self.reused_prompt_tokens = chunk.reused_prompt_tokens
        self.tokens.append(chunk.token)
        events = []
        event = self._parser.feed(chunk.token, chunk.logprob, chunk.top_logprobs)
        stopped = False
        last_text = self._last_text
        if (event is not None and last_text is not None
                and event.message_index != last_text.message_index):
            events += self._release_held(last_text)  # that message is complete
        if event is not None and event.kind == TEXT and self._stop.stop_strings:
            self._last_text = event
            delta, stopped = self._stop.feed(event.delta, final=False)
            event = dataclasses.replace(event, delta=delta)
        if event is not None and event.delta:
            events.append(event)
        if stopped:
            self.messages = self._cut_at_stop()
            self.finish_reason = "stop"
            return events
        if chunk.finish_reason is not None:
            self.stats = chunk.stats
            if chunk.finish_reason == "length":
                self.finish_reason = "length"
                try:
                    self.messages = self._parser.finish()
                except OpenHarmonyError:  # cut inside a header: the complete messages
                    self.messages = self._parser.messages
            else:
                self.messages = self._parser.finish()
                self.finish_reason = ("tool_calls" if chunk.token == self._call_token
                                      else "stop")
            events += self._release_held(self._last_text)
        return events

    def _release_held(self, last_text: StreamEvent | None) -> list[StreamEvent]:
        """The text held back while it could have begun a stop string, once its message ends."""
        held = self._stop.feed("", final=True)[0] if last_text is not None else ""
        if not held:
            return []
        return [dataclasses.replace(last_text, delta=held, token=None, logprob=None,
                                    top_logprobs=None)]

    def _cut_at_stop(self) -> list[ParsedMessage]:
        """The messages so far; the one being written ends right before the stop string."""
        current = self._parser.current_message()
        found = [i for i in (current.text.find(s) for s in self._stop.stop_strings) if i >= 0]
        if found:
            current = dataclasses.replace(current, text=current.text[:min(found)])
        return self._parser.messages + [current]

