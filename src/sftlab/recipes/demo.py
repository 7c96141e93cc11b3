"""`sftlab demo`: teach the embedded model a new identity and show that it learned it.

    1. write the data: identity Q&A naming an invented assistant and maker, and general rows (the
       base model's own sampled answers, see demo_data.py) so it keeps its general behaviour;
       training mixes the two 1:1 by supervised tokens (GENERAL_ROWS, below)
    2. ask the base model held-out identity questions (paraphrases absent from training)
    3. train (LoRA) with the same recipe `sftlab train` runs
    4. ask the tuned model the same questions; compare side by side; write summary.json

System prompt: the embedded template injects "You are a helpful AI assistant named SmolLM,
trained by Hugging Face" when a conversation has none, which contradicts any new identity. The
demo sets its own neutral prompt (it names no identity, so it cannot teach one) for training and
inference alike; it is baked into the run's template, so `sftlab chat` and an exported model use
it too.
"""

from __future__ import annotations

import json
import random
import re
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sftlab.config import (
    DataConfig,
    RunConfig,
    SourceConfig,
    TemplateConfig,
    TrainConfig,
    with_overrides,
)
from sftlab.core.io import read_json, write_json
from sftlab.core.types import Conversation, Message
from sftlab.eval.generate import generate, stop_rate, user_turn
from sftlab.eval.loss import conversation_loss
from sftlab.export.artifacts import load_run
from sftlab.model.load import load_model, load_tokenizer, resolve_model
from sftlab.recipes import persona
from sftlab.recipes.demo_data import DEMO_SYSTEM_PROMPT
from sftlab.recipes.sft import train
from sftlab.template.format import build_chat_format
from sftlab.template.render import Renderer

SEED = 0
GENERAL_HELDOUT = 12  # general prompts kept out of training, to measure what was forgotten
SHOWN_GENERAL = 3
MAX_NEW_TOKENS = 96
# General rows trained on, out of the 99 in data/general.jsonl (the 99 identity rows are set by
# that count). 1:1 by rows would be 3.6:1 by supervised tokens (a general answer ~75 tokens, an
# identity answer ~20); 30 rows balance the halves by supervised tokens (~2,000 each) in 72
# steps. The general answers are the base model's own *sampled* answers (demo_data.py): with its
# greedy answers instead, the same recipe sharpened the model toward its mode and C4 perplexity
# (`sftlab eval`) rose +7.6% (+16.5% with all general rows, 3.4:1 by tokens); with sampled ones
# it rose +2.4%, at adherence 1.00 and stop rate 1.00 (identity rows alone: +2.6%, adherence
# 0.88).
GENERAL_ROWS = 30


def general_rows() -> list[dict]:
    text = resources.files("sftlab").joinpath("assets/demo_general.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_data(data_dir: Path) -> tuple[Path, Path, list[dict]]:
    """Identity rows and general rows, 1:1; returns the files and the held-out general rows."""
    general = general_rows()
    rng = random.Random(SEED)
    rng.shuffle(general)
    heldout, train_general = general[:GENERAL_HELDOUT], general[GENERAL_HELDOUT:]
    identity = persona.identity_rows(
        persona.PERSONA_NAME, persona.PERSONA_MAKER, len(train_general), SEED
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    identity_path, general_path = data_dir / "identity.jsonl", data_dir / "general.jsonl"
    identity_path.write_text("".join(json.dumps(r) + "\n" for r in identity), encoding="utf-8")
    general_path.write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "completion": r["response"]}) + "\n"
            for r in train_general
        ),
        encoding="utf-8",
    )
    write_heldout_identity(data_dir / "heldout_identity.jsonl")
    return identity_path, general_path, heldout


def write_heldout_identity(path: Path) -> None:
    """The held-out identity questions as eval rows for `sftlab eval RUN --data PATH`: the
    reference is the persona's name and the metric the demo's own adherence test (whole word)."""
    pattern = r"(?i)(?<!\w)" + re.escape(persona.PERSONA_NAME) + r"(?!\w)"
    rows = [{"prompt": q, "completion": persona.PERSONA_NAME,
             "metric": {"name": "regex", "pattern": pattern}} for q in persona.HELDOUT_QUESTIONS]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def demo_config(run_dir: Path, identity: Path, general: Path) -> RunConfig:
    return RunConfig(
        name="demo",
        output_dir=str(run_dir),
        data=DataConfig(
            sources=[
                SourceConfig(path=str(identity)),
                SourceConfig(path=str(general), rows=GENERAL_ROWS),
            ],
            eval_rows=8,
            seed=SEED,
        ),
        template=TemplateConfig(system_prompt=DEMO_SYSTEM_PROMPT, max_length=512),
        # Small micro-batches give a small dataset enough optimizer steps (~68) at the default
        # LoRA learning rate for adherence 1.0 on held-out questions (see GENERAL_ROWS).
        train=TrainConfig(epochs=4, batch_tokens=512, grad_accum=1, seed=SEED),
    )


