"""`sftlab compare RUN... --out DIR`: several runs on one page (compare.html) and in compare.json:
their figures in one table, their loss and probe curves on shared charts, their latest probe
answers side by side (and the headline figures of each run's eval.json, when it has one)."""

from __future__ import annotations

import math
from pathlib import Path

from sftlab.core.errors import SftlabError
from sftlab.core.io import write_json
from sftlab.report.page import render_page, svg_lines, write_page
from sftlab.report.run_page import RunRecords, eval_figures, read_run


def run_row(run: RunRecords) -> dict:
    """One run's figures for the table (and compare.json)."""
    train = run.config.get("train") or {}
    losses = [r["eval_loss"] for r in run.evals if _finite(r.get("eval_loss"))]
    return {
        "run": run.label,
        "path": str(run.path),
        "method": train.get("method"),
        "lr": train.get("lr"),
        "epochs": train.get("epochs"),
        "steps": run.steps[-1]["step"] if run.steps else 0,
        "eval_loss_before": losses[0] if losses else None,
        "eval_loss_after": losses[-1] if losses else None,
        "best_eval_loss": min(losses) if losses else None,
        "probe_stop_rate": run.last("probe_stop_rate"),
        "probe_task_accuracy": run.last("probe_task_accuracy"),
        "eval": eval_figures(run.path / "eval.json"),
    }


def load_runs(run_dirs: list[Path]) -> list[RunRecords]:
    if not run_dirs:
        raise SftlabError("name at least one run directory to compare")
    runs = [read_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    for run in runs:  # runs of one config share a name: tell them apart by folder
        if names.count(run.name) > 1:
            run.label = run.path.name
    return runs


def compare_runs(run_dirs: list[Path], out: Path, sweep: dict | None = None) -> Path:
    """Write OUT/compare.html and OUT/compare.json; returns the page's path."""
    runs = load_runs([Path(d) for d in run_dirs])
    rows = [run_row(r) for r in runs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", {"runs": rows, **({"sweep": sweep} if sweep else {})})
    html = render_page(
        "compare.html.j2",
        title=("Learning-rate sweep" if sweep else "Run comparison") + f": {len(runs)} runs",
        rows=rows,
        eval_keys=list(dict.fromkeys(k for row in rows for k in row["eval"])),
        charts=compare_charts(runs, sweep),
        answers=side_by_side(runs),
        labels=[r.label for r in runs],
        sweep=sweep,
    )
    return write_page(out / "compare.html", html)


def compare_charts(runs: list[RunRecords], sweep: dict | None) -> dict:
    charts = {
        "loss": svg_lines({r.label: r.series("loss") for r in runs}, "step", "train loss"),
        "eval": svg_lines({r.label: r.series("eval_loss", evals=True) for r in runs},
                          "step", "eval loss", points=True),
        "probes": None,  # optional charts stay keys: the page's StrictUndefined fails on a missing one
        "sweep": None,
    }  # fmt: skip
    if any(r.last("probe_stop_rate") is not None for r in runs):
        charts["probes"] = svg_lines(
            {r.label: r.series("probe_stop_rate", evals=True) for r in runs},
            "step", "probe stop rate", points=True,
        )  # fmt: skip
    if sweep:
        points = sorted((t["lr"], t["eval_loss"]) for t in sweep["trials"] if _finite(t["eval_loss"]))
        charts["sweep"] = svg_lines(
            {"final eval loss": ([p[0] for p in points], [p[1] for p in points])},
            "learning rate", "final eval loss", points=True, log_x=True,
        )  # fmt: skip
    return charts


def side_by_side(runs: list[RunRecords]) -> list[dict]:
    """The latest probe answers of every run, one row per prompt."""
    table: dict[str, dict] = {}
    for run in runs:
        for answer in (run.probes[-1]["answers"] if run.probes else []):
            row = table.setdefault(answer["prompt"], {"prompt": answer["prompt"],
                                                      "reference": answer["reference"], "by_run": {}})  # fmt: skip
            row["by_run"][run.label] = answer
    return list(table.values())


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
