"""audit.html: one self-contained page over an audit folder (kept.jsonl, rejected.jsonl,
review.jsonl, audit.json), with the review queue a person marks and saves as decisions.json.

The page shows samples, not everything: a 50,000-row audit must still open quickly. What is
left out is counted on the page and stays in the JSONL files.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from sftlab.core.errors import DataError
from sftlab.report.page import highlight, render_page, svg_histogram, write_page

MAX_REVIEW = 300  # review rows shown
MAX_CLUSTERS = 40  # duplicate clusters shown
MAX_PER_RULE = 15  # rejected rows shown per rule
SHORT = 1200  # characters of a message shown outside the review queue
LONG = 8000  # ... and inside it, where the highlighted tokens must stay visible
_ID_VALUE = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')  # a JSON "id": "<string>" member


def write_audit_page(out_dir: Path) -> Path:
    """Read the audit outputs in `out_dir` and write `out_dir/audit.html`; returns its path."""
    out_dir = Path(out_dir)
    audit = read_json(out_dir / "audit.json")
    if not isinstance(audit, dict) or not isinstance(audit.get("totals"), dict):
        raise DataError(
            str(out_dir / "audit.json"), 'no "totals" object; expected an audit summary'
        )
    review = list(read_jsonl(out_dir / "review.jsonl"))
    clusters = audit.get("duplicate_clusters") or []
    shown_clusters = clusters[:MAX_CLUSTERS]
    wanted_kept = {c["kept"] for c in shown_clusters}
    wanted_rejected = {r for c in shown_clusters for r in c["rejected"][:3]}
    kept = {row_id(r): r for r in read_jsonl(out_dir / "kept.jsonl", only=wanted_kept)}
    rejected, groups = _read_rejected(out_dir / "rejected.jsonl", wanted_rejected)
    lengths = audit.get("lengths") or {}
    html = render_page(
        "audit.html.j2",
        title=f"Data audit: {out_dir.name}",
        scripts=["audit.js"],
        audit_id=audit_id(out_dir),
        totals={"rows": 0, "kept": 0, "rejected": 0, "review": 0, **audit["totals"]},
        inputs=audit.get("inputs", []),
        timings=[(k, _round(v)) for k, v in (audit.get("timings_s") or {}).items()],
        model_scores=audit.get("model_scores"),
        per_source=[{"file": f, **v} for f, v in (audit.get("per_source") or {}).items()],
        per_rule=_rule_rows(audit),
        tokenizer=lengths.get("tokenizer", "?"),
        charts={
            "prompt": svg_histogram(lengths.get("prompt_tokens", []), "prompt tokens"),
            "response": svg_histogram(
                lengths.get("response_tokens", []), "response tokens", color="#4f8a5b"
            ),
            "ifd": _ifd_chart(audit.get("model_scores")),
        },  # fmt: skip
        top_ngrams=audit.get("top_ngrams") or [],
        slop_hits=audit.get("slop_hits") or [],
        review=[review_view(r) for r in review[:MAX_REVIEW]],
        review_hidden=max(len(review) - MAX_REVIEW, 0),
        clusters=[_cluster_view(c, kept, rejected) for c in shown_clusters],
        clusters_hidden=len(clusters) - len(shown_clusters),
        rejected_groups=groups,
    )
    return write_page(out_dir / "audit.html", html)


def audit_id(out_dir: Path) -> str:
    """What decisions.json names as its audit: the folder's name (stable while rows move)."""
    return Path(out_dir).name


def row_id(record: dict) -> str:
    """A record's row id: its own "id", else "<file name>:<line>" as the interface defines."""
    if record.get("id"):
        return str(record["id"])
    source = record.get("source") or record.get("file") or "?"
    return f"{Path(str(source)).name}:{record.get('line', 0)}"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            str(path), "not found; is this a folder written by `sftlab data audit`?"
        ) from None
    except json.JSONDecodeError as exc:
        raise DataError(str(path), f"not valid JSON ({exc.msg})", exc.lineno) from None


def read_jsonl(path: Path, only: set[str] | None = None) -> Iterator[dict]:
    """The records of a JSONL file; with `only`, just the records whose row id is in it (lines
    without such an "id" string are skipped unparsed: 50,000 kept rows cost ~4 s to parse)."""
    if not path.exists():
        raise DataError(str(path), "not found; is this a folder written by `sftlab data audit`?")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            ids = _ID_VALUE.findall(line) if only is not None else ()
            if ids and not any((json.loads(f'"{m}"') if "\\" in m else m) in only for m in ids):
                continue  # a record with ids, none wanted (an id-less record is read in full)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(str(path), f"not valid JSON ({exc.msg})", number) from None
            if only is None or row_id(record) in only:
                yield record


def _ifd_chart(model_scores: dict | None):
    """IFD per scored row (audit.json model_scores.ifd: {row id: value or null}), if any."""
    values = [
        v for v in ((model_scores or {}).get("ifd") or {}).values() if isinstance(v, (int, float))
    ]
    return svg_histogram(values, "IFD", color="#8a5b9e") if values else None


