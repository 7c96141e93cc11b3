"""Fail loudly and early: non-finite losses, unwritable or full disks, pickle weights, an offline
hub id, and config problems reported before anything loads."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from conftest import make_tiny_model, make_tiny_tokenizer
from sftlab.config import load_config
from sftlab.core.errors import ConfigError, ModelError, SftlabError
from sftlab.model.load import load_model, load_tokenizer, resolve_model
from sftlab.recipes.sft import train
from sftlab.train.resume import check_disk_space
from test_recipe_smoke import tiny_config, write_data
from test_resume import config_file, sftlab, steps_logged


@pytest.mark.slow
def test_nonfinite_loss_stops_with_step_and_rows_and_keeps_the_last_checkpoint(
    tmp_path, tiny_model_dir
):
    config, run = config_file(tmp_path, tiny_model_dir), tmp_path / "run"
    result = sftlab("train", str(config), f"output_dir={run}", fault="nonfinite:3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "step 3: loss is nan" in result.stderr and "chat.jsonl:" in result.stderr  # the rows
    assert "train.skip_nonfinite" in result.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert steps_logged(run) == [1, 2]

    tolerant = sftlab("train", str(config), f"output_dir={run}", "--resume", "train.skip_nonfinite=1",
                      fault="nonfinite:3")  # fmt: skip
    assert tolerant.returncode == 0, tolerant.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_nonfinite_steps"] == 1 and summary["steps"] == 8


def test_unwritable_output_folder_is_reported_before_training(tmp_path, tiny_model_dir):
    if os.geteuid() == 0:  # root writes anywhere: make the target a file instead
        blocker = tmp_path / "blocked"
        blocker.write_text("a file, not a folder")
        target = blocker / "run"
    else:
        target = tmp_path / "ro" / "run"
        (tmp_path / "ro").mkdir(mode=0o500)
    config = tiny_config(tmp_path, tiny_model_dir, f"output_dir={target}")
    with pytest.raises(SftlabError, match="cannot write to the run directory"):
        train(config)


def test_disk_too_small_for_the_checkpoints_is_reported(tmp_path):
    check_disk_space(tmp_path, trainable=1000, total=10_000, keep_last=2, full=False, merged=False)
    with pytest.raises(SftlabError, match="not enough disk space.*keep_last=3"):
        check_disk_space(
            tmp_path, trainable=10**14, total=10**14, keep_last=3, full=True, merged=True
        )


def test_pickle_weights_are_refused_unless_allowed(tmp_path):
    folder = tmp_path / "pickled"
    model = make_tiny_model()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # an old-style pickle checkpoint
    make_tiny_tokenizer().save_pretrained(folder)
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    with pytest.raises(ModelError, match="--allow-pickle"):
        resolve_model(str(folder))
    loaded = load_model(resolve_model(str(folder), allow_pickle=True), allow_pickle=True)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_trust_remote_code_is_off_by_default():
    config = load_config(None, base={"data": {"sources": [{"path": "x.jsonl"}]}})
    assert config.model.trust_remote_code is False and config.model.allow_pickle is False


def test_offline_hub_id_is_a_clear_error_not_a_hang(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    ref = resolve_model("some-org/some-model-that-is-not-cached")
    assert not ref.is_local
    with pytest.raises(ModelError, match="network"):
        load_tokenizer(ref)
    assert time.monotonic() - started < 30


def test_every_config_problem_at_once_before_anything_loads(tmp_path):
    text = (
        "model:\n  name: ./no-such-model\n"
        "data:\n  sources:\n    - path: missing.jsonl\n    - path: also-missing.json\n"
        "template:\n  max_length: 0\n  chat_template: nope.jinja\n"
        "train:\n  lr: -1\n  lrr: 3\n"
    )
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, check_files=True)
    problems = caught.value.problems
    assert len(problems) == 7, problems
    for fragment in (
        ":5: data.sources.0.path: file not found",
        ":6: data.sources.1.path: file not found",
        ":8: template.max_length",
        ":11: train.lr",
        ":12: train.lrr: unknown key",
        ":2: model.name: no such model",
        ":9: template.chat_template",
    ):
        assert any(fragment in p for p in problems), (fragment, problems)  # fmt: skip


def test_sigterm_is_handled_like_sigint(tmp_path, tiny_model_dir):
    config, run = config_file(tmp_path, tiny_model_dir, write_data(tmp_path)), tmp_path / "run"
    proc = sftlab("train", str(config), f"output_dir={run}", wait=False)
    deadline = time.monotonic() + 120
    while 1 not in steps_logged(run) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "--resume" in stderr
