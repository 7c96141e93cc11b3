"""Row formats -> `Conversation`: detect a file's format, convert one row, validate the shape.

    alpaca             {"instruction", "input"?, "output", "system"?, "history"?}
    sharegpt           {"conversations": [{"from", "value"}, ...], "system"?, "tools"?}
    messages           {"messages": [{"role", "content", "tool_calls"?, "train"?, "weight"?}], "tools"?}
    prompt_completion  {"prompt": str | messages, "completion": str | messages}
    text               {"text": str}                        -> Conversation(kind="text")

A row that cannot be converted raises `RowError(reason, field)`; the reason says what was expected
and what was found, so a person can fix the row from the rejected set alone. Optional keys whose
value is null count as absent: columnar files (parquet, datasets) fill missing struct fields with
null.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from typing import Any

from sftlab.core.errors import DataError, RowError
from sftlab.core.types import Conversation, Message, RowRef, ToolCall
from sftlab.data.readers import RawRow

FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion", "text")

# The keys that identify each format, in the order a row is tested against them. An alpaca row
# needs only `instruction`, so a misspelled `output` is reported on the row, not as "no format".
DETECT_KEYS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
EXPECTED_KEYS = (
    "alpaca: instruction, input?, output; sharegpt: conversations; messages: messages; "
    "prompt_completion: prompt, completion; text: text"
)
DETECT_ROWS = 100

MESSAGE_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


# ---------------------------------------------------------------------------------------------
# Detection


def _row_format(row: dict[str, Any]) -> str | None:
    return next((fmt for fmt, keys in DETECT_KEYS.items() if all(k in row for k in keys)), None)


def detect_format(rows: list[RawRow], file: str) -> str:
    """The format most of the first ~100 readable rows fit; DataError when none fits."""
    dict_rows = [r.value for r in rows if r.error is None and isinstance(r.value, dict)]
    votes = Counter(_row_format(row) for row in dict_rows[:DETECT_ROWS])
    votes.pop(None, None)
    if votes:
        # Ties go to the format listed first in DETECT_KEYS, so the answer never depends on order.
        ranked = sorted(votes.items(), key=lambda kv: (-kv[1], list(DETECT_KEYS).index(kv[0])))
        return ranked[0][0]
    seen = sorted({key for row in dict_rows[:DETECT_ROWS] for key in row})
    hints = [_did_you_mean(key, seen).strip() for keys in DETECT_KEYS.values() for key in keys]
    hint = "".join(f" {h}" for h in hints if h)
    raise DataError(
        file,
        f"cannot tell the data format: keys seen {seen or '(no readable rows)'}; expected the "
        f"keys of one format ({EXPECTED_KEYS}).{hint} Set `format:` on the source to choose one",
    )


# ---------------------------------------------------------------------------------------------
# Conversion


def to_conversation(row: Any, fmt: str, ref: RowRef) -> Conversation:
    """Convert one row of format `fmt`; raise RowError naming the field that is wrong."""
    if not isinstance(row, dict):
        raise RowError(f"expected a row object, got {describe(row)}")
    if fmt == "text":
        return _text_row(row, ref)
    converters = {
        "alpaca": _alpaca_messages,
        "sharegpt": _sharegpt_messages,
        "messages": _messages_row,
        "prompt_completion": _prompt_completion_messages,
    }
    if fmt not in converters:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    messages = converters[fmt](row)
    validate_conversation(messages)
    return Conversation(messages=tuple(messages), tools=_tools(row), source=ref)


def _text_row(row: dict[str, Any], ref: RowRef) -> Conversation:
    text = _require(row, "text", "text")
    if not text.strip():
        raise RowError("empty text: expected a non-empty document, got only whitespace", "text")
    return Conversation(kind="text", text=text, source=ref)


def _alpaca_messages(row: dict[str, Any]) -> list[Message]:
    """system? + history pairs + (instruction [+ "\\n\\n" + input]) -> output."""
    instruction = _require(row, "instruction", "alpaca")
    extra = _optional_str(row, "input")
    output = _require(row, "output", "alpaca")
    messages = _system_column(row)
    history = row.get("history")
    if history is not None:
        messages += _history_messages(history)
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return [*messages, Message("user", prompt), Message("assistant", output)]


def _history_messages(history: Any) -> list[Message]:
    if not isinstance(history, list):
        raise RowError(
            f"expected a list of [user, assistant] pairs, got {describe(history)}", "history"
        )
    messages = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RowError(
                f"expected a pair [user, assistant], got {describe(pair)}", f"history[{i}]"
            )
        for j, role in enumerate(("user", "assistant")):
            if not isinstance(pair[j], str):
                raise RowError(f"expected a string, got {describe(pair[j])}", f"history[{i}][{j}]")
            messages.append(Message(role, pair[j]))
    return messages


def _sharegpt_messages(row: dict[str, Any]) -> list[Message]:
    turns = _require(row, "conversations", "sharegpt", list)
    messages = _system_column(row)
    for i, turn in enumerate(turns):
        field = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise RowError(
                f'expected a turn object {{"from", "value"}}, got {describe(turn)}', field
            )
        # Some exports use role/content inside `conversations`; both spellings mean the same.
        tag = "from" if "from" in turn or "role" not in turn else "role"
        text_key = "value" if "value" in turn or "content" not in turn else "content"
        speaker = _require(turn, tag, "sharegpt turn", str, prefix=f"{field}.")
        if speaker not in SHAREGPT_ROLES:
            raise RowError(
                f"unknown role {speaker!r}; known roles: {', '.join(SHAREGPT_ROLES)}",
                f"{field}.{tag}",
            )
        value = _require(turn, text_key, "sharegpt turn", None, prefix=f"{field}.")
        if speaker == "function_call":
            calls = _sharegpt_calls(value, f"{field}.{text_key}")
            messages.append(Message("assistant", "", tool_calls=calls))
        else:
            role = SHAREGPT_ROLES[speaker]
            messages.append(Message(role, _content_string(value, role, f"{field}.{text_key}")))
    return messages


def _sharegpt_calls(value: Any, field: str) -> tuple[ToolCall, ...]:
    """A function_call turn: '{"name": ..., "arguments": {...}}' (or a JSON list of those)."""
    if isinstance(value, str):
        value = _parse_json(value, field, 'a JSON object {"name": ..., "arguments": {...}}')
    calls = value if isinstance(value, list) else [value]
    parsed = []
    for i, call in enumerate(calls):
        where = f"{field}[{i}]" if isinstance(value, list) else field
        if not isinstance(call, dict):
            raise RowError(
                f'expected a call object {{"name", "arguments"}}, got {describe(call)}', where
            )
        parsed.append(_tool_call(call.get("name"), call.get("arguments"), where))
    return tuple(parsed)


def _messages_row(row: dict[str, Any]) -> list[Message]:
    return _message_list(_require(row, "messages", "messages", list), "messages")


def _prompt_completion_messages(row: dict[str, Any]) -> list[Message]:
    """Each side is a string (one user / one assistant turn) or a list of messages."""
    sides = []
    for key, role in (("prompt", "user"), ("completion", "assistant")):
        value = _require(row, key, "prompt_completion", (str, list))
        if isinstance(value, str):
            sides.append([Message(role, value)])
        else:
            sides.append(_message_list(value, key))
    return sides[0] + sides[1]


# ---------------------------------------------------------------------------------------------
# OpenAI-style messages


def _message_list(items: list[Any], column: str) -> list[Message]:
    return [_message(item, f"{column}[{i}]") for i, item in enumerate(items)]


def _message(item: Any, field: str) -> Message:
    """{"role", "content", "tool_calls"?, "train"?, "weight"?} -> Message."""
    if not isinstance(item, dict):
        raise RowError(
            f'expected a message object {{"role", "content"}}, got {describe(item)}', field
        )
    raw_role = _require(item, "role", "message", str, prefix=f"{field}.")
    if raw_role not in MESSAGE_ROLES:
        raise RowError(
            f"unknown role {raw_role!r}; known roles: {', '.join(MESSAGE_ROLES)}", f"{field}.role"
        )
    role = MESSAGE_ROLES[raw_role]
    calls = _openai_calls(item.get("tool_calls"), f"{field}.tool_calls")
    content = item.get("content")
    if content is None and role == "assistant" and calls:
        content = ""  # an assistant turn that only calls tools has no text
    elif "content" not in item:
        raise RowError(
            f"missing required key 'content'{_did_you_mean('content', list(item))}",
            f"{field}.content",
        )
    text = _content_string(content, role, f"{field}.content")
    return Message(role, text, tool_calls=calls, train=_train_flag(item, field))


def _content_string(content: Any, role: str, field: str) -> str:
    """A string, or text parts [{"type": "text", "text": ...}] joined with ""."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RowError(f"expected a string as {role} content, got {describe(content)}", field)
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            raise RowError(
                f'expected a content part {{"type": "text", "text": ...}}, got {describe(part)}',
                f"{field}[{i}]",
            )
        if part.get("type") != "text":
            raise RowError(
                f"only text content parts are supported, got type {part.get('type')!r}",
                f"{field}[{i}].type",
            )
        if not isinstance(part.get("text"), str):
            raise RowError(
                f"expected a string, got {describe(part.get('text'))}", f"{field}[{i}].text"
            )
        texts.append(part["text"])
    return "".join(texts)


