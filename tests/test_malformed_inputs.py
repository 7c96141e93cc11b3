"""A corpus of bad inputs, each written to a real file and loaded with `load_source`.

Every case ends one of three ways, and nothing else may escape:

    Fails(fragment, line)       DataError naming the file (and `file:line` where a line is given)
    Rejects(fragment, line, n)  the file loads; the row at `line` is rejected with a reason
                                containing `fragment`; kept + rejected == n rows in the input
    Loads(n, kept)              the file loads; kept + rejected == n
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftlab.config import SourceConfig
from sftlab.core.errors import DataError
from sftlab.data.mixture import load_source


@dataclass(frozen=True)
class Fails:
    fragment: str
    line: int | None = None


@dataclass(frozen=True)
class Rejects:
    fragment: str
    line: int
    n_input: int = 2


@dataclass(frozen=True)
class Loads:
    n_input: int
    kept: int


@dataclass(frozen=True)
class Case:
    name: str  # the file name written in tmp_path
    content: bytes | Callable[[Path], None] | None  # None: the file is never created
    expect: Fails | Rejects | Loads


U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello"}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
}
TOOL = {"role": "tool", "content": "42"}
ALPACA = {"instruction": "Say hi.", "output": "Hi!"}
SHAREGPT = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}


def jsonl(*rows: object) -> bytes:
    """Rows as JSON lines; a str row is written as is (for text that is not valid JSON)."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def chat(*messages: dict, **columns: object) -> dict:
    return {"messages": list(messages), **columns}


def bad_chat(name: str, fragment: str, *messages: dict) -> Case:
    """A messages file: one good row, then the bad one on line 2."""
    return Case(f"{name}.jsonl", jsonl(chat(U, A), chat(*messages)), Rejects(fragment, line=2))


def bad_call(name: str, fragment: str, tool_calls: object) -> Case:
    call = {"role": "assistant", "content": None, "tool_calls": tool_calls}
    return bad_chat(name, fragment, U, call, TOOL, A)


def part(content: object) -> dict:
    return {"role": "user", "content": content}


def write_parquet(columns: dict) -> Callable[[Path], None]:
    return lambda path: pq.write_table(pa.table(columns), path)


def not_a_dataset(path: Path) -> None:
    path.mkdir()
    (path / "notes.md").write_text("just notes\n")


def corrupt_saved_dataset(path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(path))
    (arrow,) = path.glob("*.arrow")
    arrow.write_bytes(arrow.read_bytes()[:50])


def ten_megabyte_row(path: Path) -> None:
    path.write_text(json.dumps(chat(U, {"role": "assistant", "content": "word " * 2_000_000})))


DEEP = b"[" * 100_000 + b"]" * 100_000
ARRAY_START = b'[\n  {"instruction": "Say hi.", "output": "Hi!"},\n'

