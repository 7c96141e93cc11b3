"""Slop / GPT-isms: phrases from a plain data file, counted per 1,000 words of answer.

The built-in list is src/sftlab/assets/hygiene/slop_phrases.txt; `hygiene.slop_phrases: FILE`
replaces it and `hygiene.extra_slop_phrases` extends it.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from sftlab.core.errors import DataError
from sftlab.hygiene.text import Finding, RowText, RuleContext

MIN_WORDS = 100


def read_phrases(path: str | Path | None = None) -> list[str]:
    """Phrases of a list file (built-in when path is None): one a line, '#' starts a comment."""
    if path is None:
        text = resources.files("sftlab").joinpath("assets/hygiene/slop_phrases.txt").read_text("utf-8")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(str(path), f"cannot read the slop phrase list: {exc}") from None
    phrases = [line.strip().lower() for line in text.splitlines()]
    return [p for p in phrases if p and not p.startswith("#")]


def compile_phrases(phrases: list[str]) -> re.Pattern | None:
    """One alternation, longest phrases first, on word boundaries (so 'delve' != 'delved')."""
    unique = sorted({p.lower() for p in phrases if p.strip()}, key=len, reverse=True)
    if not unique:
        return None
    # Matched against lower-cased text: a case-sensitive pattern is several times faster.
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in unique) + r")(?!\w)")


def phrase_hits(row: RowText, pattern: re.Pattern | None) -> list[str]:
    """Phrases found in the answer, minus those the prompt uses itself (kept on the row: the
    audit's dataset-wide phrase counts reuse them)."""
    if row.slop_hits is not None:
        return row.slop_hits
    hits = [m.group() for m in pattern.finditer(row.response.lower())] if pattern else []
    if hits and row.prompt:
        # "delve into its history" in the prompt spares "let's delve" in the answer too.
        asked = {w for m in pattern.finditer(row.prompt.lower()) for w in m.group().split() if len(w) > 3}
        hits = [h for h in hits if not asked & set(h.split())]
    row.slop_hits = hits
    return hits


def slop(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    hits = phrase_hits(row, ctx.slop)
    if not hits:
        return None
    # Per 1k words, counting short answers as MIN_WORDS long: one closing "feel free to ask"
    # in a 30-word answer is a habit of style, two phrases there are slop.
    per_1k = len(hits) * 1000 / max(len(row.words), MIN_WORDS)
    if per_1k < threshold:
        return None
    shown = ", ".join(repr(h) for h in dict.fromkeys(hits))
    return Finding("slop", per_1k, threshold,
                   f"{len(hits)} slop phrase(s) in {len(row.words)} words ({per_1k:.0f} per 1k): {shown}")  # fmt: skip
