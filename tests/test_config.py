"""`sftlab.config`: YAML + `a.b=c` overrides -> a validated RunConfig, every problem reported at once
with the YAML line it came from (``cfg.yaml:7: train.lrr: unknown key``)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from sftlab.config import RunConfig, TrainConfig, load_config, parse_override, to_yaml, validate
from sftlab.core.errors import ConfigError, SftlabError

FULL = """\
name: persona
output_dir: runs/persona
model:
  name: default
  dtype: float32
  attn_implementation: eager
  trust_remote_code: false
  allow_pickle: false
data:
  sources:
    - path: identity.jsonl
      format: messages
      ratio: 2.0
      name: identity
    - path: general.jsonl
      rows: 100
  eval_fraction: 0.1
  eval_rows: 12
  seed: 3
template:
  chat_template: chatml
  system_prompt: You are Ada.
  mask: last_assistant
  max_length: 512
  truncation: drop
  end_of_turn: "<|im_end|>"
pack:
  enabled: false
lora:
  r: 8
  alpha: 16
  dropout: 0.1
  target_modules: [q_proj, v_proj]
train:
  method: lora
  lr: 0.0003
  epochs: 2
  max_steps: 50
  batch_tokens: 2048
  grad_accum: 2
  warmup_ratio: 0.1
  schedule: linear
  min_lr_ratio: 0.1
  weight_decay: 0.01
  max_grad_norm: 0.5
  seed: 7
  precision: fp32
  eval_every: 10
  log_every: 5
  compile: false
  gradient_checkpointing: true
export:
  merged: true
"""

MINIMAL = """\
data:
  sources:
    - path: a.jsonl
"""


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, overrides: list[str] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    err = info.value
    # the message lists every problem and says how many there are
    assert f"{len(err.problems)} problem(s)" in str(err)
    for p in err.problems:
        assert p in str(err)
    return err.problems


def line_of(text: str, fragment: str) -> int:
    """1-based line of the first line containing `fragment` (so tests don't hard-code numbers)."""
    for i, line in enumerate(text.splitlines(), 1):
        if fragment in line:
            return i
    raise AssertionError(f"{fragment!r} not in the YAML")


# ---------------------------------------------------------------------------------------------
# valid configs


def test_full_config_loads_every_section(tmp_path):
    cfg = load_config(write(tmp_path, FULL))
    assert isinstance(cfg, RunConfig)
    assert cfg.name == "persona"
    assert cfg.run_dir() == Path("runs/persona")
    assert cfg.model.dtype == "float32" and cfg.model.attn_implementation == "eager"
    first, second = cfg.data.sources
    assert (first.path, first.format, first.ratio, first.rows, first.label) == (
        "identity.jsonl", "messages", 2.0, None, "identity",
    )  # fmt: skip
    assert (second.rows, second.ratio, second.format, second.label) == (
        100,
        None,
        "auto",
        "general.jsonl",
    )
    assert (cfg.data.eval_fraction, cfg.data.eval_rows, cfg.data.seed) == (0.1, 12, 3)
    t = cfg.template
    assert (t.chat_template, t.system_prompt, t.mask, t.max_length, t.truncation, t.end_of_turn) == (
        "chatml", "You are Ada.", "last_assistant", 512, "drop", "<|im_end|>",
    )  # fmt: skip
    assert cfg.pack.enabled is False
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (
        8, 16.0, 0.1, ["q_proj", "v_proj"],
    )  # fmt: skip
    tr = cfg.train
    assert tr.peak_lr() == pytest.approx(3e-4)
    assert (tr.epochs, tr.max_steps, tr.batch_tokens, tr.grad_accum, tr.schedule) == (
        2,
        50,
        2048,
        2,
        "linear",
    )
    assert (tr.seed, tr.precision, tr.eval_every, tr.log_every, tr.gradient_checkpointing) == (
        7, "fp32", 10, 5, True,
    )  # fmt: skip
    assert cfg.export.merged is True


def test_minimal_config_fills_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.name == "run" and cfg.run_dir() == Path("runs") / "run"
    assert cfg.model.name == "default" and cfg.model.dtype == "auto"
    assert cfg.model.allow_pickle is False
    assert cfg.data.sources[0].format == "auto"
    assert cfg.data.sources[0].ratio is None and cfg.data.sources[0].rows is None
    assert cfg.data.eval_fraction == 0.05 and cfg.data.eval_rows is None
    assert cfg.template.chat_template == "auto" and cfg.template.mask == "assistant"
    assert cfg.template.max_length == 1024 and cfg.template.truncation == "turns"
    assert cfg.pack.enabled == "auto"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (16, 32, "all-linear")
    assert cfg.train.method == "lora" and cfg.train.lr is None
    assert cfg.train.peak_lr() == 2e-4
    assert cfg.export.merged is False


@pytest.mark.parametrize(
    ("method", "lr", "expected"),
    [("lora", None, 2e-4), ("full", None, 2e-5), ("lora", 1e-3, 1e-3), ("full", 5e-6, 5e-6)],
)
def test_peak_lr_default_depends_on_method(method, lr, expected):
    assert TrainConfig(method=method, lr=lr).peak_lr() == expected


def test_full_method_in_yaml_gets_full_default_lr(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "train:\n  method: full\n"))
    assert cfg.train.peak_lr() == 2e-5


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(write(tmp_path, FULL))
    again = load_config(write(tmp_path, to_yaml(cfg), "resolved.yaml"))
    assert again == cfg


