"""Apply a person's review decisions (decisions.json, saved from audit.html) to an audit folder.

    decisions.json  {"version": 1, "audit": "<audit folder name>",
                     "decisions": {"<row id>": "keep" | "drop", ...}}

"drop" on a kept row moves it to rejected.jsonl (stage "review", reason "dropped in review");
"keep" on a rejected row moves it back to kept.jsonl with the rules it was kept over recorded.
Decided rows leave review.jsonl (a person has looked at them); audit.json's counts follow, and
kept + rejected still equals the rows read, per source. Applying the same file twice moves
nothing the second time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.core.errors import DataError
from sftlab.core.io import write_json, write_jsonl

DECISIONS = ("keep", "drop")
REVIEW_RULE = "review"


@dataclass
class ReviewResult:
    dropped: list[str] = field(default_factory=list)  # kept -> rejected
    restored: list[str] = field(default_factory=list)  # rejected -> kept
    unchanged: list[str] = field(default_factory=list)  # already where the decision puts them
    not_restorable: list[str] = field(default_factory=list)  # rejected rows with no conversation
    note: str = ""

    def summary(self) -> str:
        lines = [
            f"dropped {len(self.dropped)} kept row(s) in review" + _ids(self.dropped),
            f"restored {len(self.restored)} rejected row(s) to kept" + _ids(self.restored),
        ]
        if self.unchanged:
            lines.append(f"{len(self.unchanged)} decision(s) changed nothing (already so)")
        if self.not_restorable:
            lines.append(
                f"{len(self.not_restorable)} row(s) could not be kept: they were never read as a "
                "conversation (fix them in the source file)" + _ids(self.not_restorable)
            )
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def _ids(ids: list[str], shown: int = 10) -> str:
    if not ids:
        return ""
    more = f", ... (+{len(ids) - shown})" if len(ids) > shown else ""
    return ": " + ", ".join(ids[:shown]) + more


def load_decisions(path: Path) -> tuple[dict[str, str], str | None]:
    """The decisions and the audit they were made on, or a DataError saying what was expected."""
    expected = (
        'expected {"version": 1, "audit": "<audit folder>", "decisions": {"<row id>": '
        '"keep" or "drop"}} as saved by audit.html'
    )
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(str(path), "decisions file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise DataError(str(path), f"not valid JSON ({exc}); {expected}", line) from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise DataError(str(path), f'no "version": 1; {expected}')
    decisions = data.get("decisions")
    if not isinstance(decisions, dict):
        raise DataError(str(path), f'"decisions" is missing or not an object; {expected}')
    bad = {k: v for k, v in decisions.items() if v not in DECISIONS}
    if bad:
        shown = ", ".join(f"{k!r}: {v!r}" for k, v in list(bad.items())[:5])
        raise DataError(str(path), f'decisions must be "keep" or "drop"; found {shown}')
    audit = data.get("audit")
    return dict(decisions), audit if isinstance(audit, str) else None


def apply_review(out_dir: Path, decisions_file: Path, write_page: bool = True) -> ReviewResult:
    """Apply `decisions_file` to the audit in `out_dir` (module docstring); rewrites the four
    files (and audit.html unless write_page is False) and says what moved."""
    from sftlab.report.audit_page import audit_id, read_json, read_jsonl, row_id

    out_dir = Path(out_dir)
    decisions, audit = load_decisions(decisions_file)
    kept = {row_id(r): r for r in read_jsonl(out_dir / "kept.jsonl")}
    rejected = {row_id(r): r for r in read_jsonl(out_dir / "rejected.jsonl")}
    unknown = sorted(set(decisions) - kept.keys() - rejected.keys())
    if unknown:
        raise DataError(
            str(decisions_file),
            f"{len(unknown)} row id(s) are not in the audit at {out_dir}: {', '.join(unknown[:10])}"
            ' (expected ids of kept.jsonl or rejected.jsonl there, as "<file>:<line>")',
        )
    result = ReviewResult()
    if audit and audit != audit_id(out_dir):
        result.note = (
            f"note: these decisions were saved on audit {audit!r}, applied to {out_dir.name!r}"
        )
    for rid, decision in sorted(decisions.items()):
        if decision == "drop" and rid in kept:
            rejected[rid] = dropped_record(kept.pop(rid), rid)
            result.dropped.append(rid)
        elif decision == "keep" and rid in rejected:
            record = restored_record(rejected[rid], rid)
            if record is None:
                result.not_restorable.append(rid)
                continue
            kept[rid] = record
            del rejected[rid]
            result.restored.append(rid)
        else:
            result.unchanged.append(rid)
    review = [r for r in read_jsonl(out_dir / "review.jsonl") if row_id(r) not in decisions]
    summary = _recount(read_json(out_dir / "audit.json"), kept, rejected, review, result)
    write_jsonl(out_dir / "kept.jsonl", kept.values())
    write_jsonl(out_dir / "rejected.jsonl", rejected.values())
    write_jsonl(out_dir / "review.jsonl", review)
    write_json(out_dir / "audit.json", summary)
    if write_page:
        from sftlab.report.audit_page import write_audit_page

        write_audit_page(out_dir)
    return result


def dropped_record(kept: dict[str, Any], rid: str) -> dict[str, Any]:
    """A kept row as a rejected.jsonl record (the shape a run's rejections have)."""
    reason = "dropped in review"
    row = {k: kept[k] for k in ("messages", "tools", "text") if k in kept}
    return {
        "file": kept.get("source", "?"), "line": kept.get("line", 0), "index": kept.get("index", -1),
        "stage": "review", "reason": reason, "row": row, "id": rid,
        "rules": [{"rule": REVIEW_RULE, "score": 1.0, "threshold": 1.0, "reason": reason}],
    }  # fmt: skip


def restored_record(rejected: dict[str, Any], rid: str) -> dict[str, Any] | None:
    """A rejected row back in kept.jsonl form, or None if it never was a conversation."""
    row = rejected.get("row")
    if not isinstance(row, dict) or not ("messages" in row or "text" in row):
        return None
    over = [r.get("rule", "?") for r in rejected.get("rules") or []] or [rejected.get("stage", "?")]
    return {
        **{k: row[k] for k in ("messages", "tools", "text") if k in row},
        "source": rejected.get("file", "?"), "line": rejected.get("line", 0), "id": rid,
        "review": f"kept in review over: {', '.join(over)}", "kept_over": over,
    }  # fmt: skip


def _recount(audit: dict, kept: dict, rejected: dict, review: list, result: ReviewResult) -> dict:
    """audit.json with totals and per-source counts from the files as they now are."""
    totals = audit.setdefault("totals", {})
    rows = totals.get("rows", len(kept) + len(rejected))
    if len(kept) + len(rejected) != rows:
        raise DataError(
            "audit.json",
            f"kept + rejected = {len(kept) + len(rejected)} rows, but {rows} were read",
        )
    totals.update(kept=len(kept), rejected=len(rejected), review=len(review))
    for file, counts in (audit.get("per_source") or {}).items():
        counts["kept"] = sum(r.get("source") == file for r in kept.values())
        counts["rejected"] = sum(r.get("file") == file for r in rejected.values())
    per_rule = audit.setdefault("per_rule", {})
    for rule, counts in per_rule.items():  # rows decided on have left the review queue
        counts["review"] = sum(any(w.get("rule") == rule for w in r.get("why", [])) for r in review)
        overridden = sum(rule in r.get("kept_over", ()) for r in kept.values())
        if overridden:  # the rule rejected these rows; a person kept them
            counts["kept_in_review"] = overridden
        else:
            counts.pop("kept_in_review", None)
    dropped = sum(r.get("stage") == "review" for r in rejected.values())
    per_rule[REVIEW_RULE] = {"fired": dropped, "rejected": dropped, "review": 0}
    history = audit.setdefault("reviews", [])
    history.append({"dropped": result.dropped, "restored": result.restored})
    return audit
