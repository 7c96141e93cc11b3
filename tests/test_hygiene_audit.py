"""The audit end to end: `sftlab data audit` as a user runs it, the folder it writes, every row
accounted for, decontamination, config errors, token lengths, --select with a real (tiny) model,
and `sftlab train`'s hygiene stage training on the audited rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sftlab.config import HygieneConfig, SourceConfig, load_config, load_hygiene_config
from sftlab.core.errors import ConfigError
from sftlab.data.mixture import load_source
from sftlab.hygiene.length import tokenizer_counter
from sftlab.hygiene.run import build_options, run_audit

GOOD = [
    ("Why is the sky blue?", "Air scatters blue light more than red light, so the sky looks blue."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("How many legs does a spider have?", "A spider has eight legs."),
]


def msg_row(prompt: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": prompt},
                                    {"role": "assistant", "content": answer}]})  # fmt: skip


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    """chat.jsonl (JSON lines) and alpaca.json (an array), with known defects on known lines."""
    lines = [msg_row(p, a) for p, a in GOOD]  # lines 1-4
    lines.append('{"messages": [oops')  # line 5: not JSON -> a read error
    lines.append(msg_row("Greet me.", "Hello, I am {{name}}."))  # line 6: placeholder
    lines.append(msg_row(*GOOD[0]))  # line 7: exact copy of line 1
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join(lines) + "\n", encoding="utf-8")
    alpaca = tmp_path / "alpaca.json"
    rows = [
        {"instruction": "What is two plus two?", "input": "", "output": "Two plus two is four."},
        {"instruction": "Give me a fruit.", "input": "", "output": "I'm sorry, but I can't help with that."},
        {"instruction": "Why is the sky blue?", "input": "",
         "output": "Air scatters blue light more than red light, so the sky looks blue."},  # copy of chat:1
    ]  # fmt: skip
    alpaca.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n", encoding="utf-8")
    return chat, alpaca


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sftlab.cli", *map(str, args)], env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_cli_writes_the_five_outputs_and_accounts_for_every_row(inputs, tmp_path):
    chat, alpaca = inputs
    out = tmp_path / "audit"
    proc = run_cli("data", "audit", chat, alpaca, "--out", out, "--tokenizer", "words")
    assert proc.returncode == 0, proc.stderr
    for name in ("kept.jsonl", "rejected.jsonl", "review.jsonl", "audit.json", "audit.html"):
        assert (out / name).is_file(), name
    kept, rejected = jsonl(out / "kept.jsonl"), jsonl(out / "rejected.jsonl")
    summary = json.loads((out / "audit.json").read_text())
    # chat.jsonl: 7 rows; rejected: line 5 (unreadable), 6 (placeholder), 7 (copy of line 1).
    # alpaca.json: 3 rows (lines 2-4 of the array); rejected: the refusal (line 3), the copy (4).
    counts = {Path(f).name: (s["rows"], s["kept"], s["rejected"]) for f, s in summary["per_source"].items()}
    assert counts == {"chat.jsonl": (7, 4, 3), "alpaca.json": (3, 1, 2)}
    assert summary["totals"] == {"rows": 10, "kept": 5, "rejected": 5, "review": 0}
    assert sorted(r["id"] for r in kept) == sorted(
        ["chat.jsonl:1", "chat.jsonl:2", "chat.jsonl:3", "chat.jsonl:4", "alpaca.json:2"])
    by_line = {(Path(r["file"]).name, r["line"]): r for r in rejected}
    assert by_line[("chat.jsonl", 5)]["stage"] == "read"
    assert [f["rule"] for f in by_line[("chat.jsonl", 6)]["rules"]] == ["placeholder"]
    assert by_line[("chat.jsonl", 7)]["duplicate_of"] == "chat.jsonl:1"
    assert by_line[("alpaca.json", 4)]["duplicate_of"] == "chat.jsonl:1"
    assert "refusal" in by_line[("alpaca.json", 3)]["reason"]
    assert summary["per_rule"]["exact_duplicate"] == {"fired": 2, "rejected": 2, "review": 0}
    assert summary["duplicate_clusters"] == [
        {"kept": "chat.jsonl:1", "rejected": ["chat.jsonl:7", "alpaca.json:4"]}]
    # kept.jsonl is training data as it is: the data stage reads it back, every row.
    back = load_source(SourceConfig(path=str(out / "kept.jsonl")))
    assert back.fmt == "messages" and len(back.conversations) == 5 and not back.rejected


def test_a_file_named_twice_is_audited_once(inputs, tmp_path):
    chat, _ = inputs
    _, summary = run_audit([chat, chat], build_options(HygieneConfig()), tmp_path / "o", say=lambda _: None)
    assert summary["totals"]["rows"] == 7 and summary["inputs"] == [str(chat)]


def test_decisions_are_applied_after_the_audit(inputs, tmp_path, capsys):
    from sftlab.recipes.audit import audit_command

    chat, _ = inputs
    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps({"version": 1, "audit": "out",
                                     "decisions": {"chat.jsonl:2": "drop", "chat.jsonl:6": "keep"}}))  # fmt: skip
    audit_command([chat], tmp_path / "out", decisions=decisions, tokenizer="words")
    kept = {r["id"] for r in jsonl(tmp_path / "out" / "kept.jsonl")}
    # The audit keeps lines 1-4; the person drops line 2 and keeps line 6 despite its placeholder.
    assert kept == {"chat.jsonl:1", "chat.jsonl:3", "chat.jsonl:4", "chat.jsonl:6"}
    rejected = {r["id"] for r in jsonl(tmp_path / "out" / "rejected.jsonl")}
    assert rejected == {"chat.jsonl:2", "chat.jsonl:5", "chat.jsonl:7"}
    assert "dropped 1" in capsys.readouterr().out


def test_eval_files_reject_the_training_rows_they_overlap(inputs, tmp_path):
    chat, _ = inputs
    evals = tmp_path / "eval.jsonl"
    evals.write_text(msg_row("Why is the sky blue on a clear summer day at noon?", "Scattering.") + "\n")
    options = build_options(HygieneConfig(eval_files=[str(evals)]))
    result, summary = run_audit([chat], options, tmp_path / "out", say=lambda _: None)
    contaminated = [r.id for r, v in zip(result.rows, result.verdicts, strict=True)
                    if any(f.rule == "contamination" for f in v.findings)]  # fmt: skip
    # The eval prompt has 13 words: 6 word 8-grams; "why is the sky blue" shares none of them.
    assert contaminated == []
    evals.write_text(msg_row("Why is the sky blue?", "Scattering.") + "\n")  # 5 words: compared whole
    options = build_options(HygieneConfig(eval_files=[str(evals)]))
    result, summary = run_audit([chat], options, tmp_path / "out", say=lambda _: None)
    contaminated = [r.id for r, v in zip(result.rows, result.verdicts, strict=True)
                    if any(f.rule == "contamination" for f in v.findings)]  # fmt: skip
    assert contaminated == ["chat.jsonl:1", "chat.jsonl:7"]
    assert summary["per_rule"]["contamination"]["rejected"] == 2


def test_actions_and_thresholds_from_a_config_file(inputs, tmp_path):
    chat, _ = inputs
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("hygiene:\n  actions:\n    placeholder: review\n    exact_duplicate: 'off'\n"
                   "    near_duplicate: 'off'\n")
    options = build_options(load_hygiene_config(cfg))
    result, summary = run_audit([chat], options, tmp_path / "out", say=lambda _: None)
    review = jsonl(tmp_path / "out" / "review.jsonl")
    assert [r["id"] for r in review] == ["chat.jsonl:6"]
    assert review[0]["why"][0]["rule"] == "placeholder" and "{{name}}" in review[0]["why"][0]["reason"]
    assert summary["totals"] == {"rows": 7, "kept": 6, "rejected": 1, "review": 1}  # only line 5
    top_level = tmp_path / "top.yaml"
    top_level.write_text("thresholds:\n  near_duplicate: 0.95\n")
    assert load_hygiene_config(top_level).thresholds == {"near_duplicate": 0.95}


def test_config_errors_name_the_file_line_and_the_known_rules(tmp_path):
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("hygiene:\n  thresholds:\n    slopp: 3\n  colour: red\n")
    with pytest.raises(ConfigError) as err:
        load_hygiene_config(cfg)
    text = str(err.value)
    assert f"{cfg}:2" in text and "slopp" in text and "known rules" in text
    assert f"{cfg}:4" in text and "colour: unknown key" in text


def test_cli_argument_errors_are_one_clear_message(inputs, tmp_path):
    chat, _ = inputs
    proc = run_cli("data", "audit", chat, tmp_path / "missing.jsonl", "--out", tmp_path / "o",
                   "--select", "3", "--tokenizer", "words")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "missing.jsonl: file not found" in proc.stderr and "give --model too" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_lengths_are_counted_with_the_given_tokenizer(inputs, tmp_path, tiny_tokenizer):
    chat, _ = inputs
    options = build_options(HygieneConfig(), count_tokens=tokenizer_counter(tiny_tokenizer),
                            tokenizer_name="tiny-bytes")  # fmt: skip
    _, summary = run_audit([chat], options, tmp_path / "out", say=lambda _: None)
    # The tiny tokenizer has one token per UTF-8 byte: the lengths are the texts' byte counts.
    readable = [GOOD[0], GOOD[1], GOOD[2], GOOD[3], ("Greet me.", "Hello, I am {{name}}."), GOOD[0]]
    assert summary["lengths"]["prompt_tokens"] == [len(p.encode()) for p, _ in readable]
    assert summary["lengths"]["response_tokens"] == [len(a.encode()) for _, a in readable]
    assert summary["lengths"]["tokenizer"] == "tiny-bytes"


def test_select_keeps_the_n_best_rows_by_ifd_with_a_real_model(inputs, tmp_path, tiny_model_dir):
    from sftlab.recipes.audit import audit_command

    chat, _ = inputs
    summary = audit_command([chat], tmp_path / "out", model=str(tiny_model_dir), select=2)
    scores = summary["model_scores"]
    assert scores["tokens_per_s"] > 0 and len(scores["ifd"]) == 4  # the rows the rules keep
    kept = {r["id"] for r in jsonl(tmp_path / "out" / "kept.jsonl")}
    # Best = highest IFD below 1, then rows at or above 1 (Li et al. 2024).
    ranked = sorted(scores["ifd"], key=lambda i: (scores["ifd"][i] >= 1, -scores["ifd"][i]))
    assert kept == set(ranked[:2])
    assert summary["per_rule"]["not_selected"]["rejected"] == 2


def test_training_with_hygiene_trains_on_the_audited_rows(inputs, tmp_path, tiny_model_dir):
    from sftlab.recipes.prepare import prepare_data

    chat, _ = inputs
    config = load_config(None, [], base={
        "output_dir": str(tmp_path / "run"), "model": {"name": str(tiny_model_dir)},
        "data": {"sources": [{"path": str(chat)}], "eval_rows": 1, "cache": False},
        "template": {"chat_template": "chatml", "max_length": 128},
        "hygiene": {"actions": {"refusal": "off"}},
    })  # fmt: skip
    prepared = prepare_data(config, None, say=lambda _: None)
    # 7 rows: 1 unreadable, 2 rejected by hygiene (placeholder, duplicate), 4 kept: 1 eval + 3 train.
    assert len(prepared.train) == 3 and len(prepared.eval) == 1
    stages = sorted((r.line, r.stage) for r in prepared.rejected)
    assert stages == [(5, "read"), (6, "hygiene"), (7, "hygiene")]
    audit = tmp_path / "run" / "audit"
    assert json.loads((audit / "audit.json").read_text())["totals"]["kept"] == 4
    assert len(jsonl(audit / "kept.jsonl")) == 4
