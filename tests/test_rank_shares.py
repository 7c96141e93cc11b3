"""Several processes train every row exactly once per epoch, and every process runs the same
number of forward passes per step (so none waits in a collective the others never join).

Row counts are chosen so that the micro-batches do not divide among the processes: the last step
of the epoch is short, and with 3 processes some process has no micro-batch of its own in it.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from sftlab.pack.collate import plan_epoch, rank_passes, rank_share

WORLDS = [1, 2, 3]


def counted_rows(plan, world: int) -> Counter:
    """How often each row index is trained in the epoch, over every step and every process."""
    return Counter(
        i for step in plan.steps for rank in range(world) for g in rank_share(step, rank, world)
        for i in g
    )  # fmt: skip


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("accum", [1, 2])
def test_every_row_is_trained_exactly_once_per_epoch_whatever_the_world_size(world, accum):
    # Each row fills the budget alone: 7 micro-batches of one row, a count no world size here
    # (nor world x accum) divides.
    lengths = [10] * 7
    for epoch in range(3):
        plan = plan_epoch(lengths, 10, micro_per_step=accum * world, seed=5, epoch=epoch)
        assert counted_rows(plan, world) == Counter(range(7))
        assert len(plan.steps) == -(-7 // (accum * world))  # ceil: the short last step is kept


@pytest.mark.parametrize("world", WORLDS)
def test_every_row_once_with_mixed_lengths_and_fewer_micro_batches_than_processes(world):
    lengths = [int(x) for x in np.random.default_rng(4).integers(1, 60, size=53)]
    plan = plan_epoch(lengths, 64, micro_per_step=2 * world, seed=1, epoch=0)
    assert counted_rows(plan, world) == Counter(range(53))
    # Two rows, three processes: one step of two micro-batches, no row repeated.
    tiny = plan_epoch([10, 10], 10, micro_per_step=4, seed=1, epoch=0)
    assert counted_rows(tiny, 3) == Counter([0, 1])


@pytest.mark.parametrize("world", WORLDS)
def test_every_process_runs_the_same_number_of_passes_and_fillers_count_for_nothing(world):
    lengths = [10] * 7  # 7 one-row micro-batches
    plan = plan_epoch(lengths, 10, micro_per_step=2 * world, seed=2, epoch=0)
    for step in plan.steps:
        passes = [rank_passes(step, rank, world) for rank in range(world)]
        most = max(len(rank_share(step, rank, world)) for rank in range(world))
        assert [len(p) for p in passes] == [most] * world
        counted = [g for p in passes for g, is_counted in p if is_counted]
        assert sorted(counted) == sorted(step)  # each micro-batch counted once, by one process
        for group, _ in (x for p in passes for x in p):
            # A filler is a real row of this step (it reaches every trained parameter).
            assert group and set(group) <= {i for g in step for i in g}
    if world == 3:  # 7 = 6 + 1: the last step leaves processes 1 and 2 without a micro-batch
        last = plan.steps[-1]
        assert len(last) == 1
        assert rank_passes(last, 1, 3) == [(last[0][:1], False)]
        assert rank_passes(last, 2, 3) == [(last[0][:1], False)]


def test_a_filler_is_a_single_row_of_the_step():
    # Two rows per micro-batch (5 + 5 <= 10), 3 micro-batches, 2 processes.
    plan = plan_epoch([5] * 6, 10, micro_per_step=4, seed=0, epoch=0)
    (step,) = plan.steps
    assert [len(g) for g in step] == [2, 2, 2]
    assert rank_passes(step, 1, 2) == [(step[1], True), ([step[0][0]], False)]