def _round(value):
    return round(value, 2) if isinstance(value, float) else value


def _rule_rows(audit: dict) -> list[dict]:
    thresholds = audit.get("thresholds") or {}
    rows = []
    for rule, counts in sorted(
        (audit.get("per_rule") or {}).items(), key=lambda kv: -kv[1].get("fired", 0)
    ):
        threshold = thresholds.get(rule, "")
        meaning = ""
        if isinstance(threshold, dict):  # {"threshold", "action", "meaning"} as the audit writes it
            shown = f"{threshold.get('threshold', '')} ({threshold.get('action', '?')})"
            meaning = threshold.get("meaning", "")
        else:
            shown = json.dumps(threshold) if isinstance(threshold, list) else threshold
        rows.append(
            {
                "rule": rule,
                "fired": 0,
                "rejected": 0,
                "review": 0,
                **counts,
                "threshold": shown,
                "meaning": meaning,
            }
        )
    return rows


def _read_rejected(path: Path, wanted: set[str]):
    """Rejected rows needed by the clusters, and a sample of each rule (by its first rule)."""
    by_id: dict[str, dict] = {}
    counts: dict[str, int] = defaultdict(int)
    samples: dict[str, list[dict]] = defaultdict(list)
    for record in read_jsonl(path):
        rid = row_id(record)
        if rid in wanted:
            by_id[rid] = record
        rule = _rejecting_rule(record)
        counts[rule] += 1
        if len(samples[rule]) < MAX_PER_RULE:
            samples[rule].append(_rejected_view(record))
    groups = [
        {"rule": rule, "count": counts[rule], "rows": samples[rule]}
        for rule in sorted(counts, key=lambda r: -counts[r])
    ]
    return by_id, groups


def _rejecting_rule(record: dict) -> str:
    """The rule a rejected row is filed under: the first one its reason names ("rule: why;
    ..."), as `rules` also lists review-only findings; else the first rule, else the stage."""
    names = [r.get("rule", "?") for r in record.get("rules") or []]
    head = str(record.get("reason", "")).split(":", 1)[0]
    return head if head in names else (names[0] if names else record.get("stage", "rejected"))


def _messages(record: dict) -> list[dict]:
    """The messages of a kept/review record or of a rejected record's `row`."""
    if "messages" in record:
        return record["messages"]
    row = record.get("row")
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        return row["messages"]
    if isinstance(row, dict) and "text" in row:
        return [{"role": "text", "content": row["text"]}]
    return [{"role": "raw", "content": json.dumps(row, ensure_ascii=False)}]


def _message_views(messages: list[dict], limit: int, marks=None) -> list[dict]:
    views = []
    for i, m in enumerate(messages):
        content = m.get("content") or ""
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        if m.get("tool_calls"):
            content += "\n" + json.dumps(m["tool_calls"], ensure_ascii=False)
        cut = content[:limit] + (" […]" if len(content) > limit else "")
        views.append({"role": m.get("role", "?"), "html": highlight(cut, (marks or {}).get(i, []))})
    return views


def review_view(record: dict) -> dict:
    """A review row: its reasons and its messages with the surprising tokens marked."""
    marks: dict[int, list] = defaultdict(list)
    why = []
    for w in record.get("why") or []:
        tokens = w.get("tokens") or []
        for t in tokens:
            title = f"surprisal {t.get('surprisal', 0):.1f} nats"
            marks[int(t.get("message", -1))].append(
                (int(t["char_start"]), int(t["char_end"]), title)
            )
        why.append({
            "rule": w.get("rule", "?"), "score": _round(w.get("score")), "reason": w.get("reason", ""),
            "tokens": [repr(t.get("text", ""))[1:-1] for t in tokens[:20]],
        })  # fmt: skip
    return {
        "id": row_id(record),
        "why": why,
        "messages": _message_views(_messages(record), LONG, marks),
    }


def _rejected_view(record: dict) -> dict:
    rules = record.get("rules") or []
    why = [
        {
            "rule": r.get("rule", "?"),
            "score": _round(r.get("score")),
            "reason": r.get("reason", ""),
            "tokens": [],
        }
        for r in rules
    ] or [
        {
            "rule": record.get("stage", "?"),
            "score": None,
            "reason": record.get("reason", ""),
            "tokens": [],
        }
    ]
    if record.get("duplicate_of"):
        why.append(
            {"rule": "duplicate of", "score": None, "reason": record["duplicate_of"], "tokens": []}
        )
    return {"id": row_id(record), "why": why, "messages": _message_views(_messages(record), SHORT)}


def _cluster_view(cluster: dict, kept: dict, rejected: dict) -> dict:
    def view(rid: str, source: dict) -> dict:
        record = source.get(rid)
        messages = _messages(record) if record else [{"role": "?", "content": "(not found)"}]
        return {"id": rid, "messages": _message_views(messages, SHORT)}

    return {
        "kept": view(cluster["kept"], kept),
        "rejected": [view(r, rejected) for r in cluster["rejected"][:3]],
    }