def test_validate_accepts_a_plain_dict():
    cfg = validate({"data": {"sources": [{"path": "x.jsonl"}]}, "train": {"method": "full"}})
    assert cfg.train.peak_lr() == 2e-5


# ---------------------------------------------------------------------------------------------
# unknown keys: named by path and line


def test_unknown_key_in_section_names_path_and_line(tmp_path):
    text = MINIMAL + "train:\n  lr: 0.001\n  lrr: 0.002\n"
    path = write(tmp_path, text)
    [problem] = problems_of(path)
    assert problem == f"{path}:{line_of(text, 'lrr')}: train.lrr: unknown key"
    assert line_of(text, "lrr") == 6


def test_unknown_top_level_key(tmp_path):
    text = "nmae: typo\n" + MINIMAL
    path = write(tmp_path, text)
    [problem] = problems_of(path)
    assert problem == f"{path}:1: nmae: unknown key"


def test_unknown_key_inside_a_list_item(tmp_path):
    text = MINIMAL + "      ratoi: 0.5\n"
    path = write(tmp_path, text)
    [problem] = problems_of(path)
    assert problem == f"{path}:4: data.sources.0.ratoi: unknown key"


def test_unknown_section(tmp_path):
    text = MINIMAL + "optimizer:\n  lr: 0.1\n"
    path = write(tmp_path, text)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:4: optimizer")
    assert "unknown key" in problem


# ---------------------------------------------------------------------------------------------
# wrong types and impossible values: each with its line


@pytest.mark.parametrize(
    ("section", "key", "value", "fragment"),
    [
        ("train", "lr", '"fast"', "valid number"),
        ("train", "lr", "-1", "greater than 0"),
        ("train", "epochs", "0", "greater than 0"),
        ("train", "method", "qlora", "lora"),
        ("train", "grad_accum", "1.5", "integer"),
        ("template", "max_length", "0", "greater than 0"),
        ("template", "mask", "everything", "assistant"),
        ("data", "eval_fraction", "1.5", "less than 1"),
        ("data", "eval_fraction", "-0.1", "greater than or equal to 0"),
        ("lora", "dropout", "1", "less than 1"),
        ("lora", "r", "0", "greater than 0"),
        ("pack", "enabled", "sometimes", "true, false or auto"),
        ("model", "dtype", "int8", "float32"),
    ],
)
def test_bad_value_is_reported_with_its_line(tmp_path, section, key, value, fragment):
    if section == "data":
        text = f"data:\n  sources:\n    - path: a.jsonl\n  {key}: {value}\n"
    else:
        text = MINIMAL + f"{section}:\n  {key}: {value}\n"
    path = write(tmp_path, text)
    [problem] = problems_of(path)
    line = line_of(text, f"  {key}:")
    assert problem.startswith(f"{path}:{line}: {section}.{key}: "), problem
    assert fragment in problem
    shown = value.strip('"')
    assert f"(got {shown!r})" in problem or f"(got {shown})" in problem  # the bad value is quoted


def test_ratio_and_rows_together(tmp_path):
    text = "data:\n  sources:\n    - path: a.jsonl\n    - path: b.jsonl\n      ratio: 0.5\n      rows: 3\n"
    path = write(tmp_path, text)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:4: data.sources.1")
    assert "either ratio or rows" in problem


@pytest.mark.parametrize(("key", "value"), [("ratio", "0"), ("ratio", "-1"), ("rows", "0")])
def test_source_sizes_must_be_positive(tmp_path, key, value):
    text = MINIMAL + f"      {key}: {value}\n"
    path = write(tmp_path, text)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:4: data.sources.0.{key}: ")
    assert "greater than 0" in problem


