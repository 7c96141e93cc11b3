"""Messages as chat templates take them, and tool data for templates that cannot render it."""

from __future__ import annotations

import json
from dataclasses import replace

from sftlab.core.types import Message


def to_template_dict(message: Message, content: str | None = None) -> dict:
    out = {"role": message.role, "content": message.content if content is None else content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    return out


def tool_call_data(message: Message) -> list:
    return [[c.name, c.arguments] for c in message.tool_calls]


def masked_specials(value, pattern):
    """`value` with every special-token string in its strings (keys too) replaced by as many x's:
    the same length, so the template renders it at the same places."""
    if isinstance(value, str):
        return pattern.sub(lambda m: "x" * len(m.group()), value)
    if isinstance(value, dict):
        return {masked_specials(k, pattern): masked_specials(v, pattern) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked_specials(v, pattern) for v in value]
    return value


def fold_tool_calls(message: Message) -> Message:
    """Templates without tool support drop `tool_calls`; write them into the content instead
    (Hermes-style tags) so the model still learns to emit them."""
    if not message.tool_calls:
        return message
    calls = "\n".join(
        "<tool_call>\n"
        + json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False)
        + "\n</tool_call>"
        for c in message.tool_calls
    )
    content = f"{message.content}\n{calls}" if message.content else calls
    return replace(message, content=content, tool_calls=())


def fold_tools_into_system(messages: list[Message], tools: list) -> list[Message]:
    schema = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    note = (
        'You can call these tools. To call one, answer with <tool_call>{"name": ..., '
        f'"arguments": {{...}}}}</tool_call>.\n<tools>\n{schema}\n</tools>'
    )
    if messages and messages[0].role == "system":
        first = messages[0]
        return [replace(first, content=f"{first.content}\n\n{note}"), *messages[1:]]
    return [Message("system", note), *messages]


def masked_tool_calls(message: Message, pattern) -> Message:
    calls = tuple(
        replace(
            c,
            name=masked_specials(c.name, pattern),
            arguments=masked_specials(c.arguments, pattern),
        )
        for c in message.tool_calls
    )
    return replace(message, tool_calls=calls)
