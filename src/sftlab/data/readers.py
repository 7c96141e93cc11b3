"""Read a data file into raw rows, each remembering where it came from.

    file ──► read_rows ──► [RawRow(index, line, value, error), ...]

    data.json      [ {...},          RawRow(0, line=2, {...})       each element's first line
    (an array)       {...} ]         RawRow(1, line=3, {...})
    data.jsonl     {...}             RawRow(0, line=1, {...})       blank lines are not rows
                   {bad json         RawRow(1, line=2, '{bad json', error="not valid JSON: ...")
    data.csv       instruction,out   header row
                   "hi","hello"      RawRow(0, line=2, {"instruction": "hi", "out": "hello"})
    data.txt       one document      RawRow(0, line=1, {"text": "one document"})
    data.parquet / a save_to_disk folder: RawRow(i, line=0, {...})

Two kinds of problem, two channels (DESIGN invariant 8):
- the file as a whole is unusable (missing, binary, not UTF-8, truncated array) -> `DataError`
  naming the file and, where there is one, the line;
- one row is unusable (an invalid JSON line, a NaN, a duplicated key) -> `RawRow.error`, and
  reading goes on, so the caller can put the row in the rejected set with its reason.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftlab.core.errors import DataError

SUPPORTED = (".json", ".jsonl", ".parquet", ".csv", ".txt")
RAW_TEXT_LIMIT = 2_000  # characters of an unparseable row kept for the rejected set
UTF8_BOM = "\ufeff"

# CSV columns that hold structure; a cell there that looks like JSON but is not is a row error.
STRUCTURED_CSV_COLUMNS = ("messages", "conversations", "history", "tools")

# Binary formats people save with a text extension by mistake, named in the error.
MAGIC_PREFIXES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"\x1f\x8b": "gzip-compressed (decompress it first)",
    b"PK\x03\x04": "a zip archive (extract it first)",
    b"%PDF": "a PDF document",
    b"PAR1": "a parquet file (give it the .parquet extension)",
}


@dataclass(frozen=True)
class RawRow:
    index: int  # 0-based row index within the file
    line: int  # 1-based line where the row starts; 0 where the format has no lines
    value: Any  # the parsed row (normally a dict); the raw text, truncated, when `error` is set
    error: str | None = None  # why this row could not be parsed


def read_rows(path: str | Path) -> list[RawRow]:
    """Read every row of a .json/.jsonl/.csv/.txt/.parquet file or a `save_to_disk` folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), "file not found")
    rows = _read_saved_dataset(path) if path.is_dir() else _read_file(path)
    if not rows:
        raise DataError(str(path), "the file holds no rows; expected at least one row")
    return rows


def _read_file(path: Path) -> list[RawRow]:
    file, ext = str(path), path.suffix.lower()
    if ext not in SUPPORTED:
        raise DataError(
            file,
            f"unknown extension {ext or '(none)'!r}; supported: {', '.join(SUPPORTED)} "
            "or a folder written by datasets.Dataset.save_to_disk",
        )
    if ext == ".parquet":
        return _read_parquet(path)
    text_readers = {
        ".json": _read_json,
        ".jsonl": _read_json_lines,
        ".csv": _read_csv,
        ".txt": _read_plain_text,
    }
    return text_readers[ext](_read_text(path), file)


# ---------------------------------------------------------------------------------------------
# Bytes -> text: the checks every text format shares


def _read_text(path: Path) -> str:
    """The file as UTF-8 text without a BOM, or a DataError saying what is wrong with it."""
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(file, f"cannot read the file: {exc.strerror or exc}") from None
    if not raw:
        raise DataError(file, "empty file (0 bytes); expected rows of data")
    _reject_binary(raw, file)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            file,
            f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at line {line}, column {column} "
            "(perhaps Latin-1 or Windows-1252); re-save the file as UTF-8",
            line=line,
        ) from None
    text = text.removeprefix(UTF8_BOM)  # editors on Windows add one; it carries no data
    if not text.strip():
        raise DataError(file, "the file holds only whitespace; expected rows of data")
    return text


