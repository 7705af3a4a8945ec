"""Harmony chat: prompts against openai-harmony's own rendering, completions against literals."""

import datetime

import pytest
from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    Message,
    ReasoningEffort,
    Role,
    SystemContent,
    ToolDescription,
)

from openharmony.chat import (
    Chat,
    ChatOptions,
    ChatStreamParser,
    FunctionTool,
    ParsedMessage,
    chat_stop_tokens,
    parse_completion,
)
from openharmony.errors import OpenHarmonyError
from openharmony.tokenizer import load_tokenizer

from vocab import VOCAB, requires_vocab

DATE = "2025-06-28"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "City and country"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["location"],
}
EFFORTS = {
    "low": ReasoningEffort.LOW,
    "medium": ReasoningEffort.MEDIUM,
    "high": ReasoningEffort.HIGH,
}




pytestmark = requires_vocab


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB)


@pytest.fixture(scope="module")
def harmony(tokenizer):
    return tokenizer.harmony()


def reference_prompt(harmony, effort, messages, developer=None):
    """openai-harmony's tokens for a conversation, built from its own classes."""
    system = (
        SystemContent.new()
        .with_reasoning_effort(EFFORTS[effort])
        .with_conversation_start_date(DATE)
    )
    header = [Message.from_role_and_content(Role.SYSTEM, system)]
    if developer is not None:
        header.append(Message.from_role_and_content(Role.DEVELOPER, developer))
    conversation = Conversation.from_messages(header + messages)
    return harmony.render_conversation_for_completion(conversation, Role.ASSISTANT)


def user(text):
    return Message.from_role_and_content(Role.USER, text)


def assistant(text, channel, recipient=None, content_type=None):
    message = Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel)
    if recipient:
        message = message.with_recipient(recipient)
    if content_type:
        message = message.with_content_type(content_type)
    return message


def tool_result(name, text):
    return (
        Message.from_author_and_content(Author.new(Role.TOOL, name), text)
        .with_channel("commentary")
        .with_recipient("assistant")
    )


def test_simple_prompt_is_the_documented_format(tokenizer):
    chat = Chat(tokenizer, ChatOptions(reasoning_effort="high", date=DATE))
    chat.add_user("What is 2 + 2?")
    assert tokenizer.decode(chat.render()) == (
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\n"
        "Current date: 2025-06-28\n\n"
        "Reasoning: high\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every "
        "message.<|end|>"
        "<|start|>user<|message|>What is 2 + 2?<|end|>"
        "<|start|>assistant"
    )


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_each_reasoning_effort(tokenizer, harmony, effort):
    chat = Chat(tokenizer, ChatOptions(reasoning_effort=effort, date=DATE))
    chat.add_user("Explain entropy in one sentence.")
    expected = reference_prompt(harmony, effort, [user("Explain entropy in one sentence.")])
    assert chat.render() == expected
    assert f"Reasoning: {effort}" in tokenizer.decode(expected)


def test_developer_instructions_and_function_tools(tokenizer, harmony):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": WEATHER_SCHEMA,
            },
        },
        FunctionTool("get_time", "Current time in UTC"),
    ]
    options = ChatOptions(date=DATE, developer="Answer in French.", tools=tools)
    chat = Chat(tokenizer, options)
    chat.add_user("Quel temps fait-il à Paris ?")
    developer = (
        DeveloperContent.new()
        .with_instructions("Answer in French.")
        .with_function_tools([
            ToolDescription.new("get_weather", "Current weather", WEATHER_SCHEMA),
            ToolDescription.new("get_time", "Current time in UTC"),
        ])
    )
    messages = [user("Quel temps fait-il à Paris ?")]
    expected = reference_prompt(harmony, "medium", messages, developer)
    assert chat.render() == expected
    text = tokenizer.decode(expected)
    assert "namespace functions {" in text and "type get_weather = (_: {" in text


