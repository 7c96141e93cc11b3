"""`sftlab demo --kind instruct`: a pretrained base model becomes an assistant that answers and stops.

    1. write the instruction set (instruct_data.py): ~500 training rows over 9 task kinds, and
       held-out prompts about items no training row asks about, most with a checkable answer
    2. ask the base model (Gemma 3 270M, pretrained only) the held-out prompts: zero-shot, and
       with a few training examples as earlier turns ("try a prompt first")
    3. train with the same recipe `sftlab train` runs: LoRA on every linear layer, plus the
       embedding rows of the turn markers the base model never learned (train.token_rows: auto)
    4. ask the tuned model the same prompts; print the three answers side by side; write
       summary.json: stop, loop and echo rates and task accuracy before, few-shot and after

The base model has no chat template: `template.chat_template: auto` picks Gemma's own turn format,
whose markers are single tokens of its vocabulary, so the tuned model speaks the format llama.cpp,
Ollama and vLLM expect of a Gemma model.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sftlab.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    SourceConfig,
    TemplateConfig,
    TrainConfig,
    with_overrides,
)
from sftlab.core.io import read_json, write_json
from sftlab.core.types import Conversation, Message
from sftlab.eval.fewshot import few_shot_conversation, pick_shots
from sftlab.eval.generate import Generation, generate, user_turn
from sftlab.eval.health import health
from sftlab.eval.metrics import parse_metric, score
from sftlab.recipes.instruct_data import SEED, write_instruction_set

MODEL = "gemma3-270m"
MAX_NEW_TOKENS = 48  # the longest trained answer is ~30 tokens; a rambling base runs to this
FEW_SHOT = 3  # training examples shown before each held-out prompt in the few-shot baseline


def instruct_config(run_dir: Path, train_file: Path, model: str = MODEL) -> RunConfig:
    return RunConfig(
        name="instruct",
        output_dir=str(run_dir),
        model=ModelConfig(name=model),
        data=DataConfig(sources=[SourceConfig(path=str(train_file))], eval_rows=16, seed=SEED),
        template=TemplateConfig(chat_template="auto", max_length=256),
        # Rows are short (~40 tokens): 512-token micro-batches give ~40 optimizer steps an epoch.
        # Two epochs with the marker rows trained: the measurement stopped on 25 of 25.
        train=TrainConfig(epochs=2, batch_tokens=512, grad_accum=1, seed=SEED),
    )


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def conversation(row: dict) -> Conversation:
    return Conversation((Message("user", row["prompt"]), Message("assistant", row["completion"])))


def judge(row: dict, answer: str) -> float | None:
    """The row's metric on the answer (1.0 right, 0.0 wrong); None for a row without one."""
    if not row.get("metric"):
        return None
    name, options = parse_metric(row["metric"], f"held-out row {row['prompt']!r}")
    reference = str(options.pop("reference", row["completion"]))
    return score(name, answer, reference, **options)


def outcome(rows: Sequence[dict], generations: Sequence[Generation], markers) -> dict:
    """Health rates of the answers and the accuracy over rows with a checkable answer."""
    rates = health([r["prompt"] for r in rows], generations, markers)
    scores = [judge(r, g.text) for r, g in zip(rows, generations, strict=True)]
    checked = [s for s in scores if s is not None]
    accuracy = sum(checked) / len(checked) if checked else 0.0
    return {**rates, "task_accuracy": accuracy, "scores": scores}


def summarize(rows, before, fewshot, after, markers) -> dict:
    """The demo's figures: `<measure>_before` (zero-shot base), `_fewshot`, `_after` (tuned)."""
    out: dict = {"heldout_prompts": [r["prompt"] for r in rows]}
    out["checkable_prompts"] = sum(1 for r in rows if r.get("metric"))
    for stage, gens in (("before", before), ("fewshot", fewshot), ("after", after)):
        result = outcome(rows, gens, markers)
        for measure in ("stop_rate", "loop_rate", "echo_rate", "empty_rate", "leak_rate"):
            out[f"{measure}_{stage}"] = round(result[measure], 4)
        out[f"task_accuracy_{stage}"] = round(result["task_accuracy"], 4)
        out[f"answers_{stage}"] = [g.text for g in gens]
        out[f"correct_{stage}"] = result["scores"]
    return out


def template_markers(tokenizer, fmt) -> list[str]:
    """The special and added tokens the template writes (turn markers, BOS): any of them in an
    answer is a leak. Gemma's turn markers are added tokens, not `all_special_tokens`."""
    added = [t.content for t in tokenizer.added_tokens_decoder.values()]
    tokens = dict.fromkeys([*tokenizer.all_special_tokens, *added, fmt.end_of_turn])
    written = fmt.template + (tokenizer.bos_token or "" if "bos_token" in fmt.template else "")
    # Whitespace can be an added token too (Gemma's "\n"): text, not a marker.
    return [t for t in tokens if t.strip() and (t in written or t == fmt.end_of_turn)]


def ask(model, renderer, stop_ids, convs: list[Conversation]) -> list[Generation]:
    return generate(model, renderer, convs, stop_ids, MAX_NEW_TOKENS, batch_size=16)


