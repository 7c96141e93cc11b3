"""report.html: one page over a run directory, rewritten after every eval while the run trains.

Everything comes from the run's own files (metrics.jsonl, probes.jsonl, mask_report.json,
summary.json, config.yaml), so the page says what the files say; only the highlighted row is
handed in by the run (its token ids are not saved).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from markupsafe import Markup, escape

from sftlab.core.errors import DataError
from sftlab.core.types import IGNORE_INDEX, TokenizedExample
from sftlab.report.page import render_page, svg_lines, write_page

MASK_FIGURES = ("rows", "tokens", "supervised_tokens", "supervised_share", "supervised_spans",
                "spans_ending_in_end_of_turn", "rows_without_supervised_tokens", "truncated_rows",
                "rejected_rows", "problem_count")  # fmt: skip
MAX_EVAL_FIGURES = 8  # eval.json numbers shown
SUMMARY_FIGURES = ("steps", "epochs", "train_seconds", "tokens", "supervised_tokens",
                   "eval_loss_before", "eval_loss_after", "train_examples",
                   "skipped_nonfinite_steps", "skipped_overflow_steps")  # fmt: skip


@dataclass
class RunRecords:
    """A run directory's numbers, read from its files."""

    path: Path
    name: str
    config: dict
    steps: list[dict] = field(default_factory=list)  # metrics.jsonl records with "loss"
    evals: list[dict] = field(default_factory=list)  # ... with "eval_loss" (probe figures too)
    probes: list[dict] = field(default_factory=list)  # probes.jsonl: {"step", "answers"}
    summary: dict | None = None
    mask: dict | None = None
    label: str = ""  # the name a comparison shows (the folder's, where names repeat)

    def series(self, key: str, evals: bool = False) -> tuple[list[float], list[float]]:
        records = [r for r in (self.evals if evals else self.steps) if key in r]
        return [r["step"] for r in records], [_number(r[key]) for r in records]

    def last(self, key: str):
        for record in reversed(self.evals):
            if key in record:
                return record[key]
        return None


def read_run(run_dir: Path) -> RunRecords:
    """A run directory's files; a folder without metrics.jsonl is not a run (clear error)."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise DataError(str(metrics), "not found; is this a run directory written by sftlab train?")
    records = _jsonl(metrics)
    config = _yaml(run_dir / "config.yaml")
    return RunRecords(
        path=run_dir,
        name=str(config.get("name") or run_dir.name),
        config=config,
        steps=[r for r in records if "loss" in r],
        evals=[r for r in records if "eval_loss" in r],
        probes=_jsonl(run_dir / "probes.jsonl") if (run_dir / "probes.jsonl").is_file() else [],
        summary=_json(run_dir / "summary.json"),
        mask=_json(run_dir / "mask_report.json"),
        label=str(config.get("name") or run_dir.name),
    )


def row_pieces(tokenizer, example: TokenizedExample) -> list[tuple[str, bool]]:
    """One rendered row as (text, supervised) pieces: each run of equally-masked tokens decoded
    whole, so a character split over several tokens reads right."""
    supervised = example.labels != IGNORE_INDEX
    edges = [0, *(np.flatnonzero(np.diff(supervised.astype(np.int8))) + 1).tolist(), len(example)]
    return [
        (tokenizer.decode(example.input_ids[a:b].tolist(), skip_special_tokens=False),
         bool(supervised[a]))
        for a, b in zip(edges, edges[1:], strict=False) if b > a
    ]  # fmt: skip


def pieces_html(pieces: list[tuple[str, bool]]) -> Markup:
    return Markup("").join(
        Markup('<mark class="tok" title="supervised">{}</mark>').format(text)
        if supervised else escape(text)
        for text, supervised in pieces
    )  # fmt: skip


def write_run_report(run_dir: Path, pieces: list[tuple[str, bool]] | None = None) -> Path:
    """Write RUN/report.html from the run's files; returns its path."""
    run = read_run(run_dir)
    html = render_page(
        "run.html.j2",
        title=f"Run report: {run.name}",
        run=run,
        model=model_label((run.config.get("model") or {}).get("name", "?")),
        method=(run.config.get("train") or {}).get("method", "?"),
        cards=_cards(run),
        charts=run_charts(run),
        mask=[(k, run.mask[k]) for k in MASK_FIGURES if run.mask and k in run.mask],
        problems=(run.mask or {}).get("problems", [])[:10],
        row=pieces_html(pieces) if pieces else None,
        summary=[(k, run.summary[k]) for k in SUMMARY_FIGURES if run.summary and k in run.summary],
        eval_json=eval_figures(Path(run_dir) / "eval.json"),
        answers=run.probes[-1]["answers"] if run.probes else [],
        answers_step=run.probes[-1]["step"] if run.probes else None,
    )
    return write_page(Path(run_dir) / "report.html", html)


