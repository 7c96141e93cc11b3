"""Deciding whether and from where a run resumes, and refusing resumes that would mislead.

A resume continues only the run it came from: a changed config (beyond keys that cannot change
the result, like how often to save) or changed data is refused, naming what changed, unless the
user forces it.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

from sftlab.core.errors import SftlabError
from sftlab.core.io import write_text_atomic
from sftlab.train.checkpoint import Checkpoint, checkpoints, clear_partials

# Keys that change how a run is observed or stored, never what it computes.
RESUME_SAFE = {
    "train.save_every", "train.keep_last", "train.log_every", "train.eval_every", "train.resume",
    "train.skip_nonfinite", "export.merged", "name",
}  # fmt: skip


def pick_checkpoint(root: Path, resume, restart: bool = False) -> Checkpoint | None:
    """restart: start over whatever `resume` says (every earlier checkpoint is deleted).
    Otherwise resume=True: the last complete checkpoint (error if none); "auto": it if any;
    False: none, and an earlier run's checkpoints are an error (they are never deleted unasked)."""
    clear_partials(root)
    found = checkpoints(root)
    if restart:
        shutil.rmtree(root, ignore_errors=True)
        return None
    if resume is False:
        if found:
            raise SftlabError(
                f"{root.parent} holds checkpoints of an earlier run (last at step {found[-1].step}). "
                "Pass --resume to continue it, or --restart to start over (its checkpoints are deleted)"
            )
        return None
    if not found:
        if resume is True:
            raise SftlabError(f"nothing to resume: no complete checkpoint in {root}")
        return None
    return found[-1]


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def changes(saved: dict, current: dict) -> list[str]:
    """What differs between a checkpoint's meta and the run about to resume from it."""
    old, new = _flatten(saved.get("config", {})), _flatten(current["config"])
    found = [
        f"config {key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and key not in RESUME_SAFE
    ]
    old_data = {d["file"]: d["sha256"] for d in saved.get("data", [])}
    new_data = {d["file"]: d["sha256"] for d in current["data"]}
    found += [
        f"data file {f}: contents changed"
        for f in new_data
        if f in old_data and old_data[f] != new_data[f]
    ]
    found += [f"data file {f}: not in the checkpointed run" for f in new_data if f not in old_data]
    found += [f"data file {f}: no longer used" for f in old_data if f not in new_data]
    if saved.get("template_sha256") != current["template_sha256"]:
        found.append("chat template: changed")
    return found


def check_resumable(checkpoint: Checkpoint, current: dict, force_resume: bool) -> list[str]:
    found = changes(checkpoint.state(), current)
    if found and not force_resume:
        listed = "\n".join(f"  - {c}" for c in found)
        raise SftlabError(
            f"cannot resume from {checkpoint.path}: the run changed since it was saved:\n{listed}\n"
            "Resuming would not reproduce either run. Restore the old settings, pass --force-resume to "
            "resume anyway, or --restart to start over."
        )
    return found


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint, so a resumed curve has no duplicated steps."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def check_disk_space(
    run_dir: Path, trainable: int, total: int, keep_last: int, full: bool, merged: bool
) -> None:
    """Say before training, not at the first save, when the disk cannot hold what the run writes."""
    checkpoint = trainable * 4 * 3  # fp32 weights + two AdamW moments
    outputs = (total if full else trainable) * 4 + (total * 4 if merged else 0)
    needed = int(1.2 * ((keep_last + 1) * checkpoint + outputs))
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise SftlabError(
            f"not enough disk space in {run_dir}: this run writes about {needed / 2**30:.2f} GiB "
            f"(keep_last={keep_last} checkpoints of {checkpoint / 2**30:.2f} GiB plus the model), "
            f"and only {free / 2**30:.2f} GiB is free. Free some space or lower train.keep_last"
        )


class StopSignals:
    """Turn SIGINT/SIGTERM into a request to stop after the current step (a second one stops at
    once). Installed only in the main thread, where Python allows signal handlers."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> StopSignals:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.received = signum
        print(
            f"\n{signal.Signals(signum).name}: saving a checkpoint after this step ...", flush=True
        )

    def adopt(self, signum: int) -> None:
        """Another process received `signum`: stop the same way, as if this one had."""
        if self.received is None:
            self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