def ask_base(config: RunConfig, rows: list[dict], shots: list[Conversation]):
    """The base model's answers, zero-shot and few-shot, under the template training will use."""
    from sftlab.export.artifacts import stop_token_ids
    from sftlab.model.load import load_model, load_tokenizer, resolve_model
    from sftlab.template.format import build_chat_format
    from sftlab.template.render import Renderer

    ref = resolve_model(config.model.name)
    tokenizer = load_tokenizer(ref)
    fmt = build_chat_format(tokenizer, config.template)
    renderer, stop_ids = Renderer(tokenizer, fmt), stop_token_ids(tokenizer, fmt)
    base = load_model(ref).eval()
    queries = [user_turn(r["prompt"]) for r in rows]
    print(
        f"asking the base model {len(rows)} held-out prompts, zero-shot and {FEW_SHOT}-shot ...",
        flush=True,
    )
    before = ask(base, renderer, stop_ids, queries)
    fewshot = ask(base, renderer, stop_ids, [few_shot_conversation(shots, q) for q in queries])
    return before, fewshot, template_markers(tokenizer, fmt)


def run_instruct_demo(run_dir: Path, overrides: Sequence[str] = (), model: str = MODEL) -> dict:
    from sftlab.export.artifacts import load_run
    from sftlab.recipes.sft import train

    started = time.perf_counter()
    train_file, heldout_file = write_instruction_set(run_dir / "data")
    config = with_overrides(instruct_config(run_dir, train_file, model), list(overrides))
    rows = read_rows(heldout_file)
    shots = pick_shots([conversation(r) for r in read_rows(train_file)], FEW_SHOT, SEED)
    before, fewshot, markers = ask_base(config, rows, shots)
    # Kept before training starts: the base model's answers take minutes on a CPU.
    write_json(run_dir / "data" / "base_answers.json", {
        "prompts": [r["prompt"] for r in rows],
        "zero_shot": [g.text for g in before], "few_shot": [g.text for g in fewshot],
        "zero_shot_stopped": [g.stopped for g in before],
        "few_shot_stopped": [g.stopped for g in fewshot],
    })  # fmt: skip

    train(config, restart=True)  # the demo owns its run directory: always a fresh run
    run = load_run(run_dir)
    after = ask(run.model, run.renderer, run.stop_ids, [user_turn(r["prompt"]) for r in rows])

    trained = read_json(run_dir / "summary.json")
    manifest = read_json(run_dir / "manifest.json")
    seconds = trained.get("train_seconds") or 0.0
    summary = (
        trained
        | summarize(rows, before, fewshot, after, markers)
        | {
            "model": config.model.name,
            "template": getattr(run.fmt, "name", None) or "model",
            "trained_token_rows": manifest.get("trained_token_rows", []),
            "few_shot_examples": [c.messages[0].content for c in shots],
            "supervised_tokens_per_second": round(trained.get("supervised_tokens", 0) / seconds, 1)
            if seconds
            else None,
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            "run_dir": str(run_dir),
        }
    )
    write_json(run_dir / "summary.json", summary)
    show(rows, before, fewshot, after, summary)
    return summary


def _peak_rss_mb() -> float:
    """This process's memory high-water mark (training and generation alike)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def show(rows, before, fewshot, after, summary: dict) -> None:
    console = Console(highlight=False)
    table = Table(title=f"held-out prompts: {summary['model']} base vs tuned", show_lines=True)
    table.add_column("prompt", ratio=2)
    table.add_column("base, zero-shot", ratio=3)
    table.add_column(f"base, {FEW_SHOT}-shot", ratio=3)
    table.add_column("tuned", ratio=3)
    for row, b, f, a in zip(rows, before, fewshot, after, strict=True):
        table.add_row(row["prompt"], _cell(b), _cell(f), _cell(a))
    console.print(table)
    s = summary
    console.print(
        f"stopped (answer ended with {s.get('template', '')} end-of-turn): "
        f"{s['stop_rate_before']:.2f} zero-shot, {s['stop_rate_fewshot']:.2f} few-shot -> "
        f"{s['stop_rate_after']:.2f} tuned\n"
        f"task accuracy on {s['checkable_prompts']} checkable prompts: "
        f"{s['task_accuracy_before']:.2f} zero-shot, {s['task_accuracy_fewshot']:.2f} few-shot -> "
        f"{s['task_accuracy_after']:.2f} tuned\n"
        f"loops {s['loop_rate_before']:.2f} -> {s['loop_rate_after']:.2f}; "
        f"echoed prompts {s['echo_rate_before']:.2f} -> {s['echo_rate_after']:.2f}; "
        f"embedding rows trained: {s['trained_token_rows']}\n"
        f"training {s['train_seconds']:.0f} s, whole demo {s['total_seconds']:.0f} s; "
        f"run directory {s['run_dir']}  (try: sftlab chat {s['run_dir']})"
    )


def _cell(generation: Generation) -> str:
    text = generation.text.strip().replace("\n", " ")
    return text if generation.stopped else text + " [...]"
