"""The audit: every row read fine is judged by every rule; each ends kept, kept for review, or
rejected with the rules that fired.

    files ──load_input──► rows ──row_text──► RowText (+ token counts)
          ──per-row rules──► findings ──length ratio, contamination, duplicates──► findings
          ──model scores (optional)──► surprising tokens (review), --select N by IFD
          ──► verdicts: rejected if any finding's action is reject; review if any is review

Per source, kept + rejected == rows in the file (unreadable rows count as rejected, as in a
training run); `audit()` checks it before anything is written.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sftlab.core.types import Conversation
from sftlab.hygiene.contamination import EvalIndex, contamination
from sftlab.hygiene.dedup import Features, dedup_features, find_duplicates
from sftlab.hygiene.length import TokenCounter, approximate_tokens, length_ratio
from sftlab.hygiene.load import AuditRow, LoadedSource
from sftlab.hygiene.rules import RuleSettings, run_row_rules
from sftlab.hygiene.text import Finding, RowText, RuleContext, row_text

PARALLEL_MIN_ROWS = 5_000  # below this, starting worker processes costs more than it saves
MAX_WORKERS = 8
Scorer = Callable[[list[Conversation]], Sequence[Any]]  # -> RowScore per row (model_scores)


@dataclass
class AuditOptions:
    settings: RuleSettings
    context: RuleContext = field(default_factory=RuleContext)
    count_tokens: TokenCounter = approximate_tokens
    tokenizer_name: str = "approximate (words and punctuation)"
    eval_index: EvalIndex | None = None
    scorer: Scorer | None = None
    model_name: str | None = None
    select: int | None = None
    workers: int | None = None  # processes for the per-row rules; None: one per core (up to 8)


@dataclass
class Verdict:
    findings: list[Finding] = field(default_factory=list)
    rejected: bool = False
    review: bool = False

    @property
    def duplicate_of(self) -> str | None:
        return next((f.extra["duplicate_of"] for f in self.findings if "duplicate_of" in f.extra), None)


@dataclass
class AuditResult:
    sources: list[LoadedSource]
    rows: list[AuditRow]
    texts: list[RowText]
    verdicts: list[Verdict]
    settings: RuleSettings
    clusters: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tokenizer_name: str = ""
    model_scores: dict | None = None

    def kept(self, source: LoadedSource) -> list[Conversation]:
        return [r.conversation for r, v in zip(self.rows, self.verdicts, strict=True)
                if not v.rejected and r.conversation.source.file == source.file]  # fmt: skip


def audit(sources: list[LoadedSource], options: AuditOptions) -> AuditResult:
    start = time.perf_counter()
    rows = [row for source in sources for row in source.rows]
    texts = [row_text(r.conversation, r.id, r.tags) for r in rows]
    counts = options.count_tokens([t.prompt for t in texts] + [t.response for t in texts])
    for i, t in enumerate(texts):
        t.prompt_tokens, t.response_tokens = counts[i], counts[len(texts) + i]
    timings = {"tokens": time.perf_counter() - start}
    settings, clock = options.settings, time.perf_counter()
    findings, features = row_findings(texts, settings, options.context, options.workers)
    if settings.on("length_ratio"):
        _add(findings, _length_ratio_per_source(rows, texts, settings.thresholds["length_ratio"]))
    timings["rules"], clock = time.perf_counter() - clock, time.perf_counter()
    if options.eval_index is not None and settings.on("contamination"):
        threshold = settings.thresholds["contamination"]
        _add(findings, [contamination([t.prompt, t.response], options.eval_index, threshold)
                        for t in texts])  # fmt: skip
    timings["contamination"], clock = time.perf_counter() - clock, time.perf_counter()
    clusters = _deduplicate(texts, features, findings, settings)
    timings["dedup"], clock = time.perf_counter() - clock, time.perf_counter()
    model_scores = None
    if options.scorer is not None:
        model_scores = _model_findings(rows, findings, options)
        timings["model"] = time.perf_counter() - clock
    verdicts = [_verdict(f, settings) for f in findings]
    result = AuditResult(sources, rows, texts, verdicts, settings, clusters, timings,
                         options.tokenizer_name, model_scores)  # fmt: skip
    check_totals(result)
    timings["total"] = time.perf_counter() - start
    return result


def row_findings(
    texts: list[RowText], settings: RuleSettings, ctx: RuleContext, workers: int | None
) -> tuple[list[list[Finding]], list[Features]]:
    """The per-row rules and the dedup features of every row; big sets are split over worker
    processes (the rules are pure Python, so threads would not help). Workers send back the
    findings, the slop phrases found (audit.json counts them) and the dedup features."""
    if workers is None:  # auto: one per core, for sets big enough to repay starting them
        workers = min(os.cpu_count() or 1, MAX_WORKERS) if len(texts) >= PARALLEL_MIN_ROWS else 1
    # fork only: spawn re-runs the caller's main module, which breaks any user script without a
    # `if __name__ == "__main__"` guard. The workers run pure Python and numpy, never torch, so
    # forking after torch has started its threads is safe here.
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        judged = _judge_chunk(texts, settings, ctx)
    else:
        size = -(-len(texts) // (workers * 4))  # a few chunks per worker evens out slow chunks
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = pool.map(_judge_chunk, chunks, [settings] * len(chunks), [ctx] * len(chunks))
            judged = [item for part in parts for item in part]
    for text, (_, slop_hits, _) in zip(texts, judged, strict=True):
        text.slop_hits = slop_hits
    return [found for found, _, _ in judged], [feature for _, _, feature in judged]


def _judge_chunk(texts: list[RowText], settings: RuleSettings, ctx: RuleContext) -> list[tuple]:
    dedup = settings.on("exact_duplicate") or settings.on("near_duplicate")
    return [(run_row_rules(t, settings, ctx), t.slop_hits, dedup_features(dedup_text(t)) if dedup else None)
            for t in texts]  # fmt: skip


def dedup_text(text: RowText) -> str:
    """System prompt and tool results count too: two rows differing there are not copies."""
    return f"{text.context}\n{text.response}"


def _add(findings: list[list[Finding]], extra: Sequence[Finding | None]) -> None:
    for row_findings, finding in zip(findings, extra, strict=True):
        if finding is not None:
            row_findings.append(finding)


def _length_ratio_per_source(rows: list[AuditRow], texts: list[RowText], threshold: float) -> list:
    """Typical lengths differ between sources (math vs chat): judge each against its own."""
    out: list[Finding | None] = [None] * len(texts)
    by_file: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_file.setdefault(row.conversation.source.file, []).append(i)
    for members in by_file.values():
        for i, finding in zip(members, length_ratio([texts[i] for i in members], threshold), strict=True):
            out[i] = finding
    return out


def _verdict(findings: list[Finding], settings: RuleSettings) -> Verdict:
    actions = {settings.actions[f.rule] for f in findings}
    rejected = "reject" in actions
    return Verdict(findings, rejected, not rejected and "review" in actions)


def _rank(findings: list[Finding], text: RowText, position: int, settings: RuleSettings) -> tuple:
    """Lower is better: fewer rejecting problems, fewer review flags, a longer answer, first seen."""
    rejecting = sum(settings.actions[f.rule] == "reject" for f in findings)
    return (rejecting, len(findings) - rejecting, -text.response_tokens, position)


def _deduplicate(texts: list[RowText], features: list[Features], findings: list[list[Finding]],
                 settings: RuleSettings) -> list[dict]:  # fmt: skip
    exact, near = settings.on("exact_duplicate"), settings.on("near_duplicate")
    if not (exact or near) or not texts:
        return []
    dup_findings, clusters = find_duplicates(
        features,
        [_rank(f, t, i, settings) for i, (f, t) in enumerate(zip(findings, texts, strict=True))],
        [t.id for t in texts],
        settings.thresholds["exact_duplicate"] if exact else None,
        settings.thresholds["near_duplicate"] if near else None,
    )
    _add(findings, dup_findings)
    return [{"kept": texts[c.kept].id, "rejected": [texts[i].id for i in c.members]} for c in clusters]


def _model_findings(rows: list[AuditRow], findings: list[list[Finding]], options: AuditOptions) -> dict:
    """Score the rows the rules keep; flag surprising tokens; keep the --select N best by IFD.

    Best by IFD follows Li et al. (2024): the highest IFD below 1 (the prompt helps, but the
    answer is not trivial given it); rows at or above 1 (the prompt does not help) come last.
    """
    settings = options.settings
    alive = [i for i, f in enumerate(findings) if not _verdict(f, settings).rejected]
    scores = options.scorer([rows[i].conversation for i in alive])
    for i, score in zip(alive, scores, strict=True):
        tokens = [t.to_json() for t in getattr(score, "surprising", [])]
        if tokens and settings.on("surprising_tokens"):
            shown = ", ".join(repr(t["text"]) for t in tokens[:5])
            findings[i].append(Finding("surprising_tokens", float(len(tokens)), settings.thresholds["surprising_tokens"],
                                       f"{len(tokens)} answer token(s) far out of the model's distribution: {shown}",
                                       {"tokens": tokens}))  # fmt: skip
    if options.select is not None and settings.on("not_selected"):
        _select(alive, scores, findings, options.select)
    return {"model": options.model_name, "tokens_per_s": float(getattr(scores, "tokens_per_s", 0.0)),
            "ifd": {rows[i].id: _finite(s.ifd) for i, s in zip(alive, scores, strict=True)}}  # fmt: skip


def _finite(value: float) -> float | None:
    return round(value, 4) if value is not None and math.isfinite(value) else None


def _select(alive: list[int], scores: Sequence[Any], findings: list[list[Finding]], n: int) -> None:
    """Reject the alive rows outside the n best by IFD (model_scores.select_best's order)."""
    from sftlab.hygiene.model_scores import select_best  # torch: only when a model scored rows

    chosen = set(select_best(scores, n))
    for k in range(len(alive)):
        if k in chosen:
            continue
        ifd = scores[k].ifd
        value = ifd if ifd is not None and math.isfinite(ifd) else float("nan")
        findings[alive[k]].append(Finding(
            "not_selected", value, float(n),
            f"IFD {value:.3f} is not among the {n} best (highest IFD below 1 first, then the "
            "lowest at or above 1)",
        ))  # fmt: skip


def check_totals(result: AuditResult) -> None:
    """Nothing is lost: per source, kept + rejected == the rows the file holds."""
    for source in result.sources:
        judged = [v for r, v in zip(result.rows, result.verdicts, strict=True)
                  if r.conversation.source.file == source.file]  # fmt: skip
        kept = sum(not v.rejected for v in judged)
        rejected = sum(v.rejected for v in judged) + len(source.unreadable)
        if kept + rejected != source.n_input:
            raise RuntimeError(
                f"audit lost rows of {source.file}: {kept} kept + {rejected} rejected != "
                f"{source.n_input} rows read"
            )
