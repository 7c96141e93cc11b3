"""Kill a run (SIGKILL between steps, in the middle of a checkpoint write, at a random moment;
SIGINT), resume it each time, and get exactly the weights and loss curve of a run that was never
interrupted (bitwise: fp32 on CPU, one thread, LoRA dropout on so the RNG restore matters)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_recipe_smoke import write_data

pytestmark = pytest.mark.slow
STEPS = 8


def config_file(tmp_path: Path, model_dir: Path, data: Path | None = None) -> Path:
    config = {
        "model": {"name": str(model_dir)},
        "data": {"sources": [{"path": str(data or write_data(tmp_path))}], "eval_rows": 3},
        "template": {"max_length": 64},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "train": {"max_steps": STEPS, "batch_tokens": 64, "grad_accum": 2, "lr": 1e-2,
                  "precision": "fp32", "save_every": 1, "keep_last": 2},
    }  # fmt: skip
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sftlab(*args: str, fault: str = "", wait: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "SFTLAB_FAULT": fault}
    command = [sys.executable, "-m", "sftlab.cli", *args]
    if not wait:
        return subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def steps_logged(run: Path) -> list[int]:
    return [r["step"] for r in records(run) if "loss" in r]


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("reference")
    result = sftlab(
        "train", str(config_file(folder, tiny_model_dir)), f"output_dir={folder / 'run'}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


def assert_same_as_reference(run: Path, reference: Path) -> None:
    assert steps_logged(run) == list(range(1, STEPS + 1))  # no gap, no duplicate
    ref_loss = [r["loss"] for r in records(reference) if "loss" in r]
    assert [r["loss"] for r in records(run) if "loss" in r] == ref_loss  # bitwise
    got, want = adapter(run), adapter(reference)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_sigkill_at_many_points_then_resume_gives_the_same_run(tmp_path, tiny_model_dir, reference):
    config, run = config_file(tmp_path, tiny_model_dir), tmp_path / "run"
    out = f"output_dir={run}"
    # 1. killed in the middle of writing checkpoint 3: checkpoint 2 stays the last complete one
    killed = sftlab("train", str(config), out, fault="checkpoint-write:3")
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        ".partial-step-000003-" + next(p.name.split("-")[-1] for p in (run / "checkpoints").iterdir() if p.name.startswith(".partial")),
        "step-000001", "step-000002",
    ]  # fmt: skip
    # 2. resumed, then killed between steps 5 and 6
    killed = sftlab("train", str(config), out, "--resume", fault="step:5")
    assert killed.returncode == -signal.SIGKILL and "resumed from" in killed.stdout
    assert not any(p.name.startswith(".partial") for p in (run / "checkpoints").iterdir())
    # 3. resumed, then killed at a moment the test does not choose: as soon as step 6 is logged
    proc = sftlab("train", str(config), out, "--resume", wait=False)
    deadline = time.monotonic() + 120
    while 6 not in steps_logged(run) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and 6 in steps_logged(run)  # still running when step 6 appeared
    proc.kill()
    assert proc.wait() == -signal.SIGKILL  # killed by the test, not finished on its own
    # 4. resumed to the end
    done = sftlab("train", str(config), out, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_as_reference(run, reference)
    assert [c.name for c in sorted((run / "checkpoints").iterdir())] == [
        "step-000007",
        "step-000008",
    ]


def test_sigint_saves_a_checkpoint_and_says_how_to_resume(tmp_path, tiny_model_dir, reference):
    config, run = config_file(tmp_path, tiny_model_dir), tmp_path / "run"
    proc = sftlab("train", str(config), f"output_dir={run}", "train.save_every=100", wait=False)
    deadline = time.monotonic() + 120
    while 2 not in steps_logged(run) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT
    assert "--resume" in stderr and "Traceback" not in stderr
    stopped = max(steps_logged(run))
    assert stopped < STEPS and (run / "checkpoints" / f"step-{stopped:06d}").is_dir()
    done = sftlab("train", str(config), f"output_dir={run}", "train.save_every=100", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_as_reference(run, reference)


def test_resume_refuses_changed_config_or_data_unless_forced(tmp_path, tiny_model_dir):
    data = write_data(tmp_path)
    config, run = config_file(tmp_path, tiny_model_dir, data), tmp_path / "run"
    out = f"output_dir={run}"
    assert sftlab("train", str(config), out, fault="step:2").returncode == -signal.SIGKILL

    changed = sftlab("train", str(config), out, "--resume", "train.lr=0.5")
    assert changed.returncode == 2 and "config train.lr: 0.01 -> 0.5" in changed.stderr
    data.write_text(data.read_text() + data.read_text().splitlines()[0] + "\n")
    changed = sftlab("train", str(config), out, "--resume")
    assert changed.returncode == 2 and f"data file {data}: contents changed" in changed.stderr
    fresh = sftlab("train", str(config), out)  # neither --resume nor --restart: nothing deleted
    assert fresh.returncode == 2 and "--resume" in fresh.stderr
    assert (run / "checkpoints" / "step-000002").is_dir()
    assert "--restart" in fresh.stderr and "--force-resume" in changed.stderr
    forced = sftlab("train", str(config), out, "--force-resume", "train.save_every=4")
    assert forced.returncode == 0 and "resuming despite a change" in forced.stdout
    assert "resumed from" in forced.stdout and steps_logged(run) == list(range(1, STEPS + 1))


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tiny_model_dir):
    result = sftlab(
        "train",
        str(config_file(tmp_path, tiny_model_dir)),
        f"output_dir={tmp_path / 'run'}",
        "--resume",
    )
    assert result.returncode == 2 and "nothing to resume" in result.stderr


def test_restart_starts_over_even_with_resume_auto(tmp_path, tiny_model_dir, reference):
    config, run = config_file(tmp_path, tiny_model_dir), tmp_path / "run"
    out = f"output_dir={run}"
    assert sftlab("train", str(config), out, fault="step:2").returncode == -signal.SIGKILL
    assert (run / "checkpoints" / "step-000002").is_dir()
    restarted = sftlab("train", str(config), out, "train.resume=auto", "--restart")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "resumed from" not in restarted.stdout
    assert_same_as_reference(run, reference)  # a fresh run from step 0, not a continuation


# ---------------------------------------------------------------------------------------------
# The path every default run takes: LoRA dropout 0, so the fused LoRA function (not peft's own
# forward) trains; bf16 autocast with a bf16-stored frozen base where the hardware has it.
# "auto" is that default on this machine (bf16 on CPUs with AVX-512 BF16/AMX, else fp32);
# "bf16" forces what auto picks on such CPUs and on bf16 GPUs, so every machine checks it.
# Resume is bitwise on both: the same ops in the same order on one thread give the same bits in
# bf16 as in fp32, and a checkpoint restores the fp32 adapter, AdamW state and RNG exactly.


def default_path_config(tmp_path: Path, model_dir: Path, precision: str) -> Path:
    config = {
        "model": {"name": str(model_dir)},
        "data": {"sources": [{"path": str(write_data(tmp_path))}], "eval_rows": 3},
        "template": {"max_length": 64},
        "lora": {"r": 4, "alpha": 8},  # dropout: its default
        "train": {"max_steps": STEPS, "batch_tokens": 64, "grad_accum": 2, "lr": 1e-2,
                  "precision": precision, "save_every": 1, "keep_last": 2},
    }  # fmt: skip
    path = tmp_path / "default.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_default_path_trains_through_the_fused_lora_function(precision, tiny_model_dir, tmp_path):
    from sftlab.config import load_config
    from sftlab.model.device import resolve_precision
    from sftlab.model.load import resolve_model
    from sftlab.recipes.sft import build_model

    config = load_config(default_path_config(tmp_path, tiny_model_dir, precision))
    assert config.lora.dropout == 0
    resolved = resolve_precision(precision, "cpu")
    model = build_model(config, resolve_model(str(tiny_model_dir)), resolved, "sdpa")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=resolved == "bf16"):
        logits = model(input_ids=torch.tensor([[104, 105, 258]])).logits
    seen, stack = set(), [logits.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_fn for next_fn, _ in node.next_functions)
    fused = [n for n in seen if "_LoraLinearBackward" in type(n).__name__]
    assert len(fused) == 2 * 7  # every adapted linear (q, k, v, o, gate, up, down) of both layers
    base = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert base.dtype == (torch.bfloat16 if resolved == "bf16" else torch.float32)


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_resume_on_the_default_path_is_bitwise(precision, tiny_model_dir, tmp_path):
    config = default_path_config(tmp_path, tiny_model_dir, precision)
    reference, run = tmp_path / "reference", tmp_path / "run"
    done = sftlab("train", str(config), f"output_dir={reference}")
    assert done.returncode == 0, done.stderr[-3000:]
    killed = sftlab("train", str(config), f"output_dir={run}", fault="step:3")
    assert killed.returncode == -signal.SIGKILL and steps_logged(run) == [1, 2, 3]
    resumed = sftlab("train", str(config), f"output_dir={run}", "--resume")
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-3000:]
    assert_same_as_reference(run, reference)
