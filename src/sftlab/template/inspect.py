"""See what will be trained: supervised tokens highlighted, masked tokens dimmed."""

from __future__ import annotations

from rich.text import Text

from sftlab.core.types import IGNORE_INDEX, TokenizedExample
from sftlab.template.checks import supervised_spans


def supervised_text(example: TokenizedExample, tokenizer) -> list[str]:
    """The decoded supervised spans, in order (what the model learns to say)."""
    ids = example.input_ids.tolist()
    return [tokenizer.decode(ids[a:b]) for a, b in supervised_spans(example.labels)]


def highlighted(example: TokenizedExample, tokenizer) -> Text:
    """The whole row, decoded span by span: supervised in green, the rest dimmed."""
    out = Text()
    ids = example.input_ids.tolist()
    on = (example.labels != IGNORE_INDEX).tolist()
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or on[i] != on[start]:
            chunk = tokenizer.decode(ids[start:i])
            out.append(chunk, style="bold green on grey15" if on[start] else "grey50")
            start = i
    return out


def example_json(example: TokenizedExample, tokenizer) -> dict:
    return {
        "row": str(example.source),
        "input_ids": example.input_ids.tolist(),
        "labels": example.labels.tolist(),
        "supervised_text": supervised_text(example, tokenizer),
        "tokens": len(example),
        "supervised_tokens": example.n_supervised,
        "truncated": example.truncated,
    }
