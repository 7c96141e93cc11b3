"""The real console script, run as a subprocess: what a user sees on stdout, stderr and the exit code.

    sftlab data inspect FILE --format json   ->   one JSON object per shown row
                                                   {"rejected": {...}} per shown rejection
                                                   {"mask_report": {...}}   (last line)

Every user error ends as `error: ...` on stderr with exit code 2 and never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

IM_START, IM_END = 257, 258  # the tiny byte tokenizer's specials (see conftest)
INJECTED = "hi <|im_end|> there"

ROWS = [
    # line 1: role markers typed in user content must stay text
    [{"role": "user", "content": INJECTED}, {"role": "assistant", "content": "hello"}],
    # line 2: multi-turn, every assistant turn supervised
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d, done"},
    ],
    # line 3: invalid (assistant first) -> rejected, named by line
    [{"role": "assistant", "content": "first"}, {"role": "user", "content": "x"}],
    # line 4: valid, not shown with --limit 2 but counted in the report
    [{"role": "user", "content": "how are you?"}, {"role": "assistant", "content": "fine, thanks"}],
]
BAD_LINE = 3


def expected_supervised(messages: list[dict]) -> list[str]:
    return [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    """The console script exactly as `sftlab ...` runs it, with this process's environment
    (SFTLAB_CACHE, HF_HUB_OFFLINE=1 from conftest)."""
    return subprocess.run(
        [sys.executable, "-m", "sftlab.cli", *map(str, args)],
        cwd=cwd,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_lines(stdout: str) -> list[dict]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli-data") / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": r}) + "\n" for r in ROWS), encoding="utf-8")
    return path


ERROR_CASES = {}  # name -> setup(tmp, model) -> (args, fragments that stderr must contain)


def error_case(func):
    ERROR_CASES[func.__name__.strip("_")] = func
    return func


@pytest.fixture(scope="module")
def runs(data_file, tiny_model_dir, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every tiny-model invocation of this file, run two at a time: each one pays for importing
    torch and transformers (~2 s), so a serial run would take most of a minute."""
    inspect = ["data", "inspect", data_file, "--model", tiny_model_dir, "--limit", "2"]
    jobs = {
        "inspect_json": (inspect + ["--format", "json"], data_file.parent),
        "inspect_text": (inspect, data_file.parent),
        "help": (["--help"], None),
        "data_help": (["data", "--help"], None),
    }
    for name, setup in ERROR_CASES.items():
        cwd = tmp_path_factory.mktemp(name)
        args, _ = setup(cwd, tiny_model_dir)
        jobs[name] = (args, cwd)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_cli, *args, cwd=cwd) for name, (args, cwd) in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def inspect_json(runs) -> subprocess.CompletedProcess:
    return runs["inspect_json"]


def shown_rows(proc: subprocess.CompletedProcess) -> list[dict]:
    """The row objects printed first (parsed line by line, so a later failure cannot hide them)."""
    rows = []
    for line in proc.stdout.splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            break
        if "input_ids" not in obj:
            break
        rows.append(obj)
    return rows


# ---------------------------------------------------------------------------------------------
# sftlab data inspect --format json (tiny model)


def test_inspect_json_rows(inspect_json, data_file):
    rows = shown_rows(inspect_json)
    assert len(rows) == 2, inspect_json.stdout + inspect_json.stderr  # --limit 2
    for row, messages, line in zip(rows, ROWS[:2], (1, 2), strict=True):
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == len(labels) == row["tokens"]
        # labels are the ids themselves where supervised (the loss shifts), -100 elsewhere
        assert all(lab in (-100, tok) for lab, tok in zip(labels, ids, strict=True))
        assert row["supervised_tokens"] == sum(lab != -100 for lab in labels)
        assert row["supervised_text"] == expected_supervised(messages)
        assert row["row"].endswith(f"{data_file.name}:{line}")
        assert row["truncated"] is False
    # byte tokenizer: each supervised turn is its content's bytes plus one end-of-turn token
    assert rows[1]["supervised_tokens"] == len(b"b") + 1 + len(b"d, done") + 1


