"""Formats -> Conversation: exact conversions, detection, and the reasons a row is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftlab.config import SourceConfig
from sftlab.core.errors import DataError, RowError
from sftlab.core.types import Conversation, Message, RowRef, ToolCall
from sftlab.data.formats import FORMATS, detect_format, to_conversation
from sftlab.data.mixture import load_source
from sftlab.data.readers import RawRow, read_rows

FIXTURES = Path(__file__).parent / "fixtures" / "data"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REF = RowRef("rows.jsonl", 7, 6)


def convert(fixture: str, fmt: str) -> list[Conversation]:
    path = FIXTURES / fixture
    return [
        to_conversation(r.value, fmt, RowRef(str(path), r.line, r.index)) for r in read_rows(path)
    ]


def chat(*turns: tuple[str, str]) -> tuple[Message, ...]:
    return tuple(Message(role, content) for role, content in turns)


def refuse(row: dict, fmt: str) -> RowError:
    with pytest.raises(RowError) as caught:
        to_conversation(row, fmt, REF)
    return caught.value


# ---------------------------------------------------------------------------------------------
# Conversions, exactly


def test_alpaca_input_system_and_history():
    first, second, third = convert("alpaca.json", "alpaca")
    assert first.messages == chat(
        ("user", "Translate to French.\n\nGood morning"), ("assistant", "Bonjour")
    )
    assert first.source == RowRef(str(FIXTURES / "alpaca.json"), 2, 0)
    assert second.messages == chat(("user", "Name a primary colour."), ("assistant", "Red."))
    assert third.messages == chat(
        ("system", "You are terse."),
        ("user", "Hi"),
        ("assistant", "Hello."),
        ("user", "Add 2 and 3."),
        ("assistant", "5"),
    )
    assert first.kind == "chat" and first.tools == ()


def test_alpaca_keeps_whitespace_of_instruction_and_input():
    row = {"instruction": "  Fix this:\n", "input": "x = 1 \n", "output": " ok"}
    assert to_conversation(row, "alpaca", REF).messages == chat(
        ("user", "  Fix this:\n\n\nx = 1 \n"), ("assistant", " ok")
    )


def test_sharegpt_function_call_observation_system_and_tools():
    (conv,) = convert("sharegpt_tools.json", "sharegpt")
    assert conv.messages == (
        Message("system", "You can call tools."),
        Message("user", "What is the weather in Paris?"),
        Message("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}),)),
        Message("tool", '{"temp_c": 18}'),
        Message("assistant", "It is 18 °C in Paris."),
    )
    assert conv.tools == (
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    )


def test_sharegpt_function_call_with_string_arguments():
    value = '{"name": "f", "arguments": "{\\"x\\": 1}"}'
    row = {
        "conversations": [
            {"from": "user", "value": "go"},
            {"from": "function_call", "value": value},
            {"from": "observation", "value": "done"},
            {"from": "model", "value": "Done."},
        ]
    }
    conv = to_conversation(row, "sharegpt", REF)
    assert conv.messages[1].tool_calls == (ToolCall("f", {"x": 1}),)
    assert [m.role for m in conv.messages] == ["user", "assistant", "tool", "assistant"]


def test_openai_messages_parts_weights_and_tool_calls():
    plain, parts, tools = convert("messages.jsonl", "messages")
    assert plain.messages == chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"))
    assert parts.messages == (
        Message("user", "Two parts"),
        Message("assistant", "Joined.", train=True),
    )
    assert tools.messages == (
        Message("user", "Time in Oslo?"),
        Message("assistant", "", tool_calls=(ToolCall("clock", {"tz": "Europe/Oslo"}),)),
        Message("tool", "09:30"),
        Message("assistant", "It is 09:30.", train=False),
    )
    assert tools.tools == ({"type": "function", "function": {"name": "clock"}},)
    assert tools.source.line == 4


def test_openai_role_aliases_and_object_arguments():
    row = {
        "messages": [
            {"role": "developer", "content": "Rules."},
            {"role": "user", "content": "Call it"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"type": "function", "function": {"name": "g", "arguments": {"a": [1]}}}
                ],
            },
            {"role": "function", "content": "42"},
            {"role": "assistant", "content": "It said 42.", "weight": 0},
        ]
    }
    conv = to_conversation(row, "messages", REF)
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert conv.messages[2] == Message("assistant", "", tool_calls=(ToolCall("g", {"a": [1]}),))
    assert conv.messages[4].train is False


def test_prompt_completion_plain_and_conversational():
    plain, conversational = convert("prompt_completion.jsonl", "prompt_completion")
    assert plain.messages == chat(("user", "2 + 2 ="), ("assistant", " 4"))
    assert conversational.messages == chat(("user", "Capital of Italy?"), ("assistant", "Rome."))


def test_text_rows_are_text_conversations():
    path = FIXTURES / "text.txt"
    first = convert("text.txt", "text")[0]
    assert first == Conversation(
        kind="text", text="First document, one line.", source=RowRef(str(path), 1, 0)
    )


def test_columnar_nulls_count_as_absent_optional_keys():
    # Parquet/datasets fill struct fields missing in a row with null.
    row = {
        "messages": [
            {"role": "user", "content": "Hi", "tool_calls": None, "train": None, "weight": None},
            {
                "role": "assistant",
                "content": "Yo",
                "tool_calls": None,
                "train": None,
                "weight": None,
            },
        ],
        "tools": None,
    }
    assert to_conversation(row, "messages", REF).messages == chat(
        ("user", "Hi"), ("assistant", "Yo")
    )
    alpaca = {"instruction": "a", "input": None, "output": "b", "system": None, "history": None}
    assert to_conversation(alpaca, "alpaca", REF).messages == chat(
        ("user", "a"), ("assistant", "b")
    )


# ---------------------------------------------------------------------------------------------
# Reasons


def test_wrong_type_says_expected_and_found():
    err = refuse({"instruction": "q", "output": 42}, "alpaca")
    assert (err.reason, err.field) == ("expected a string, got a number (42)", "output")


@pytest.mark.parametrize(
    ("messages", "field", "fragment"),
    [
        (
            [{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}],
            "messages[0].content",
            "expected a string as user content, got a number (7)",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": True}],
            "messages[1].content",
            "got a boolean (true)",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}],
            "messages[1].role",
            "unknown role 'bot'; known roles: system, developer, user",
        ),
        (
            [
                {"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                {"role": "assistant", "content": "a"},
            ],
            "messages[0].content[0].type",
            "only text content parts are supported, got type 'image_url'",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "weight": 0.5},
            ],
            "messages[1].weight",
            "weight must be 0 or 1; fractional weights are not supported",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "train": "yes"},
            ],
            "messages[1].train",
            "expected true or false, got a string ('yes')",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"function": {"arguments": "{}"}}],
                },
            ],
            "messages[1].tool_calls[0].function.name",
            "expected a function name",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "   "}],
            "messages[1].content",
            "empty assistant answer",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "more?"},
            ],
            "messages[2]",
            "the conversation ends with a user message: nothing to learn from the last turn",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "a"},
            ],
            "messages[1]",
            "a system message is only allowed first",
        ),
        (
            [
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "b"},
            ],
            "messages[0]",
            "must be from the user, got assistant",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a"},
            ],
            "messages[1]",
            "two consecutive user messages",
        ),
        ([{"role": "user", "content": "q"}], None, "no assistant message"),
    ],
)
def test_messages_refusals_name_the_field(messages, field, fragment):
    err = refuse({"messages": messages}, "messages")
    assert err.field == field
    assert fragment in err.reason


def test_missing_key_suggests_the_near_miss():
    err = refuse({"instrution": "q", "output": "a"}, "alpaca")
    assert err.field == "instruction"
    assert (
        err.reason
        == "missing required key 'instruction' (did you mean 'instruction'? found 'instrution')"
    )
    assert (
        "did you mean 'output'? found 'ouput'"
        in refuse({"instruction": "q", "ouput": "a"}, "alpaca").reason
    )
    assert (
        "found 'Content'"
        in refuse({"messages": [{"role": "user", "Content": "q"}]}, "messages").reason
    )


def test_a_row_of_another_format_says_so():
    err = refuse({"messages": [{"role": "user", "content": "q"}]}, "alpaca")
    assert "this row has the keys of the 'messages' format" in err.reason


def test_tool_message_needs_a_preceding_call():
    err = refuse(
        {
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "observation", "value": "r"},
                {"from": "gpt", "value": "a"},
            ]
        },
        "sharegpt",
    )
    assert err.field == "messages[1]"
    assert "a tool message must follow an assistant message with tool calls" in err.reason


def test_whitespace_text_is_refused():
    err = refuse({"text": " \n\t"}, "text")
    assert (err.field, err.reason) == (
        "text",
        "empty text: expected a non-empty document, got only whitespace",
    )


# ---------------------------------------------------------------------------------------------
# Detection


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("alpaca.json", "alpaca"),
        ("sharegpt_tools.json", "sharegpt"),
        ("messages.jsonl", "messages"),
        ("messages.csv", "messages"),
        ("prompt_completion.jsonl", "prompt_completion"),
        ("text.txt", "text"),
    ],
)
def test_detect_format_of_each_fixture(fixture, expected):
    assert detect_format(read_rows(FIXTURES / fixture), fixture) == expected
    assert expected in FORMATS


def test_detect_format_majority_wins_and_skips_unreadable_rows():
    rows = [
        RawRow(0, 1, {"text": "a"}),
        RawRow(1, 2, "{bad", error="not valid JSON"),
        RawRow(2, 3, {"messages": []}),
        RawRow(3, 4, {"messages": []}),
    ]
    assert detect_format(rows, "mixed.jsonl") == "messages"


def test_undetectable_file_names_file_keys_and_expected_keys():
    rows = [
        RawRow(0, 1, {"question": "q", "answer": "a"}),
        RawRow(1, 2, {"question": "r", "answer": "b"}),
    ]
    with pytest.raises(DataError) as caught:
        detect_format(rows, "qa.jsonl")
    message = str(caught.value)
    assert message.startswith(
        "qa.jsonl: cannot tell the data format: keys seen ['answer', 'question']"
    )
    assert "alpaca: instruction, input?, output" in message and "sharegpt: conversations" in message
    assert "Set `format:` on the source" in message


def test_undetectable_misspelling_gets_a_suggestion():
    with pytest.raises(DataError, match="did you mean 'messages'\\? found 'mesages'"):
        detect_format([RawRow(0, 1, {"mesages": []})], "m.jsonl")


# ---------------------------------------------------------------------------------------------
# Real public samples (only where the project's shared data folder sits beside the clone)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="no ../shared/data beside this clone")
@pytest.mark.parametrize(
    ("name", "fmt", "rows"),
    [
        ("alpaca_en_demo.json", "alpaca", 999),
        ("glaive_toolcall_en_demo.json", "sharegpt", 300),
        ("c4_demo.jsonl", "text", 300),
        ("wiki_demo.txt", "text", 30),
    ],
)
def test_real_samples_every_row_kept_or_rejected(name, fmt, rows):
    data = load_source(SourceConfig(path=str(SHARED_DATA / name)))
    assert (data.fmt, data.n_input) == (fmt, rows)
    assert len(data.conversations) + len(data.rejected) == rows
    assert len(data.conversations) > 0.9 * rows
    if name.startswith("glaive"):
        with_calls = [c for c in data.conversations if any(m.tool_calls for m in c.messages)]
        assert sum(m.role == "tool" for c in data.conversations for m in c.messages) == 211
        assert with_calls and all(c.tools for c in with_calls)


def test_a_row_error_passes_through_a_context_manager_unchanged():
    # Raising sets __traceback__ on the exception; a frozen dataclass refused that, so a RowError
    # leaving a `with` block of a @contextmanager became a FrozenInstanceError.
    import contextlib

    @contextlib.contextmanager
    def block():
        yield

    with pytest.raises(RowError) as raised:
        with block():
            raise RowError("expected a string, got a number", "messages[0].content")
    assert str(raised.value) == "messages[0].content: expected a string, got a number"
