"""What a run adds to each eval besides the loss: the behaviour probe (figures into the eval
record, answers into probes.jsonl) and report.html, rewritten after every eval.

Main process only. Neither may stop a run: a probe that cannot generate is switched off and a
page that cannot be drawn is skipped, each with a warning naming the error.
"""

from __future__ import annotations

import json
from pathlib import Path

from sftlab.core.types import IGNORE_INDEX
from sftlab.eval.probe import probe_prompts, run_probe
from sftlab.export.artifacts import stop_token_ids
from sftlab.train.metrics import append_record, tracker_values


class RunObserver:
    def __init__(self, run_dir: Path, config, prepared, session, start_step: int, say=print):
        self.run_dir = Path(run_dir)
        self.session = session
        self.say = say
        self.settings = config.train.probes
        tokenizer = prepared.tokenizer
        self.stop_ids = stop_token_ids(tokenizer, prepared.renderer.fmt)
        self.prompts = probe_prompts(prepared.eval, tokenizer, self.stop_ids, self.settings.prompts)
        self.sample = next(
            (e for e in prepared.train if (e.labels != IGNORE_INDEX).any()), None
        )
        self.tokenizer = tokenizer
        self._last: tuple[int, dict] | None = None  # (step, figures) of the latest probe
        self.probes_path = self.run_dir / "probes.jsonl"
        if session.accelerator.is_main_process:
            keep_probes(self.probes_path, start_step)

    def probe(self, record: dict) -> None:
        """Add probe_stop_rate (and probe_task_accuracy) to an eval record; save the answers."""
        if not self.prompts:
            return
        if self._last is not None and self._last[0] == record["step"]:
            record.update(self._last[1])  # the final eval after the loop's own at the same step
            return
        model = self.session.unwrapped.model  # generate through the unwrapped model, not DDP
        try:
            figures, answers = run_probe(
                model, self.tokenizer, self.prompts, self.stop_ids, self.settings.max_new_tokens,
                self.settings.metric, self.session.accelerator.autocast(),
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a probe must never end a training run
            self.say(f"warning: behaviour probe switched off ({type(exc).__name__}: {exc})")
            self.prompts = []
            return
        record.update(figures)
        self._last = (record["step"], figures)
        append_record(self.probes_path, {"step": record["step"], "answers": answers})

    def report(self) -> None:
        from sftlab.report.run_page import row_pieces, write_run_report

        try:
            pieces = row_pieces(self.tokenizer, self.sample) if self.sample is not None else None
            write_run_report(self.run_dir, pieces)
        except Exception as exc:  # noqa: BLE001 - the page must never end a training run
            self.say(f"warning: report.html not updated ({type(exc).__name__}: {exc})")

    def log_eval(self, record: dict) -> None:
        """An eval outside the loop (before training, after it): probe, record, trackers, page."""
        self.probe(record)
        append_record(self.run_dir / "metrics.jsonl", record)
        accelerator = self.session.accelerator
        if accelerator.trackers:
            accelerator.log(tracker_values(record), step=record["step"])
        self.report()


def keep_probes(path: Path, start_step: int) -> None:
    """A fresh run starts an empty probes.jsonl; a resumed one drops the probes after its
    checkpoint (they are run again), as metrics.jsonl does."""
    if not path.exists():
        return
    if start_step == 0:
        path.unlink()
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= start_step]  # fmt: skip
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
