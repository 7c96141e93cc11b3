"""The whole recipe on a tiny random Llama: artifacts, what changed, pre-flight failures, export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import CHATML
from sftlab.config import load_config
from sftlab.core.errors import MaskError
from sftlab.recipes.sft import train

QA = [("What is one plus one?", "Two."), ("Name a colour.", "Blue."), ("Say hi.", "Hi!")]


def write_data(folder: Path) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for _ in range(8)
        for q, a in QA
    ]
    rows.append({"messages": [{"role": "assistant", "content": "I speak first"}]})  # rejected
    path = folder / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_config(tmp_path: Path, model_dir: Path, *overrides: str):
    data = write_data(tmp_path)
    base = {
        "name": "smoke",
        "output_dir": str(tmp_path / "run"),
        "model": {"name": str(model_dir)},
        "data": {"sources": [{"path": str(data)}], "eval_rows": 3},
        "template": {"max_length": 128},
        "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 4, "batch_tokens": 256, "grad_accum": 2, "lr": 1e-2, "precision": "fp32"},
    }
    return load_config(None, list(overrides), base=base)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_lora_run_writes_every_artifact_and_trains_only_the_adapter(tmp_path, tiny_model_dir):
    run = train(tiny_config(tmp_path, tiny_model_dir))
    for name in (
        "config.yaml",
        "manifest.json",
        "mask_report.json",
        "metrics.jsonl",
        "rejected.jsonl",
        "summary.json",
        "chat_format.json",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "tokenizer/tokenizer.json",
        "tokenizer/chat_template.jinja",
    ):
        assert (run / name).is_file(), name  # fmt: skip
    assert not (run / "model").exists()

    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    # LoRA weights, and the embedding rows of the tokens this random model never learned (its
    # <|im_end|> is a zero padding row): train.token_rows: auto
    untrained = json.loads((run / "mask_report.json").read_text())["untrained_tokens"]
    assert untrained["flagged"] == untrained["trained_rows"] == [258]
    assert adapter and all("lora_" in k or "trainable_tokens_delta" in k for k in adapter)
    assert all(
        v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k
    )  # moved from zero init

    steps = [r for r in lines(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["supervised_tokens"] > 0 and r["tokens_per_s"] > 0 for r in steps)
    evals = [r for r in lines(run / "metrics.jsonl") if "eval_loss" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 4
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]

    rejected = lines(run / "rejected.jsonl")
    assert len(rejected) == 1 and rejected[0]["line"] == 25 and "assistant" in rejected[0]["reason"]
    report = json.loads((run / "mask_report.json").read_text())
    assert report["rows"] + report["eval_rows"] == 24 and report["problem_count"] == 0
    assert report["spans_ending_in_end_of_turn"] == report["supervised_spans"] == report["rows"]

    manifest = json.loads((run / "manifest.json").read_text())
    assert (
        manifest["seed"] == 0
        and manifest["method"] == "lora"
        and manifest["end_of_turn"] == "<|im_end|>"
    )
    assert len(manifest["data"][0]["sha256"]) == 64 and manifest["template_sha256"]
    chat_format = json.loads((run / "chat_format.json").read_text())
    assert (run / "tokenizer" / "chat_template.jinja").read_text() == chat_format["template"]


def test_full_finetuning_saves_changed_weights(tmp_path, tiny_model_dir):
    run = train(tiny_config(tmp_path, tiny_model_dir, "train.method=full", "train.max_steps=2"))
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(run / "model" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed and not (run / "adapter").exists()


def test_same_seed_same_run(tmp_path, tiny_model_dir):
    a = train(
        tiny_config(tmp_path / "a", tiny_model_dir) if (tmp_path / "a").mkdir() is None else None
    )
    b = train(
        tiny_config(tmp_path / "b", tiny_model_dir) if (tmp_path / "b").mkdir() is None else None
    )
    loss = [[r["loss"] for r in lines(run / "metrics.jsonl") if "loss" in r] for run in (a, b)]
    assert loss[0] == loss[1]


def test_broken_mask_stops_before_training(tmp_path, tiny_model_dir):
    # A template whose generation prompt ("bot") is not what its turns render ("assistant"):
    # training would teach a prompt inference never shows, so no row is trainable.
    template = tmp_path / "mismatch.jinja"
    template.write_text(CHATML.replace("'<|im_start|>assistant\n'", "'<|im_start|>bot\n'"))
    config = tiny_config(tmp_path, tiny_model_dir, f"template.chat_template={template}")
    with pytest.raises(MaskError, match="no trainable rows"):
        train(config)
    run = tmp_path / "run"
    assert (run / "mask_report.json").is_file() and not (run / "adapter").exists()
    rejected = lines(run / "rejected.jsonl")
    assert len(rejected) == 25 and all(r["stage"] in ("render", "format") for r in rejected)
    assert sum("train/inference mismatch" in r["reason"] for r in rejected) == 24


def test_end_of_turn_override_must_match_the_template(tmp_path, tiny_model_dir):
    from sftlab.core.errors import TemplateError

    with pytest.raises(TemplateError, match="right after an assistant message"):
        train(tiny_config(tmp_path, tiny_model_dir, "template.end_of_turn=<|im_start|>"))


def test_merged_export_loads_and_generates_with_plain_transformers(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.eval.generate import generate, user_turn
    from sftlab.export.artifacts import load_run

    run = train(tiny_config(tmp_path, tiny_model_dir, "export.merged=true"))
    merged = run / "merged"
    model = AutoModelForCausalLM.from_pretrained(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hi."}],
        add_generation_prompt=True,
        tokenize=True,
        return_tensors="pt",
    )["input_ids"]
    plain = model.generate(prompt, max_new_tokens=12, do_sample=False)[
        0, prompt.shape[1] :
    ].tolist()
    assert model.generation_config.eos_token_id == [258]

    ours = load_run(run)
    assert ours.renderer.encode_prompt(user_turn("Say hi.")) == prompt[0].tolist()
    mine = generate(
        ours.model, ours.renderer, [user_turn("Say hi.")], ours.stop_ids, max_new_tokens=12
    )[0]
    # a prefix check alone holds when nothing was generated: the same non-empty tokens, then the
    # same ending (the end-of-turn token, or the token limit for both)
    assert mine.token_ids and plain[: len(mine.token_ids)] == mine.token_ids
    assert plain[len(mine.token_ids) :] == ([258] if mine.stopped else [])


def test_log_every_sets_the_steps_that_print_a_progress_line(tmp_path, tiny_model_dir, capsys):
    run = train(tiny_config(tmp_path, tiny_model_dir, "train.log_every=2"))
    printed = [int(m) for m in re.findall(r"^step (\d+)/4 ", capsys.readouterr().out, re.M)]
    assert printed == [2, 4]
    assert [r["step"] for r in lines(run / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]


def test_batch_tokens_below_max_length_stops_before_anything_loads(tmp_path, tiny_model_dir):
    from sftlab.config import RunConfig
    from sftlab.core.errors import ConfigError

    config = tiny_config(tmp_path, tiny_model_dir)  # max_length 128, built in code below
    bad = RunConfig.model_validate({**config.model_dump(), "train": {"batch_tokens": 64}})
    with pytest.raises(ConfigError, match="64 is smaller than template.max_length .128."):
        train(bad)
    assert not (tmp_path / "run").exists()
