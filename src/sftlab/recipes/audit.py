"""`sftlab data audit`: the hygiene audit of some files, with the tokenizer (and optionally the
model) that lengths and scores are measured with, then any review decisions applied."""

from __future__ import annotations

from pathlib import Path

from sftlab.config import HygieneConfig, TemplateConfig, load_hygiene_config
from sftlab.core.errors import SftlabError
from sftlab.hygiene.length import tokenizer_counter
from sftlab.hygiene.run import build_options, run_audit

WORDS = "words"  # --tokenizer words: approximate token counts, no tokenizer loaded


def audit_command(
    files: list[Path],
    out: Path,
    model: str | None = None,
    config: Path | None = None,
    eval_files: list[Path] | None = None,
    select: int | None = None,
    decisions: Path | None = None,
    tokenizer: str = "default",
) -> dict:
    """Check every argument first (nothing is read before they all make sense), then audit."""
    check_arguments(files, out, model, select, decisions)
    hygiene = load_hygiene_config(config) if config else HygieneConfig()
    if eval_files:
        hygiene = hygiene.model_copy(update={"eval_files": [str(f) for f in eval_files]})
    base_dir = config.resolve().parent if config and not eval_files else None
    tok, tok_name = _tokenizer(model or tokenizer)
    counter = {} if tok is None else {"count_tokens": tokenizer_counter(tok), "tokenizer_name": tok_name}
    options = build_options(hygiene, base_dir, **counter)
    options.select, options.model_name = select, model
    scorer = _scorer(model, tok) if model else None
    _, summary = run_audit(files, options, out, scorer)
    if decisions is not None:
        from sftlab.hygiene.review import apply_review

        print(apply_review(out, decisions).summary())
    return summary


def check_arguments(files, out, model, select, decisions) -> None:
    problems = []
    if not files:
        problems.append("give at least one data file to audit")
    problems += [f"{f}: file not found" for f in files if not f.exists()]
    if out.exists() and not out.is_dir():
        problems.append(f"--out {out}: exists and is not a folder")
    if select is not None and model is None:
        problems.append("--select N keeps the N best rows by a model's IFD score: give --model too")
    if select is not None and select <= 0:
        problems.append(f"--select must be a positive number of rows, got {select}")
    if decisions is not None and not decisions.is_file():
        problems.append(f"--decisions {decisions}: file not found")
    if problems:
        raise SftlabError("data audit: " + "; ".join(problems))


def _tokenizer(name: str):
    """(tokenizer, name) for token counts; (None, "") for --tokenizer words."""
    if name == WORDS:
        return None, ""
    from sftlab.model.load import load_tokenizer, resolve_model

    ref = resolve_model(name)
    return load_tokenizer(ref), ref.name


def _scorer(model: str, tokenizer):
    """A function scoring conversations with the model, through the project's loss."""
    from sftlab.hygiene.model_scores import score_rows
    from sftlab.model.device import default_device
    from sftlab.model.load import load_model, resolve_model
    from sftlab.template.format import build_chat_format
    from sftlab.template.render import Renderer

    ref = resolve_model(model)
    loaded = load_model(ref)
    device = default_device()
    loaded.to(device).eval()
    renderer = Renderer(tokenizer, build_chat_format(tokenizer, TemplateConfig()))
    return lambda conversations: score_rows(conversations, loaded, tokenizer, renderer, progress=True)