def test_model_identity_and_no_date(tokenizer, harmony):
    options = ChatOptions(system="You are a pirate.", date=None, reasoning_effort="low")
    chat = Chat(tokenizer, options)
    chat.add_user("Hi")
    system = (
        SystemContent.new().with_model_identity("You are a pirate.")
        .with_reasoning_effort(ReasoningEffort.LOW)
    )
    conversation = Conversation.from_messages(
        [Message.from_role_and_content(Role.SYSTEM, system), user("Hi")]
    )
    assert chat.render() == harmony.render_conversation_for_completion(conversation, Role.ASSISTANT)
    assert "Current date" not in tokenizer.decode(chat.render())


def test_default_date_is_today(tokenizer):
    chat = Chat(tokenizer)
    chat.add_user("Hi")
    assert f"Current date: {datetime.date.today().isoformat()}" in tokenizer.decode(chat.render())


def test_multi_turn_drops_earlier_analysis(tokenizer, harmony):
    chat = Chat(tokenizer, ChatOptions(date=DATE, developer="Be brief."))
    chat.add_user("What is 2 + 2?")
    chat.add_assistant_messages([
        ParsedMessage("assistant", "analysis", "Simple arithmetic: SECRET-THOUGHT."),
        ParsedMessage("assistant", "final", "4"),
    ])
    chat.add_user("And times 3?")
    expected = reference_prompt(harmony, "medium", [
        user("What is 2 + 2?"),
        assistant("Simple arithmetic: SECRET-THOUGHT.", "analysis"),
        assistant("4", "final"),
        user("And times 3?"),
    ], DeveloperContent.new().with_instructions("Be brief."))
    assert chat.render() == expected
    text = tokenizer.decode(chat.render())
    assert "SECRET-THOUGHT" not in text
    assert text.endswith(
        "<|start|>user<|message|>What is 2 + 2?<|end|>"
        "<|start|>assistant<|channel|>final<|message|>4<|end|>"
        "<|start|>user<|message|>And times 3?<|end|><|start|>assistant"
    )


def test_tool_call_and_result(tokenizer, harmony):
    weather = FunctionTool("get_weather", "Current weather", WEATHER_SCHEMA)
    options = ChatOptions(date=DATE, tools=[weather])
    chat = Chat(tokenizer, options)
    chat.add_user("Weather in Tokyo?")
    chat.add_assistant_messages([
        ParsedMessage("assistant", "analysis", "Need to call get_weather."),
        ParsedMessage("assistant", "commentary", '{"location":"Tokyo, JP"}',
                      recipient="functions.get_weather", content_type="<|constrain|>json"),
    ])
    chat.add_tool_result("get_weather", {"temperature": 21, "sky": "clear"})
    developer = DeveloperContent.new().with_function_tools(
        [ToolDescription.new("get_weather", "Current weather", WEATHER_SCHEMA)]
    )
    expected = reference_prompt(harmony, "medium", [
        user("Weather in Tokyo?"),
        assistant("Need to call get_weather.", "analysis"),
        assistant('{"location":"Tokyo, JP"}', "commentary", "functions.get_weather",
                  "<|constrain|>json"),
        tool_result("functions.get_weather", '{"temperature": 21, "sky": "clear"}'),
    ], developer)
    assert chat.render() == expected
    assert tokenizer.decode(expected).endswith(
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>'
        '{"temperature": 21, "sky": "clear"}<|end|><|start|>assistant'
    )


def test_bad_options_are_errors():
    with pytest.raises(OpenHarmonyError, match="reasoning effort 'extreme'"):
        ChatOptions(reasoning_effort="extreme")
    with pytest.raises(OpenHarmonyError, match="no name"):
        ChatOptions(tools=[{"description": "nameless"}])


def test_stop_tokens(tokenizer):
    assert sorted(chat_stop_tokens(tokenizer)) == [200002, 200012]


