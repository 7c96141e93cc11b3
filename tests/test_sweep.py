"""`sftlab sweep`: a learning-rate grid trained on the tiny Llama, one run after another."""

from __future__ import annotations

import json

import pytest
import yaml

from sftlab.core.errors import SftlabError
from sftlab.recipes.sweep import parse_grid, sweep
from test_recipe_smoke import lines, write_data


def test_grid_parsing_names_the_option_on_bad_values():
    assert parse_grid("1e-5, 5e-5,2e-4", "--lr") == [1e-5, 5e-5, 2e-4]
    assert parse_grid(None, "--epochs") == []
    with pytest.raises(SftlabError, match=r"--lr: 'fast' is not a number"):
        parse_grid("1e-5,fast", "--lr")
    with pytest.raises(SftlabError, match=r"--epochs: '0' must be a positive number"):
        parse_grid("0", "--epochs")


def test_sweep_trains_each_rate_and_names_the_best(tmp_path, tiny_model_dir):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "model": {"name": str(tiny_model_dir)},
        "data": {"sources": [{"path": str(write_data(tmp_path))}], "eval_rows": 3},
        "template": {"max_length": 128}, "lora": {"r": 4, "alpha": 8},
        "train": {"batch_tokens": 256, "grad_accum": 2, "precision": "fp32", "probes": {"prompts": 2, "max_new_tokens": 8}},
    }))  # fmt: skip
    out = sweep(config, [1e-5, 1e-2], [], tmp_path / "sweep", max_steps=3)
    result = json.loads((out / "compare.json").read_text())
    trials = result["sweep"]["trials"]
    assert [t["lr"] for t in trials] == [1e-5, 1e-2]
    finals = {}
    for trial in trials:  # each a complete run directory, with the budget applied
        metrics = lines(out / f"lr{trial['lr']:g}" / "metrics.jsonl")
        assert max(r["step"] for r in metrics if "loss" in r) == 3
        assert (out / f"lr{trial['lr']:g}" / "report.html").is_file()
        finals[trial["lr"]] = [r["eval_loss"] for r in metrics if "eval_loss" in r][-1]
    best = result["sweep"]["best_by_eval_loss"]
    assert best["lr"] == min(finals, key=finals.get) and best["eval_loss"] == finals[best["lr"]]
    # three steps at 1e-5 barely move the adapter; at 1e-2 the eval loss falls
    assert best["lr"] == 1e-2
    assert result["sweep"]["best_by_task"] is not None  # the probes scored both runs
    html = (out / "compare.html").read_text(encoding="utf-8")
    assert 'id="chart-sweep"' in html and html.count("<svg") == 4
    assert "at most 3 steps" in html
