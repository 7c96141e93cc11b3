"""Forgetting: perplexity on general text before vs after fine-tuning.

Perplexity = exp(mean next-token loss over every token of the documents), computed through the
training path (eval/loss.py: same renderer, rows and loss), with each document encoded as a raw
text row (BOS if the tokenizer uses one, the text, EOS). The default text ships with sftlab:
assets/eval/general_text.jsonl (a C4 excerpt, ODC-BY; see assets/eval/SOURCES.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from sftlab.config import SourceConfig
from sftlab.core.errors import DataError
from sftlab.core.types import Conversation
from sftlab.data.mixture import load_source
from sftlab.eval.loss import conversation_loss
from sftlab.template.render import Renderer

MAX_CHARS = 2000  # longer documents are cut at a space into pieces, so a row fits any model


def default_general_text() -> Path:
    return Path(str(resources.files("sftlab").joinpath("assets/eval/general_text.jsonl")))


def read_general_text(path: str | Path | None = None) -> list[str]:
    """Documents of a text file: .txt (one per line) or rows with a "text" field."""
    path = Path(path) if path is not None else default_general_text()
    source = load_source(SourceConfig(path=str(path), format="text"))
    if source.rejected:
        first = source.rejected[0]
        raise DataError(str(path), f"general text: {first.reason}", first.line or None)
    return [piece for conv in source.conversations for piece in split_document(conv.text)]


def split_document(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    pieces = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars)
        cut = cut if cut > 0 else max_chars
        pieces.append(text[:cut])
        text = text[cut:].lstrip()
    return pieces + ([text] if text.strip() else [])


def perplexity(model, renderer: Renderer, texts: Sequence[str]) -> dict:
    """{"loss": mean token loss, "perplexity": exp(loss), "tokens": predicted tokens, "documents"}."""
    convs = [Conversation(kind="text", text=t) for t in texts]
    tokens = sum(len(renderer.encode(c).input_ids) - 1 for c in convs)
    loss = conversation_loss(model, renderer, convs)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens, "documents": len(convs)}