TOOL_CALL_COMPLETION = (
    "<|channel|>analysis<|message|>User asks weather in 東京 ☀️; call the tool.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"location": "Tokyo, JP"}<|call|>'
)
TOOL_CALL_MESSAGES = [
    ParsedMessage("assistant", "analysis", "User asks weather in 東京 ☀️; call the tool."),
    ParsedMessage("assistant", "commentary", '{"location": "Tokyo, JP"}',
                  recipient="functions.get_weather", content_type="<|constrain|>json"),
]
FINAL_COMPLETION = (
    "<|channel|>analysis<|message|>2 + 2 = 4. Easy 𝔘.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>The answer is **4** 🦜.<|return|>"
)
FINAL_MESSAGES = [
    ParsedMessage("assistant", "analysis", "2 + 2 = 4. Easy 𝔘."),
    ParsedMessage("assistant", "final", "The answer is **4** 🦜."),
]


@pytest.mark.parametrize("completion, expected", [
    (TOOL_CALL_COMPLETION, TOOL_CALL_MESSAGES),
    (FINAL_COMPLETION, FINAL_MESSAGES),
])
def test_parse_at_once_and_streaming(tokenizer, completion, expected):
    tokens = tokenizer.encode(completion, allow_special=True)
    assert parse_completion(tokenizer, tokens) == expected

    parser = ChatStreamParser(tokenizer)
    events = [event for event in map(parser.feed, tokens) if event is not None]
    assert parser.finish() == expected
    # The deltas, grouped by message, rebuild each message with its channel and recipient.
    streamed = {}
    for event in events:
        key = (event.channel, event.recipient, event.content_type)
        streamed[key] = streamed.get(key, "") + event.delta
    assert streamed == {(m.channel, m.recipient, m.content_type): m.text for m in expected}


def test_tool_call_accessors():
    call, analysis = TOOL_CALL_MESSAGES[1], TOOL_CALL_MESSAGES[0]
    assert call.is_tool_call and call.tool_name == "get_weather"
    assert call.arguments() == {"location": "Tokyo, JP"}
    assert not analysis.is_tool_call and analysis.tool_name is None
    with pytest.raises(OpenHarmonyError, match="not a tool call"):
        analysis.arguments()
    broken = ParsedMessage("assistant", "commentary", "{oops", recipient="functions.f")
    with pytest.raises(OpenHarmonyError, match="functions.f are not JSON"):
        broken.arguments()


def test_parsed_reply_continues_the_conversation(tokenizer, harmony):
    """A reply parsed from tokens and added back renders like openai-harmony's own messages."""
    chat = Chat(tokenizer, ChatOptions(date=DATE))
    chat.add_user("Weather in Tokyo?")
    reply = tokenizer.encode(TOOL_CALL_COMPLETION, allow_special=True)
    chat.add_assistant_messages(parse_completion(tokenizer, reply))
    chat.add_tool_result("functions.get_weather", "sunny")
    expected = reference_prompt(harmony, "medium", [
        user("Weather in Tokyo?"),
        assistant("User asks weather in 東京 ☀️; call the tool.", "analysis"),
        assistant('{"location": "Tokyo, JP"}', "commentary", "functions.get_weather",
                  "<|constrain|>json"),
        tool_result("functions.get_weather", "sunny"),
    ])
    assert chat.render() == expected


def test_truncated_and_empty_completions(tokenizer):
    tokens = tokenizer.encode(FINAL_COMPLETION, allow_special=True)
    cut = tokens[: tokens.index(200002) - 3]
    partial = parse_completion(tokenizer, cut)
    assert partial[0] == FINAL_MESSAGES[0]
    # Cut inside '🦜': the unfinished character becomes U+FFFD, as in Tokenizer.decode.
    assert partial[1] == ParsedMessage("assistant", "final", "The answer is **4** \ufffd")
    parser = ChatStreamParser(tokenizer)
    for token in cut:
        parser.feed(token)
    assert parser.finish() == partial
    assert parse_completion(tokenizer, []) == []
    assert ChatStreamParser(tokenizer).finish() == []


def test_malformed_completion_is_an_error(tokenizer):
    tokens = tokenizer.encode("<|channel|>final<|message|>hi<|end|>oops", allow_special=True)
    with pytest.raises(OpenHarmonyError, match="harmony format"):
        parse_completion(tokenizer, tokens)
    parser = ChatStreamParser(tokenizer)
    with pytest.raises(OpenHarmonyError, match="harmony format"):
        for token in tokens:
            parser.feed(token)
        parser.finish()
