"""Repetition rules, after Gopher (Rae et al. 2021, table A1) and datatrove's implementation:

    repeated_lines     characters in lines/paragraphs that repeat an earlier one
    top_ngram          characters covered by the most frequent 2/3/4-gram (limits .20/.18/.16)
    duplicate_ngrams   characters inside 5..10-grams seen before (limits .15 ... .10)
    looping            a block of words repeated back to back ("I am. I am. I am. ...")

Scores of the n-gram rules are the worst ratio over Gopher's limit, so threshold 1.0 means
"Gopher's limits"; 1.5 means 50% more lenient. Short answers make n-gram ratios noisy: the
n-gram rules only judge answers of MIN_WORDS words or more.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from sftlab.hygiene.text import Finding, RowText, RuleContext, without_code, words_of

MIN_WORDS = 50
TOP_LIMITS = {2: 0.20, 3: 0.18, 4: 0.16}
DUP_LIMITS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
LOOP_MIN_WORDS = 30  # a loop must cover this many words: short echoes are style, not loops
LOOP_MAX_PERIOD = 64


def repeated_lines(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    text = without_code(row.response)
    worst, what = 0.0, ""
    for unit, parts in (("line", text.split("\n")), ("paragraph", text.split("\n\n"))):
        parts = [p.strip() for p in parts if any(ch.isalpha() for ch in p)]
        if len(parts) < 3:
            continue
        seen, repeated = set(), 0
        for part in parts:
            if part in seen:
                repeated += len(part)
            seen.add(part)
        share = repeated / sum(len(p) for p in parts)
        if share > worst:
            worst, what = share, unit
    if worst < threshold or worst == 0:
        return None
    return Finding("repeated_lines", worst, threshold,
                   f"{worst:.0%} of the answer's characters are in {what}s that repeat an earlier {what}")  # fmt: skip


def _char_len(gram: tuple[str, ...]) -> int:
    return sum(map(len, gram)) + len(gram) - 1


def _max_5gram_count(words: list[str]) -> int:
    """How often the most frequent 5-gram occurs: no repeated 5-gram, no longer repeat or loop."""
    counts = Counter(zip(*(words[i:] for i in range(5)), strict=False))
    return max(counts.values(), default=0)


def _prose_words(row: RowText) -> list[str]:
    return row.words if "`" not in row.response else words_of(without_code(row.response))


def top_ngram(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    words = _prose_words(row)
    if len(words) < MIN_WORDS:
        return None
    total = _char_len(tuple(words))
    worst, detail = 0.0, ""
    for n, limit in TOP_LIMITS.items():
        gram, count = Counter(zip(*(words[i:] for i in range(n)), strict=False)).most_common(1)[0]
        if count < 2:
            continue
        share = _char_len(gram) * count / total
        if share / limit > worst:
            detail = f"the {n}-gram {' '.join(gram)!r} x{count} covers {share:.0%} of the characters (limit {limit:.0%})"
            worst = share / limit
    if worst < threshold or worst == 0:
        return None
    return Finding("top_ngram", worst, threshold, detail)


def duplicate_ngrams(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    words = _prose_words(row)
    if len(words) < MIN_WORDS or _max_5gram_count(words) < 2:
        return None
    lengths = np.array([len(w) + 1 for w in words])
    total = lengths.sum() - 1
    worst, detail = 0.0, ""
    for n, limit in DUP_LIMITS.items():
        covered = np.zeros(len(words) + 1, dtype=np.int32)
        seen: set[tuple[str, ...]] = set()
        for i, gram in enumerate(zip(*(words[k:] for k in range(n)), strict=False)):
            if gram in seen:
                covered[i] += 1
                covered[i + n] -= 1
            seen.add(gram)
        share = lengths[np.cumsum(covered)[:-1] > 0].sum() / total
        if n == 5 and share / min(DUP_LIMITS.values()) < threshold:
            return None  # longer repeats cover no more characters than 5-grams do
        if share / limit > worst:
            worst, detail = share / limit, f"{share:.0%} of the characters sit in repeated {n}-grams (limit {limit:.0%})"
    if worst < threshold or worst == 0:
        return None
    return Finding("duplicate_ngrams", worst, threshold, detail)


def looping(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    """The longest run where word i equals word i - p, for each period p."""
    words = row.words
    # A block repeated k times back to back over 30+ words repeats its first 5-gram k times.
    if len(words) < LOOP_MIN_WORDS or _max_5gram_count(words) < min(threshold, 3):
        return None
    vocab: dict[str, int] = {}
    ids = np.array([vocab.setdefault(w, len(vocab)) for w in words])
    best = (0.0, 0, 0, 0)  # repeats, period, start, covered
    for p in range(1, min(LOOP_MAX_PERIOD, len(ids) // 2) + 1):
        same = np.concatenate(([0], (ids[p:] == ids[:-p]).astype(np.int8), [0]))
        edges = np.flatnonzero(np.diff(same))
        if not len(edges):
            continue
        runs = edges[1::2] - edges[::2]
        k = int(runs.argmax())
        covered = int(runs[k]) + p
        repeats = covered / p
        if covered >= LOOP_MIN_WORDS and repeats > best[0]:
            best = (repeats, p, int(edges[::2][k]), covered)
    repeats, p, start, covered = best
    if repeats < threshold:
        return None
    block = " ".join(words[start : start + min(p, 12)]) + (" ..." if p > 12 else "")
    return Finding("looping", repeats, threshold,
                   f"a block of {p} word(s) repeats {repeats:.1f} times back to back ({covered} words): {block!r}")  # fmt: skip
