"""`sftlab data inspect`: render a file's rows the way training would, and report the mask."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from sftlab.config import SourceConfig, TemplateConfig
from sftlab.data.mixture import load_source
from sftlab.model.load import load_tokenizer, resolve_model
from sftlab.template.checks import mask_report
from sftlab.template.encode import encode_dataset
from sftlab.template.format import build_chat_format
from sftlab.template.inspect import example_json, highlighted
from sftlab.template.render import Renderer


def inspect_file(
    file: Path, model: str, out_format: str, limit: int, data_format: str, template: dict
) -> None:
    source = load_source(SourceConfig(path=str(file), format=data_format))
    tokenizer = load_tokenizer(resolve_model(model))
    cfg = TemplateConfig(**template)
    renderer = Renderer(tokenizer, build_chat_format(tokenizer, cfg))
    encoded = encode_dataset(renderer, source.conversations, cfg.max_length, cfg.truncation)
    rejected = source.rejected + encoded.rejected
    report = mask_report(
        renderer, encoded.conversations, encoded.examples, rejected, encoded.truncated
    )
    report["rows_in_file"] = source.n_input
    report["format"] = source.fmt
    shown = encoded.examples[:limit]
    if out_format == "json":
        for example in shown:
            print(json.dumps(example_json(example, tokenizer), ensure_ascii=False))
        for rejection in rejected[:limit]:
            print(json.dumps({"rejected": rejection.to_json()}, ensure_ascii=False, default=str))
        print(json.dumps({"mask_report": report}, ensure_ascii=False))
        return
    console = Console(highlight=False)
    for example in shown:
        console.rule(f"{example.source}  {len(example)} tokens, {example.n_supervised} supervised")
        console.print(highlighted(example, tokenizer))
    for rejection in rejected[:limit]:
        console.print(
            f"[red]rejected[/red] {rejection.file}:{rejection.line} ({rejection.stage}): {rejection.reason}"
        )
    console.rule("mask report")
    console.print_json(json.dumps(report, ensure_ascii=False))
