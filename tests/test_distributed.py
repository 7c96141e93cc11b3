"""The same loop under torchrun (2 CPU processes, gloo).

- 2 processes match one process with the same global batch (grad_accum 2 x 1 process ==
  grad_accum 1 x 2 processes), step by step, over a whole epoch whose micro-batches do not divide
  between the processes (the last step leaves process 1 without one) and an eval split of one
  micro-batch (process 1 has none): every row trained once, the loss normalised over both.
- SIGTERM to one process only: both stop at the same step, the checkpoint is written, both exit,
  and the run resumes to the end.
- The README's example config on the embedded model.

Every launch runs under a deadline: a hang (one process waiting in a collective the other never
joins) is a test failure, not a stuck suite.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from test_recipe_smoke import write_data

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (torchrun's workers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def worker_rank(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


class Torchrun:
    """`torchrun --nproc_per_node 2 -m sftlab.cli ARGS` in the background, output to files."""

    def __init__(self, folder: Path, *args: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.out, self.err = folder / "stdout.txt", folder / "stderr.txt"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                   "--master_port", str(free_port()), "-m", "sftlab.cli", *args]  # fmt: skip
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=err, cwd=REPO)
        self.workers: dict[int, int] = {}  # rank -> pid, as soon as they are seen

    def find_workers(self) -> dict[int, int]:
        for pid in children(self.proc.pid):
            rank = worker_rank(pid)
            if rank is not None:
                self.workers[rank] = pid
        return self.workers

    def kill(self) -> None:
        """SIGKILL the launcher and its workers (while it runs, they are its children)."""
        if self.proc.poll() is None:
            self.find_workers()
            for pid in [*self.workers.values(), self.proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait()

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """Wait for the launch to end; past the deadline, kill it and its workers and fail."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(
                f"hung: still running after {timeout:.0f} s\n{self.err.read_text()[-3000:]}"
            )
        return subprocess.CompletedProcess(
            self.proc.args, self.proc.returncode, self.out.read_text(), self.err.read_text()
        )


def run_one(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "sftlab.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def steps_logged(run: Path) -> list[int]:
    return (
        [r["step"] for r in records(run) if "loss" in r]
        if (run / "metrics.jsonl").is_file()
        else []
    )


def step_losses(run: Path) -> list[float]:
    return [r["loss"] for r in records(run) if "loss" in r]


def eval_losses(run: Path) -> list[float]:
    return [r["eval_loss"] for r in records(run) if "eval_loss" in r]


def tiny_config(tmp_path: Path, model_dir: Path, eval_rows: int = 1, **train) -> Path:
    config = {
        "model": {"name": str(model_dir)},
        "data": {"sources": [{"path": str(write_data(tmp_path))}], "eval_rows": eval_rows},
        "template": {"max_length": 64},
        "lora": {"r": 4, "alpha": 8},
        "train": {
            "epochs": 1,
            "batch_tokens": 64,
            "grad_accum": 2,
            "lr": 1e-2,
            "precision": "fp32",
            **train,
        },
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def first_epoch_plan(config_path: Path, micro_per_step: int) -> tuple[list, int]:
    """(the train steps' micro-batches, the eval micro-batch count) of this config's first
    epoch, from the library's own plan: the preconditions this file's cases rely on."""
    from sftlab.config import load_config
    from sftlab.model.device import resolve_packing
    from sftlab.pack.collate import group_by_budget, plan_epoch
    from sftlab.pack.packing import build_rows
    from sftlab.recipes.prepare import prepare_data

    config = load_config(config_path, [])
    prepared = prepare_data(config, config_path.parent, say=lambda *a: None)
    max_length, packing = config.template.max_length, resolve_packing(config.pack.enabled, "cpu")
    budget = config.micro_batch_tokens()
    train, evals = (
        [len(r) for r in build_rows(part, max_length, packing)]
        for part in (prepared.train, prepared.eval)
    )
    steps = plan_epoch(train, budget, micro_per_step, config.train.seed, 0).steps
    return steps, len(group_by_budget(evals, budget, np.random.default_rng(0)))


def test_two_processes_match_one_with_uneven_train_and_eval_splits(tmp_path, tiny_model_dir):
    path = tiny_config(tmp_path, tiny_model_dir)
    steps, eval_groups = first_epoch_plan(path, micro_per_step=2)
    # Steps with an odd number of micro-batches leave process 1 without one of its own in their
    # last pass (it used to repeat rows from the start of the epoch); one eval micro-batch for
    # two processes.
    assert any(len(step) % 2 == 1 for step in steps) and eval_groups == 1
    single = run_one("train", str(path), f"output_dir={tmp_path / 'one'}", "train.grad_accum=2")
    assert single.returncode == 0, single.stderr[-3000:]
    double = Torchrun(tmp_path / "launch", "train", str(path), f"output_dir={tmp_path / 'two'}",
                      "train.grad_accum=1").wait(timeout=240)  # fmt: skip
    assert double.returncode == 0, double.stderr[-3000:]

    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert len(one) == len(two) == len(steps)  # the whole epoch
    assert one == pytest.approx(two, rel=1e-5)
    assert eval_losses(tmp_path / "one") == pytest.approx(eval_losses(tmp_path / "two"), rel=1e-5)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    single_summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    # Every row once: the same tokens as one process, nothing repeated to fill the last step.
    assert summary["tokens"] == single_summary["tokens"]
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key


def test_sigterm_to_one_process_stops_both_with_a_checkpoint_then_resumes(tmp_path, tiny_model_dir):
    steps = 60
    # An even eval split (2 micro-batches): this test is about the stop, not the eval (above).
    path = tiny_config(tmp_path, tiny_model_dir, 2, epochs=20, max_steps=steps, save_every=1000)
    run = tmp_path / "run"
    launch = Torchrun(tmp_path / "first", "train", str(path), f"output_dir={run}")
    try:
        deadline = time.monotonic() + 240
        while 2 not in steps_logged(run) and launch.proc.poll() is None:
            assert time.monotonic() < deadline, "step 2 never came"
            time.sleep(0.05)
        workers = launch.find_workers()
        assert set(workers) == {0, 1}, launch.err.read_text()[-3000:]
        os.kill(workers[1], signal.SIGTERM)  # process 1 only: process 0 writes the checkpoint
        stopped = launch.wait(timeout=120)
    finally:
        launch.kill()
    logged = steps_logged(run)
    last = max(logged)
    assert logged == list(range(1, last + 1)) and last < steps
    assert (run / "checkpoints" / f"step-{last:06d}").is_dir()
    # Both processes stopped at the same step through the agreed stop, not killed mid-step.
    assert stopped.stderr.count(f"stopped at step {last} of {steps}") == 2, stopped.stderr[-3000:]

    done = Torchrun(tmp_path / "second", "train", str(path), f"output_dir={run}", "--resume")
    result = done.wait(timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"(step {last})" in result.stdout and "resumed from" in result.stdout
    assert steps_logged(run) == list(range(1, steps + 1))


@pytest.mark.real
def test_readme_example_config_under_torchrun_finishes(tmp_path, smol_path):
    # The user's command from the README, shortened to one step of about one micro-batch per
    # process. Its eval split is one micro-batch for two processes: the case that used to hang.
    example = REPO / "configs" / "example.yaml"
    assert first_epoch_plan(example, micro_per_step=2)[1] == 1
    done = Torchrun(tmp_path / "launch", "train", str(example), f"output_dir={tmp_path / 'run'}",
                    "train.max_steps=1", "train.grad_accum=1").wait(timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 1 and np.isfinite(summary["eval_loss_after"])
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["processes"] == 2
