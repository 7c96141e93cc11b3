"""Contamination: training rows that overlap evaluation rows, by word n-grams.

    eval rows ──word 8-grams──► index {n-gram hash: eval rows holding it}
    train row ──its 8-grams──► hits per eval row ──► score = max over eval rows of
                                                    (that row's n-grams found) / (its n-grams)

A training row that holds half of an eval row's 8-grams (the eval question pasted in, a light
paraphrase of it) is rejected, so the evaluation measures generalisation, not memory. Eval rows
shorter than n words are compared whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sftlab.hygiene.text import Finding, words_of


def ngram_hashes(words: Sequence[str], n: int) -> set[int]:
    return {hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)}


@dataclass
class EvalIndex:
    n: int
    ids: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    postings: dict[int, list[int]] = field(default_factory=dict)
    short: dict[str, int] = field(default_factory=dict)  # eval rows under n words, whole

    def add(self, row_id: str, text: str) -> None:
        words = words_of(text)
        if not words:
            return
        k = len(self.ids)
        self.ids.append(row_id)
        grams = ngram_hashes(words, self.n)
        self.sizes.append(len(grams) or 1)
        if not grams:
            self.short.setdefault(" ".join(words), k)
        for g in grams:
            self.postings.setdefault(g, []).append(k)


def contamination(parts: Sequence[str], index: EvalIndex, threshold: float) -> Finding | None:
    """The eval row a training row (its prompt and answer texts) overlaps most, if the overlap
    reaches threshold. Short eval rows count only when a part equals them word for word."""
    hits: Counter[int] = Counter()
    for part in parts:
        words = words_of(part)
        for g in ngram_hashes(words, index.n):
            for k in index.postings.get(g, ()):
                hits[k] += 1
        k = index.short.get(" ".join(words))
        if k is not None:
            hits[k] = index.sizes[k]
    if not hits:
        return None
    k, best = max(((k, h / index.sizes[k]) for k, h in hits.items()), key=lambda kv: kv[1])
    if best < threshold:
        return None
    return Finding("contamination", min(best, 1.0), threshold,
                   f"holds {min(best, 1.0):.0%} of the word {index.n}-grams of eval row {index.ids[k]}")  # fmt: skip