CASES = [
    # --- JSON syntax, row level (JSON lines) ---
    Case(
        "invalid_line.jsonl",
        jsonl(ALPACA, '{"instruction": "x" "output": "y"}'),
        Rejects("not valid JSON: Expecting ',' delimiter", 2),
    ),
    Case(
        "trailing_comma.jsonl",
        jsonl(ALPACA, '{"instruction": "x", "output": "y",}'),
        Rejects("(column 36)", 2),
    ),
    Case(
        "single_quotes.jsonl",
        jsonl(ALPACA, "{'instruction': 'x', 'output': 'y'}"),
        Rejects("not valid JSON: Expecting property name enclosed in double quotes", 2),
    ),
    Case(
        "truncated_last_line.jsonl",
        jsonl(ALPACA, ALPACA)[:-1] + b'\n{"instruction": "x", "outp',
        Rejects("not valid JSON: Unterminated string", 3, n_input=3),
    ),
    Case(
        "two_values_one_line.jsonl",
        jsonl(ALPACA, json.dumps(ALPACA) + " " + json.dumps(ALPACA)),
        Rejects("extra data after the value", 2),
    ),
    Case(
        "nan.jsonl",
        jsonl(ALPACA, '{"instruction": "x", "output": "y", "score": NaN}'),
        Rejects("not valid JSON: NaN", 2),
    ),
    Case(
        "infinity.jsonl",
        jsonl(ALPACA, '{"instruction": "x", "output": "y", "score": -Infinity}'),
        Rejects("not valid JSON: -Infinity", 2),
    ),
    Case(
        "duplicate_keys.jsonl",
        jsonl(ALPACA, '{"instruction": "x", "output": "y", "output": "z"}'),
        Rejects("duplicated key 'output' in one object", 2),
    ),
    Case(
        "deep_nesting.jsonl",
        jsonl(ALPACA, DEEP.decode(), ALPACA),
        Rejects("JSON nested too deeply", 2, n_input=3),
    ),
    Case(
        "row_not_object.jsonl",
        jsonl(ALPACA, [1, 2]),
        Rejects("expected a JSON object {...} per row, got an array", 2),
    ),
    # --- JSON arrays, file level ---
    Case(
        "truncated_array.json",
        ARRAY_START + b'  {"instruction": "x", "out',
        Fails("truncated JSON array: the file ends inside element 1 (which starts at line 3)", 3),
    ),
    Case(
        "unclosed_array.json",
        ARRAY_START[:-2] + b"\n",
        Fails("truncated JSON array: the file ends after element 0", 3),
    ),
    Case(
        "missing_comma.json",
        b'[\n {"text": "a"}\n {"text": "b"}\n]',
        Fails("expected ',' or ']' after element 0", 3),
    ),
    Case(
        "malformed_element.json",
        ARRAY_START + b'  {"instruction": "x", output: "y"}\n]',
        Fails("malformed JSON array at line 3, column 24", 3),
    ),
    Case(
        "text_after_array.json",
        b'[{"text": "a"}]\n[{"text": "b"}]\n',
        Fails("unexpected text after the closing ']' of the array", 2),
    ),
    Case("empty_array.json", b"[ ]", Fails("holds no rows")),
    Case(
        "array_of_numbers.json",
        b"[1, 2, 3]",
        Fails("no usable rows: 3 rejected; first reasons: line 1: expected a JSON object"),
    ),
    Case(
        "array_with_non_objects.json",
        ARRAY_START + b'  "just text",\n  null\n]',
        Rejects("expected a JSON object {...} per row, got a string", 3, n_input=3),
    ),
    Case("deep_in_array.json", ARRAY_START + DEEP + b"\n]", Rejects("JSON nested too deeply", 3)),
    Case(
        "nan_in_array.json",
        ARRAY_START + b'  {"text": "x", "score": NaN}\n]',
        Rejects("not valid JSON: NaN", 3),
    ),
    Case(
        "top_level_string.json",
        b'"just a string"',
        Fails(
            "expected a JSON array of row objects ([{...}, ...]) or JSON lines; the file starts with a string",
            1,
        ),
    ),
    Case(
        "one_big_object.json",
        b'{\n  "data": [{"text": "a"}]\n}\n',
        Fails("the file is one JSON object (keys: 'data'), not rows", 1),
    ),
    # --- bytes and encodings ---
    Case("bom.jsonl", b"\xef\xbb\xbf" + jsonl(ALPACA, ALPACA), Loads(2, kept=2)),
    Case("bom_array.json", b"\xef\xbb\xbf[" + json.dumps(ALPACA).encode() + b"]", Loads(1, kept=1)),
    Case(
        "latin1.jsonl",
        jsonl(ALPACA) + '{"instruction": "café", "output": "ok"}\n'.encode("latin-1"),
        Fails("not valid UTF-8: byte 0xe9 at line 2, column 21", 2),
    ),
    Case(
        "latin1.txt", b"first line\nsecond line\nna\xefve\n", Fails("re-save the file as UTF-8", 3)
    ),
    Case(
        "png.json",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",
        Fails("binary file: this looks like a PNG image"),
    ),
    Case(
        "nul_bytes.jsonl",
        jsonl(ALPACA) + b"\x00\x01\x02",
        Fails("binary file: NUL byte at line 2", 2),
    ),
    Case(
        "utf16.jsonl",
        json.dumps(ALPACA).encode("utf-16"),
        Fails("a UTF-16 file must be re-saved as UTF-8", 1),
    ),
    Case("gzip.jsonl", b"\x1f\x8b\x08\x00rest", Fails("gzip-compressed (decompress it first)")),
    Case("empty.jsonl", b"", Fails("empty file (0 bytes)")),
    Case("whitespace.json", b"  \n\t\n  ", Fails("the file holds only whitespace")),
    # --- keys ---
    Case(
        "missing_output.jsonl",
        jsonl(ALPACA, {"instruction": "x"}),
        Rejects("missing required key 'output'", 2),
    ),
    Case(
        "misspelled_instruction.jsonl",
        jsonl(ALPACA, {"instrution": "x", "output": "y"}),
        Rejects(
            "missing required key 'instruction' (did you mean 'instruction'? found 'instrution')", 2
        ),
    ),
    Case(
        "misspelled_output.jsonl",
        jsonl(ALPACA, {"instruction": "x", "ouput": "y"}),
        Rejects("did you mean 'output'? found 'ouput'", 2),
    ),
    Case(
        "misspelled_messages.jsonl",
        jsonl({"mesages": [U, A]}),
        Fails("cannot tell the data format: keys seen ['mesages']"),
    ),
    Case(
        "misspelled_messages_mixed.jsonl",
        jsonl(chat(U, A), {"mesages": [U, A]}),
        Rejects("missing required key 'messages' (did you mean 'messages'? found 'mesages')", 2),
    ),
    Case(
        "mixed_formats.jsonl",
        jsonl(ALPACA, ALPACA, chat(U, A)),
        Rejects("this row has the keys of the 'messages' format", 3, n_input=3),
    ),
    Case(
        "missing_content.jsonl",
        jsonl(chat(U, A), chat(U, {"role": "assistant", "text": "x"})),
        Rejects("missing required key 'content'", 2),
    ),
    # --- roles and turn order ---
    bad_chat(
        "unknown_role",
        "unknown role 'bot'; known roles: system, developer, user",
        U,
        {"role": "bot", "content": "x"},
    ),
    Case(
        "sharegpt_unknown_role.json",
        json.dumps(
            [
                SHAREGPT,
                {
                    "conversations": [
                        {"from": "human", "value": "Hi"},
                        {"from": "narrator", "value": "x"},
                    ]
                },
            ]
        ).encode(),
        Rejects("unknown role 'narrator'; known roles: system, human, user, gpt", 1),
    ),
    bad_chat("user_user", "two consecutive user messages", U, U, A),
    bad_chat("assistant_assistant", "two consecutive assistant messages", U, A, A),
    bad_chat("assistant_first", "must be from the user, got assistant", A, U, A),
    bad_chat("tool_first", "must be from the user, got tool", TOOL, U, A),
    bad_chat(
        "tool_after_user",
        "a tool message must follow an assistant message with tool calls",
        U,
        TOOL,
        A,
    ),
    bad_chat(
        "system_in_middle",
        "a system message is only allowed first",
        U,
        {"role": "system", "content": "s"},
        A,
    ),
    bad_chat(
        "ends_with_user", "ends with a user message: nothing to learn from the last turn", U, A, U
    ),
    bad_chat("ends_with_tool", "ends with a tool message", U, CALL, TOOL),
    bad_chat("no_assistant", "no assistant message", U),
    bad_chat(
        "empty_assistant", "empty assistant answer", U, {"role": "assistant", "content": " \n"}
    ),
    # --- content types ---
    bad_chat("null_content", "expected a string as user content, got null", part(None), A),
    bad_chat(
        "numeric_content",
        "expected a string as assistant content, got a number (42)",
        U,
        {"role": "assistant", "content": 42},
    ),
    bad_chat(
        "bool_content", "expected a string as user content, got a boolean (false)", part(False), A
    ),
    bad_chat(
        "dict_content",
        "expected a string as user content, got an object with keys ['text']",
        part({"text": "x"}),
        A,
    ),
    Case(
        "text_parts.jsonl",
        jsonl(chat(part([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]), A)),
        Loads(1, kept=1),
    ),
    bad_chat(
        "image_part",
        "only text content parts are supported, got type 'image_url'",
        part([{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "x"}}]),
        A,
    ),
    bad_chat("part_not_object", "expected a content part", part(["plain string"]), A),
    bad_chat(
        "part_text_number",
        "expected a string, got a number (3)",
        part([{"type": "text", "text": 3}]),
        A,
    ),
    # --- tool calls ---
    bad_call(
        "tool_calls_not_list",
        "expected a list of tool calls, got an object",
        {"function": {"name": "f"}},
    ),
    bad_call(
        "tool_call_no_name",
        "expected a function name (a non-empty string), got null",
        [{"function": {"arguments": "{}"}}],
    ),
    bad_call(
        "tool_args_not_json",
        "expected a JSON object string, got text that is not valid JSON",
        [{"function": {"name": "f", "arguments": "{city: Paris}"}}],
    ),
    bad_call(
        "tool_args_json_list",
        "expected arguments as an object or a JSON object string, got a list",
        [{"function": {"name": "f", "arguments": "[1, 2]"}}],
    ),
    Case(
        "sharegpt_bad_call.json",
        json.dumps(
            [
                SHAREGPT,
                {
                    "conversations": [
                        {"from": "human", "value": "Hi"},
                        {"from": "function_call", "value": "{name: f}"},
                        {"from": "observation", "value": "r"},
                        {"from": "gpt", "value": "done"},
                    ]
                },
            ]
        ).encode(),
        Rejects("conversations[1].value: expected a JSON object", 1),
    ),
    Case(
        "sharegpt_bad_tools.jsonl",
        jsonl(SHAREGPT, {**SHAREGPT, "tools": "[{broken"}),
        Rejects("tools: expected a JSON list of tool schemas", 2),
    ),
    Case(
        "sharegpt_not_list.jsonl",
        jsonl(SHAREGPT, {"conversations": "Hi"}),
        Rejects("conversations: expected a list, got a string ('Hi')", 2),
    ),
    # --- per-message training flags ---
    bad_chat(
        "weight_half",
        "weight must be 0 or 1; fractional weights are not supported",
        U,
        {**A, "weight": 0.5},
    ),
    bad_chat("train_yes", "expected true or false, got a string ('yes')", U, {**A, "train": "yes"}),
    # --- alpaca and text specifics ---
    Case(
        "history_not_pairs.jsonl",
        jsonl(ALPACA, {**ALPACA, "history": "hi"}),
        Rejects("history: expected a list of [user, assistant] pairs", 2),
    ),
    Case(
        "whitespace_text.jsonl",
        jsonl({"text": "a document"}, {"text": "   \n "}),
        Rejects("empty text", 2),
    ),
    Case(
        "text_not_string.jsonl",
        jsonl({"text": "a document"}, {"text": 5}),
        Rejects("text: expected a string, got a number (5)", 2),
    ),
    Case("ten_mb_row.jsonl", ten_megabyte_row, Loads(1, kept=1)),
    # --- containers ---
    Case(
        "sheet.xlsx",
        b"PK\x03\x04",
        Fails("unknown extension '.xlsx'; supported: .json, .jsonl, .parquet, .csv, .txt"),
    ),
    Case("data", b'{"text": "a"}\n', Fails("unknown extension '(none)'")),
    Case("not_a_dataset", not_a_dataset, Fails("not one written by datasets.Dataset.save_to_disk")),
    Case("corrupt_saved_dataset", corrupt_saved_dataset, Fails("cannot load the saved dataset")),
    Case("missing.jsonl", None, Fails("missing.jsonl: file not found; tried:")),
    Case(
        "unfit_columns.csv",
        b"question,answer\nWhat?,That.\n",
        Fails("cannot tell the data format: keys seen ['answer', 'question']"),
    ),
    Case("header_only.csv", b"instruction,output\n", Fails("holds no rows")),
    Case(
        "broken_messages_cell.csv",
        b'messages\n"[{""role"": ""user"", ""content"": ""Hi""}, {""role"": ""assistant"", ""content"": ""Yo""}]"\n"[{""role"": ""user"""\n',
        Rejects("column 'messages': not valid JSON", 3),
    ),
    Case(
        "wrong_columns.parquet",
        write_parquet({"a": [1, 2], "b": ["x", "y"]}),
        Fails("cannot tell the data format: keys seen ['a', 'b']"),
    ),
    Case(
        "corrupt.parquet", b"PAR1 this is not really parquet", Fails("not a readable parquet file")
    ),
    Case("empty.parquet", b"", Fails("empty file (0 bytes)")),
]


