"""read_rows: every container, with the line each row starts on; file errors name file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftlab.core.errors import DataError
from sftlab.data.readers import RAW_TEXT_LIMIT, RawRow, read_rows

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_json_array_records_each_elements_first_line():
    rows = read_rows(FIXTURES / "alpaca.json")
    assert [(r.index, r.line, r.error) for r in rows] == [(0, 2, None), (1, 7, None), (2, 8, None)]
    assert rows[1].value == {"instruction": "Name a primary colour.", "input": "", "output": "Red."}
    assert rows[2].value["history"] == [["Hi", "Hello."]]


def test_json_array_elements_on_one_line_share_it(tmp_path):
    rows = read_rows(write(tmp_path / "a.json", '[{"a": 1}, {"a": 2},\n\n  {"a": 3}]'))
    assert [(r.line, r.value) for r in rows] == [(1, {"a": 1}), (1, {"a": 2}), (3, {"a": 3})]


def test_jsonl_rows_keep_their_line_and_blank_lines_are_not_rows():
    rows = read_rows(FIXTURES / "messages.jsonl")
    assert [(r.index, r.line) for r in rows] == [(0, 1), (1, 3), (2, 4)]
    assert all(r.error is None for r in rows)
    assert rows[0].value["messages"][1] == {"role": "user", "content": "Hi"}


def test_json_file_starting_with_brace_is_read_as_json_lines(tmp_path):
    rows = read_rows(write(tmp_path / "rows.json", '{"text": "a"}\n{"text": "b"}\n'))
    assert [(r.line, r.value) for r in rows] == [(1, {"text": "a"}), (2, {"text": "b"})]


def test_invalid_json_line_is_a_row_error_and_reading_goes_on(tmp_path):
    rows = read_rows(write(tmp_path / "r.jsonl", '{"a": 1}\n{"a": \n{"a": 3}\n'))
    assert [(r.line, r.error is None) for r in rows] == [(1, True), (2, False), (3, True)]
    assert rows[1].error.startswith("not valid JSON: Expecting value")
    assert rows[1].value == '{"a": '  # the raw text, for the rejected set


def test_row_errors_for_nan_duplicate_keys_and_non_objects(tmp_path):
    text = '{"a": NaN}\n{"k": 1, "k": 2}\n[1, 2]\n{"a": Infinity}\n'
    rows = read_rows(write(tmp_path / "r.jsonl", text))
    assert [r.error for r in rows] == [
        "not valid JSON: NaN (use null or a string instead)",
        "duplicated key 'k' in one object",
        "expected a JSON object {...} per row, got an array",
        "not valid JSON: Infinity (use null or a string instead)",
    ]


def test_raw_text_of_a_bad_row_is_truncated(tmp_path):
    rows = read_rows(write(tmp_path / "r.jsonl", '{"a": "' + "x" * 5000 + "\n"))
    assert rows[0].error is not None
    assert len(rows[0].value) == RAW_TEXT_LIMIT + 3 and rows[0].value.endswith("...")


def test_csv_parses_json_cells_and_records_start_lines():
    rows = read_rows(FIXTURES / "messages.csv")
    assert [(r.index, r.line) for r in rows] == [(0, 2), (1, 3), (2, 5)]
    assert rows[0].value == {
        "id": "1",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    }
    assert rows[1].value["messages"][0]["content"] == "Line one\nline two"


def test_csv_keeps_text_that_only_looks_like_json(tmp_path):
    path = write(tmp_path / "t.csv", 'text,note\n"[Verse 1] la la","{not json"\n')
    assert read_rows(path)[0].value == {"text": "[Verse 1] la la", "note": "{not json"}


def test_csv_broken_json_in_a_messages_column_is_a_row_error(tmp_path):
    path = write(tmp_path / "m.csv", 'messages\n"[{""role"": ""user"""\n')
    row = read_rows(path)[0]
    assert row.line == 2 and row.error.startswith("column 'messages': not valid JSON")


def test_csv_record_with_wrong_field_count_is_a_row_error(tmp_path):
    rows = read_rows(write(tmp_path / "w.csv", "prompt,completion\na,b\nonly one\n"))
    assert rows[0].value == {"prompt": "a", "completion": "b"}
    assert rows[1].line == 3
    assert rows[1].error == "expected 2 fields (columns: prompt, completion), got 1"


def test_txt_one_document_per_non_empty_line():
    rows = read_rows(FIXTURES / "text.txt")
    assert [(r.line, r.value) for r in rows] == [
        (1, {"text": "First document, one line."}),
        (3, {"text": "Second document."}),
    ]


def test_parquet_rows_have_no_line(tmp_path):
    table = pa.table({"instruction": ["a", "b"], "output": ["x", "y"]})
    pq.write_table(table, tmp_path / "d.parquet")
    assert read_rows(tmp_path / "d.parquet") == [
        RawRow(0, 0, {"instruction": "a", "output": "x"}),
        RawRow(1, 0, {"instruction": "b", "output": "y"}),
    ]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    records = {"text": ["one", "two"]}
    datasets.Dataset.from_dict(records).save_to_disk(str(tmp_path / "ds"))
    assert [r.value for r in read_rows(tmp_path / "ds")] == [{"text": "one"}, {"text": "two"}]

    splits = {
        "train": datasets.Dataset.from_dict(records),
        "test": datasets.Dataset.from_dict({"text": ["t"]}),
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    assert [r.value["text"] for r in read_rows(tmp_path / "dd")] == ["one", "two"]

    datasets.DatasetDict({"validation": splits["test"]}).save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(DataError, match="without a 'train' split; splits found: validation"):
        read_rows(tmp_path / "no_train")


@pytest.mark.parametrize("name", ["bom.json", "bom.jsonl", "bom.csv"])
def test_utf8_bom_is_accepted(tmp_path, name):
    body = {
        "bom.json": '[{"text": "hello"}]',
        "bom.jsonl": '{"text": "hello"}\n',
        "bom.csv": "text\nhello\n",
    }[name]
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert [(r.line, r.value, r.error) for r in read_rows(path)] == [
        (1 if name != "bom.csv" else 2, {"text": "hello"}, None)
    ]


def test_file_errors_name_file_line_and_what_was_expected(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"a": 1},\n  {"a": 2\n  {"a": 3}\n]')
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert caught.value.file == str(path) and caught.value.line == 4
    assert str(caught.value).startswith(f"{path}:4: malformed JSON array at line 4")

    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(
        DataError, match=r"latin.jsonl:2: not valid UTF-8: byte 0xe9 at line 2.*re-save"
    ):
        read_rows(latin)

    with pytest.raises(DataError, match=r"missing.json: file not found"):
        read_rows(tmp_path / "missing.json")


def test_deep_nesting_inside_an_array_skips_just_that_element(tmp_path):
    deep = "[" * 5000 + "]" * 5000
    path = write(tmp_path / "deep.json", f'[\n{{"a": 1}},\n{deep},\n{{"a": "]"}}\n]')
    rows = read_rows(path)
    assert [(r.line, r.error) for r in rows] == [
        (2, None),
        (3, "JSON nested too deeply to read"),
        (4, None),
    ]
    assert rows[2].value == {"a": "]"}


def test_values_survive_a_round_trip_through_every_text_container(tmp_path):
    row = {"instruction": 'Say "hi", then ünïcode ✓', "output": "hi\nthere"}
    (tmp_path / "a.json").write_text(json.dumps([row], ensure_ascii=False), encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert read_rows(tmp_path / "a.json")[0].value == row
    assert read_rows(tmp_path / "a.jsonl")[0].value == row
