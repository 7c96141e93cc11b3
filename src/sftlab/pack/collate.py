"""Rows -> micro-batches -> optimizer steps, and rows -> tensors.

Padding is masked by position, never by token id (invariant 3): the padded tail of a row is its
own block of restarting position ids with IGNORE targets, so no attention mask is needed and a
pad id equal to EOS cannot erase an EOS label.

    row 0   a a a b b b b        position_ids 0 1 2 0 1 2 3
    row 1   c c c c . . .                     0 1 2 3 0 1 2   <- pad tail: own block
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sftlab.core.types import IGNORE_INDEX, PackedRow, RowRef


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L] long
    position_ids: torch.Tensor  # [B, L] long
    targets: torch.Tensor  # [B, L] long; IGNORE_INDEX where nothing is predicted
    n_tokens: int  # real (non-pad) tokens
    n_supervised: int
    sources: list[RowRef | None]

    def to(self, device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.position_ids.to(device),
            self.targets.to(device),
            self.n_tokens,
            self.n_supervised,
            self.sources,
        )


def collate(rows: Sequence[PackedRow], pad_id: int, multiple_of: int = 8) -> Batch:
    width = max(len(r) for r in rows)
    width = int(math.ceil(width / multiple_of) * multiple_of)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    targets = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    for b, row in enumerate(rows):
        n = len(row)
        ids[b, :n] = row.input_ids
        targets[b, :n] = row.targets
        positions[b, :n] = row.position_ids
        positions[b, n:] = np.arange(width - n)
    return Batch(
        torch.from_numpy(ids),
        torch.from_numpy(positions),
        torch.from_numpy(targets),
        n_tokens=sum(len(r) for r in rows),
        n_supervised=sum(r.n_supervised for r in rows),
        sources=[s for r in rows for s in r.sources],
    )


def group_by_budget(
    lengths: Sequence[int], budget: int, rng: np.random.Generator
) -> list[list[int]]:
    """Micro-batches of row indices whose padded size (rows x longest) fits the token budget.

    Rows are sorted by length first (random tie-break) so similar lengths share a batch and
    little is padded; the batches are then shuffled so the order is not by length.
    """
    jitter = rng.random(len(lengths))
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], jitter[i]))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max(lengths[i], max((lengths[j] for j in current), default=0))
        if current and longest * (len(current) + 1) > budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    rng.shuffle(groups)
    return groups


@dataclass(frozen=True)
class EpochPlan:
    """Every optimizer step of one epoch, as lists of micro-batches (lists of row indices).

    The plan is global: every process computes the same one from (seed, epoch) and takes the
    micro-batches at positions rank, rank + world, ... of each step. So every process also knows
    each step's total supervised tokens without communicating (invariant 7). Every row is in
    exactly one micro-batch of one step: a short last step is kept short, never topped up with
    repeated rows; a process left without a micro-batch runs a zero-weight pass (`rank_passes`).
    """

    steps: list[list[list[int]]]


def plan_epoch(
    lengths: Sequence[int], budget: int, micro_per_step: int, seed: int, epoch: int
) -> EpochPlan:
    rng = np.random.default_rng([seed, epoch])
    groups = group_by_budget(lengths, budget, rng)
    steps = [groups[i : i + micro_per_step] for i in range(0, len(groups), micro_per_step)]
    return EpochPlan(steps)


def rank_share(step: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This process's micro-batches of a step (may be empty when the step is short)."""
    return step[rank::world]


def rank_passes(step: list[list[int]], rank: int, world: int) -> list[tuple[list[int], bool]]:
    """The forward passes this process runs for a step, as (row indices, counted): its own
    micro-batches, then zero-weight fillers until it has as many passes as every other process.

        3 micro-batches a b c, 2 processes:   rank 0: a, c        rank 1: b, (a[:1], not counted)

    Every process must enter each collective (DDP's buffer broadcast and gradient all-reduce,
    FSDP's all-gathers) equally often, or one waits forever for the others. A filler is one real
    row of the step: it reaches every trained parameter as a real pass does, and it costs little.
    """
    mine = [(group, True) for group in rank_share(step, rank, world)]
    passes = -(-len(step) // world)  # the most micro-batches any process has
    return mine + [(step[0][:1], False)] * (passes - len(mine))
