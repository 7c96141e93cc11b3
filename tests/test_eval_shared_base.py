"""`sftlab eval RUN_DIR` on an adapter run loads the base model once: the base pass runs first,
then the adapter is merged into the same weights for the tuned pass. The answers must be those
of the two models loaded apart: the tuned one through export.artifacts.load_run (a fresh base
plus the adapter), the base one fresh from its folder.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from sftlab.eval.generate import generate
from sftlab.recipes.evaluate import EvalOptions, load_run_format, make_plan, run_eval


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, tiny_model_dir):
    """A one-step LoRA run whose adapter is then set to large random values, so the tuned
    model answers unlike its base (one step from B = 0 barely moves it)."""
    from sftlab.config import load_config
    from sftlab.recipes.sft import train
    from test_recipe_smoke import write_data

    root = tmp_path_factory.mktemp("shared")
    write_data(root)
    config = {
        "output_dir": str(root / "run"),
        "model": {"name": str(tiny_model_dir)},
        "data": {"sources": [{"path": str(root / "chat.jsonl")}], "eval_rows": 3},
        "template": {"max_length": 128},
        "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 1, "batch_tokens": 256, "grad_accum": 2, "precision": "fp32",
                  "probes": {"prompts": 0}},
    }  # fmt: skip
    (root / "cfg.yaml").write_text(yaml.safe_dump(config))
    run = train(load_config(root / "cfg.yaml"))
    weights = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    gen = torch.Generator().manual_seed(0)
    for name, t in tensors.items():
        if "lora_B" in name:
            tensors[name] = torch.randn(t.shape, generator=gen) * 0.5
    save_file(tensors, weights)
    return run


def test_the_shared_base_answers_as_two_separate_loads(adapter_run, tiny_model_dir, tmp_path):
    from sftlab.export.artifacts import load_run
    from sftlab.model.load import load_model, resolve_model

    opts = EvalOptions(target=str(adapter_run), out=tmp_path / "out", shots=0, max_new_tokens=8)
    plan = make_plan(opts)
    assert plan.base_first and [s.label for s in plan.run_order()] == ["base", "tuned"]
    report = run_eval(opts, say=lambda *_: None)

    renderer, stop_ids = load_run_format(adapter_run)
    prompts = [r.prompt for r in plan.rows]
    tuned = load_run(adapter_run).model
    base = load_model(resolve_model(str(tiny_model_dir))).eval()
    expected = {label: [g.text for g in generate(model, renderer, prompts, stop_ids, 8)]
                for label, model in (("tuned", tuned), ("base", base))}  # fmt: skip
    got = {label: [e["answers"][label] for e in report["examples"]] for label in expected}
    assert got == expected
    assert expected["tuned"] != expected["base"]  # the adapter does change the answers
    # the report keeps its order (tuned first) although the base model ran first
    assert [m["label"] for m in report["models"]] == ["tuned", "base"]
    assert report["settings"]["max_new_tokens_by_kind"] == {"task": 8, "general": 8, "safety": 8}


def test_a_chosen_baseline_is_loaded_on_its_own(adapter_run, tiny_model_dir, tmp_path):
    opts = EvalOptions(target=str(adapter_run), out=tmp_path / "out", baseline=str(tiny_model_dir))
    plan = make_plan(opts)
    assert not plan.base_first and [s.label for s in plan.run_order()] == ["tuned", "base"]
