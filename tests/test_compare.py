"""`sftlab compare`: run folders written by hand in the run directory's file format
(metrics.jsonl, probes.jsonl, config.yaml, eval.json), so every figure on the page is known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CHROMIUM_ARGS
from sftlab.core.errors import SftlabError
from sftlab.recipes.compare import compare_runs

Q1 = "<|im_start|>user\nWhat is one plus one?<|im_end|>\n<|im_start|>assistant\n"
Q2 = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"


def write_run(folder: Path, lr: float, evals: list[float], answers: dict[str, str], stops=True,
              eval_json: dict | None = None) -> Path:  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"name": "smoke", "train": {"method": "lora", "lr": lr, "epochs": 3}}))  # fmt: skip
    records = []
    for i, loss in enumerate(evals):
        step = 2 * i
        if step:
            records += [{"step": step - 1, "loss": loss + 0.2, "lr": lr},
                        {"step": step, "loss": loss + 0.1, "lr": lr}]  # fmt: skip
        records.append({"step": step, "eval_loss": loss, "probe_stop_rate": 1.0 if stops else 0.5})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    probe = {"step": 2 * (len(evals) - 1), "answers": [
        {"prompt": q, "reference": "ref", "answer": a, "stopped": stops, "score": 0.0}
        for q, a in answers.items()]}  # fmt: skip
    (folder / "probes.jsonl").write_text(json.dumps(probe) + "\n")
    if eval_json is not None:
        (folder / "eval.json").write_text(json.dumps(eval_json))
    return folder


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    return [
        write_run(tmp_path / "low", 1e-5, [2.0, 1.9, 1.8], {Q1: "Two.", Q2: "Hi!"},
                  eval_json={"tuned": {"accuracy": 0.75, "label": "x"}, "seconds": 12}),
        write_run(tmp_path / "high", 1e-2, [2.0, 1.2, 1.4], {Q1: "2", Q2: "Hello"}, stops=False),
    ]  # fmt: skip


def test_compare_json_holds_each_runs_figures(runs, tmp_path):
    compare_runs(runs, tmp_path / "out")
    rows = json.loads((tmp_path / "out" / "compare.json").read_text())["runs"]
    # both runs are named "smoke": the folder names tell them apart
    assert [r["run"] for r in rows] == ["low", "high"]
    low, high = rows
    assert (low["eval_loss_before"], low["eval_loss_after"], low["best_eval_loss"]) == (2.0, 1.8, 1.8)
    assert (high["eval_loss_after"], high["best_eval_loss"]) == (1.4, 1.2)  # best before the end
    assert low["steps"] == high["steps"] == 4 and low["lr"] == 1e-5
    assert high["probe_stop_rate"] == 0.5
    assert low["eval"] == {"tuned.accuracy": 0.75, "seconds": 12} and high["eval"] == {}


def test_compare_page_puts_answers_side_by_side(runs, tmp_path):
    html = compare_runs(runs, tmp_path / "out").read_text(encoding="utf-8")
    # one table row per prompt, each run's answer in its column
    row = html.split("What is one plus one?")[1].split("</tr>")[0]
    assert row.index("Two.") < row.index("<td>2 ")  # low's answer, then high's (stopped: no)
    assert html.count("[token limit]") == 2  # high's two answers hit the limit
    assert html.count("<svg") == 3  # train loss, eval loss, probe stop rate
    assert "eval: tuned.accuracy" in html


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SftlabError, match=r"empty/metrics.jsonl: not found; is this a run"):
        compare_runs([tmp_path / "empty"], tmp_path / "out")
    done = subprocess.run([sys.executable, "-m", "sftlab.cli", "compare", str(tmp_path / "empty"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_compare_page_in_a_browser(runs, tmp_path, chromium):
    from playwright.sync_api import sync_playwright

    page_path = compare_runs(runs, tmp_path / "out")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.resolve().as_uri())
        boxes = [page.locator(f"#chart-{n} svg").bounding_box() for n in ("loss", "eval", "probes")]
        legend = page.locator("#chart-loss svg text", has_text="high").count()
        browser.close()
    assert errors == []
    assert all(b is not None and b["width"] > 200 and b["height"] > 80 for b in boxes), boxes
    assert legend == 1  # one line per run, named in the legend
