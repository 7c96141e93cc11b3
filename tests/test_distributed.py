"""The same loop under torchrun: 2 CPU processes (gloo) match one process with the same global
batch (grad_accum 2 x 1 process == grad_accum 1 x 2 processes), step by step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from test_recipe_smoke import write_data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_losses(run: Path) -> list[float]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, tiny_model_dir):
    config = {
        "model": {"name": str(tiny_model_dir)},
        "data": {"sources": [{"path": str(write_data(tmp_path))}], "eval_rows": 3},
        "template": {"max_length": 64},
        "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 3, "batch_tokens": 64, "lr": 1e-2, "precision": "fp32"},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    single = subprocess.run(
        [sys.executable, "-m", "sftlab.cli", "train", str(path), f"output_dir={tmp_path / 'one'}",
         "train.grad_accum=2"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), "-m", "sftlab.cli", "train", str(path),
         f"output_dir={tmp_path / 'two'}", "train.grad_accum=1"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert double.returncode == 0, double.stderr[-3000:]

    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert len(one) == len(two) == 3
    assert one == pytest.approx(two, rel=1e-5)
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key