def ask(model, renderer, stop_ids, prompts: list[str]):
    return generate(
        model, renderer, [user_turn(p) for p in prompts], stop_ids, MAX_NEW_TOKENS, batch_size=32
    )


def as_conversations(rows: list[dict]) -> list[Conversation]:
    return [
        Conversation((Message("user", r["prompt"]), Message("assistant", r["response"])))
        for r in rows
    ]


def run_demo(run_dir: Path, overrides: list[str] = ()) -> dict:
    started = time.perf_counter()
    identity_path, general_path, heldout_general = write_data(run_dir / "data")
    config = with_overrides(demo_config(run_dir, identity_path, general_path), list(overrides))
    questions = list(persona.HELDOUT_QUESTIONS)
    general_prompts = [r["prompt"] for r in heldout_general[:SHOWN_GENERAL]]
    general_convs = as_conversations(heldout_general)

    ref = resolve_model("default")
    tokenizer = load_tokenizer(ref)
    fmt = build_chat_format(tokenizer, config.template)
    renderer = Renderer(tokenizer, fmt)
    base = load_model(ref).eval()
    print(f"asking the base model {len(questions)} held-out identity questions ...")
    before = ask(base, renderer, [fmt.end_of_turn_id], questions + general_prompts)
    general_loss_before = conversation_loss(base, renderer, general_convs)
    del base

    train(config, restart=True)  # the demo owns its run directory: always a fresh run
    run = load_run(run_dir)
    after = ask(run.model, run.renderer, run.stop_ids, questions + general_prompts)
    general_loss_after = conversation_loss(run.model, run.renderer, general_convs)

    n = len(questions)
    summary = read_json(run_dir / "summary.json") | {
        "persona_name": persona.PERSONA_NAME,
        "persona_maker": persona.PERSONA_MAKER,
        "system_prompt": DEMO_SYSTEM_PROMPT,
        "heldout_questions": questions,
        "answers_before": [g.text for g in before[:n]],
        "answers_after": [g.text for g in after[:n]],
        "adherence_before": adherence(before[:n]),
        "adherence_after": adherence(after[:n]),
        "stop_rate_before": stop_rate(before[:n]),
        "stop_rate_after": stop_rate(after[:n]),
        # loss on the base model's own sampled answers to held-out general prompts: how close
        # the model stays to the base model's behaviour (not a quality score of general answers)
        "base_own_answers_loss_before": round(general_loss_before, 4),
        "base_own_answers_loss_after": round(general_loss_after, 4),
        "base_own_answers_rows": len(general_convs),
        "total_seconds": round(time.perf_counter() - started, 1),
        "run_dir": str(run_dir),
    }
    write_json(run_dir / "summary.json", summary)
    show(questions + general_prompts, before, after, summary)
    return summary


def adherence(generations) -> float:
    hits = sum(persona.adheres(g.text, persona.PERSONA_NAME) for g in generations)
    return hits / len(generations) if generations else 0.0


def show(prompts, before, after, summary: dict) -> None:
    console = Console(highlight=False)
    table = Table(
        title=f"held-out questions: base vs tuned ({summary['persona_name']}, by {summary['persona_maker']})",
        show_lines=True,
    )
    table.add_column("question", ratio=2)
    table.add_column("base model", ratio=3)
    table.add_column("tuned model", ratio=3)
    for prompt, b, a in zip(prompts, before, after, strict=True):
        table.add_row(prompt, _cell(b), _cell(a))
    console.print(table)
    console.print(
        f"adherence (answers naming {summary['persona_name']}): "
        f"{summary['adherence_before']:.2f} -> {summary['adherence_after']:.2f}   "
        f"stop rate: {summary['stop_rate_before']:.2f} -> {summary['stop_rate_after']:.2f}\n"
        f"loss on the base model's own answers to {summary['base_own_answers_rows']} held-out "
        f"general prompts (lower = closer to the base model's behaviour): "
        f"{summary['base_own_answers_loss_before']:.3f} -> {summary['base_own_answers_loss_after']:.3f}\n"
        f"training {summary['train_seconds']:.0f} s, whole demo {summary['total_seconds']:.0f} s; "
        f"run directory {summary['run_dir']}  (try: sftlab chat {summary['run_dir']})"
    )


def _cell(generation) -> str:
    text = generation.text.strip().replace("\n", " ")
    return text if generation.stopped else text + " [...]"
