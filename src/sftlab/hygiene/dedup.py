"""Duplicates: exact (same normalised prompt+answer) and near (MinHash LSH, datasketch).

    rows ──normalise──► groups of equal text ──MinHash of word 3-grams──► LSH candidate pairs
         ──Jaccard check──► clusters (union-find) ──► the best row of each cluster is kept,
                                                      the others point to it (duplicate_of)

"Best" is the caller's ranking (fewest problems found by the other rules, then the longest
answer, then file order), so a duplicate never pushes out a cleaner copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH

from sftlab.hygiene.text import Finding, normalise

NUM_PERM = 128
SHINGLE = 3
CANDIDATE_MARGIN = 0.15
MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))
MAX_WORDS = 2_000  # beyond this, the opening words decide similarity (keeps 50k rows fast)


def _hash(data: bytes) -> int:
    return xxhash.xxh32_intdigest(data)


@dataclass
class Cluster:
    kept: int
    members: list[int]  # every row of the cluster but the kept one


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _union(parent: list[int], a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


def _shingles(text: str, word_ids: dict[str, int]) -> np.ndarray:
    """Sorted unique 32-bit hashes of the text's word 3-grams: each distinct word is hashed once
    (xxhash, so results do not depend on the process), 3-grams are mixed from word hashes."""
    words = text.split()[:MAX_WORDS]
    ids = np.fromiter((word_ids.get(w) or word_ids.setdefault(w, _hash(w.encode()) | 1) for w in words),
                      dtype=np.uint64, count=len(words))  # fmt: skip
    if len(ids) < SHINGLE:  # the whole short text is one shingle
        return ((ids.sum(keepdims=True) * MIX[0]) >> np.uint64(32)).astype(np.uint32)
    grams = ids[:-2] * MIX[0] + ids[1:-1] * MIX[1] + ids[2:] * MIX[2]  # wraps mod 2**64
    return np.unique((grams >> np.uint64(32)).astype(np.uint32))


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    shared = len(np.intersect1d(a, b, assume_unique=True))
    return shared / (len(a) + len(b) - shared)


Features = tuple[str, np.ndarray]  # (normalised text, its shingle hashes)
_WORD_IDS: dict[str, int] = {}  # word -> hash, per process (xxhash: the same in every process)


def dedup_features(text: str) -> Features:
    """What deduplication needs of one row; computed where the row is judged (worker processes
    for big sets), so the serial part of the audit stays small."""
    key = normalise(text)
    return key, _shingles(key, _WORD_IDS)


def near_pairs(shingles: Sequence[np.ndarray], threshold: float, seed: int = 1) -> list[tuple[int, int, float]]:
    """(i, j, Jaccard) for every pair whose word 3-gram Jaccard reaches threshold.

    LSH proposes candidates at a lower threshold (a MinHash estimate at 128 permutations is off
    by ~0.03, so pairs just above the threshold would often be missed); each candidate's Jaccard
    is then computed exactly from its shingle hashes.
    """
    hashes = MinHash.bulk(shingles, num_perm=NUM_PERM, seed=seed, hashfunc=int)
    lsh = MinHashLSH(threshold=max(threshold - CANDIDATE_MARGIN, 0.3), num_perm=NUM_PERM)
    pairs = []
    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            similarity = _jaccard(shingles[i], shingles[j])
            if similarity >= threshold:
                pairs.append((j, i, similarity))
        lsh.insert(i, m)
    return pairs


def find_duplicates(
    features: Sequence[Features],
    rank: Sequence[tuple],
    ids: Sequence[str],
    exact_threshold: float | None,
    near_threshold: float | None,
) -> tuple[list[Finding | None], list[Cluster]]:
    """One Finding per duplicate row (None for the rest) and the clusters found.

    features: dedup_features(prompt + answer) per row; rank: lower is better; a threshold of
    None turns that check off.
    """
    n = len(features)
    parent = list(range(n))
    keys = [key for key, _ in features]
    first: dict[str, int] = {}
    if exact_threshold is not None:
        for i, key in enumerate(keys):
            if key in first:
                _union(parent, first[key], i)
            else:
                first[key] = i
    similarity: dict[tuple[int, int], float] = {}
    if near_threshold is not None:
        singles = [i for i in range(n) if _find(parent, i) == i] if first else list(range(n))
        for a, b, s in near_pairs([features[i][1] for i in singles], near_threshold):
            _union(parent, singles[a], singles[b])
            similarity[(singles[a], singles[b])] = similarity[(singles[b], singles[a])] = s
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(_find(parent, i), []).append(i)
    findings: list[Finding | None] = [None] * n
    clusters = []
    for members in groups.values():
        if len(members) < 2:
            continue
        kept = min(members, key=lambda i: rank[i])
        others = [i for i in members if i != kept]
        clusters.append(Cluster(kept, others))
        for i in others:
            findings[i] = _finding(i, kept, keys, ids, similarity, exact_threshold, near_threshold)
    return findings, clusters


def _finding(i, kept, keys, ids, similarity, exact_threshold, near_threshold) -> Finding:
    if exact_threshold is not None and keys[i] == keys[kept]:
        return Finding("exact_duplicate", 1.0, exact_threshold or 0.5,
                       f"same text as {ids[kept]} (kept)", {"duplicate_of": ids[kept]})  # fmt: skip
    s = similarity.get((i, kept))
    estimate = f"word 3-gram Jaccard {s:.2f}" if s is not None else "through a chain of near-duplicates"
    return Finding("near_duplicate", s if s is not None else near_threshold, near_threshold,
                   f"near-duplicate of {ids[kept]} (kept): {estimate}", {"duplicate_of": ids[kept]})  # fmt: skip