def test_empty_sources_list(tmp_path):
    text = "name: x\ndata:\n  sources: []\n"
    path = write(tmp_path, text)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:3: data.sources: ")
    assert "at least 1" in problem


def test_source_without_path(tmp_path):
    text = "data:\n  sources:\n    - rows: 3\n"
    path = write(tmp_path, text)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:3: data.sources.0.path: ")
    assert "required" in problem.lower()


def test_missing_data_section(tmp_path):
    path = write(tmp_path, "name: x\n")
    [problem] = problems_of(path)
    assert "data" in problem and "required" in problem.lower()
    assert problem.startswith(str(path))


def test_empty_yaml_file_means_no_data_section(tmp_path):
    path = write(tmp_path, "")
    [problem] = problems_of(path)
    assert "data" in problem and "required" in problem.lower()


# ---------------------------------------------------------------------------------------------
# several problems: all of them, at once

MANY = """\
name: demo
data:
  sources:
    - path: a.jsonl
      ratio: 0.5
      rows: 3
  eval_fraction: 1.5
train:
  lr: fast
  epochs: 0
  lrr: 1
lora:
  dropout: 1
template:
  max_length: 0
bogus: 1
"""


def test_all_problems_reported_together(tmp_path):
    path = write(tmp_path, MANY)
    problems = problems_of(path)
    assert len(problems) == 8
    expected = {
        "data.sources.0": 4,
        "data.eval_fraction": 7,
        "train.lr": 9,
        "train.epochs": 10,
        "train.lrr": 11,
        "lora.dropout": 13,
        "template.max_length": 15,
        "bogus": 16,
    }
    found = {}
    for p in problems:
        m = re.match(rf"{re.escape(str(path))}:(\d+): ([\w.]+): ", p)
        assert m, p
        found[m.group(2)] = int(m.group(1))
    assert found == expected
    assert isinstance(ConfigError(problems), SftlabError)


# ---------------------------------------------------------------------------------------------
# overrides


def test_parse_override_basic():
    assert parse_override("pack.enabled=false") == (["pack", "enabled"], False)
    assert parse_override("train.max_steps=10") == (["train", "max_steps"], 10)
    assert parse_override("train.lr=0.001") == (["train", "lr"], 0.001)
    assert parse_override("name = my run") == (["name"], "my run")
    assert parse_override("data.sources.0.rows=5") == (["data", "sources", "0", "rows"], 5)
    assert parse_override("template.system_prompt=") == (["template", "system_prompt"], None)
    assert parse_override("template.system_prompt=a=b") == (["template", "system_prompt"], "a=b")


def test_parse_override_scientific_notation_is_a_float():
    keys, value = parse_override("train.lr=1e-4")
    assert keys == ["train", "lr"]
    assert isinstance(value, float) and value == 1e-4


def test_override_lr_ends_as_float(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "train:\n  lr: 0.5\n"), ["train.lr=1e-4"])
    assert isinstance(cfg.train.lr, float)
    assert cfg.train.lr == 1e-4 and cfg.train.peak_lr() == 1e-4


def test_override_bool_and_new_section(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["pack.enabled=false", "train.method=full"])
    assert cfg.pack.enabled is False
    assert cfg.train.method == "full" and cfg.train.peak_lr() == 2e-5


def test_override_list_index(tmp_path):
    text = MINIMAL + "    - path: b.jsonl\n      ratio: 0.5\n"
    cfg = load_config(write(tmp_path, text), ["data.sources.0.rows=5", "data.sources.1.name=bee"])
    assert cfg.data.sources[0].rows == 5 and cfg.data.sources[0].path == "a.jsonl"
    assert cfg.data.sources[1].name == "bee" and cfg.data.sources[1].ratio == 0.5


def test_overrides_apply_in_order(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["train.epochs=2", "train.epochs=5"])
    assert cfg.train.epochs == 5


def test_override_without_file_uses_base():
    cfg = load_config(None, ["train.lr=0.01"], base={"data": {"sources": [{"path": "x.jsonl"}]}})
    assert cfg.train.lr == 0.01


def test_override_unknown_key_is_reported(tmp_path):
    path = write(tmp_path, MINIMAL)
    [problem] = problems_of(path, ["train.lrr=0.1"])
    assert "train.lrr" in problem and "unknown key" in problem


def test_override_bad_value_is_reported(tmp_path):
    path = write(tmp_path, MINIMAL)
    [problem] = problems_of(path, ["train.epochs=0"])
    assert "train.epochs" in problem and "greater than 0" in problem


