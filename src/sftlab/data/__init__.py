"""Data stage: files -> rows -> Conversations -> a seeded train/eval mixture.

read_rows(path)            .json/.jsonl/.csv/.txt/.parquet/save_to_disk folder -> [RawRow]
detect_format(rows, file)  -> "alpaca" | "sharegpt" | "messages" | "prompt_completion" | "text"
to_conversation(row, fmt, ref) -> Conversation, or RowError(reason, field)
load_source(source)        -> SourceData (kept conversations + rejections with reasons)
build_mixture(...)         -> Mixture(train, eval, rejected, report)
"""

from sftlab.data.formats import FORMATS, detect_format, to_conversation, validate_conversation
from sftlab.data.mixture import Mixture, SourceData, build_mixture, load_source, resolve_path
from sftlab.data.readers import SUPPORTED, RawRow, read_rows

__all__ = [
    "FORMATS",
    "SUPPORTED",
    "Mixture",
    "RawRow",
    "SourceData",
    "build_mixture",
    "detect_format",
    "load_source",
    "read_rows",
    "resolve_path",
    "to_conversation",
    "validate_conversation",
]
