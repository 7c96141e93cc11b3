"""`sftlab demo` end to end, shortened to two steps: the wiring, the data it writes, the summary.
The full demo (and its adherence figures) is `make demo`; its numbers are in the README."""

from __future__ import annotations

import json

import pytest

from sftlab.recipes import persona
from sftlab.recipes.demo import run_demo

pytestmark = pytest.mark.real


def test_demo_runs_and_writes_its_summary(tmp_path):
    summary = run_demo(tmp_path / "demo", ["train.max_steps=2"])
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    for key in (
        "adherence_before",
        "adherence_after",
        "stop_rate_after",
        "heldout_questions",
        "train_seconds",
        "persona_name",
        "run_dir",
    ):
        assert key in saved, key  # fmt: skip
    assert saved["persona_name"] == persona.PERSONA_NAME and saved["steps"] == 2
    assert saved["heldout_questions"] == list(persona.HELDOUT_QUESTIONS)
    assert saved["adherence_before"] <= 0.1  # the base model has never heard of the persona

    identity = (tmp_path / "demo" / "data" / "identity.jsonl").read_text().splitlines()
    general = (tmp_path / "demo" / "data" / "general.jsonl").read_text().splitlines()
    assert len(identity) == len(general) > 50  # general.jsonl is the pool the mix draws from
    sources = json.loads((tmp_path / "demo" / "mask_report.json").read_text())["data"]["sources"]
    # 4 of each file's rows are eval rows (8 spread over two equal files); 30 general rows trained
    assert [s["eval"] for s in sources] == [4, 4]
    assert [s["train_after_sampling"] for s in sources] == [len(identity) - 4, 30]
    trained_questions = {json.loads(r)["messages"][0]["content"] for r in identity}
    assert not trained_questions & set(saved["heldout_questions"])


def test_demo_mixes_its_two_halves_one_to_one_by_supervised_tokens(tmp_path):
    """The general rows are the base model's own answers, ~3x longer than an identity answer:
    1:1 by rows let them outweigh the identity rows 3.4:1 in what is trained (and cost general
    text 16.5% perplexity). The demo takes as many general rows as balance the tokens."""
    from sftlab.model.load import load_tokenizer, resolve_model
    from sftlab.recipes.demo import demo_config, write_data

    identity_path, general_path, _ = write_data(tmp_path / "data")
    config = demo_config(tmp_path / "run", identity_path, general_path)
    identity_source, general_source = config.data.sources
    assert identity_source.rows is None and general_source.rows == 30

    tokenizer = load_tokenizer(resolve_model("default"))

    def answer_tokens(text: str) -> int:  # the answer and the <|im_end|> that closes it
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1

    identity = [json.loads(r)["messages"][-1]["content"] for r in identity_path.open()]
    general = [json.loads(r)["completion"] for r in general_path.open()]
    identity_tokens = sum(answer_tokens(a) for a in identity)
    general_mean = sum(answer_tokens(a) for a in general) / len(general)
    assert 3.0 < general_mean / (identity_tokens / len(identity)) < 3.8  # why rows alone misled
    assert 0.8 < general_mean * general_source.rows / identity_tokens < 1.25
