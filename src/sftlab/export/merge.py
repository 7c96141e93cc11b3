"""A merged model that plain `transformers` loads and generates from, unchanged.

LoRA weights are folded into the base. Before anything is written, the merged model's logits
are compared with the forward the adapter was trained through (the fused LoRA function of
model/lora.py, not peft's own forward, which training never runs with dropout 0) on several
rows of different shapes: whole conversations, so assistant positions are covered too. The
tokenizer carries the exact chat template the run trained with, and generation_config stops on
the end-of-turn token.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from sftlab.core.errors import RowError, SftlabError
from sftlab.core.types import Conversation, Message
from sftlab.export.artifacts import load_run, save_tokenizer
from sftlab.model.lora import use_fused_lora_layers
from sftlab.model.token_rows import use_fast_token_rows

# fp32 on both sides: (W + s*B*A) x and W x + s*B*(A x) differ by rounding only, ~1e-5 of the
# logits' size; a merge that went wrong (a missing scale, a wrong layer) is orders larger.
PARITY_TOLERANCE = 1e-3

PROBES = (
    (("user", "Write one sentence about the sea."),),
    (("user", "What is 12 + 30?"), ("assistant", "42.")),
    (
        ("system", "You answer briefly."),
        ("user", "Name two colours."),
        ("assistant", "Red and blue."),
        ("user", "And one more?"),
        ("assistant", "Green."),
    ),
    (("user", "Übersetze: guten Morgen, 早上好"), ("assistant", "Good morning.")),
)


def probe_rows(renderer) -> list[list[int]]:
    """Token ids of the probe conversations, rendered exactly as in training (or, for one that
    ends on a user turn, as a prompt). A probe the run's template cannot render (e.g. one that
    has no system role) is left out; the first, one user message, renders with any template."""
    rows = []
    for turns in PROBES:
        conv = Conversation(tuple(Message(role, text) for role, text in turns))
        try:
            if turns[-1][0] == "assistant":
                rows.append(renderer.encode(conv).input_ids.tolist())
            else:
                rows.append(renderer.encode_prompt(conv))
        except (RowError, SftlabError):
            if not rows:
                raise
    return rows


def training_logits(model, rows: list[list[int]]) -> list[torch.Tensor]:
    """Logits of each row through the forward training used (fused LoRA layers, token rows)."""
    use_fused_lora_layers(model)
    use_fast_token_rows(model)
    with torch.no_grad():
        return [model(input_ids=torch.tensor([row])).logits[0] for row in rows]


def check_merge(merged, rows: list[list[int]], reference: list[torch.Tensor]) -> float:
    """The largest logit gap between the merged model and the reference; an error past
    PARITY_TOLERANCE, naming the row."""
    with torch.no_grad():
        gaps = [
            float((merged(input_ids=torch.tensor([row])).logits[0] - want).abs().max())
            for row, want in zip(rows, reference, strict=True)
        ]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    if gaps[worst] > PARITY_TOLERANCE:
        raise SftlabError(
            f"merged model differs from the trained one (max logit gap {gaps[worst]:.2e} on probe "
            f"row {worst}, tolerance {PARITY_TOLERANCE:.0e}); not exported"
        )
    return gaps[worst]


def export_merged(run_dir: str | Path, out_dir: str | Path) -> Path:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = load_run(run_dir, dtype=torch.float32, merged=False)
    rows = probe_rows(run.renderer)
    reference = training_logits(run.model, rows)  # before merging: merging changes the base
    merge = getattr(run.model, "merge_and_unload", None)
    model = merge() if merge is not None else run.model
    gap = check_merge(model, rows, reference)
    model.generation_config.eos_token_id = run.stop_ids
    model.generation_config.pad_token_id = run.tokenizer.pad_token_id
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    save_tokenizer(run.tokenizer, run.fmt, staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    print(
        f"merged model written to {out_dir} (logit parity with the trained forward on "
        f"{len(rows)} rows: {gap:.1e})"
    )
    return out_dir
