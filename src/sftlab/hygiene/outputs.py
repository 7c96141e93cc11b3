"""Write an audit's folder (the layout the report page reads):

    kept.jsonl      {"messages", "tools"?, "source", "line", "id"} per kept row, ready to train on
    rejected.jsonl  a run's rejection record + "rules": [{rule, score, threshold, reason}]
                    (+ "duplicate_of") per rejected row, unreadable rows included
    review.jsonl    {"id", "source", "line", "messages", "why": [...]} per kept row to look at
    audit.json      totals, per source, per rule, thresholds, timings, lengths, top n-grams,
                    slop hits, duplicate clusters, model scores
    audit.html      the page (sftlab.report.audit_page), written last
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sftlab.core.io import write_json, write_jsonl
from sftlab.core.types import Conversation, RowRef
from sftlab.hygiene.audit import AuditResult, Verdict
from sftlab.hygiene.load import AuditRow, row_id
from sftlab.hygiene.settings import RULES
from sftlab.hygiene.text import RowText, words_of

TOP_NGRAMS, NGRAM, NGRAM_ROWS = 30, 4, 10_000


def messages_json(conv: Conversation) -> dict[str, Any]:
    """A row in OpenAI messages form (text rows as {"text"}): what `sftlab train` reads back."""
    if conv.kind == "text":
        return {"text": conv.text}
    messages = []
    for m in conv.messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            item["tool_calls"] = [
                {"type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                for c in m.tool_calls
            ]  # fmt: skip
        if m.train is not None:
            item["train"] = m.train
        messages.append(item)
    return {"messages": messages} | ({"tools": list(conv.tools)} if conv.tools else {})


def _where(row: AuditRow) -> dict[str, Any]:
    ref = row.conversation.source
    return {"source": ref.file, "line": ref.line, "id": row.id}


def kept_record(row: AuditRow) -> dict[str, Any]:
    return messages_json(row.conversation) | _where(row)


def rejected_record(row: AuditRow, verdict: Verdict, settings) -> dict[str, Any]:
    ref = row.conversation.source
    rejecting = [f for f in verdict.findings if settings.actions[f.rule] == "reject"]
    record = {
        "file": ref.file, "line": ref.line, "index": ref.index, "stage": "hygiene",
        "reason": "; ".join(f"{f.rule}: {f.reason}" for f in rejecting),
        "row": messages_json(row.conversation), "id": row.id,
        "rules": [f.to_json() for f in verdict.findings],
    }  # fmt: skip
    if verdict.duplicate_of:
        record["duplicate_of"] = verdict.duplicate_of
    return record


def review_record(row: AuditRow, verdict: Verdict) -> dict[str, Any]:
    why = []
    for f in verdict.findings:
        item = {"rule": f.rule, "score": round(float(f.score), 4), "reason": f.reason}
        if "tokens" in f.extra:
            item["tokens"] = f.extra["tokens"]
        why.append(item)
    ref = row.conversation.source
    return {"id": row.id, "source": ref.file, "line": ref.line,
            "messages": messages_json(row.conversation).get("messages", []), "why": why}  # fmt: skip


def write_audit(result: AuditResult, out_dir: Path, inputs: list[str]) -> dict[str, Any]:
    """Write the four data files, then the page; returns audit.json's content."""
    clock = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = list(zip(result.rows, result.verdicts, strict=True))
    write_jsonl(out_dir / "kept.jsonl", (kept_record(r) for r, v in pairs if not v.rejected))
    unreadable = [dict(r.to_json(), id=row_id(s.name, RowRef(r.file, r.line, r.index)), rules=[])
                  for s in result.sources for r in s.unreadable]  # fmt: skip
    judged = [rejected_record(r, v, result.settings) for r, v in pairs if v.rejected]
    write_jsonl(out_dir / "rejected.jsonl", unreadable + judged)
    write_jsonl(out_dir / "review.jsonl", (review_record(r, v) for r, v in pairs if v.review))
    result.timings["write"] = time.perf_counter() - clock
    summary = audit_summary(result, inputs)
    write_json(out_dir / "audit.json", summary)
    write_page(out_dir)
    return summary


def write_page(out_dir: Path) -> Path | None:
    """audit.html by the report package; None where that package is not installed."""
    try:
        from sftlab.report.audit_page import write_audit_page
    except ImportError:
        return None
    return write_audit_page(out_dir)


def audit_summary(result: AuditResult, inputs: list[str]) -> dict[str, Any]:
    pairs = list(zip(result.rows, result.verdicts, strict=True))
    per_source = {}
    for s in result.sources:
        mine = [v for r, v in pairs if r.conversation.source.file == s.file]
        kept = sum(not v.rejected for v in mine)
        per_source[s.file] = {"rows": s.n_input, "kept": kept, "rejected": s.n_input - kept,
                              "unreadable": len(s.unreadable), "format": s.fmt}  # fmt: skip
    totals = {
        "rows": sum(s.n_input for s in result.sources),
        "kept": sum(not v.rejected for v in result.verdicts),
        "review": sum(v.review for v in result.verdicts),
    }
    totals["rejected"] = totals["rows"] - totals["kept"]
    return {
        "version": 1,
        "inputs": inputs,
        "totals": totals,
        "per_source": per_source,
        "per_rule": _per_rule(result),
        "thresholds": {name: {"action": result.settings.actions[name],
                              "threshold": result.settings.thresholds[name],
                              "family": spec.family, "meaning": spec.meaning}
                       for name, spec in RULES.items()},  # fmt: skip
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "lengths": {"prompt_tokens": [t.prompt_tokens for t in result.texts],
                    "response_tokens": [t.response_tokens for t in result.texts],
                    "tokenizer": result.tokenizer_name},  # fmt: skip
        "top_ngrams": top_ngrams(result.texts),
        "slop_hits": Counter(h for t in result.texts for h in (t.slop_hits or [])).most_common(),
        "duplicate_clusters": result.clusters,
        "model_scores": result.model_scores,
    }


def _per_rule(result: AuditResult) -> dict[str, dict[str, int]]:
    counts = {name: {"fired": 0, "rejected": 0, "review": 0} for name in RULES}
    for verdict in result.verdicts:
        for f in verdict.findings:
            counts[f.rule]["fired"] += 1
            action = result.settings.actions[f.rule]
            if action == "reject":
                counts[f.rule]["rejected"] += 1
            elif action == "review" and verdict.review:
                counts[f.rule]["review"] += 1
    return counts


def top_ngrams(texts: list[RowText]) -> list[list]:
    """The answers' most repeated word 4-grams, counted once per row (over at most NGRAM_ROWS
    rows spread evenly across the set, so 50,000 rows stay fast)."""
    step = max(1, len(texts) // NGRAM_ROWS)
    counter: Counter[str] = Counter()
    for t in texts[::step]:
        words = words_of(t.response)[:400]
        counter.update({" ".join(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)})
    return [[gram, count * step] for gram, count in counter.most_common(TOP_NGRAMS) if count > 1]
