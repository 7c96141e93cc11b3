"""Held-out task rows: the prompt (the conversation up to its last user turn), the reference (its
last assistant answer) and the metric that judges an answer, per dataset or per row.

A row picks its own metric with a "metric" field (a name, or {"name": ..., options}); options may
include "reference" to judge against something other than the answer text, e.g. the identity
demo's {"name": "contains", "reference": "Sage"}.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.config import SourceConfig
from sftlab.core.errors import DataError
from sftlab.core.types import Conversation
from sftlab.data.mixture import load_source
from sftlab.data.readers import read_rows
from sftlab.eval.fewshot import split_reference
from sftlab.eval.metrics import parse_metric, score

DEFAULT_METRIC = "rouge_l"  # free-text answers rarely match exactly; ROUGE-L gives partial credit


@dataclass
class TaskRow:
    prompt: Conversation
    reference: str
    metric: str
    options: dict[str, Any] = field(default_factory=dict)
    where: str = ""

    @property
    def prompt_text(self) -> str:
        return self.prompt.messages[-1].content if self.prompt.messages else ""

    def judge(self, answer: str) -> float:
        return score(self.metric, answer, self.reference, **self.options)


def task_rows(convs: Sequence[Conversation], metric: str | None, row_metrics=None) -> list[TaskRow]:
    """Rows from held-out conversations; `row_metrics[i]` (a spec or None) overrides `metric`."""
    rows = []
    for i, conv in enumerate(convs):
        where = str(conv.source) if conv.source else f"row {i + 1}"
        try:
            prompt, reference = split_reference(conv)
        except ValueError as exc:
            raise DataError(where, str(exc).split(": ", 1)[-1]) from None
        spec = (row_metrics or {}).get(i) or metric or DEFAULT_METRIC
        name, options = parse_metric(spec, where)
        reference = str(options.pop("reference", reference))
        rows.append(TaskRow(prompt, reference, name, options, where))
    return rows


def load_task_file(path: str | Path, metric: str | None) -> list[TaskRow]:
    """A held-out file in any training format; a row's "metric" field wins over `metric`."""
    source = load_source(SourceConfig(path=str(path)))
    if source.rejected:
        first = source.rejected[0]
        raise DataError(first.file, f"held-out row: {first.reason}", first.line or None)
    raw = {r.index: r.value for r in read_rows(path) if isinstance(r.value, dict)}
    convs = [c for c in source.conversations if c.kind == "chat"]
    if not convs:
        raise DataError(
            str(path), "held-out data needs chat rows (a prompt and its reference answer)"
        )
    specs = {i: raw.get(c.source.index, {}).get("metric") for i, c in enumerate(convs)}
    return task_rows(convs, metric, specs)
