"""load_source and build_mixture: path resolution, reconciliation, splits, sizes, seeds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from sftlab.config import SourceConfig
from sftlab.core.errors import DataError, Rejection
from sftlab.core.types import Conversation, Message, RowRef, ToolCall
from sftlab.data.mixture import SourceData, build_mixture, load_source

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def make_source(label: str, n: int, file: str | None = None) -> SourceData:
    """n distinct one-turn conversations; the answer names the source and the row."""
    file = file or f"{label}.jsonl"
    conversations = [
        Conversation(
            messages=(Message("user", f"q{i}"), Message("assistant", f"{label}-{i}")),
            source=RowRef(file, i + 1, i),
        )
        for i in range(n)
    ]
    return SourceData(label, file, "messages", conversations, [], n_input=n)


def answers(conversations: list[Conversation]) -> list[str]:
    return [c.messages[-1].content for c in conversations]


# ---------------------------------------------------------------------------------------------
# load_source


def test_load_source_keeps_and_rejects_every_row_with_stage_and_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"instruction": "a", "output": "b"}\n'
        "{not json}\n"
        '{"instruction": "c", "output": 5}\n'
        '{"instruction": "d", "output": "e"}\n'
    )
    data = load_source(SourceConfig(path=str(path), name="mine"))
    assert (data.label, data.file, data.fmt, data.n_input) == ("mine", str(path), "alpaca", 4)
    assert answers(data.conversations) == ["b", "e"]
    assert [c.source for c in data.conversations] == [
        RowRef(str(path), 1, 0),
        RowRef(str(path), 4, 3),
    ]
    assert data.rejected == [
        Rejection(str(path), 2, 1, "read", data.rejected[0].reason, row="{not json}"),
        Rejection(
            str(path),
            3,
            2,
            "format",
            "output: expected a string, got a number (5)",
            row={"instruction": "c", "output": 5},
        ),
    ]
    assert data.rejected[0].reason.startswith("not valid JSON: Expecting property name")


def test_relative_path_tries_base_dir_then_cwd(tmp_path, monkeypatch):
    config_dir, work_dir = tmp_path / "configs", tmp_path / "work"
    config_dir.mkdir()
    work_dir.mkdir()
    (config_dir / "a.txt").write_text("from the config folder\n")
    (work_dir / "a.txt").write_text("from the working folder\n")
    (work_dir / "b.txt").write_text("only here\n")
    monkeypatch.chdir(work_dir)
    first = load_source(SourceConfig(path="a.txt"), base_dir=config_dir)
    assert first.conversations[0].text == "from the config folder"
    assert (
        load_source(SourceConfig(path="b.txt"), base_dir=config_dir).conversations[0].text
        == "only here"
    )
    with pytest.raises(DataError) as caught:
        load_source(SourceConfig(path="c.txt"), base_dir=config_dir)
    assert (
        str(caught.value)
        == f"c.txt: file not found; tried: {config_dir / 'c.txt'}, {work_dir / 'c.txt'}"
    )


def test_explicit_format_skips_detection(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "doc", "prompt": "p", "completion": "c"}\n')
    assert load_source(SourceConfig(path=str(path))).fmt == "prompt_completion"
    data = load_source(SourceConfig(path=str(path), format="text"))
    assert data.fmt == "text" and data.conversations[0].text == "doc"


def test_no_usable_rows_is_a_data_error_quoting_reasons(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": ""}\n{"instruction": "b"}\n')
    with pytest.raises(DataError) as caught:
        load_source(SourceConfig(path=str(path)))
    assert str(caught.value) == (
        f"{path}: no usable rows: 2 rejected; first reasons: "
        "line 1: messages[1].content: empty assistant answer: expected text or tool calls; "
        "line 2: output: missing required key 'output'"
    )


def test_columnar_files_with_null_filled_fields_load(tmp_path):
    """Parquet and datasets give every message every struct field, null where a row had none."""
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    call = {"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    rows = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
        [
            {"role": "user", "content": "Go"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "ok"},
            {"role": "assistant", "content": "Done"},
        ],
    ]
    expected = [
        (Message("user", "Hi"), Message("assistant", "Yo")),
        (
            Message("user", "Go"),
            Message("assistant", "", tool_calls=(ToolCall("f", {"x": 1}),)),
            Message("tool", "ok"),
            Message("assistant", "Done"),
        ),
    ]
    table = datasets.Dataset.from_dict({"messages": rows})
    table.save_to_disk(str(tmp_path / "saved"))
    pq.write_table(table.data.table, tmp_path / "rows.parquet")
    for name in ("saved", "rows.parquet"):
        data = load_source(SourceConfig(path=str(tmp_path / name)))
        assert [c.messages for c in data.conversations] == expected, name
        assert [c.source.line for c in data.conversations] == [0, 0]


def test_fixture_files_reconcile():
    for name in (
        "alpaca.json",
        "sharegpt_tools.json",
        "messages.jsonl",
        "messages.csv",
        "text.txt",
    ):
        data = load_source(SourceConfig(path=name), base_dir=FIXTURES)
        assert (len(data.conversations), len(data.rejected)) == (data.n_input, 0), name


# ---------------------------------------------------------------------------------------------
# build_mixture


def test_eval_split_then_all_train_rows_by_default():
    mixture = build_mixture([make_source("a", 20)], [(None, None)], 0.1, None, seed=0)
    assert len(mixture.eval) == 2 and len(mixture.train) == 18
    assert set(answers(mixture.train)) | set(answers(mixture.eval)) == {f"a-{i}" for i in range(20)}
    assert not set(answers(mixture.train)) & set(answers(mixture.eval))


def test_rows_cycle_a_seeded_permutation_and_never_repeat_eval_rows():
    mixture = build_mixture([make_source("a", 10)], [(None, 25)], 0.2, None, seed=3)
    held_out = set(answers(mixture.eval))
    counts = Counter(answers(mixture.train))
    assert len(held_out) == 2 and len(mixture.train) == 25
    assert not held_out & set(counts)
    # 8 training rows, 25 taken: every row 3 times, one row a 4th time.
    assert sorted(counts.values()) == [3] * 7 + [4]


def test_ratios_per_source_and_report():
    sources = [make_source("a", 11), make_source("b", 21)]
    mixture = build_mixture(sources, [(0.5, None), (2.0, None)], 0.1, None, seed=1)
    by_source = Counter(a.split("-")[0] for a in answers(mixture.train))
    # eval: round(1.1) = 1 and round(2.1) = 2; train: round(0.5 * 10) = 5, round(2.0 * 19) = 38
    assert by_source == {"a": 5, "b": 38}
    assert mixture.report["sources"] == [
        {
            "label": "a",
            "file": "a.jsonl",
            "format": "messages",
            "rows_in": 11,
            "kept": 11,
            "rejected": 0,
            "eval": 1,
            "train_after_sampling": 5,
        },
        {
            "label": "b",
            "file": "b.jsonl",
            "format": "messages",
            "rows_in": 21,
            "kept": 21,
            "rejected": 0,
            "eval": 2,
            "train_after_sampling": 38,
        },
    ]
    assert (mixture.report["train"], mixture.report["eval"]) == (43, 3)


def test_eval_rows_spread_in_proportion_to_kept_rows():
    sources = [make_source("a", 30), make_source("b", 10)]
    mixture = build_mixture(sources, [(None, None), (None, None)], 0.5, eval_rows=8, seed=0)
    assert Counter(a.split("-")[0] for a in answers(mixture.eval)) == {"a": 6, "b": 2}
    assert len(mixture.train) == 32


def test_eval_never_takes_every_row_and_small_fraction_takes_one():
    tiny = build_mixture([make_source("a", 2)], [(None, None)], 0.01, None, seed=0)
    assert (len(tiny.eval), len(tiny.train)) == (1, 1)
    single = build_mixture([make_source("a", 1)], [(None, None)], 0.5, None, seed=0)
    assert (len(single.eval), len(single.train)) == (0, 1)
    greedy = build_mixture([make_source("a", 4)], [(None, None)], 0.0, eval_rows=100, seed=0)
    assert (len(greedy.eval), len(greedy.train)) == (3, 1)
    none = build_mixture([make_source("a", 4)], [(None, None)], 0.0, None, seed=0)
    assert (len(none.eval), len(none.train)) == (0, 4)


def test_same_file_listed_twice_never_trains_on_eval_rows():
    twice = [make_source("a", 20, file="same.jsonl"), make_source("a", 20, file="same.jsonl")]
    mixture = build_mixture(twice, [(None, None), (None, 40)], 0.2, None, seed=5)
    assert not {c.source for c in mixture.train} & {c.source for c in mixture.eval}


def test_deterministic_by_seed():
    def run(seed: int):
        sources = [make_source("a", 30), make_source("b", 12)]
        return build_mixture(sources, [(None, 50), (1.5, None)], 0.1, None, seed=seed)

    first, again, other = run(7), run(7), run(8)
    assert answers(first.train) == answers(again.train)
    assert answers(first.eval) == answers(again.eval)
    assert answers(first.train) != answers(other.train)
    assert Counter(a.split("-")[0] for a in answers(first.train)) == {"a": 50, "b": 16}


def test_train_is_shuffled_across_sources():
    sources = [make_source("a", 50), make_source("b", 50)]
    mixture = build_mixture(sources, [(None, None), (None, None)], 0.0, None, seed=0)
    labels = [a.split("-")[0] for a in answers(mixture.train)]
    assert labels != sorted(labels)  # not a then b


def test_rejections_carried_into_the_mixture(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [{"text": f"doc {i}"} for i in range(5)] + [{"text": ""}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_source(SourceConfig(path=str(path)))
    mixture = build_mixture([data], [(None, None)], 0.2, None, seed=0)
    assert [(r.line, r.stage) for r in mixture.rejected] == [(6, "format")]
    assert len(mixture.train) + len(mixture.eval) + len(mixture.rejected) == 6