def _reject_binary(raw: bytes, file: str) -> None:
    for prefix, what in MAGIC_PREFIXES.items():
        if raw.startswith(prefix):
            raise DataError(file, f"binary file: this looks like {what}, not UTF-8 text")
    nul = raw.find(b"\x00")
    if nul >= 0:  # text never holds NUL; UTF-16 does, so say so
        line = raw.count(b"\n", 0, nul) + 1
        raise DataError(
            file,
            f"binary file: NUL byte at line {line} (byte offset {nul}); expected UTF-8 text "
            "(a UTF-16 file must be re-saved as UTF-8)",
            line=line,
        )


def _clip(text: str) -> str:
    return text if len(text) <= RAW_TEXT_LIMIT else text[:RAW_TEXT_LIMIT] + "..."


# ---------------------------------------------------------------------------------------------
# JSON: one strict decoder whose hooks note row-level problems instead of aborting the file


class _StrictDecoder:
    """json.JSONDecoder that records NaN/Infinity and duplicated keys as problems of the row.

    The hooks do not raise: raising inside the decoder would leave the position of the next
    row unknown inside a JSON array. `decode_row` turns the recorded problems into one error.
    """

    def __init__(self, strict: bool = True) -> None:
        self.problems: list[str] = []
        self.decoder = json.JSONDecoder(
            object_pairs_hook=self._object, parse_constant=self._constant, strict=strict
        )

    def _object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) < len(pairs):
            keys = [key for key, _ in pairs]
            dup = next(key for i, key in enumerate(keys) if key in keys[:i])
            self.problems.append(f"duplicated key {dup!r} in one object")
        return obj

    def _constant(self, name: str) -> float:
        self.problems.append(f"not valid JSON: {name} (use null or a string instead)")
        return float(name.replace("Infinity", "inf"))

    def raw_decode(self, text: str, pos: int) -> tuple[Any, int]:
        self.problems.clear()  # problems belong to one row
        return self.decoder.raw_decode(text, pos)

    def row_error(self, value: Any) -> str | None:
        """The first problem of the row just decoded, or the row not being an object."""
        return self.problems[0] if self.problems else _not_an_object(value)