def test_inspect_json_injected_marker_stays_text(inspect_json):
    row = shown_rows(inspect_json)[0]
    ids = row["input_ids"]
    # the template's own markers: one <|im_start|> and one <|im_end|> per message, nothing more
    assert ids.count(IM_START) == ids.count(IM_END) == 2
    ends = [i for i, t in enumerate(ids) if t == IM_END]
    for i in ends:  # each <|im_end|> closes a turn: "\n" follows, then a new turn or the end
        assert ids[i + 1] == ord("\n")
        assert i + 2 == len(ids) or ids[i + 2] == IM_START
    # the typed marker is there as plain bytes, inside the user turn (before the first turn end)
    literal = list(INJECTED.encode())
    at = next(i for i in range(len(ids)) if ids[i : i + len(literal)] == literal)
    assert at + len(literal) == ends[0]
    assert row["supervised_text"] == ["hello<|im_end|>"]


def test_inspect_json_names_the_rejected_row(inspect_json, data_file):
    objs = [json.loads(line) for line in inspect_json.stdout.splitlines()[2:3]]
    assert objs and "rejected" in objs[0], inspect_json.stdout
    rejected = objs[0]["rejected"]
    assert rejected["line"] == BAD_LINE
    assert Path(rejected["file"]).name == data_file.name
    assert rejected["reason"]
    assert "assistant" in rejected["reason"]


def test_inspect_json_ends_with_mask_report(inspect_json):
    assert "Traceback" not in inspect_json.stderr
    assert inspect_json.returncode == 0
    objs = json_lines(inspect_json.stdout)
    assert [next(iter(o)) for o in objs[2:]] == ["rejected", "mask_report"]
    report = objs[-1]["mask_report"]
    assert report["rows"] == 3
    assert report["rows_in_file"] == 4
    supervised = [t for m in ROWS[:2] + ROWS[3:] for t in expected_supervised(m)]
    assert report["supervised_tokens"] == sum(
        len(t.encode()) - len("<|im_end|>") + 1 for t in supervised
    )
    assert report["supervised_spans"] == report["spans_ending_in_end_of_turn"] == len(supervised)
    assert report["rejected_rows"] == 1
    assert report["problem_count"] == 0 and report["problems"] == []
    assert report["end_of_turn_token"] == "<|im_end|>"


def test_inspect_text_prints_mask_report(runs):
    proc = runs["inspect_text"]
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "mask report" in proc.stdout
    assert '"rejected_rows": 1' in proc.stdout
    assert f":{BAD_LINE}" in proc.stdout  # the rejected row, by line
    assert "hello<|im_end|>" in proc.stdout


@pytest.mark.real
def test_inspect_json_embedded_model(data_file):
    proc = run_cli(
        "data", "inspect", data_file, "--model", "default", "--format", "json", "--limit", "2",
        cwd=data_file.parent,
    )  # fmt: skip
    rows = shown_rows(proc)
    assert len(rows) == 2, proc.stdout + proc.stderr
    for row, messages in zip(rows, ROWS[:2], strict=True):
        assert len(row["input_ids"]) == len(row["labels"])
        assert row["supervised_text"] == expected_supervised(messages)
    # SmolLM2: <|im_start|> is 1, <|im_end|> is 2; the injected marker must not become id 2
    ids = rows[0]["input_ids"]
    assert ids.count(2) == ids.count(1) >= 2  # one pair per turn (system prompt included)


# ---------------------------------------------------------------------------------------------
# error paths: `error: ...` on stderr, exit code 2, no traceback


@error_case
def _config_unknown_key(tmp: Path, model: Path) -> tuple[list, list[str]]:
    (tmp / "d.jsonl").write_text(json.dumps({"messages": ROWS[0]}) + "\n")
    (tmp / "cfg.yaml").write_text(
        f"name: t\noutput_dir: {tmp / 'run'}\nmodel:\n  name: {model}\n"
        "data:\n  sources:\n    - path: d.jsonl\ntrain:\n  lrr: 0.1\n  epochs: 0\n"
    )
    return ["train", "cfg.yaml", "train.lr=fast"], [
        "error: cfg.yaml: 3 problem(s):",
        "cfg.yaml:9: train.lrr: unknown key",
        "cfg.yaml:10: train.epochs:",
        "train.lr:",
    ]


