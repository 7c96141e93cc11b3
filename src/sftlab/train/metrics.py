"""Where training numbers go: metrics.jsonl (always), the console (progress bar or lines) and,
when `train.report_to` names any, experiment trackers through accelerate's own integration
(Accelerator(log_with=...), init_trackers, log): sftlab writes no tracker format itself."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def append_record(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


class Reporter:
    """One per run, on the main process only (the others get `enabled=False`)."""

    def __init__(
        self,
        path: Path | None,
        total_steps: int,
        enabled: bool = True,
        start_step: int = 0,
        log_every: int | None = None,
        accelerator=None,
        on_eval: Callable[[dict], None] | None = None,
        after_eval: Callable[[], None] | None = None,
    ):
        self.enabled = enabled
        self.accelerator = accelerator  # its trackers (if any) get every record's numbers
        self.on_eval = on_eval  # adds the probe's figures to an eval record
        self.after_eval = after_eval  # rewrites the run report
        self.log_every = log_every  # None: a line every ~15 s (train.log_every)
        self.path = path
        self.total = total_steps
        self.console = Console(stderr=False)
        self.live = enabled and sys.stdout.isatty()
        self.progress = None
        self._last_print = 0.0
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.progress.add_task(
                "train", total=total_steps, completed=start_step, loss="-", tps="-"
            )
            self.progress.start()

    def write(self, record: dict) -> None:
        if self.enabled and self.path is not None:
            append_record(self.path, record)
        if self.enabled and self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log(tracker_values(record), step=record["step"])

    def step(self, record: dict) -> None:
        if not self.enabled:
            return
        self.write(record)
        if self.progress is not None:
            self.progress.update(
                self.task,
                completed=record["step"],
                loss=f"{record['loss']:.4f}",
                tps=f"{record['tokens_per_s']:.0f}",
            )
        elif self._line_due(record["step"]):
            self._last_print = time.monotonic()
            print(
                f"step {record['step']}/{self.total}  loss {record['loss']:.4f}  "
                f"lr {record['lr']:.2e}  {record['tokens_per_s']:.0f} tok/s "
                f"({record['supervised_tokens_per_s']:.0f} supervised)",
                flush=True,
            )

    def _line_due(self, step: int) -> bool:
        """A progress line every log_every steps (or every ~15 s), and at the last step."""
        if step == self.total:
            return True
        if self.log_every is not None:
            return step % self.log_every == 0
        return step == 1 or time.monotonic() - self._last_print > 15

    def eval(self, record: dict) -> None:
        if not self.enabled:
            return
        if self.on_eval is not None:
            self.on_eval(record)  # before writing: the probe's figures join the record
        self.write(record)
        probe = record.get("probe_stop_rate")
        self.say(
            f"step {record['step']}: eval loss {record['eval_loss']:.4f}"
            + (f", probe stop rate {probe:.2f}" if probe is not None else "")
            + (f", task accuracy {record['probe_task_accuracy']:.2f}"
               if "probe_task_accuracy" in record else "")
        )  # fmt: skip
        if self.after_eval is not None:
            self.after_eval()

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def tracker_values(record: dict) -> dict:
    """The record's numbers (trackers take scalars; the step is passed on its own)."""
    return {
        k: float(v) for k, v in record.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }  # fmt: skip


def tracker_config(config_dump: dict, prefix: str = "") -> dict:
    """A run config flattened to a.b keys with scalar values: what trackers accept as hparams
    (TensorBoard rejects lists and None)."""
    flat: dict = {}
    for key, value in config_dump.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(tracker_config(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        elif value is not None:
            flat[name] = json.dumps(value)
    return flat