def model_label(name: str) -> str:
    """A local model folder by its own name (the page may be read on another machine)."""
    return Path(name).name if Path(name).is_absolute() else name


def run_charts(run: RunRecords) -> dict[str, Markup]:
    charts = {
        "loss": svg_lines({"train loss": run.series("loss"),
                           "eval loss": run.series("eval_loss", evals=True)}, "step", "loss"),
        "lr": svg_lines({"learning rate": run.series("lr")}, "step", "learning rate"),
        "speed": svg_lines({"tokens/s": run.series("tokens_per_s"),
                            "supervised tokens/s": run.series("supervised_tokens_per_s")},
                           "step", "tokens per second"),
    }  # fmt: skip
    probes = {
        "stop rate": run.series("probe_stop_rate", evals=True),
        "task accuracy": run.series("probe_task_accuracy", evals=True),
    }
    # present even when empty: the page's StrictUndefined turns a missing key into an error
    charts["probes"] = (
        svg_lines(probes, "step", "share of probe prompts", points=True)
        if any(xs for xs, _ in probes.values())
        else None
    )
    return charts


def eval_figures(path: Path) -> dict:
    """Numbers at the top two levels of an eval.json (sftlab eval), e.g. {"tuned.accuracy": 0.8}."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(str(path), f"not valid JSON ({exc.msg})", exc.lineno) from None
    figures: dict = {}
    for key, value in (data.items() if isinstance(data, dict) else ()):
        inner = value.items() if isinstance(value, dict) else [("", value)]
        for sub, number in inner:
            if isinstance(number, int | float) and not isinstance(number, bool):
                figures[f"{key}.{sub}" if sub else key] = number
    return dict(list(figures.items())[:MAX_EVAL_FIGURES])


def _cards(run: RunRecords) -> list[tuple[str, str]]:
    first = run.evals[0]["eval_loss"] if run.evals else None
    last = run.evals[-1]["eval_loss"] if run.evals else None
    speeds = [r["tokens_per_s"] for r in run.steps if "tokens_per_s" in r]
    cards = [
        ("steps", f"{run.steps[-1]['step']:,}" if run.steps else "0"),
        ("eval loss", f"{_fmt(first)} → {_fmt(last)}" if first is not None else "-"),
        ("tokens/s (median)", f"{float(np.median(speeds)):,.0f}" if speeds else "-"),
    ]
    for key, label in (("probe_stop_rate", "probe stop rate"),
                       ("probe_task_accuracy", "probe task accuracy")):  # fmt: skip
        value = run.last(key)
        if value is not None:
            cards.append((label, f"{value:.2f}"))
    cards.append(("state", "finished" if run.summary else "training"))
    return cards


def _fmt(value) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _number(value) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _jsonl(path: Path) -> list[dict]:
    out = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(str(path), f"not valid JSON ({exc.msg})", number) from None
    return out


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(str(path), f"not valid JSON ({exc.msg})", exc.lineno) from None


def _yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DataError(str(path), f"not valid YAML ({exc})") from None
