"""CPU memory housekeeping: resident-memory readings and when the allocator is trimmed."""

import sys

import pytest
import torch

from sftlab.model import memory

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@linux_only
def test_resident_memory_follows_touched_pages():
    before = memory.resident_mb()
    block = torch.ones(64 * 2**20, dtype=torch.float32)  # 256 MB, every page written
    grown = memory.resident_mb() - before
    del block
    assert 200 < grown < 400


def test_trimmer_trims_only_after_growth_past_the_settled_level(monkeypatch):
    readings = [1000, 1100, 1150, 1300, 900, 950, 1000, 1210]  # resident MB after each step
    seen, trimmed_at = [], []

    def resident():
        seen.append(readings[len(seen)])
        return seen[-1]

    monkeypatch.setattr(memory, "resident_mb", resident)
    monkeypatch.setattr(memory, "release_free_memory", lambda: trimmed_at.append(len(seen) - 1))

    trimmer = memory.FreeMemoryTrimmer(slack_mb=200)
    for _ in readings:
        trimmer.after_step()
    # settles at 1000 after step 0; 1100 and 1150 stay within 200 MB; 1300 trims (step 3);
    # step 4 settles again at 900; 950 and 1000 stay; 1210 is past 900 + 200 and trims.
    assert trimmed_at == [3, 7]
    assert trimmer.trims == 2
