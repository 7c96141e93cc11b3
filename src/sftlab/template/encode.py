"""Render a whole dataset: every row ends as an example or as a rejection with its reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from sftlab.core.errors import Rejection, RowError
from sftlab.core.types import IGNORE_INDEX, Conversation, TokenizedExample
from sftlab.template.render import Renderer


@dataclass
class EncodedSet:
    examples: list[TokenizedExample] = field(default_factory=list)
    conversations: list[Conversation] = field(default_factory=list)  # the source of examples[i]
    rejected: list[Rejection] = field(default_factory=list)
    truncated: int = 0


def fit_length(example: TokenizedExample, max_length: int, policy: str) -> TokenizedExample:
    """Enforce max_length: `drop` rejects the row; `turns` cuts after the last assistant turn that
    fits (raw text, which has no turns, is cut at max_length). A cut that leaves nothing to learn
    drops the row."""
    n = len(example)
    if n <= max_length:
        return example
    if policy == "drop":
        raise RowError(f"{n} tokens, more than template.max_length={max_length} (truncation: drop)")
    if example.turn_ends:
        cut = max((t for t in example.turn_ends if t <= max_length), default=0)
    else:
        cut = max_length
    labels = example.labels[:cut]
    if cut == 0 or not (labels != IGNORE_INDEX).any():
        raise RowError(
            f"{n} tokens, more than template.max_length={max_length}, and no complete assistant "
            "turn fits before the limit"
        )
    return replace(
        example,
        input_ids=example.input_ids[:cut],
        labels=labels,
        turn_ends=tuple(t for t in example.turn_ends if t <= cut),
        truncated=True,
    )


def encode_dataset(
    renderer: Renderer,
    conversations: Sequence[Conversation],
    max_length: int,
    truncation: str,
    chunk: int = 2048,
) -> EncodedSet:
    out = EncodedSet()
    for start in range(0, len(conversations), chunk):
        batch = conversations[start : start + chunk]
        for conv, result in zip(batch, renderer.encode_many(batch), strict=True):
            stage = "render"
            try:
                if isinstance(result, RowError):
                    raise result
                stage = "length"
                fitted = fit_length(result, max_length, truncation)
                if not (fitted.labels[1:] != IGNORE_INDEX).any():  # position 0 is never predicted
                    raise RowError("nothing to learn: no supervised token after the first position")
            except RowError as err:
                out.rejected.append(rejection(conv, stage, str(err)))
                continue
            out.truncated += fitted.truncated
            out.examples.append(fitted)
            out.conversations.append(conv)
    return out


def rejection(conv: Conversation, stage: str, reason: str) -> Rejection:
    ref = conv.source
    return Rejection(
        ref.file if ref else "?", ref.line if ref else 0, ref.index if ref else -1, stage, reason,
        row=conversation_json(conv),
    )  # fmt: skip


def conversation_json(conv: Conversation) -> dict:
    if conv.kind == "text":
        return {"text": conv.text[:2000]}
    return {
        "messages": [
            {"role": m.role, "content": m.content[:2000]}
            | (
                {"tool_calls": [[c.name, c.arguments] for c in m.tool_calls]}
                if m.tool_calls
                else {}
            )
            for m in conv.messages
        ]
    }
