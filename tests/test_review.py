"""The review loop: decisions.json applied to an audit folder moves rows between kept and
rejected, keeps the counts true, and refuses a bad decisions file with a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from audit_dir import write_audit_dir
from sftlab.core.errors import DataError
from sftlab.hygiene.review import apply_review


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def ids(path: Path) -> set[str]:
    return {r["id"] for r in lines(path)}


def decisions_file(folder: Path, decisions: dict, audit: str = "audit") -> Path:
    path = folder / "decisions.json"
    path.write_text(json.dumps({"version": 1, "audit": audit, "decisions": decisions}))
    return path


@pytest.fixture
def audit(tmp_path) -> Path:
    return write_audit_dir(tmp_path / "audit")


def test_drop_and_keep_move_rows_and_the_counts_follow(audit, tmp_path):
    before_kept = {r["id"]: r for r in lines(audit / "kept.jsonl")}
    before_rejected = {r["id"]: r for r in lines(audit / "rejected.jsonl")}
    path = decisions_file(tmp_path, {"a.jsonl:2": "drop", "a.jsonl:5": "keep"})

    result = apply_review(audit, path)

    assert result.dropped == ["a.jsonl:2"] and result.restored == ["a.jsonl:5"]
    assert ids(audit / "kept.jsonl") == {
        "a.jsonl:1",
        "a.jsonl:4",
        "a.jsonl:5",
        "a.jsonl:6",
        "b.jsonl:1",
    }
    assert ids(audit / "rejected.jsonl") == {"a.jsonl:2", "a.jsonl:3", "b.jsonl:2"}
    dropped = next(r for r in lines(audit / "rejected.jsonl") if r["id"] == "a.jsonl:2")
    assert (dropped["file"], dropped["line"], dropped["stage"]) == ("a.jsonl", 2, "review")
    assert dropped["reason"] == "dropped in review"
    assert [r["rule"] for r in dropped["rules"]] == ["review"]
    assert dropped["row"]["messages"] == before_kept["a.jsonl:2"]["messages"]
    restored = next(r for r in lines(audit / "kept.jsonl") if r["id"] == "a.jsonl:5")
    assert restored["messages"] == before_rejected["a.jsonl:5"]["row"]["messages"]
    assert (restored["source"], restored["line"]) == ("a.jsonl", 5)
    assert "slop" in restored["review"]  # the rule it was kept over is recorded
    # a decided row has been reviewed: it leaves the queue; the undecided one stays
    assert ids(audit / "review.jsonl") == {"a.jsonl:4"}
    summary = json.loads((audit / "audit.json").read_text())
    assert summary["totals"] == {"rows": 8, "kept": 5, "rejected": 3, "review": 1}
    assert summary["per_source"]["a.jsonl"] == {"rows": 6, "kept": 4, "rejected": 2}
    assert summary["per_source"]["b.jsonl"] == {"rows": 2, "kept": 1, "rejected": 1}
    assert summary["per_rule"]["review"] == {"fired": 1, "rejected": 1, "review": 0}
    assert summary["per_rule"]["surprising_tokens"]["review"] == 0
    assert summary["per_rule"]["too_short"]["review"] == 1
    assert summary["per_rule"]["slop"] == {
        "fired": 1,
        "rejected": 1,
        "review": 0,
        "kept_in_review": 1,
    }
    page = (audit / "audit.html").read_text()
    assert "dropped in review" in page  # the page was rebuilt from the new files
    assert "dropped 1" in result.summary() and "a.jsonl:5" in result.summary()


def test_applying_the_same_decisions_twice_moves_nothing_more(audit, tmp_path):
    path = decisions_file(tmp_path, {"a.jsonl:2": "drop", "a.jsonl:5": "keep", "a.jsonl:1": "keep"})
    apply_review(audit, path)
    kept, rejected = (audit / "kept.jsonl").read_text(), (audit / "rejected.jsonl").read_text()
    again = apply_review(audit, path)
    assert again.dropped == [] and again.restored == []
    assert sorted(again.unchanged) == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:5"]
    assert (audit / "kept.jsonl").read_text() == kept
    assert (audit / "rejected.jsonl").read_text() == rejected


def test_a_row_that_was_never_a_conversation_cannot_be_kept(audit, tmp_path):
    unreadable = {"file": "b.jsonl", "line": 3, "index": 2, "stage": "read",
                  "reason": "not valid JSON", "row": "{broken", "rules": []}  # fmt: skip
    with (audit / "rejected.jsonl").open("a") as out:
        out.write(json.dumps(unreadable) + "\n")
    summary = json.loads((audit / "audit.json").read_text())
    summary["totals"]["rows"] += 1
    summary["totals"]["rejected"] += 1
    (audit / "audit.json").write_text(json.dumps(summary))

    result = apply_review(audit, decisions_file(tmp_path, {"b.jsonl:3": "keep"}))

    assert result.not_restorable == ["b.jsonl:3"] and result.restored == []
    assert "b.jsonl:3" in ids_or_derived(audit / "rejected.jsonl")
    assert "could not be kept" in result.summary()


def ids_or_derived(path: Path) -> set[str]:
    return {r.get("id") or f"{r['file']}:{r['line']}" for r in lines(path)}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"decisions": {}}), 'no "version": 1'),
        (
            json.dumps({"version": 1, "decisions": ["a.jsonl:1"]}),
            '"decisions" is missing or not an object',
        ),
        (json.dumps({"version": 1, "decisions": {"a.jsonl:1": "maybe"}}), "'a.jsonl:1': 'maybe'"),
        (json.dumps({"version": 1, "decisions": {"z.jsonl:9": "drop"}}), "not in the audit"),
    ],
)
def test_a_bad_decisions_file_is_a_clear_error(audit, tmp_path, content, expected):
    path = tmp_path / "mine.json"
    path.write_text(content)
    kept_before = (audit / "kept.jsonl").read_text()
    with pytest.raises(DataError) as info:
        apply_review(audit, path)
    assert str(path) in str(info.value) and expected in str(info.value)
    assert (audit / "kept.jsonl").read_text() == kept_before  # nothing half-applied


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sftlab.cli", *map(str, args)],
        env=dict(os.environ), capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_cli_applies_decisions_and_says_what_moved(audit, tmp_path):
    result = run_cli("data", "apply-review", audit, decisions_file(tmp_path, {"a.jsonl:4": "drop"}))
    assert result.returncode == 0, result.stderr
    assert "dropped 1 kept row(s) in review: a.jsonl:4" in result.stdout
    assert "a.jsonl:4" in ids(audit / "rejected.jsonl")

    missing = run_cli("data", "apply-review", audit, tmp_path / "nope.json")
    assert missing.returncode == 2
    assert "nope.json" in missing.stderr and "not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_review_of_a_real_audit_folder_through_both_commands(tmp_path):
    """The folder `sftlab data audit` writes (not a hand-made one): decisions applied by
    `data apply-review`, and by `data audit --decisions` on a fresh audit, move the same rows."""
    rows = [
        {"messages": [{"role": "user", "content": "What is the capital of France?"},
                      {"role": "assistant", "content": "The capital of France is Paris."}]},
        {"messages": [{"role": "user", "content": "Name a primary colour."},
                      {"role": "assistant", "content": "Red is a primary colour."}]},
        {"messages": [{"role": "user", "content": "Greet me."},
                      {"role": "assistant", "content": "Hello, I am {{name}}."}]},  # placeholder
    ]  # fmt: skip
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")  # line 4: unreadable
    decisions = decisions_file(
        tmp_path, {"chat.jsonl:2": "drop", "chat.jsonl:3": "keep", "chat.jsonl:4": "keep"}
    )
    first = tmp_path / "first"
    made = run_cli("data", "audit", data, "--out", first, "--tokenizer", "words")
    assert made.returncode == 0, made.stderr
    assert ids(first / "kept.jsonl") == {"chat.jsonl:1", "chat.jsonl:2"}

    applied = run_cli("data", "apply-review", first, decisions)
    assert applied.returncode == 0, applied.stderr
    assert "chat.jsonl:2" in applied.stdout and "could not be kept" in applied.stdout
    assert ids(first / "kept.jsonl") == {"chat.jsonl:1", "chat.jsonl:3"}
    restored = next(r for r in lines(first / "kept.jsonl") if r["id"] == "chat.jsonl:3")
    assert restored["messages"] == rows[2]["messages"]
    summary = json.loads((first / "audit.json").read_text())
    assert (summary["totals"]["kept"], summary["totals"]["rejected"]) == (2, 2)
    assert 'data-row="chat.jsonl:2"' in (first / "audit.html").read_text()  # now a rejected row

    second = tmp_path / "second"
    again = run_cli(
        "data", "audit", data, "--out", second, "--tokenizer", "words", "--decisions", decisions
    )
    assert again.returncode == 0, again.stderr
    assert (second / "kept.jsonl").read_text() == (first / "kept.jsonl").read_text()
