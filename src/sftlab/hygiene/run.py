"""Entry points: `run_audit` (the `sftlab data audit` command) and `audit_for_training` (the
hygiene stage of a run: the training set is the audited one, outputs in RUN/audit)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sftlab.config import HygieneConfig, SourceConfig
from sftlab.core.errors import DataError, Rejection
from sftlab.data.mixture import SourceData, resolve_path
from sftlab.hygiene.audit import AuditOptions, AuditResult, Scorer, audit
from sftlab.hygiene.contamination import EvalIndex
from sftlab.hygiene.length import TokenCounter, approximate_tokens
from sftlab.hygiene.load import load_input, source_names
from sftlab.hygiene.outputs import rejected_record, write_audit
from sftlab.hygiene.rules import RuleSettings
from sftlab.hygiene.slop import compile_phrases, read_phrases
from sftlab.hygiene.text import RuleContext, row_text


def build_options(
    config: HygieneConfig,
    base_dir: Path | None = None,
    count_tokens: TokenCounter = approximate_tokens,
    tokenizer_name: str = "approximate (words and punctuation)",
) -> AuditOptions:
    """Rule settings, phrase list, refusal tags and eval index from a `hygiene:` section."""
    phrases = read_phrases(resolve_path(config.slop_phrases, base_dir) if config.slop_phrases else None)
    context = RuleContext(
        slop=compile_phrases(phrases + list(config.extra_slop_phrases)),
        refusal_tags=frozenset(t.lower() for t in config.refusal_tags),
    )
    options = AuditOptions(RuleSettings.from_config(config.actions, config.thresholds), context,
                           count_tokens, tokenizer_name)  # fmt: skip
    if config.eval_files:
        options.eval_index = eval_index([resolve_path(f, base_dir) for f in config.eval_files],
                                        config.contamination_ngram)  # fmt: skip
    return options


def eval_index(paths: list[Path], n: int) -> EvalIndex:
    """The prompts of the eval files (their texts, for raw-text rows), as word n-grams."""
    index = EvalIndex(n)
    for path, name in zip(paths, source_names(paths), strict=True):
        for row in load_input(path, name=name).rows:
            text = row_text(row.conversation, row.id)
            index.add(row.id, text.prompt or text.response)
    return index


def run_audit(
    files: list[Path],
    options: AuditOptions,
    out_dir: Path,
    scorer: Scorer | None = None,
    say: Callable[[str], None] = print,
) -> tuple[AuditResult, dict]:
    files = list({Path(f).resolve(): Path(f) for f in files}.values())  # a file named twice: once
    names = source_names(files)
    sources = [load_input(path, name=name) for path, name in zip(files, names, strict=True)]
    options.scorer = scorer or options.scorer
    result = audit(sources, options)
    summary = write_audit(result, out_dir, [str(f) for f in files])
    t = summary["totals"]
    say(f"audit: {t['rows']} rows, {t['kept']} kept ({t['review']} to review), "
        f"{t['rejected']} rejected -> {out_dir}")  # fmt: skip
    fired = {k: v["fired"] for k, v in summary["per_rule"].items() if v["fired"]}
    if fired:
        say("  " + ", ".join(f"{k} {v}" for k, v in sorted(fired.items(), key=lambda kv: -kv[1])))
    return result, summary


def audit_for_training(
    sources: list[SourceConfig],
    config: HygieneConfig,
    base_dir: Path | None,
    out_dir: Path,
    count_tokens: TokenCounter,
    tokenizer_name: str,
    say: Callable[[str], None] = print,
) -> list[SourceData]:
    """Each source as the data stage loads it, minus the rows the audit rejects (which join the
    run's rejected set with stage "hygiene")."""
    paths = [resolve_path(s.path, base_dir) for s in sources]
    unique = list(dict.fromkeys(paths))  # a file listed twice (to weight it) is audited once
    formats = {p: s.format for p, s in reversed(list(zip(paths, sources, strict=True)))}
    loaded = {p: load_input(p, formats[p], n) for p, n in zip(unique, source_names(unique), strict=True)}
    options = build_options(config, base_dir, count_tokens, tokenizer_name)
    result = audit(list(loaded.values()), options)
    write_audit(result, out_dir, [str(p) for p in unique])
    out = []
    for src_cfg, path in zip(sources, paths, strict=True):
        src = loaded[path]
        kept = result.kept(src)
        if not kept:
            raise DataError(src.file, f"hygiene rejected every row ({src.n_input}); see {out_dir}/rejected.jsonl")
        rejected = list(src.unreadable) + [
            _rejection(r, v, options) for r, v in zip(result.rows, result.verdicts, strict=True)
            if v.rejected and r.conversation.source.file == src.file
        ]  # fmt: skip
        out.append(SourceData(src_cfg.label, src.file, src.fmt, kept, rejected, src.n_input))
    say(f"hygiene: {sum(len(s.conversations) for s in out)} of {sum(s.n_input for s in out)} rows kept "
        f"(audit in {out_dir})")  # fmt: skip
    return out


def _rejection(row, verdict, options: AuditOptions) -> Rejection:
    """A hygiene rejection as the run's rejected.jsonl records it (stage "hygiene")."""
    record, ref = rejected_record(row, verdict, options.settings), row.conversation.source
    return Rejection(ref.file, ref.line, ref.index, "hygiene", record["reason"], row=record["row"])
