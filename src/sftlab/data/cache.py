"""Rendered datasets cached on disk under a content hash, so an unchanged run skips all reading,
rendering and tokenizing.

    CACHE/data/<key>/arrays.npz    ids and labels of every example, concatenated, with offsets
    CACHE/data/<key>/meta.json     sources of each example, turn ends, rejections, reports

The key (computed by the caller) covers everything that changes the result: the data files'
contents, the data and template settings, the tokenizer and the chat template, and
CACHE_VERSION, bumped whenever rendering changes. Entries are written to a staging folder and
renamed, so a crash never leaves a half entry that a later run would trust.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from sftlab.core.errors import Rejection
from sftlab.core.types import RowRef, TokenizedExample

CACHE_VERSION = 3  # 3: rows tokenized as whole texts (template/wholetext.py)


def _pack(examples: list[TokenizedExample], files: dict[str, int]) -> dict:
    """Flat arrays only: loading 50,000 examples must not parse 50,000 JSON objects."""
    empty = np.zeros(0, dtype=np.int32)
    refs = [e.source or RowRef("", 0, -1) for e in examples]
    return {
        "ids": np.concatenate([e.input_ids for e in examples]) if examples else empty,
        "labels": np.concatenate([e.labels for e in examples]) if examples else empty,
        "lengths": np.array([len(e) for e in examples], dtype=np.int64),
        "file": np.array([files.setdefault(r.file, len(files)) for r in refs], dtype=np.int32),
        "line": np.array([r.line for r in refs], dtype=np.int64),
        "index": np.array([r.index for r in refs], dtype=np.int64),
        "turn_ends": np.array([t for e in examples for t in e.turn_ends], dtype=np.int64),
        "turn_counts": np.array([len(e.turn_ends) for e in examples], dtype=np.int64),
        "truncated": np.array([e.truncated for e in examples], dtype=bool),
    }


def _unpack(prefix: str, a: dict, files: list[str]) -> list[TokenizedExample]:
    def get(name):
        return a[f"{prefix}_{name}"]

    ids, labels, lengths = get("ids"), get("labels"), get("lengths")
    bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    turn_bounds = np.concatenate([[0], np.cumsum(get("turn_counts"))]).tolist()
    turn_ends = get("turn_ends").tolist()
    file, line, index = get("file").tolist(), get("line").tolist(), get("index").tolist()
    truncated = get("truncated").tolist()
    return [
        TokenizedExample(
            ids[bounds[i] : bounds[i + 1]],
            labels[bounds[i] : bounds[i + 1]],
            RowRef(files[file[i]], line[i], index[i]) if index[i] >= 0 else None,
            tuple(turn_ends[turn_bounds[i] : turn_bounds[i + 1]]),
            truncated[i],
        )
        for i in range(len(lengths))
    ]


def store(folder: Path, train: list[TokenizedExample], eval_: list[TokenizedExample],
          rejected: list[Rejection], extra: dict) -> None:  # fmt: skip
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        arrays, files = {}, {}
        for prefix, examples in (("train", train), ("eval", eval_)):
            arrays.update({f"{prefix}_{k}": v for k, v in _pack(examples, files).items()})
        meta = {"version": CACHE_VERSION, "extra": extra, "files": list(files)}
        meta["rejected"] = [r.to_json() for r in rejected]
        np.savez(staging / "arrays.npz", **arrays)
        (staging / "meta.json").write_text(json.dumps(meta, default=str), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # a cache that cannot be written is no error


def load(folder: Path):
    """(train, eval, rejected, extra) or None when there is no complete, current entry."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("version") != CACHE_VERSION:
            return None
        with np.load(folder / "arrays.npz") as arrays:
            loaded = {k: arrays[k] for k in arrays.files}
    except (OSError, ValueError, KeyError):
        return None
    train = _unpack("train", loaded, meta["files"])
    eval_ = _unpack("eval", loaded, meta["files"])
    rejected = [Rejection(**r) for r in meta["rejected"]]
    return train, eval_, rejected, meta["extra"]
