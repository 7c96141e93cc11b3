"""Padding-free packing: examples laid end to end in rows, never attending to each other.

    examples (lengths)   [5, 3, 7, 2, 4]        capacity 8
    best-fit-decreasing  7 -> row0 (1 left)
                         5 -> row1 (3 left)
                         4 -> row2 (4 left)
                         3 -> row1 (0 left)     the fullest row it fits in
                         2 -> row2 (2 left)
    rows                 [[2], [0, 1], [4, 3]]  (example indices)

Each row restarts position ids per example; with no attention mask, transformers reads the
restarts as block-diagonal attention (invariant 6). Targets are shifted per example, so the
last token of one example never predicts the first of the next.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

import numpy as np

from sftlab.core.types import PackedRow, TokenizedExample, next_token_targets


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of example indices. Longest first; each goes into the fullest bin it fits in.

    Ties break by index, so the result is deterministic. Lengths above capacity are an error:
    truncation happens before packing.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    # (space left, bin number), kept sorted so the best fit is one bisect away.
    free: list[tuple[int, int]] = []
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"example {i} has {size} tokens, more than the capacity {capacity}")
        slot = bisect.bisect_left(free, (size, -1))
        if slot == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - size, len(bins) - 1))
        else:
            space, b = free.pop(slot)
            bins[b].append(i)
            bisect.insort(free, (space - size, b))
    return bins


def make_row(examples: Sequence[TokenizedExample]) -> PackedRow:
    lengths = [len(e) for e in examples]
    ends = list(itertools.accumulate(lengths))
    starts = np.repeat(np.array([end - n for end, n in zip(ends, lengths, strict=True)]), lengths)
    return PackedRow(
        input_ids=np.concatenate([e.input_ids for e in examples]),
        targets=next_token_targets(np.concatenate([e.labels for e in examples]), ends),
        position_ids=(np.arange(ends[-1]) - starts).astype(np.int32),
        seq_lens=lengths,
        sources=[e.source for e in examples],
    )


def pack_examples(examples: Sequence[TokenizedExample], capacity: int) -> list[PackedRow]:
    bins = best_fit_decreasing([len(e) for e in examples], capacity)
    return [make_row([examples[i] for i in sorted(b)]) for b in bins]


def single_rows(examples: Sequence[TokenizedExample]) -> list[PackedRow]:
    """Packing off: one example per row (the same row type, so the loop does not care)."""
    return [make_row([e]) for e in examples]


def build_rows(
    examples: Sequence[TokenizedExample], capacity: int, packing: bool
) -> list[PackedRow]:
    return pack_examples(examples, capacity) if packing else single_rows(examples)
