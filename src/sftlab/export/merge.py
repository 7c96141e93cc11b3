"""A merged model that plain `transformers` loads and generates from, unchanged.

LoRA weights are folded into the base; the logits of the merged model are checked against
base + adapter on a fixed prompt before anything is written. The tokenizer carries the exact
chat template the run trained with, and generation_config stops on the end-of-turn token.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from sftlab.core.errors import SftlabError
from sftlab.core.types import Conversation, Message
from sftlab.export.artifacts import load_run, save_tokenizer

PARITY_TOLERANCE = 1e-3


def export_merged(run_dir: str | Path, out_dir: str | Path) -> Path:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = load_run(run_dir, dtype=torch.float32, merged=False)
    probe = Conversation((Message("user", "Write one sentence about the sea."),))
    ids = torch.tensor([run.renderer.encode_prompt(probe)])
    with torch.no_grad():
        before = run.model(input_ids=ids).logits
        model = (
            run.model.merge_and_unload() if hasattr(run.model, "merge_and_unload") else run.model
        )
        after = model(input_ids=ids).logits
    gap = float((before - after).abs().max())
    if gap > PARITY_TOLERANCE:
        raise SftlabError(
            f"merged model differs from base + adapter (max logit gap {gap:.2e}); not exported"
        )
    model.generation_config.eos_token_id = run.stop_ids
    model.generation_config.pad_token_id = run.tokenizer.pad_token_id
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    save_tokenizer(run.tokenizer, run.fmt, staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    print(f"merged model written to {out_dir} (logit parity with base + adapter: {gap:.1e})")
    return out_dir
