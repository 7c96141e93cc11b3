"""One exception family. The CLI prints `str(error)` and exits non-zero, never a traceback.

Row-level problems are not exceptions that stop a run: they become `Rejection`s, written to
`rejected.jsonl` with their reasons (DESIGN invariant 8). Exceptions are for problems that make
the whole input or configuration unusable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class SftlabError(Exception):
    """Base class: a problem the user can fix, described in words."""


class ConfigError(SftlabError):
    """Every problem found in a config, reported at once."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


class DataError(SftlabError):
    """A data file that cannot be used at all (unreadable, wrong container, no usable rows)."""

    def __init__(self, file: str, message: str, line: int | None = None):
        self.file, self.line = file, line
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {message}")


class TemplateError(SftlabError):
    """A chat template that cannot be used for training (missing, unsafe, inconsistent)."""


class MaskError(SftlabError):
    """The pre-flight mask check failed: training would learn the wrong thing."""


class ModelError(SftlabError):
    """A model that cannot be found or loaded safely."""


class Interrupted(SftlabError):
    """The run stopped on a signal after saving a checkpoint; exit with the signal's code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(eq=False)  # not frozen: raising sets __traceback__, which a frozen dataclass refuses
class RowError(Exception):
    """Raised by a row adapter for one bad row; the caller turns it into a `Rejection`."""

    reason: str
    field: str | None = None

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


@dataclass(frozen=True)
class Rejection:
    """A row set aside, with why. Written to rejected.jsonl; never silently dropped."""

    file: str
    line: int
    index: int
    stage: str  # "read", "format", "render", "length", ...
    reason: str
    row: Any = None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "index": self.index,
            "stage": self.stage,
            "reason": self.reason,
            "row": self.row,
        }