def test_override_problems_join_file_problems(tmp_path):
    path = write(tmp_path, MINIMAL + "lora:\n  r: 0\n")
    problems = problems_of(path, ["train.lrr=1", "template.max_length=-3"])
    assert len(problems) == 3
    assert any(p.startswith(f"{path}:5: lora.r") for p in problems)


@pytest.mark.parametrize("text", ["train.lr", "train.lr 1e-4", ""])
def test_malformed_override_is_a_clear_config_error(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL), [text])
    message = str(info.value)
    assert "expected key=value" in message
    assert repr(text) in message


def test_override_value_that_is_not_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, MINIMAL), ["name=[1"])


def test_override_through_a_missing_list_item(tmp_path):
    with pytest.raises(ConfigError, match="data.sources.3.rows"):
        load_config(write(tmp_path, MINIMAL), ["data.sources.3.rows=1"])


def test_override_replacing_a_missing_list_item(tmp_path):
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, MINIMAL), ["data.sources.3=1"])


def test_override_below_a_scalar(tmp_path):
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, MINIMAL + "train:\n  lr: 0.1\n"), ["train.lr.x=1"])


# ---------------------------------------------------------------------------------------------
# unreadable files


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not found" in str(info.value)
    assert "nope.yaml" in str(info.value)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "- a\n- b\n", "list.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "list.yaml" in str(info.value)
    assert "mapping" in str(info.value)


def test_scalar_yaml(tmp_path):
    path = write(tmp_path, "just words\n", "scalar.yaml")
    with pytest.raises(ConfigError, match="mapping") as info:
        load_config(path)
    assert "scalar.yaml" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "data:\n  sources: [a\n",
        "train:\n  lr: 1\n bad indent: 2\n",
        "a: b: c\n",
        "key: 'unclosed\n",
    ],
)
def test_invalid_yaml_syntax(tmp_path, text):
    path = write(tmp_path, text, "broken.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "broken.yaml" in message
    assert "not valid YAML" in message
    assert "line" in message  # PyYAML's own mark says where


def test_config_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: caf\xe9\xff\x00\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "latin.yaml" in str(info.value)


# ---------------------------------------------------------------------------------------------
# silent settings: every one does what its doc says, or is reported with the other problems


def test_duplicate_keys_are_reported_with_both_lines(tmp_path):
    text = MINIMAL + "train:\n  lr: 1e-4\n  epochs: 2\n  lr: 2e-4\ntrain:\n  seed: 3\n"
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 2, problems
    assert any(":7: train.lr: duplicate key (first at line 5" in p for p in problems), problems
    assert any(":8: train: duplicate key (first at line 4" in p for p in problems), problems


def test_duplicate_keys_join_the_other_problems(tmp_path):
    text = MINIMAL + "lora:\n  r: 0\n  r: 4\ntrain:\n  lrr: 1\n"
    problems = problems_of(write(tmp_path, text), ["train.epochs=0"])
    assert len(problems) == 3, problems  # the duplicate, the unknown key, the override's value
    assert any("lora.r: duplicate key" in p for p in problems)


def test_every_override_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, MINIMAL + "lora:\n  r: 0\n")
    problems = problems_of(path, ["train.lr", "data.sources.5.rows=1", "name=[1", "train.lrr=1"])
    assert len(problems) == 5, problems
    for fragment in (
        "'train.lr': expected key=value",
        "data.sources.5.rows: '5' is not an index",
        "'name=[1': value is not valid YAML",
        "train.lrr: unknown key",
        ":5: lora.r",
    ):
        assert any(fragment in p for p in problems), (fragment, problems)


def test_batch_tokens_below_max_length_is_a_problem_not_raised_silently(tmp_path):
    text = MINIMAL + "template:\n  max_length: 512\ntrain:\n  batch_tokens: 256\n  lrr: 1\n"
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 2, problems
    assert any(
        ":7: train.batch_tokens: 256 is smaller than template.max_length (512)" in p
        for p in problems
    ), problems


def test_batch_tokens_default_holds_one_full_row_and_a_step_2048_tokens():
    data = {"data": {"sources": [{"path": "x.jsonl"}]}}

    def batching(*overrides):
        config = load_config(None, list(overrides), base=data)
        return config.micro_batch_tokens(), config.micro_batches_per_step()

    assert batching() == (1024, 2)  # template.max_length defaults to 1024
    assert batching("template.max_length=512") == (512, 4)
    assert batching("template.max_length=4096") == (4096, 1)  # one full row, even past 2,048
    assert batching("train.batch_tokens=3000", "template.max_length=512") == (3000, 1)
    assert batching("template.max_length=256", "train.batch_tokens=256") == (256, 8)
    assert batching("template.max_length=256", "train.grad_accum=3") == (512, 3)