def _openai_calls(calls: Any, field: str) -> tuple[ToolCall, ...]:
    """[{"type": "function", "function": {"name", "arguments"}}] (or the flat {"name", "arguments"})."""
    if calls is None:
        return ()
    if not isinstance(calls, list):
        raise RowError(f"expected a list of tool calls, got {describe(calls)}", field)
    parsed = []
    for i, call in enumerate(calls):
        where = f"{field}[{i}]"
        if not isinstance(call, dict):
            raise RowError(f"expected a tool call object, got {describe(call)}", where)
        if call.get("type", "function") not in ("function", None):
            raise RowError(
                f"only function tool calls are supported, got type {call['type']!r}",
                f"{where}.type",
            )
        wrapped = call.get("function") is not None  # null: a columnar file's flat call
        function = call["function"] if wrapped else call
        if not isinstance(function, dict):
            raise RowError(
                f'expected an object {{"name", "arguments"}}, got {describe(function)}',
                f"{where}.function",
            )
        where = f"{where}.function" if wrapped else where
        parsed.append(_tool_call(function.get("name"), function.get("arguments"), where))
    return tuple(parsed)


def _tool_call(name: Any, arguments: Any, field: str) -> ToolCall:
    if not isinstance(name, str) or not name.strip():
        raise RowError(
            f"expected a function name (a non-empty string), got {describe(name)}", f"{field}.name"
        )
    if arguments is None:
        arguments = {}  # a call without arguments
    if isinstance(arguments, str):
        arguments = _parse_json(arguments, f"{field}.arguments", "a JSON object string")
    if not isinstance(arguments, dict):
        raise RowError(
            f"expected arguments as an object or a JSON object string, got {describe(arguments)}",
            f"{field}.arguments",
        )
    return ToolCall(name=name, arguments=arguments)


