"""`sftlab sweep CONFIG.yaml --lr 1e-5,5e-5,2e-4 [--epochs 1,3] [--max-steps N]`: the grid
trained one run after another (each a normal run directory under OUT), each evaluated (eval loss
and the probes' task accuracy), the best named, the curves on one page (OUT/compare.html).

Too high a learning rate overwrites what the base model knew (eval loss rises); too low learns
nothing (eval loss stays where it started): the sweep's page shows both on one chart.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from sftlab.core.errors import SftlabError


def parse_grid(text: str | None, option: str) -> list[float]:
    """'1e-5,5e-5' -> [1e-05, 5e-05]; a clear error naming the option otherwise."""
    if not text:
        return []
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise SftlabError(f"{option}: {part.strip()!r} is not a number (expected e.g. "
                              f"{option} 1e-5,5e-5,2e-4)") from None  # fmt: skip
        if not math.isfinite(value) or value <= 0:
            raise SftlabError(f"{option}: {part.strip()!r} must be a positive number")
        values.append(value)
    return values


def trial_name(lr: float, epochs: float | None) -> str:
    return f"lr{lr:g}" + (f"-ep{epochs:g}" if epochs is not None else "")


def sweep(
    config_path: Path, lrs: list[float], epochs: list[float], out: Path | None = None,
    max_steps: int | None = None, overrides: list[str] = (),
) -> Path:  # fmt: skip
    """Train every (lr, epochs) pair; write OUT/sweep.json and OUT/compare.html; returns OUT."""
    from sftlab.config import load_config
    from sftlab.recipes.compare import compare_runs
    from sftlab.recipes.sft import train

    if not lrs:
        raise SftlabError("--lr: give at least one learning rate, e.g. --lr 1e-5,5e-5,2e-4")
    base = load_config(config_path, list(overrides), check_files=True)
    out = Path(out) if out else Path("runs") / f"{base.name}-sweep"
    budget = [f"train.max_steps={max_steps}"] if max_steps else []
    trials = []
    for lr, ep in itertools.product(lrs, epochs or [None]):
        name = trial_name(lr, ep)
        settings = [f"train.lr={lr}", f"name={base.name}-{name}", f"output_dir={out / name}",
                    *([f"train.epochs={ep}"] if ep is not None else []), *budget]  # fmt: skip
        print(f"sweep: {name} ({len(trials) + 1} of {len(lrs) * max(len(epochs), 1)})")
        config = load_config(config_path, [*overrides, *settings], check_files=True)
        run = train(config, base_dir=Path(config_path).resolve().parent, restart=True)
        trials.append(trial_result(run, lr, ep))
    summary = summarise(trials, max_steps, base)
    compare_runs([Path(t["run"]) for t in trials], out, sweep=summary)
    best = summary["best_by_eval_loss"]
    print(f"sweep: best by eval loss: lr {best['lr']:g} ({best['eval_loss']:.4f})"
          + (f"; by probe task accuracy: lr {summary['best_by_task']['lr']:g}"
             if summary["best_by_task"] else "") + f"; page: {out / 'compare.html'}")  # fmt: skip
    return out


def trial_result(run: Path, lr: float, epochs: float | None) -> dict:
    from sftlab.report.run_page import read_run

    records = read_run(run)
    last = records.evals[-1] if records.evals else {}
    return {
        "run": str(run), "lr": lr, "epochs": epochs,
        "eval_loss_before": records.evals[0]["eval_loss"] if records.evals else None,
        "eval_loss": last.get("eval_loss"), "task_accuracy": last.get("probe_task_accuracy"),
    }  # fmt: skip


def summarise(trials: list[dict], max_steps: int | None, base) -> dict:
    finite = [t for t in trials if isinstance(t["eval_loss"], float) and math.isfinite(t["eval_loss"])]
    if not finite:
        raise SftlabError("sweep: no run produced a finite eval loss (is the eval split empty?)")
    scored = [t for t in trials if t["task_accuracy"] is not None]
    # ties in accuracy (few probe prompts): the lower eval loss decides
    by_task = max(scored, key=lambda t: (t["task_accuracy"], -(t["eval_loss"] or math.inf)),
                  default=None)  # fmt: skip
    budget = (f"at most {max_steps} steps" if max_steps
              else f"{base.train.epochs:g} epoch(s) as configured")  # fmt: skip
    return {"trials": trials, "best_by_eval_loss": min(finite, key=lambda t: t["eval_loss"]),
            "best_by_task": by_task, "budget": budget}  # fmt: skip
