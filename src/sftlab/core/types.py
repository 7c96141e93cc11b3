"""The records every stage passes along.

    source file ──► Conversation(messages, tools, source=RowRef)            (data/)
                ──► TokenizedExample(input_ids, labels, source)            (template/)
                ──► PackedRow(input_ids, targets, position_ids, seq_lens)  (pack/)

`IGNORE_INDEX` lives here and nowhere else; so does the one label shift (`next_token_targets`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

IGNORE_INDEX = -100
"""Label value for a position that carries no loss (prompt, padding, a masked turn)."""

ROLES = ("system", "user", "assistant", "tool")
Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class RowRef:
    """Where a row came from: enough for a person to open the file at the right line."""

    file: str
    line: int  # 1-based line of the row's first character (0 when the format has no lines)
    index: int  # 0-based row index within the file

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else f"{self.file}#{self.index}"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    train: bool | None = None
    """Per-message override of the mask policy: True trains this turn, False never does."""


@dataclass(frozen=True)
class Conversation:
    """One training row. `kind="text"` rows hold raw text (continued pretraining): every token
    is supervised and no chat template is applied."""

    messages: tuple[Message, ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    source: RowRef | None = None
    kind: Literal["chat", "text"] = "chat"
    text: str = ""

    def assistant_turns(self) -> int:
        return sum(m.role == "assistant" for m in self.messages)


@dataclass
class TokenizedExample:
    """Ids and labels of one rendered row, aligned position by position.

    labels[i] == input_ids[i] where token i is supervised, IGNORE_INDEX elsewhere.
    The shift to next-token targets happens once, in `next_token_targets`.
    """

    input_ids: np.ndarray  # int32 [T]
    labels: np.ndarray  # int32 [T]
    source: RowRef | None = None
    turn_ends: tuple[int, ...] = ()  # token offsets where an assistant turn ends (safe cut points)
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_supervised(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


@dataclass
class PackedRow:
    """Several examples laid end to end in one row; none attends to another.

    input_ids     a a a a b b c c c
    position_ids  0 1 2 3 0 1 0 1 2     restart per example -> block-diagonal attention
    targets       . a a a . b . c c     next-token targets, IGNORE across boundaries
    seq_lens      [4, 2, 3]
    """

    input_ids: np.ndarray
    targets: np.ndarray
    position_ids: np.ndarray
    seq_lens: list[int]
    sources: list[RowRef | None] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_supervised(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def next_token_targets(labels: np.ndarray, seq_ends: list[int] | None = None) -> np.ndarray:
    """targets[t] = labels[t + 1]: what position t must predict. The last position of each
    sequence (seq_ends: exclusive end offsets of sequences laid end to end; one sequence if
    None) predicts nothing, so one example never learns to predict the next one's first token.

    This is the only label shift in sftlab; loss code consumes targets as they are.
    """
    targets = np.empty_like(labels)
    targets[:-1] = labels[1:]
    targets[[end - 1 for end in seq_ends] if seq_ends is not None else -1] = IGNORE_INDEX
    return targets