def materialize(case: Case, path: Path) -> None:
    if isinstance(case.content, bytes):
        path.write_bytes(case.content)
    elif case.content is not None:
        case.content(path)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input(case: Case, tmp_path: Path):
    path = tmp_path / case.name
    materialize(case, path)
    expect = case.expect
    try:
        data = load_source(SourceConfig(path=str(path)))
    except DataError as err:
        message = str(err)
        assert isinstance(expect, Fails), f"expected the file to load, got: {message}"
        assert case.name in message
        assert expect.fragment in message, message
        if expect.line is not None:
            assert err.line == expect.line and f"{case.name}:{expect.line}:" in message, message
        return
    assert not isinstance(expect, Fails), f"expected DataError containing {expect.fragment!r}"
    assert len(data.conversations) + len(data.rejected) == data.n_input == expect.n_input
    if isinstance(expect, Loads):
        assert len(data.conversations) == expect.kept, [r.reason for r in data.rejected]
        return
    matching = [r for r in data.rejected if r.line == expect.line and expect.fragment in r.reason]
    assert matching, [(r.line, r.reason) for r in data.rejected]
    assert matching[0].file == str(path) and matching[0].row is not None


def test_corpus_is_large_and_names_are_unique():
    assert len(CASES) >= 45
    assert len({c.name for c in CASES}) == len(CASES)


def test_ten_megabyte_row_is_one_whole_conversation(tmp_path):
    path = tmp_path / "big.jsonl"
    ten_megabyte_row(path)
    (conversation,) = load_source(SourceConfig(path=str(path))).conversations
    assert len(conversation.messages[1].content) == 10_000_000


def test_text_parts_are_joined(tmp_path):
    path = tmp_path / "parts.jsonl"
    path.write_bytes(
        jsonl(chat(part([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]), A))
    )
    (conversation,) = load_source(SourceConfig(path=str(path))).conversations
    assert conversation.messages[0].content == "ab"
