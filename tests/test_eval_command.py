"""`sftlab eval` end to end on tiny real models (byte tokenizer, random Llama) saved as folders:
eval.json holds every figure and example, eval.html shows them in a real browser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_tiny_model, make_tiny_tokenizer
from sftlab.core.errors import SftlabError
from sftlab.eval.metrics import score
from sftlab.recipes.evaluate import EvalOptions, run_eval
from sftlab.report.eval_page import write_eval_page
from test_audit_page import browser_page, parse  # noqa: F401  (a fixture, used by name)

HELDOUT = [
    {"prompt": "Capital of France?", "completion": "Paris", "metric": "contains"},
    {"prompt": "2+3?", "completion": "#### 5", "metric": "numeric"},
    {"prompt": "Say anything", "completion": "x", "metric": {"name": "regex", "pattern": "^"}},
    {"prompt": "Describe the sea", "completion": "The sea is wide and blue."},
]
TRAIN = [{"prompt": f"{i}+{i}?", "completion": f"#### {2 * i}"} for i in range(6)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    for name, seed in (("tuned", 0), ("base", 1)):
        make_tiny_model(seed=seed).save_pretrained(root / name, safe_serialization=True)
        make_tiny_tokenizer().save_pretrained(root / name)
    (root / "general.txt").write_text("A short general text.\nAnother line of prose.\n")
    opts = EvalOptions(
        target=str(root / "tuned"), out=root / "out", data=str(write_jsonl(root / "heldout.jsonl", HELDOUT)),
        baseline=str(root / "base"), shots=2, train=str(write_jsonl(root / "train.jsonl", TRAIN)),
        general=str(root / "general.txt"), safety=True, max_new_tokens=6,
    )  # fmt: skip
    run_eval(opts, say=lambda *_: None)
    return root / "out"


def test_eval_json_holds_every_figure_and_example(evaluated):
    report = json.loads((evaluated / "eval.json").read_text())
    assert [m["label"] for m in report["models"]] == ["tuned", "base"]
    variants = ["tuned", "base", "base_few_shot"]
    assert list(report["task"]["scores"]) == variants
    assert report["task"]["metrics"] == [
        "contains",
        "numeric",
        "regex",
        "rouge_l",
    ]  # row 4: default
    assert len(report["examples"]) == 4 and len(report["few_shot_examples"]) == 2
    for variant in variants:
        # each score re-judged here from the stored answer, and the mean recomputed
        judged = [score(ex["metric"], ex["answers"][variant], ex["reference"],
                        **({"pattern": "^"} if ex["metric"] == "regex" else {}))
                  for ex in report["examples"]]  # fmt: skip
        assert [ex["scores"][variant] for ex in report["examples"]] == judged
        assert report["task"]["scores"][variant] == pytest.approx(sum(judged) / 4)
        assert report["examples"][2]["scores"][variant] == 1.0  # "^" matches any answer
        assert report["health"][variant]["n"] == 4
        stopped = [ex["health"][variant]["stopped"] for ex in report["examples"]]
        assert report["health"][variant]["stop_rate"] == sum(stopped) / 4
    assert "verdict" in report["task"] and isinstance(
        report["task"]["prompting_reached_tuned"], bool
    )
    general = report["general_text"]
    assert general["tuned"]["documents"] == 2
    # 21 + 22 bytes, each + EOS, minus the first token of each document
    assert general["tuned"]["tokens"] == 21 + 22
    assert general["perplexity_change"] == pytest.approx(
        general["tuned"]["perplexity"] / general["base"]["perplexity"] - 1)  # fmt: skip
    assert len(report["general_answers"]) == 8
    safety = report["safety"]
    assert (safety["n_harmful"], safety["n_benign"], len(safety["probes"])) == (12, 12, 24)
    assert report["speed"]["tokens"] > 0 and report["speed"]["tokens_per_second"] > 0


def test_eval_page_in_a_browser(evaluated, browser_page):  # noqa: F811
    page, seen = browser_page
    html = (evaluated / "eval.html").read_text(encoding="utf-8")
    for tag, attrs in parse(html).tags:
        for name in ("src", "href", "xlink:href", "action"):
            assert attrs.get(name) is None or attrs[name].startswith(("#", "data:")), (tag, attrs)
    page.goto((evaluated / "eval.html").resolve().as_uri(), wait_until="load")
    for chart in (
        "#chart-task svg",
        "#chart-health svg",
        "#chart-general svg",
        "#chart-safety svg",
    ):
        box = page.locator(chart).bounding_box()
        assert box and box["width"] > 100 and box["height"] > 50, chart
        assert page.locator(f"{chart} path").count() > 3, chart
    assert page.locator("tr[data-example]").count() == 4
    assert page.locator("#verdict").inner_text().startswith("Prompting the base model with 2")
    assert seen["errors"] == []
    assert [u for u in seen["requests"] if not u.startswith(("file:", "data:"))] == []


def test_a_model_without_heldout_data_is_a_clear_error(tmp_path, tiny_model_dir):
    with pytest.raises(SftlabError, match="--data HELDOUT is needed"):
        run_eval(EvalOptions(target=str(tiny_model_dir), out=tmp_path))


def test_lm_eval_not_installed_is_a_clear_message(tmp_path, tiny_model_dir):
    import importlib.util

    if importlib.util.find_spec("lm_eval") is not None:
        pytest.skip("lm-eval is installed here")
    with pytest.raises(SftlabError, match=r"pip install 'sftlab\[lm-eval\]'"):
        run_eval(
            EvalOptions(target=str(tiny_model_dir), out=tmp_path, data="x", lm_eval="arc_easy")
        )


def test_eval_page_without_eval_json_is_a_clear_error(tmp_path):
    with pytest.raises(SftlabError, match="no eval.json"):
        write_eval_page(tmp_path)


def test_demo_heldout_identity_rows_judge_like_the_demo_adherence(tmp_path):
    from sftlab.eval.tasks import load_task_file
    from sftlab.recipes import persona
    from sftlab.recipes.demo import write_heldout_identity

    path = tmp_path / "heldout_identity.jsonl"
    write_heldout_identity(path)
    rows = load_task_file(path, None)
    assert [r.prompt_text for r in rows] == list(persona.HELDOUT_QUESTIONS)
    name = persona.PERSONA_NAME
    for answer in (f"I am {name}.", f"{name.lower()}'s here", f"{name}ator", "I am SmolLM", ""):
        assert rows[0].judge(answer) == float(persona.adheres(answer, name)), answer


def test_a_run_directory_defaults_to_its_eval_split_base_model_and_training_examples(
    tmp_path, tiny_model_dir, monkeypatch
):
    import yaml

    from sftlab.config import load_config
    from sftlab.recipes.sft import train
    from test_recipe_smoke import write_data

    project = tmp_path / "project"
    project.mkdir()
    write_data(project)
    config = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name": str(tiny_model_dir)},
        "data": {"sources": [{"path": "chat.jsonl"}], "eval_rows": 3},  # relative to the config
        "template": {"max_length": 128},
        "lora": {"r": 4, "alpha": 8},
        "train": {
            "max_steps": 1,
            "batch_tokens": 256, "grad_accum": 2,
            "precision": "fp32",
            "probes": {"prompts": 0},
        },
    }
    (project / "cfg.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(project)
    run = train(load_config(project / "cfg.yaml"))
    monkeypatch.chdir(
        tmp_path
    )  # evaluated from elsewhere: the config's relative path must not matter
    report = run_eval(EvalOptions(target=str(run), out=tmp_path / "out", shots=2, max_new_tokens=3),
                      say=lambda *_: None)  # fmt: skip
    assert report["models"] == [{"label": "tuned", "name": str(run)},
                                {"label": "base", "name": str(tiny_model_dir)}]  # fmt: skip
    assert report["task"]["n"] == 3 and "the run's eval split" in report["data"]
    assert len(report["few_shot_examples"]) == 2
    assert set(report["task"]["scores"]) == {"tuned", "base", "base_few_shot"}
    assert (tmp_path / "out" / "eval.html").is_file()
