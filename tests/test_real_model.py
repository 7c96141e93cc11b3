"""A real run on the embedded SmolLM2-135M-Instruct: a few steps, the loss goes down, the saved
run reloads and generates (through the CLI), and the merged export behaves the same in plain
transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sftlab.config import load_config
from sftlab.recipes import persona
from sftlab.recipes.sft import train

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smol")
    rows = persona.identity_rows(persona.PERSONA_NAME, persona.PERSONA_MAKER, 48, seed=1)
    data = folder / "identity.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(None, base={
        "output_dir": str(folder / "run"),
        "data": {"sources": [{"path": str(data)}], "eval_rows": 6},
        "template": {"system_prompt": "You are a helpful assistant.", "max_length": 256},
        "train": {"epochs": 4, "max_steps": 8, "batch_tokens": 512, "grad_accum": 2, "lr": 1e-3,
                  "warmup_ratio": 0.0},
        "export": {"merged": True},
    })  # fmt: skip
    return train(config)


def test_loss_goes_down(smol_run):
    records = [json.loads(x) for x in (smol_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert evals[-1] < 0.7 * evals[0]
    summary = json.loads((smol_run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["eval_loss_after"] == evals[-1]


def test_saved_run_reloads_and_generates_through_the_cli(smol_run):
    result = subprocess.run(
        [sys.executable, "-m", "sftlab.cli", "generate", str(smol_run), "--json",
         "--prompt", "Who are you?", "--max-new-tokens", "48"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["stopped"] and answer["response"].strip()
    assert "<|im_end|>" not in answer["response"] and "<|im_start|>" not in answer["response"]


def test_merged_model_matches_in_plain_transformers(smol_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.eval.generate import generate, user_turn
    from sftlab.export.artifacts import load_run

    merged = smol_run / "merged"
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    messages = [{"role": "user", "content": "What is your name?"}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_tensors="pt"
    )
    assert "You are a helpful assistant." in tokenizer.decode(
        prompt["input_ids"][0]
    )  # baked-in prompt
    with torch.no_grad():
        plain = model.generate(**prompt, max_new_tokens=40, do_sample=False)[
            0, prompt["input_ids"].shape[1] :
        ]
    run = load_run(smol_run)
    ours = generate(
        run.model, run.renderer, [user_turn("What is your name?")], run.stop_ids, max_new_tokens=40
    )[0]
    assert ours.stopped and plain.tolist()[: len(ours.token_ids) + 1] == ours.token_ids + [2]