def _not_an_object(value: Any) -> str | None:
    return (
        None
        if isinstance(value, dict)
        else f"expected a JSON object {{...}} per row, got {_json_type(value)}"
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _read_json(text: str, file: str) -> list[RawRow]:
    """A .json file: an array of objects, or (text starting with '{') JSON lines."""
    start = len(text) - len(text.lstrip())
    first = text[start]
    if first == "[":
        return _read_json_array(text, start, file)
    if first == "{":
        _reject_single_object(text, file)
        return _read_json_lines(text, file)
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
        found = f"starts with {_json_type(value)}"
    except (json.JSONDecodeError, RecursionError):
        found = f"does not start with a JSON value ({text[start : start + 20]!r})"
    expected = "expected a JSON array of row objects ([{...}, ...]) or JSON lines"
    raise DataError(file, f"{expected}; the file {found}", line=text.count("\n", 0, start) + 1)


def _reject_single_object(text: str, file: str) -> None:
    """One object spread over many lines is neither rows nor JSON lines: say so, once."""
    if text.strip().count("\n") == 0:
        return  # one line: a JSON-lines file with one row
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return  # several values (JSON lines) or broken lines: the line reader reports them
    keys = ", ".join(map(repr, list(value)[:8])) if isinstance(value, dict) else ""
    raise DataError(
        file,
        f"the file is one JSON object (keys: {keys}), not rows; expected a JSON array of row "
        "objects or one object per line (if the rows sit under one key, save that array)",
        line=1,
    )


def _read_json_array(text: str, start: int, file: str) -> list[RawRow]:
    """Walk the array element by element with raw_decode, noting where each element starts.

    [ {"a": 1},   <- element 0, line 1
      {"a": 2} ]  <- element 1, line 2
    """
    decoder, rows = _StrictDecoder(), []
    whitespace = re.compile(r"\s*")
    pos = whitespace.match(text, start + 1).end()
    line, counted_to = 1 + text.count("\n", 0, pos), pos
    if text.startswith("]", pos):
        return _after_array(text, pos + 1, file, rows)
    while True:
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        try:
            value, end = decoder.raw_decode(text, pos)
            error = decoder.row_error(value)
        except RecursionError:
            value, end = None, _skip_value(text, pos, file, line)
            error = "JSON nested too deeply to read"
        except json.JSONDecodeError as exc:
            raise _array_error(exc, text, file, len(rows), line) from None
        raw = _clip(text[pos:end]) if error else value
        rows.append(RawRow(index=len(rows), line=line, value=raw, error=error))
        pos = whitespace.match(text, end).end()
        if text.startswith("]", pos):
            return _after_array(text, pos + 1, file, rows)
        if not text.startswith(",", pos):
            raise _array_separator_error(text, pos, file, len(rows))
        pos = whitespace.match(text, pos + 1).end()


def _after_array(text: str, pos: int, file: str, rows: list[RawRow]) -> list[RawRow]:
    rest = text[pos:]
    if rest.strip():
        line = text.count("\n", 0, pos + len(rest) - len(rest.lstrip())) + 1
        raise DataError(file, "unexpected text after the closing ']' of the array", line=line)
    return rows


def _array_error(exc: json.JSONDecodeError, text: str, file: str, n: int, line: int) -> DataError:
    if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
        message = (
            f"truncated JSON array: the file ends inside element {n} (which starts at "
            f"line {line}); expected the element to be complete and the array closed"
        )
    else:
        message = (
            f"malformed JSON array at line {exc.lineno}, column {exc.colno}: {exc.msg} "
            f"(in element {n}, which starts at line {line})"
        )
    return DataError(file, message, line=exc.lineno)


def _array_separator_error(text: str, pos: int, file: str, n: int) -> DataError:
    if pos >= len(text):
        message = (
            f"truncated JSON array: the file ends after element {n - 1}; "
            "expected ',' and more elements or a closing ']'"
        )
    else:
        message = f"malformed JSON array: expected ',' or ']' after element {n - 1}, found {text[pos : pos + 20]!r}"
    return DataError(file, message, line=text.count("\n", 0, pos) + 1)


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _skip_value(text: str, pos: int, file: str, line: int) -> int:
    """End of the bracketed value at `pos`, by counting brackets outside strings.

    Only used for a value too deep for the json module, so the rows after it can still be read.
    """
    depth = 0
    for match in _JSON_TOKEN.finditer(text, pos):
        token = match.group()
        if token in "[{":
            depth += 1
        elif token in "]}":
            depth -= 1
        if depth == 0:
            return match.end()
    raise DataError(
        file, f"truncated JSON array: the element starting at line {line} is never closed", line
    )


def _read_json_lines(text: str, file: str) -> list[RawRow]:
    """One JSON object per line; blank lines are not rows; a bad line is a row error."""
    decoder, rows = _StrictDecoder(), []
    for line_no, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        value, error = _decode_line(decoder, stripped)
        error = error or _not_an_object(value)
        raw = _clip(line.rstrip("\r")) if error else value
        rows.append(RawRow(index=len(rows), line=line_no, value=raw, error=error))
    return rows


def _decode_line(decoder: _StrictDecoder, text: str) -> tuple[Any, str | None]:
    """(value, why the text is not valid strict JSON or None); any JSON value is accepted."""
    try:
        value, end = decoder.raw_decode(text, 0)
    except RecursionError:
        return None, "JSON nested too deeply to read"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} (column {exc.colno})"
    if end != len(text):
        return None, f"not valid JSON: extra data after the value (column {end + 1})"
    return value, (decoder.problems[0] if decoder.problems else None)


