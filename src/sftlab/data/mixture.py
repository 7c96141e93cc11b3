"""Sources -> one training mixture: load each file, split off eval rows, size, shuffle.

    SourceConfig ──load_source──► SourceData(conversations, rejected)   kept + rejected == rows in
    [SourceData] ──build_mixture──► Mixture(train, eval, rejected, report)

    per source:   kept rows ──seeded split──► eval part (held out, never trained on)
                                          └──► train part ──size (rows= / ratio=)──► sampled
    all sources:  sampled train parts concatenated, then shuffled with the seed

Every random choice comes from `random.Random` seeded with a string built from the seed and the
source's position, so the same inputs and seed give the same lists on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.config import SourceConfig
from sftlab.core.errors import DataError, Rejection, RowError
from sftlab.core.paths import candidates, find
from sftlab.core.types import Conversation, RowRef
from sftlab.data.formats import detect_format, to_conversation
from sftlab.data.readers import RawRow, read_rows

FIRST_REASONS = 3  # rejection reasons quoted when a whole file is unusable


@dataclass
class SourceData:
    """One source file, converted. Invariant: len(conversations) + len(rejected) == n_input."""

    label: str
    file: str
    fmt: str
    conversations: list[Conversation]
    rejected: list[Rejection]
    n_input: int


@dataclass
class Mixture:
    """The training and eval conversations of a run, plus every row set aside and the counts.

    report = {"sources": [{"label", "file", "format", "rows_in", "kept", "rejected", "eval",
                           "train_after_sampling"}, ...],
              "train": int, "eval": int, "rejected": int, "seed": int}
    """

    train: list[Conversation]
    eval: list[Conversation]
    rejected: list[Rejection]
    report: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Loading one source


def resolve_path(path: str, base_dir: Path | None = None) -> Path:
    """An absolute path as is; a relative one against base_dir (the config's folder), then cwd."""
    found = find(path, base_dir)
    if found is None:
        tried = ", ".join(str(c) for c in candidates(path, base_dir))
        raise DataError(path, f"file not found; tried: {tried}")
    return found


def load_source(source: SourceConfig, base_dir: Path | None = None) -> SourceData:
    """Read, detect the format, convert every row; each row is kept or rejected with a reason."""
    path = resolve_path(source.path, base_dir)
    file = str(path)
    rows = read_rows(path)
    fmt = source.format
    if fmt == "auto":
        readable = any(r.error is None and isinstance(r.value, dict) for r in rows)
        # With no readable row there is nothing to detect; the rejections below say why.
        fmt = detect_format(rows, file) if readable else "unknown"
    conversations: list[Conversation] = []
    rejected: list[Rejection] = []
    for row in rows:
        converted = _convert(row, fmt, file)
        if isinstance(converted, Rejection):
            rejected.append(converted)
        else:
            conversations.append(converted)
    if not conversations:
        reasons = "; ".join(f"{_where(r)}: {r.reason}" for r in rejected[:FIRST_REASONS])
        raise DataError(file, f"no usable rows: {len(rejected)} rejected; first reasons: {reasons}")
    return SourceData(source.label, file, fmt, conversations, rejected, n_input=len(rows))


def _convert(row: RawRow, fmt: str, file: str) -> Conversation | Rejection:
    def reject(stage: str, reason: str) -> Rejection:
        return Rejection(file, row.line, row.index, stage, reason, row=row.value)

    if row.error is not None:
        return reject("read", row.error)
    if fmt == "unknown":
        return reject("format", "no readable rows to detect the format from")
    try:
        return to_conversation(row.value, fmt, RowRef(file, row.line, row.index))
    except RowError as err:
        return reject("format", str(err))
    except RecursionError:
        return reject("format", "row nested too deeply to convert")


def _where(rejection: Rejection) -> str:
    return f"line {rejection.line}" if rejection.line else f"row {rejection.index}"


# ---------------------------------------------------------------------------------------------
# Mixing sources


def build_mixture(
    sources: list[SourceData],
    sizes: list[tuple[float | None, int | None]],
    eval_fraction: float,
    eval_rows: int | None,
    seed: int,
) -> Mixture:
    """Split each source into eval and train, size each train part, shuffle them together.

    sizes[i] = (ratio, rows) of sources[i]: rows=N takes exactly N training rows, ratio=r takes
    round(r * train rows), (None, None) takes all; beyond the rows available the seeded order
    repeats. Eval rows are taken before sizing, so a repeated row is never an eval row.
    """
    if len(sizes) != len(sources):
        raise ValueError(f"{len(sources)} sources but {len(sizes)} sizes")
    kept = [len(s.conversations) for s in sources]
    eval_counts = _eval_counts(kept, eval_fraction, eval_rows)
    splits = [
        _split(src.conversations, n_eval, random.Random(f"{seed}/split/{i}"))
        for i, (src, n_eval) in enumerate(zip(sources, eval_counts, strict=True))
    ]
    # The same file listed twice must not train on the other listing's eval rows.
    eval_refs = {c.source for _, eval_part in splits for c in eval_part if c.source is not None}
    train, evals, report_rows = [], [], []
    for i, (src, size) in enumerate(zip(sources, sizes, strict=True)):
        train_part, eval_part = splits[i]
        train_part = [c for c in train_part if c.source not in eval_refs]
        sampled = _sample(train_part, *size, random.Random(f"{seed}/sample/{i}"))
        train += sampled
        evals += eval_part
        report_rows.append(
            {
                "label": src.label,
                "file": src.file,
                "format": src.fmt,
                "rows_in": src.n_input,
                "kept": len(src.conversations),
                "rejected": len(src.rejected),
                "eval": len(eval_part),
                "train_after_sampling": len(sampled),
            }
        )
    random.Random(f"{seed}/shuffle").shuffle(train)
    rejected = [r for src in sources for r in src.rejected]
    report = {
        "sources": report_rows,
        "train": len(train),
        "eval": len(evals),
        "rejected": len(rejected),
        "seed": seed,
    }
    return Mixture(train=train, eval=evals, rejected=rejected, report=report)


def _eval_counts(kept: list[int], eval_fraction: float, eval_rows: int | None) -> list[int]:
    """Eval rows per source; never all of a source's rows (it must still have one to train on)."""
    if eval_rows is None:
        counts = []
        for n in kept:
            count = round(eval_fraction * n)
            if eval_fraction > 0 and n >= 2:
                count = max(count, 1)
            counts.append(count)
    else:
        counts = _spread(eval_rows, kept)
    return [max(0, min(count, n - 1)) for count, n in zip(counts, kept, strict=True)]


def _spread(total: int, weights: list[int]) -> list[int]:
    """Split `total` in proportion to `weights`, largest remainders first (sums to total)."""
    weight_sum = sum(weights)
    if weight_sum == 0:
        return [0] * len(weights)
    exact = [total * w / weight_sum for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _split(
    rows: list[Conversation], n_eval: int, rng: random.Random
) -> tuple[list[Conversation], list[Conversation]]:
    """(train part in a seeded order, eval part in file order)."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    eval_part = [rows[i] for i in sorted(order[:n_eval])]
    return [rows[i] for i in order[n_eval:]], eval_part


def _sample(
    rows: list[Conversation], ratio: float | None, n_rows: int | None, rng: random.Random
) -> list[Conversation]:
    """rows=N -> N rows; ratio=r -> round(r * len); neither -> all. Past the end, the order repeats.

    rows [a b c], rows=7 -> permutation (c a b) cycled -> c a b c a b c
    """
    if n_rows is None and ratio is None:
        return list(rows)
    wanted = n_rows if n_rows is not None else round(ratio * len(rows))
    if not rows:
        return []
    order = list(rows)
    rng.shuffle(order)
    return [order[i % len(order)] for i in range(wanted)]
