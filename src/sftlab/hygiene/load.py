"""Input files -> rows to audit, through the data stage's own readers and formats.

Rows that do not read or convert are set aside exactly as a training run sets them aside
(stage "read" or "format", with file, line and reason); hygiene judges the rows that read fine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sftlab.core.errors import Rejection, RowError
from sftlab.core.types import Conversation, RowRef
from sftlab.data.formats import detect_format, to_conversation
from sftlab.data.readers import read_rows
from sftlab.hygiene.text import tags_of


@dataclass
class AuditRow:
    id: str  # "<file name>:<line>" ("<file name>#<index>" where the format has no lines)
    conversation: Conversation
    tags: frozenset[str] = frozenset()


@dataclass
class LoadedSource:
    """One input file. Invariant: len(rows) + len(unreadable) == n_input."""

    file: str
    name: str  # how row ids name this file
    fmt: str
    rows: list[AuditRow] = field(default_factory=list)
    unreadable: list[Rejection] = field(default_factory=list)
    n_input: int = 0


def row_id(name: str, ref: RowRef) -> str:
    return f"{name}:{ref.line}" if ref.line else f"{name}#{ref.index}"


def load_input(path: Path, fmt: str = "auto", name: str | None = None) -> LoadedSource:
    """Read one file; DataError (file and line named) when the file as a whole is unusable."""
    file = str(path)
    raw_rows = read_rows(path)
    if fmt == "auto":
        readable = any(r.error is None and isinstance(r.value, dict) for r in raw_rows)
        fmt = detect_format(raw_rows, file) if readable else "unknown"
    source = LoadedSource(file, name or path.name, fmt, n_input=len(raw_rows))
    for raw in raw_rows:
        def reject(stage: str, reason: str, raw=raw) -> None:
            source.unreadable.append(Rejection(file, raw.line, raw.index, stage, reason, raw.value))

        if raw.error is not None:
            reject("read", raw.error)
            continue
        if fmt == "unknown":
            reject("format", "no readable rows to detect the format from")
            continue
        ref = RowRef(file, raw.line, raw.index)
        try:
            conv = to_conversation(raw.value, fmt, ref)
        except RowError as err:
            reject("format", str(err))
            continue
        except RecursionError:
            reject("format", "row nested too deeply to convert")
            continue
        source.rows.append(AuditRow(row_id(source.name, ref), conv, tags_of(raw.value)))
    return source


def source_names(paths: list[Path]) -> list[str]:
    """File names for row ids; a name two inputs share falls back to the path as given."""
    names = [p.name for p in paths]
    return [str(p) if names.count(p.name) > 1 else p.name for p in paths]