# ---------------------------------------------------------------------------------------------
# CSV and plain text


def _read_csv(text: str, file: str) -> list[RawRow]:
    """A header row, then one record per row; cells are strings, JSON cells are parsed."""
    records = _csv_records(text, file)
    header_line, header = next(records, (0, []))
    if len(set(header)) < len(header):
        dup = next(name for name in header if header.count(name) > 1)
        raise DataError(file, f"duplicated column {dup!r} in the header", line=header_line)
    # Cells typed in a spreadsheet hold real newlines inside JSON strings: allow control characters.
    decoder, rows = _StrictDecoder(strict=False), []
    for line, cells in records:
        if len(cells) != len(header):
            error = (
                f"expected {len(header)} fields (columns: {', '.join(header)}), got {len(cells)}"
            )
            value: Any = _clip(",".join(cells))
        else:
            value, error = _parse_csv_cells(dict(zip(header, cells, strict=True)), decoder)
        rows.append(RawRow(index=len(rows), line=line, value=value, error=error))
    return rows


def _csv_records(text: str, file: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, cells) of each non-blank record; csv errors become DataError."""
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # the default (128 KiB a cell) rejects long answers
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        next_line = 1
        for cells in reader:
            if cells:
                yield next_line, cells
            next_line = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(file, f"not valid CSV: {exc}", line=reader.line_num) from None
    finally:
        csv.field_size_limit(limit)


def _parse_csv_cells(row: dict[str, str], decoder: _StrictDecoder) -> tuple[Any, str | None]:
    """Cells holding a JSON array or object (a `messages` column) become that structure."""
    for column, cell in row.items():
        stripped = cell.strip()
        if not stripped.startswith(("[", "{")):
            continue
        value, error = _decode_line(decoder, stripped)
        if error is None:
            row[column] = value
        elif column in STRUCTURED_CSV_COLUMNS:
            return _clip(json.dumps(row, ensure_ascii=False)), f"column {column!r}: {error}"
    return row, None


def _read_plain_text(text: str, file: str) -> list[RawRow]:
    """One document per non-blank line."""
    rows = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            rows.append(RawRow(index=len(rows), line=line_no, value={"text": line}))
    return rows


# ---------------------------------------------------------------------------------------------
# Columnar: parquet and datasets folders (no lines, so line=0)


def _read_parquet(path: Path) -> list[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = str(path)
    if path.stat().st_size == 0:
        raise DataError(file, "empty file (0 bytes); expected a parquet file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(file, f"not a readable parquet file: {exc}") from None
    return [RawRow(index=i, line=0, value=row) for i, row in enumerate(table.to_pylist())]


def _read_saved_dataset(path: Path) -> list[RawRow]:
    """A folder from `Dataset.save_to_disk`, or a `DatasetDict` folder (its "train" split)."""
    file = str(path)
    is_dataset = (path / "state.json").is_file()
    is_dict = (path / "dataset_dict.json").is_file()
    if not (is_dataset or is_dict):
        entries = sorted(p.name for p in path.iterdir())[:10]
        raise DataError(
            file,
            "a folder, but not one written by datasets.Dataset.save_to_disk (no state.json or "
            f"dataset_dict.json); it holds: {', '.join(entries) or 'nothing'}. "
            f"Give a data file ({', '.join(SUPPORTED)}) or a saved dataset folder",
        )
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise DataError(file, f"cannot load the saved dataset: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(
                file,
                f"a DatasetDict without a 'train' split; splits found: {', '.join(loaded)}",
            )
        loaded = loaded["train"]
    return [RawRow(index=i, line=0, value=row) for i, row in enumerate(loaded.to_list())]
