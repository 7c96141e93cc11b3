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
    assert len(identity) == len(general) > 50  # mixed 1:1
    trained_questions = {json.loads(r)["messages"][0]["content"] for r in identity}
    assert not trained_questions & set(saved["heldout_questions"])
