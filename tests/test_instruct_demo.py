"""The instruct demo: its instruction set (counts, kinds, held-out items never trained on, answers
its own metric accepts), its figures on hand-made generations, and the `--kind` option.

The full demo trains Gemma 3 270M for minutes; its figures are in the README (`sftlab demo --kind
instruct`). Here every expected value is worked out by hand from the rows and answers below.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from typer.testing import CliRunner

from sftlab.eval.generate import Generation
from sftlab.recipes.instruct import judge, summarize
from sftlab.recipes.instruct_data import KINDS, instruction_set, write_instruction_set


@pytest.fixture(scope="module")
def data():
    return instruction_set()


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def test_at_least_400_rows_over_at_least_8_kinds(data):
    train, held = data
    kinds = Counter(e.kind for e in train)
    assert len(train) >= 400 and len(kinds) >= 8
    assert min(kinds.values()) >= 30, kinds  # no kind is a token gesture
    assert set(kinds) == set(KINDS) == {e.kind for e in held}
    assert len(held) >= 30
    assert sum(e.metric is not None for e in held) / len(held) >= 0.8  # most are checkable


def test_the_same_seed_gives_the_same_rows_and_another_seed_other_rows(data):
    again = instruction_set()
    assert [e.train_row() for e in again[0]] == [e.train_row() for e in data[0]]
    assert [e.heldout_row() for e in again[1]] == [e.heldout_row() for e in data[1]]
    other = instruction_set(seed=1)
    assert {e.prompt for e in other[1]} != {e.prompt for e in data[1]}


def test_no_held_out_prompt_or_item_is_trained_on(data):
    train, held = data
    trained_prompts = {e.prompt for e in train}
    trained_items = {e.item for e in train}
    for e in held:
        assert e.prompt not in trained_prompts, e.prompt
        assert e.item not in trained_items, e.item
    assert len({e.prompt for e in train}) == len(train)  # no duplicated training prompt


def test_held_out_facts_and_verbs_do_not_appear_in_training_rows_of_their_kind(data):
    """A held-out capital's country and a held-out verb are absent from the same kind's training
    rows: the answer cannot be copied from a trained row."""
    train, held = data
    for e in held:
        if e.item.startswith("capital:"):
            country = e.item.split(":", 1)[1]
            assert not any(country in t.prompt for t in train if t.kind == "facts"), country
        if e.item.startswith("past:"):
            verb = e.item.split(":", 1)[1]
            past_rows = [t for t in train if t.item.startswith("past:")]
            assert past_rows and not any(verb in words(t.prompt) for t in past_rows), verb


def test_every_reference_answer_passes_its_own_metric_and_a_wrong_one_fails(data):
    train, held = data
    for e in held + train:
        row = e.heldout_row()
        if e.metric is None:
            assert judge(row, e.answer) is None
            continue
        assert judge(row, e.answer) == 1.0, (e.prompt, e.answer, e.metric)
        assert judge(row, "I am not sure.") == 0.0, (e.prompt, e.metric)
        # Echoing the question back is not a right answer (no answer hides in its prompt) ...
        if e.kind != "extraction":  # ... except extraction, whose answer is in the prompt
            assert judge(row, e.prompt) == 0.0, (e.prompt, e.metric)


FACTORS = {
    ("kilometers", "meters"): 1000, ("meters", "centimeters"): 100, ("centimeters", "millimeters"): 10,
    ("kilograms", "grams"): 1000, ("liters", "milliliters"): 1000, ("hours", "minutes"): 60,
    ("minutes", "seconds"): 60, ("days", "hours"): 24, ("weeks", "days"): 7, ("feet", "inches"): 12,
    ("yards", "feet"): 3, ("years", "months"): 12,
}  # fmt: skip


def test_arithmetic_sorting_and_conversion_answers_are_right(data):
    train, held = data
    for e in train + held:
        if e.kind == "arithmetic":
            a, op, b, result = re.fullmatch(r"(\d+) ([-+*x]) (\d+) = (-?\d+)\.", e.answer).groups()
            expected = {"+": int(a) + int(b), "-": int(a) - int(b)}.get(op, int(a) * int(b))
            assert int(result) == expected, e.answer
        if e.kind == "sorting":
            listed = re.search(r": (.*)$", e.prompt).group(1).split(", ")
            key = int if listed[0].isdigit() else str
            assert e.answer.split(", ") == [str(x) for x in sorted(map(key, listed))]
        if e.kind == "conversion":  # factors written out here, not read from the tables
            n, big, m, small = re.fullmatch(r"(\d+) (\w+) is (\d+) (\w+)\.", e.answer).groups()
            factor = FACTORS.get((big, small)) or 1 / FACTORS[(small, big)]
            assert int(n) * factor == int(m), e.answer


def test_files_are_written_in_formats_training_and_eval_read(tmp_path):
    from sftlab.config import SourceConfig
    from sftlab.data.mixture import load_source

    train_file, held_file = write_instruction_set(tmp_path)
    train_rows = [json.loads(x) for x in train_file.read_text().splitlines()]
    assert set(train_rows[0]) == {"prompt", "completion", "kind"}
    for path in (train_file, held_file):
        source = load_source(SourceConfig(path=str(path)))
        assert not source.rejected and len(source.conversations) == len(
            path.read_text().splitlines()
        )
    held_rows = [json.loads(x) for x in held_file.read_text().splitlines()]
    assert all("item" in r for r in held_rows) and any("metric" in r for r in held_rows)


def gen(text: str, stopped: bool) -> Generation:
    return Generation(text, list(range(len(text.split()))), stopped)


def test_summary_figures_on_hand_made_generations():
    rows = [
        {"prompt": "What is 2 + 3?", "completion": "2 + 3 = 5.", "metric": {"name": "numeric"}},
        {"prompt": "Sort: b, a", "completion": "a, b", "metric": {"name": "exact"}},
        {"prompt": "Name the capital of Peru.", "completion": "The capital of Peru is Lima.",
         "metric": {"name": "contains", "reference": "Lima"}},
        {"prompt": "Name three fruit.", "completion": "Apple, pear, plum."},  # not checkable
    ]  # fmt: skip
    before = [
        gen("What is 2 + 3? What is 2 + 4? What is 2 + 5?", False),  # echo; its last number is 5
        gen("the the the the the the the the the the the the the", False),  # loop
        gen("Name the capital of Peru. Name the capital of Chile.", False),  # echo
        gen("", True),  # empty, stopped
    ]
    fewshot = [gen("5", True), gen("b, a", True), gen("Lima", True), gen("Apple", True)]
    after = [
        gen("2 + 3 = 5.", True),
        gen("a, b", True),
        gen("It is Lima.", True),
        gen("Kiwi.", False),
    ]
    markers = ["<end_of_turn>"]
    s = summarize(rows, before, fewshot, after, markers)
    # before: one of four stopped; one loop; two echoes; numeric reads the last number (5: right),
    # the loop is wrong, the echo of the capital question does not name Lima.
    assert s["stop_rate_before"] == 0.25 and s["loop_rate_before"] == 0.25
    assert s["echo_rate_before"] == 0.5 and s["empty_rate_before"] == 0.25
    assert s["task_accuracy_before"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["correct_before"] == [1.0, 0.0, 0.0, None]
    # few-shot: all stopped; "b, a" is not sorted: 2 of 3 checkable right.
    assert s["stop_rate_fewshot"] == 1.0 and s["task_accuracy_fewshot"] == pytest.approx(
        2 / 3, abs=1e-4
    )
    # tuned: three of four stopped, all three checkable right, no loop or echo.
    assert s["stop_rate_after"] == 0.75 and s["task_accuracy_after"] == 1.0
    assert s["loop_rate_after"] == 0.0 and s["echo_rate_after"] == 0.0
    assert s["checkable_prompts"] == 3 and s["heldout_prompts"] == [r["prompt"] for r in rows]
    assert s["answers_after"][2] == "It is Lima."


def test_a_leaked_marker_counts_against_the_tuned_model():
    rows = [{"prompt": "Say hi.", "completion": "Hi."}]
    leaked = [gen("Hi.<end_of_turn>\n<start_of_turn>user", False)]
    s = summarize(rows, leaked, leaked, leaked, ["<start_of_turn>", "<end_of_turn>"])
    assert s["leak_rate_after"] == 1.0 and s["task_accuracy_after"] == 0.0  # nothing checkable


def test_demo_kind_must_be_known():
    from sftlab.cli import app

    result = CliRunner().invoke(app, ["demo", "--kind", "poetry"])
    assert result.exit_code != 0
    assert "--kind must be persona or instruct" in str(result.exception)


def test_demo_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, monkeypatch):
    """The whole demo's wiring in seconds: a tiny random Llama (ChatML template) stands in for
    Gemma, two training steps, 8-token answers. The figures are meaningless here; their presence
    and consistency with the answers and the run directory are not."""
    from sftlab.recipes import instruct
    from sftlab.recipes.instruct import run_instruct_demo

    monkeypatch.setattr(instruct, "MAX_NEW_TOKENS", 8)

    run_dir = tmp_path / "instruct"
    summary = run_instruct_demo(
        run_dir, ["train.max_steps=2", "lora.r=2", "lora.alpha=4"], model=str(tiny_model_dir)
    )
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    held = [json.loads(x) for x in (run_dir / "data" / "heldout.jsonl").read_text().splitlines()]
    assert saved["heldout_prompts"] == [r["prompt"] for r in held] and saved["steps"] == 2
    for stage in ("before", "fewshot", "after"):
        answers, correct = saved[f"answers_{stage}"], saved[f"correct_{stage}"]
        assert len(answers) == len(held) == len(correct)
        checked = [c for c in correct if c is not None]
        assert len(checked) == saved["checkable_prompts"]
        assert saved[f"task_accuracy_{stage}"] == pytest.approx(
            sum(checked) / len(checked), abs=1e-4
        )
        assert 0.0 <= saved[f"stop_rate_{stage}"] <= 1.0
    for key in ("loop_rate_before", "loop_rate_after", "echo_rate_after", "train_seconds",
                "template", "trained_token_rows", "run_dir", "few_shot_examples"):  # fmt: skip
        assert key in saved, key
    assert saved["run_dir"] == str(run_dir) and (run_dir / "adapter").is_dir()
    assert len(saved["few_shot_examples"]) == 3
    base = json.loads((run_dir / "data" / "base_answers.json").read_text())
    assert (
        base["zero_shot"] == saved["answers_before"]
        and base["few_shot"] == saved["answers_fewshot"]
    )