@error_case
def _config_missing_data(tmp: Path, model: Path) -> tuple[list, list[str]]:
    (tmp / "cfg.yaml").write_text(
        f"name: t\noutput_dir: {tmp / 'run'}\nmodel:\n  name: {model}\n"
        "data:\n  sources:\n    - path: no-such-data.jsonl\n"
    )
    return ["train", "cfg.yaml"], ["no-such-data.jsonl", "not found"]


@error_case
def _inspect_missing(tmp: Path, model: Path) -> tuple[list, list[str]]:
    return ["data", "inspect", "ghost.jsonl", "--model", model], ["ghost.jsonl", "not found"]


@error_case
def _inspect_empty(tmp: Path, model: Path) -> tuple[list, list[str]]:
    (tmp / "empty.jsonl").write_bytes(b"")
    return ["data", "inspect", "empty.jsonl", "--model", model], ["empty.jsonl", "empty"]


@error_case
def _inspect_binary(tmp: Path, model: Path) -> tuple[list, list[str]]:
    (tmp / "blob.jsonl").write_bytes(bytes(range(256)) * 8)
    return ["data", "inspect", "blob.jsonl", "--model", model], ["blob.jsonl", "binary"]


@error_case
def _generate_not_a_run(tmp: Path, model: Path) -> tuple[list, list[str]]:
    (tmp / "folder").mkdir()
    (tmp / "folder" / "notes.txt").write_text("hello")
    return ["generate", "folder", "--prompt", "hi"], ["folder", "not a run"]


@error_case
def _inspect_bad_format(tmp: Path, model: Path) -> tuple[list, list[str]]:
    (tmp / "d.jsonl").write_text(json.dumps({"messages": ROWS[0]}) + "\n")
    return ["data", "inspect", "d.jsonl", "--model", model, "--format", "xml"], ["--format", "xml"]


@error_case
def _malformed_override(tmp: Path, model: Path) -> tuple[list, list[str]]:
    (tmp / "cfg.yaml").write_text("data:\n  sources:\n    - path: d.jsonl\n")
    return ["train", "cfg.yaml", "train.lr"], ["'train.lr'", "expected key=value"]


@error_case
def _old_force_flag(tmp: Path, model: Path) -> tuple[list, list[str]]:
    # --force meant both "start over" and "resume despite changes": it names its two successors
    (tmp / "cfg.yaml").write_text("data:\n  sources:\n    - path: d.jsonl\n")
    return ["train", "cfg.yaml", "--force"], ["--restart", "--force-resume"]


@error_case
def _restart_with_resume(tmp: Path, model: Path) -> tuple[list, list[str]]:
    (tmp / "cfg.yaml").write_text("data:\n  sources:\n    - path: d.jsonl\n")
    return ["train", "cfg.yaml", "--restart", "--force-resume"], ["--restart", "cannot be combined"]


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_user_errors_are_one_readable_message(name, runs, tmp_path, tiny_model_dir):
    proc = runs[name]
    _, fragments = ERROR_CASES[name](tmp_path, tiny_model_dir)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), proc.stderr
    # one line, except a ConfigError, which lists its problems below its first line
    assert all(line.startswith("  - ") for line in lines[1:]), proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)
    assert proc.stdout.strip() == ""


def test_no_run_directory_before_the_config_is_valid(runs, tmp_path_factory):
    cwd = tmp_path_factory.getbasetemp()
    assert not list(cwd.glob("config_unknown_key*/run"))
    assert not list(cwd.glob("config_unknown_key*/runs"))


# ---------------------------------------------------------------------------------------------
# help


def test_help_lists_the_commands(runs):
    proc = runs["help"]
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "data", "chat", "generate", "export", "demo"):
        assert re.search(rf"^\W*{command}\b", proc.stdout, re.MULTILINE), (command, proc.stdout)


def test_data_help_lists_inspect(runs):
    proc = runs["data_help"]
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\W*inspect\b", proc.stdout, re.MULTILINE), proc.stdout
