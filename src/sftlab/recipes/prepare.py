"""The data and template stages of a run, composed: every row read, converted, mixed, rendered
and checked, or taken from the on-disk cache when nothing that affects the result changed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sftlab import __version__
from sftlab.config import RunConfig
from sftlab.core.errors import Rejection
from sftlab.core.hashing import hash_json, hash_path, hash_text
from sftlab.core.io import write_json, write_jsonl
from sftlab.core.types import TokenizedExample
from sftlab.data import cache
from sftlab.data.mixture import build_mixture, load_source, resolve_path
from sftlab.model.load import ModelRef, cache_root, load_tokenizer, resolve_model
from sftlab.template.checks import mask_report, preflight
from sftlab.template.encode import encode_dataset
from sftlab.template.format import build_chat_format
from sftlab.template.render import Renderer


@dataclass
class Prepared:
    """Everything decided before a model is loaded."""

    ref: ModelRef
    tokenizer: object
    renderer: Renderer
    train: list[TokenizedExample]
    eval: list[TokenizedExample]
    rejected: list[Rejection]
    report: dict  # the mask report, with the per-source data report under "data"
    sources: list[dict]  # file, sha256 of each data source (for manifests and resumes)
    cache_hit: bool = False


def prepare_data(config: RunConfig, base_dir: Path | None, say=print) -> Prepared:
    ref = resolve_model(config.model.name, config.model.allow_pickle, base_dir)
    tokenizer = load_tokenizer(ref, config.model.trust_remote_code)
    renderer = Renderer(tokenizer, build_chat_format(tokenizer, config.template))
    files = [str(resolve_path(s.path, base_dir)) for s in config.data.sources]
    sources = [{"file": f, "sha256": hash_path(f)} for f in files]
    audited = audit_sources(config, base_dir, tokenizer, ref.name, say) if config.hygiene else None
    folder = cache_root() / "data" / cache_key(config, sources, renderer, audited)
    hit = cache.load(folder) if config.data.cache else None
    if hit is not None:
        train, eval_, rejected, report = hit
        prepared = Prepared(ref, tokenizer, renderer, train, eval_, rejected, report, sources, True)
    else:
        prepared = render_data(config, base_dir, ref, tokenizer, renderer, sources, audited)
        if config.data.cache:
            cache.store(folder, prepared.train, prepared.eval, prepared.rejected, prepared.report)
    r = prepared.report
    say(
        f"data: {r['rows']} training rows ({r['supervised_tokens']:,} supervised of "
        f"{r['tokens']:,} tokens, {r['supervised_share']:.0%}), {r['eval_rows']} eval rows, "
        f"{len(prepared.rejected)} rejected, {r['truncated_rows']} truncated"
        + (" (from cache)" if prepared.cache_hit else "")
    )
    return prepared


def audit_sources(config: RunConfig, base_dir, tokenizer, tokenizer_name: str, say) -> list:
    """The hygiene stage: each source minus the rows the audit rejects; outputs in RUN/audit."""
    from sftlab.hygiene.length import tokenizer_counter
    from sftlab.hygiene.run import audit_for_training

    return audit_for_training(
        config.data.sources, config.hygiene, base_dir, config.run_dir() / "audit",
        tokenizer_counter(tokenizer), tokenizer_name, say,
    )  # fmt: skip


def cache_key(config: RunConfig, sources: list[dict], renderer: Renderer, audited=None) -> str:
    """Everything the rendered data depends on; anything else may change without a re-render."""
    # With hygiene, which rows survived the audit (and why the others did not) is part of it.
    kept = None if audited is None else [[s.file, [c.source.index for c in s.conversations],
                                           [(r.index, r.reason) for r in s.rejected]] for s in audited]  # fmt: skip
    return hash_json({
        "cache_version": cache.CACHE_VERSION,
        "sftlab": __version__,
        # The path too: cached rows and rejections name the file they came from.
        "sources": [[s["file"], s["sha256"], c.format, c.ratio, c.rows]
                    for s, c in zip(sources, config.data.sources, strict=True)],
        "data": config.data.model_dump(exclude={"sources", "cache"}),
        "template": config.template.model_dump(),
        "chat_format": renderer.fmt.__dict__,
        "tokenizer": hash_text(renderer.tokenizer.backend_tokenizer.to_str()),
    } | ({"hygiene": kept} if kept is not None else {}))[:32]  # fmt: skip


def render_data(
    config: RunConfig, base_dir, ref, tokenizer, renderer: Renderer, sources, audited=None
) -> Prepared:
    loaded = audited or [load_source(source, base_dir) for source in config.data.sources]
    d, t = config.data, config.template
    mixture = build_mixture(
        loaded, [(s.ratio, s.rows) for s in d.sources], d.eval_fraction, d.eval_rows, d.seed
    )
    train_set = encode_dataset(renderer, mixture.train, t.max_length, t.truncation)
    eval_set = encode_dataset(renderer, mixture.eval, t.max_length, t.truncation)
    rejected = dedupe(mixture.rejected + train_set.rejected + eval_set.rejected)
    report = mask_report(
        renderer, train_set.conversations, train_set.examples, rejected, train_set.truncated
    )
    report["data"] = mixture.report
    report["eval_rows"] = len(eval_set.examples)
    return Prepared(
        ref, tokenizer, renderer, train_set.examples, eval_set.examples, rejected, report, sources
    )


def dedupe(rejections: list[Rejection]) -> list[Rejection]:
    """A repeated source (ratio > 1) can reject the same row twice; list it once."""
    seen, out = set(), []
    for r in rejections:
        key = (r.file, r.index, r.stage, r.reason)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def write_preflight(run_dir: Path, prepared: Prepared) -> None:
    """mask_report.json and rejected.jsonl, then stop here if the mask is broken."""
    write_json(run_dir / "mask_report.json", prepared.report)
    write_jsonl(run_dir / "rejected.jsonl", (r.to_json() for r in prepared.rejected))
    preflight(prepared.report)
