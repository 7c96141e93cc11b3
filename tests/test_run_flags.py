"""Starting over and resuming despite changes are two flags with one meaning each (--restart,
--force-resume); `train.resume: auto` never turns a request to start over into a resume."""

from __future__ import annotations

import pytest
import torch

from sftlab.core.errors import SftlabError
from sftlab.train import checkpoint
from sftlab.train.resume import check_resumable, pick_checkpoint

META = {"config": {"train": {"lr": 0.01}}, "data": [], "template_sha256": "t"}


def write_checkpoints(root, steps=(1, 2)):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in steps:
        checkpoint.save(root, model, optimizer, {"step": step}, META, keep_last=5)
    assert [c.step for c in checkpoint.checkpoints(root)] == list(steps)


@pytest.mark.parametrize("resume", [False, True, "auto"])
def test_restart_starts_over_whatever_train_resume_says(tmp_path, resume):
    root = tmp_path / "checkpoints"
    write_checkpoints(root)
    assert pick_checkpoint(root, resume, restart=True) is None
    assert checkpoint.checkpoints(root) == []


def test_auto_resumes_without_restart(tmp_path):
    root = tmp_path / "checkpoints"
    write_checkpoints(root)
    assert pick_checkpoint(root, "auto", restart=False).step == 2


def test_earlier_checkpoints_without_a_flag_name_both_choices(tmp_path):
    root = tmp_path / "checkpoints"
    write_checkpoints(root)
    with pytest.raises(SftlabError, match="--resume to continue it, or --restart to start over"):
        pick_checkpoint(root, False, restart=False)
    assert len(checkpoint.checkpoints(root)) == 2  # nothing deleted


def test_changed_run_resumes_only_with_force_resume(tmp_path):
    root = tmp_path / "checkpoints"
    write_checkpoints(root, (1,))
    last = checkpoint.checkpoints(root)[-1]
    changed = {**META, "config": {"train": {"lr": 0.5}}}
    with pytest.raises(SftlabError, match="pass --force-resume"):
        check_resumable(last, changed, force_resume=False)
    assert check_resumable(last, changed, force_resume=True) == ["config train.lr: 0.01 -> 0.5"]
