"""A small audit folder written by hand, exactly as the hygiene interface defines it (kept.jsonl,
rejected.jsonl, review.jsonl, audit.json), so the page and the review loop are tested on files
whose every row and count is known here, independently of the audit that normally writes them.

    a.jsonl  lines 1-6: 1, 2, 4, 6 kept (2 and 4 in review), 3 rejected (duplicate of 1),
                        5 rejected (slop)
    b.jsonl  lines 1-2: 1 kept, 2 rejected (empty response)
"""

from __future__ import annotations

import json
from pathlib import Path

GARBAGE = "Ã©Ã¢â‚¬â„¢"  # a mojibake run injected into a review row


def _msgs(prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _kept(file: str, line: int, prompt: str, response: str) -> dict:
    return {
        "messages": _msgs(prompt, response),
        "source": file,
        "line": line,
        "id": f"{file}:{line}",
    }


def _rejected(file, line, prompt, response, rule, score, threshold, reason, **extra) -> dict:
    return {
        "file": file, "line": line, "index": line - 1, "stage": "hygiene", "reason": reason,
        "row": {"messages": _msgs(prompt, response)}, "id": f"{file}:{line}",
        "rules": [{"rule": rule, "score": score, "threshold": threshold, "reason": reason}],
        **extra,
    }  # fmt: skip


SURPRISING_RESPONSE = f"The capital of France is Paris {GARBAGE} and it lies on the Seine."


def write_audit_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    kept = [
        _kept("a.jsonl", 1, "What is 2 + 2?", "2 + 2 = 4."),
        _kept("a.jsonl", 2, "What is the capital of France?", SURPRISING_RESPONSE),
        _kept("a.jsonl", 4, "Name a primary colour.", "Red."),
        _kept("a.jsonl", 6, "Say hello in Spanish.", "Hola."),
        _kept("b.jsonl", 1, "Spell cat backwards.", "tac"),
    ]
    rejected = [
        _rejected("a.jsonl", 3, "What is 2+2?", "2 + 2 = 4.", "near_duplicate", 0.93, 0.8,
                  "near-duplicate of a.jsonl:1 (Jaccard 0.93)", duplicate_of="a.jsonl:1"),
        _rejected("a.jsonl", 5, "Describe the sea.", "Let us delve into the rich tapestry of the sea.",
                  "slop", 250.0, 20.0, "2 slop phrases (delve, tapestry): 250 per 1k words"),
        _rejected("b.jsonl", 2, "Tell me a joke.", "   ", "empty_response", 1.0, 1.0,
                  "the response is empty or whitespace"),
    ]  # fmt: skip
    start = SURPRISING_RESPONSE.index(GARBAGE)
    tokens = [
        {"text": GARBAGE[:2], "surprisal": 14.2, "char_start": start, "char_end": start + 2, "message": 1},
        {"text": GARBAGE[4:7], "surprisal": 12.9, "char_start": start + 4, "char_end": start + 7, "message": 1},
    ]  # fmt: skip
    review = [
        {"id": "a.jsonl:2", "source": "a.jsonl", "line": 2, "messages": kept[1]["messages"],
         "why": [{"rule": "surprising_tokens", "score": 9.1, "reason": "2 tokens far out of the model's distribution", "tokens": tokens}]},
        {"id": "a.jsonl:4", "source": "a.jsonl", "line": 4, "messages": kept[2]["messages"],
         "why": [{"rule": "too_short", "score": 2.0, "reason": "response of 2 tokens (review below 4)"}]},
    ]  # fmt: skip
    audit = {
        "version": 1,
        "inputs": ["a.jsonl", "b.jsonl"],
        "totals": {"rows": 8, "kept": 5, "rejected": 3, "review": 2},
        "per_source": {"a.jsonl": {"rows": 6, "kept": 4, "rejected": 2},
                       "b.jsonl": {"rows": 2, "kept": 1, "rejected": 1}},
        "per_rule": {"near_duplicate": {"fired": 1, "rejected": 1, "review": 0},
                     "slop": {"fired": 1, "rejected": 1, "review": 0},
                     "empty_response": {"fired": 1, "rejected": 1, "review": 0},
                     "surprising_tokens": {"fired": 1, "rejected": 0, "review": 1},
                     "too_short": {"fired": 1, "rejected": 0, "review": 1}},
        "thresholds": {"near_duplicate": 0.8, "slop": 20.0, "too_short": 4},
        "timings_s": {"read": 0.01, "rules": 0.02},
        "lengths": {"prompt_tokens": [8, 9, 7, 8, 6, 7, 6, 6], "response_tokens": [6, 19, 2, 3, 2, 6, 12, 1],
                    "tokenizer": "tiny-bytes"},
        "top_ngrams": [["what is the", 2], ["2 + 2", 2]],
        "slop_hits": [["delve", 1], ["tapestry", 1]],
        "duplicate_clusters": [{"kept": "a.jsonl:1", "rejected": ["a.jsonl:3"]}],
        "model_scores": None,
    }  # fmt: skip
    _write_jsonl(folder / "kept.jsonl", kept)
    _write_jsonl(folder / "rejected.jsonl", rejected)
    _write_jsonl(folder / "review.jsonl", review)
    (folder / "audit.json").write_text(json.dumps(audit, indent=2), encoding="utf-8")
    return folder


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
