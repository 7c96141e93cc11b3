"""train.report_to: trackers through accelerate's integration, each only when installed."""

from __future__ import annotations

from importlib.util import find_spec

import pytest

from sftlab.config import TRACKER_PACKAGES, load_config
from sftlab.core.errors import ConfigError
from test_recipe_smoke import lines, tiny_config

BASE = {"data": {"sources": [{"path": "chat.jsonl"}]}}


def test_a_tracker_whose_package_is_missing_is_a_config_error_naming_it(tmp_path):
    missing = next((n for n, pkg in TRACKER_PACKAGES.items()
                    if n != "tensorboard" and find_spec(pkg) is None), None)  # fmt: skip
    if missing is None:
        pytest.skip("every tracker package is installed here")
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  sources:\n    - path: x.jsonl\ntrain:\n  report_to: [{missing}]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    text = str(caught.value)
    assert f"{config}:5:" in text and "train.report_to" in text
    assert f"{missing} needs the '{TRACKER_PACKAGES[missing]}' package" in text


def test_an_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="report_to.0"):
        load_config(None, ["train.report_to=[tensorbored]"], base=BASE)


def test_default_writes_only_the_run_directory(tmp_path, tiny_model_dir):
    from sftlab.recipes.sft import train

    run = train(tiny_config(tmp_path, tiny_model_dir, "train.max_steps=2", "train.probes.prompts=0"))
    assert not (run / "trackers").exists()
    evals = [r for r in lines(run / "metrics.jsonl") if "eval_loss" in r]
    assert evals and all("probe_stop_rate" not in r for r in evals)  # probes turned off
    assert not (run / "probes.jsonl").exists()


def test_tensorboard_event_file_holds_the_scalars(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sftlab.recipes.sft import train

    run = train(tiny_config(tmp_path, tiny_model_dir, "train.report_to=[tensorboard]",
                            "train.eval_every=2"))  # fmt: skip
    logs = run / "trackers" / "smoke"  # RUN/trackers/<run name>
    events = EventAccumulator(str(logs)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "tokens_per_s", "eval_loss", "probe_stop_rate"} <= tags
    metrics = lines(run / "metrics.jsonl")
    steps = [r for r in metrics if "loss" in r]
    assert [e.step for e in events.Scalars("loss")] == [r["step"] for r in steps]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([r["loss"] for r in steps])
    evals = [r for r in metrics if "eval_loss" in r]
    logged = [(e.step, e.value) for e in events.Scalars("eval_loss")]
    assert logged == [(r["step"], pytest.approx(r["eval_loss"])) for r in evals]