def _train_flag(item: dict[str, Any], field: str) -> bool | None:
    """`train: true|false`, or `weight: 0|1` (numbers); None when neither is given."""
    train, weight = item.get("train"), item.get("weight")
    if train is not None and not isinstance(train, bool):
        raise RowError(f"expected true or false, got {describe(train)}", f"{field}.train")
    if weight is None:
        return train
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight not in (0, 1):
        raise RowError(
            f"weight must be 0 or 1; fractional weights are not supported (got {describe(weight)})",
            f"{field}.weight",
        )
    if train is not None and train != bool(weight):
        raise RowError(f"train ({train}) and weight ({weight}) disagree", f"{field}.weight")
    return bool(weight)


def _tools(row: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """Optional `tools` column: a list of tool schemas, or that list as a JSON string."""
    tools = row.get("tools")
    if tools is None or tools == "":
        return ()
    if isinstance(tools, str):
        tools = _parse_json(tools, "tools", "a JSON list of tool schemas")
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RowError(f"expected a list of tool schema objects, got {describe(tools)}", "tools")
    return tuple(tools)


# ---------------------------------------------------------------------------------------------
# Validation of the converted shape


def validate_conversation(messages: list[Message]) -> None:
    """The shape training can learn from, or RowError saying which message breaks it.

    [system] user assistant (user assistant)*           where an assistant turn may be
                                                        assistant(tool_calls) tool+ assistant
    """
    if not any(m.role == "assistant" for m in messages):
        raise RowError("no assistant message: expected at least one answer to learn from")
    previous = None
    for i, message in enumerate(messages):
        _check_position(message, previous, i)
        if message.role == "assistant" and not message.tool_calls and not message.content.strip():
            raise RowError(
                "empty assistant answer: expected text or tool calls", f"messages[{i}].content"
            )
        previous = message if message.role != "system" else None
    last = messages[-1]
    if last.role in ("user", "tool"):
        raise RowError(
            f"the conversation ends with a {last.role} message: nothing to learn from "
            "the last turn (expected it to end with an assistant message)",
            f"messages[{len(messages) - 1}]",
        )


def _check_position(message: Message, previous: Message | None, i: int) -> None:
    """May `message` follow `previous` (None: start of conversation, after any system prompt)?"""
    field, role = f"messages[{i}]", message.role
    if role == "system":
        if i > 0:
            raise RowError(
                f"a system message is only allowed first; found one at position {i}", field
            )
        return
    if previous is None:
        if role != "user":
            raise RowError(
                f"the first message after any system prompt must be from the user, got {role}",
                field,
            )
        return
    if role == "tool":
        if previous.role != "tool" and not previous.tool_calls:
            raise RowError(
                f"a tool message must follow an assistant message with tool calls "
                f"(or another tool message), got one after {previous.role}",
                field,
            )
        return
    if role == previous.role:
        raise RowError(
            f"two consecutive {role} messages (positions {i - 1} and {i}); "
            "expected user and assistant turns to alternate",
            field,
        )


# ---------------------------------------------------------------------------------------------
# Small helpers: required keys, types in words


def _require(row: dict[str, Any], key: str, fmt: str, kind: Any = str, prefix: str = "") -> Any:
    """row[key] of the expected type, or RowError naming what is missing or wrong."""
    if key not in row:
        other = _row_format(row) if not prefix else None  # only whole rows have a format
        hint = (
            f" (this row has the keys of the {other!r} format; one file holds one format)"
            if other and other != fmt
            else ""
        )
        raise RowError(
            f"missing required key {key!r}{_did_you_mean(key, list(row))}{hint}", f"{prefix}{key}"
        )
    value = row[key]
    if kind is not None and not isinstance(value, kind):
        wanted = "a string" if kind is str else "a list" if kind is list else "a string or a list"
        raise RowError(f"expected {wanted}, got {describe(value)}", f"{prefix}{key}")
    return value


def _optional_str(row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise RowError(f"expected a string, got {describe(value)}", key)
    return value


def _system_column(row: dict[str, Any]) -> list[Message]:
    system = _optional_str(row, "system")
    return [Message("system", system)] if system else []


def _parse_json(text: str, field: str, expected: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise RowError(
            f"expected {expected}, got text that is not valid JSON ({reason}): {_preview(text)}",
            field,
        ) from None


def _did_you_mean(key: str, present: list[str]) -> str:
    """The hint " (did you mean 'instruction'? found 'instrution')" for a near miss, else ""."""
    if key in present:
        return ""
    same_case = [k for k in present if isinstance(k, str) and k.lower() == key.lower()]
    close = same_case or difflib.get_close_matches(
        key, [k for k in present if isinstance(k, str)], n=1, cutoff=0.75
    )
    return f" (did you mean {key!r}? found {close[0]!r})" if close else ""


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def describe(value: Any) -> str:
    """A value in JSON words: 'a number (42)', 'a string ('hi')', 'null', 'an object'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({_preview(value)})"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object with keys {list(value)[:6]}"
    return f"a {type(value).__name__}"
