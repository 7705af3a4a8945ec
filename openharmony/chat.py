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

import datetime
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

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


@dataclass(frozen=True)
class FunctionTool:
    """A function the model may call: a name, a description and a JSON schema for arguments."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> FunctionTool:
        """From `{"name", "description", "parameters"}` or OpenAI's `{"type": "function",
        "function": {...}}`."""
        if spec.get("type") == "function" and "function" in spec:
            spec = spec["function"]
        if not isinstance(spec.get("name"), str) or not spec["name"]:
            raise OpenHarmonyError(f"tool definition {dict(spec)!r} has no name")
        return cls(spec["name"], spec.get("description", ""), spec.get("parameters"))

    def to_harmony(self) -> ToolDescription:
        parameters = dict(self.parameters) if self.parameters is not None else None
        return ToolDescription.new(self.name, self.description, parameters)


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
    def is_tool_call(self) -> bool:
        return self.role == "assistant" and self.recipient not in (None, "assistant", "user")

    @property
    def tool_name(self) -> str | None:
        """The called function without its namespace ('functions.get_weather' -> 'get_weather')."""
        if not self.is_tool_call:
            return None
        namespace, _, name = self.recipient.partition(".")
        return name if namespace == FUNCTIONS_NAMESPACE and name else self.recipient

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
    """New text of the message being generated, with where it goes."""

    channel: str | None
    recipient: str | None
    content_type: str | None
    delta: str


class ChatStreamParser:
    """Parses a completion one token at a time, as it is generated.

    `feed(token)` returns a `StreamEvent` when the token adds message text (None for header
    and control tokens). `messages` are the completed messages so far; `finish()` closes an
    unfinished last message and returns all of them, equal to `parse_completion(all tokens)`.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._parser = StreamableParser(tokenizer.harmony(), Role.ASSISTANT)
        self._fed_any = False

    def feed(self, token: int) -> StreamEvent | None:
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
        )

    @property
    def messages(self) -> list[ParsedMessage]:
        return [ParsedMessage.from_harmony(message) for message in self._parser.messages]

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
