"""A trained run reloads for generate, chat and export from any working directory, with the
permissions it was trained with (issue 11 item 9): a relative model.name is resolved against
the config's folder when training and recorded absolutely; a pickle base reloads when the run
was trained with --allow-pickle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from conftest import make_tiny_model, make_tiny_tokenizer
from sftlab.config import load_config
from sftlab.eval.generate import generate, user_turn
from sftlab.export.artifacts import load_run
from sftlab.recipes.sft import train
from test_recipe_smoke import write_data

TRAIN = {"max_steps": 2, "batch_tokens": 256, "grad_accum": 2, "lr": 1e-2, "precision": "fp32"}


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "sftlab.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_relative_model_name_resolves_against_the_config_and_reloads_anywhere(
    tmp_path, tiny_model_dir
):
    project, elsewhere, other = tmp_path / "project", tmp_path / "elsewhere", tmp_path / "other"
    for folder in (project, elsewhere, other):
        folder.mkdir()
    shutil.copytree(tiny_model_dir, project / "tiny")
    config = {
        "output_dir": "run",  # relative to where `sftlab train` runs (elsewhere/)
        "model": {"name": "./tiny"},  # relative to the config's folder (project/)
        "data": {"sources": [{"path": write_data(project).name}], "eval_rows": 3},
        "template": {"max_length": 128},
        "lora": {"r": 4, "alpha": 8},
        "train": TRAIN,
    }
    (project / "cfg.yaml").write_text(yaml.safe_dump(config))
    trained = cli("train", project / "cfg.yaml", cwd=elsewhere)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = elsewhere / "run"
    assert json.loads((run / "manifest.json").read_text())["model"]["source"] == str(
        (project / "tiny").resolve()
    )
    answered = cli("generate", run, "--json", "--prompt", "Say hi.", "--max-new-tokens", "4",
                   cwd=other)  # fmt: skip
    assert answered.returncode == 0, answered.stderr[-3000:]
    assert "response" in json.loads(answered.stdout.strip().splitlines()[-1])
    exported = cli("export", run, "--merged", "--out", other / "merged", cwd=other)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (other / "merged" / "model.safetensors").is_file()


def test_run_trained_with_allow_pickle_reloads(tmp_path, monkeypatch):
    pickled = tmp_path / "pickled"
    model = make_tiny_model()
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # an old-style pickle checkpoint
    make_tiny_tokenizer().save_pretrained(pickled)
    base = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name": str(pickled), "allow_pickle": True},
        "data": {"sources": [{"path": str(write_data(tmp_path))}], "eval_rows": 3},
        "template": {"max_length": 128},
        "lora": {"r": 4, "alpha": 8},
        "train": TRAIN,
    }
    run = train(load_config(None, base=base))
    monkeypatch.chdir(tmp_path.parent)
    loaded = load_run(run)
    out = generate(loaded.model, loaded.renderer, [user_turn("Say hi.")], loaded.stop_ids, 4)[0]
    assert out.token_ids  # four greedy tokens, or fewer ending on the stop token
    embed = loaded.model.get_input_embeddings().weight
    # the pickle base's own weights, but for the rows trained beside LoRA (train.token_rows: auto
    # trains this random model's <|im_end|>, a zero padding row no training ever moved)
    kept = [i for i in range(len(embed)) if i not in loaded.manifest["trained_token_rows"]]
    assert torch.equal(embed[kept], model.get_input_embeddings().weight[kept])
