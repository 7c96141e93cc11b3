"""Where training numbers go: metrics.jsonl (always) and the console (progress bar or lines)."""

from __future__ import annotations

import json
import sys
import time
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
    ):
        self.enabled = enabled
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
        self.write(record)
        self.say(f"step {record['step']}: eval loss {record['eval_loss']:.4f}")

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
