"""The text a rule looks at, taken once per row from a `Conversation`.

    Conversation(system, user, assistant, user, assistant)
      -> RowText(prompt   = user contents joined by blank lines,
                 response = assistant contents joined by blank lines,
                 context  = everything the model was shown: system, user, tool results,
                 turns    = ((user before, assistant reply), ...) per assistant reply with text)

A raw-text row (kind="text") is all response and no prompt: rules about prompts skip it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sftlab.core.types import Conversation

WORD = re.compile(r"\w+(?:['’]\w+)*")
CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


@dataclass
class Finding:
    """One rule that fired on one row: what it measured, against what, and why in words."""

    rule: str
    score: float
    threshold: float
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. duplicate_of

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "score": round(float(self.score), 4),
            "threshold": self.threshold,
            "reason": self.reason,
        }


@dataclass
class RowText:
    id: str
    prompt: str
    response: str
    context: str
    turns: tuple[tuple[str, str], ...]
    tags: frozenset[str] = frozenset()
    is_text: bool = False
    has_tools: bool = False  # the row declares tools: the assistant's scope is those tools
    prompt_tokens: int = 0
    response_tokens: int = 0
    _words: list[str] | None = None
    slop_hits: list[str] | None = None  # filled by sftlab.hygiene.slop.phrase_hits

    @property
    def words(self) -> list[str]:
        """The answer's words, lower-cased (computed once: several rules need them)."""
        if self._words is None:
            self._words = WORD.findall(self.response.lower())
        return self._words


def row_text(conv: Conversation, row_id: str, tags: frozenset[str] = frozenset()) -> RowText:
    if conv.kind == "text":
        return RowText(row_id, "", conv.text, "", (("", conv.text),), tags, is_text=True)
    users, answers, context, turns = [], [], [], []
    last_user = ""
    for m in conv.messages:
        if m.role == "assistant":
            if m.content.strip() or not m.tool_calls:
                answers.append(m.content)
                turns.append((last_user, m.content))
            # The model wrote the call; what it named is now part of what it has seen.
            context += [f"{c.name} {c.arguments}" for c in m.tool_calls]
            continue
        context.append(m.content)
        if m.role == "user":
            users.append(m.content)
            last_user = m.content
    return RowText(
        row_id, "\n\n".join(users), "\n\n".join(answers), "\n\n".join(context), tuple(turns),
        tags, has_tools=bool(conv.tools),
    )  # fmt: skip


def without_code(text: str) -> str:
    """Text with fenced and inline code removed: code follows its own rules (TODO, {{x}}, loops)."""
    if "`" not in text:
        return text
    return INLINE_CODE.sub(" ", CODE_BLOCK.sub("\n", text))


def words_of(text: str) -> list[str]:
    return WORD.findall(text.lower())


def normalise(text: str) -> str:
    """Lower-case words joined by single spaces: what 'the same text' means for duplicates."""
    return " ".join(words_of(text))


def tags_of(raw: Any) -> frozenset[str]:
    """A row's `tags`: a list of strings or one comma-separated string (README: Data hygiene)."""
    if not isinstance(raw, dict):
        return frozenset()
    tags = raw.get("tags")
    if isinstance(tags, str):
        tags = tags.split(",")
    if not isinstance(tags, list):
        return frozenset()
    return frozenset(str(t).strip().lower() for t in tags if str(t).strip())


@dataclass
class RuleContext:
    """What rules share across rows: the compiled slop list, the refusal tags."""

    slop: Any = None  # a compiled phrase pattern (sftlab.hygiene.slop.compile_phrases)
    refusal_tags: frozenset[str] = frozenset({"refusal"})
