"""`sftlab data|train|chat|generate|export|demo|compare|sweep`: thin commands over recipes and stages.

Every SftlabError ends as one readable message and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from sftlab.core.errors import Interrupted, SftlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(no_args_is_help=True, help="Look at training data before training on it.")
app.add_typer(data_app, name="data")


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config file")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. train.lr=1e-4")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the last complete checkpoint")
    ] = False,
    force_resume: Annotated[
        bool,
        typer.Option(
            "--force-resume", help="resume even though the config or data changed since then"
        ),
    ] = False,
    restart: Annotated[
        bool,
        typer.Option("--restart", help="start over: delete the run's earlier checkpoints"),
    ] = False,
    force: Annotated[bool, typer.Option("--force", hidden=True)] = False,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="allow .bin/.pt weights (pickle)")
    ] = False,
) -> None:
    """Fine-tune a model as CONFIG describes."""
    from sftlab.config import load_config

    if force:  # its two old meanings now have a flag each
        raise SftlabError(
            "--force is gone: pass --restart to start over (earlier checkpoints are deleted) or "
            "--force-resume to resume despite changes to the config or data"
        )
    if restart and (resume or force_resume):
        raise SftlabError(
            "--restart starts over; it cannot be combined with --resume/--force-resume"
        )
    resume = resume or force_resume
    extra = (["train.resume=true"] if resume else []) + (
        ["model.allow_pickle=true"] if allow_pickle else []
    )
    cfg = load_config(config, [*(overrides or []), *extra], check_files=True)
    from sftlab.recipes.sft import train as run_training  # heavy imports after the config is valid

    run_training(cfg, base_dir=config.resolve().parent, restart=restart, force_resume=force_resume)


@data_app.command("inspect")
def data_inspect(
    file: Annotated[
        Path, typer.Argument(help="a data file (.json/.jsonl/.csv/.parquet/.txt) or saved dataset")
    ],
    model: Annotated[
        str, typer.Option(help="default, gemma3-270m, a model folder, a .gguf file or a hub id")
    ] = "default",
    format: Annotated[str, typer.Option("--format", help="text or json")] = "text",
    limit: Annotated[int, typer.Option(help="rows to show")] = 3,
    data_format: Annotated[
        str, typer.Option(help="auto, alpaca, sharegpt, messages, prompt_completion, text")
    ] = "auto",
    chat_template: Annotated[str, typer.Option(help="auto, gemma, llama3, chatml, mistral, plain or a .jinja file")] = "auto",
    system_prompt: Annotated[str | None, typer.Option(help="default system prompt")] = None,
    mask: Annotated[str, typer.Option(help="assistant, last_assistant or all")] = "assistant",
    max_length: Annotated[int, typer.Option(help="tokens per row")] = 1024,
) -> None:
    """Show how rows render, supervised tokens highlighted, then the mask report."""
    from sftlab.recipes.inspect import inspect_file

    if format not in ("text", "json"):
        raise SftlabError(f"--format must be text or json, not {format!r}")
    inspect_file(
        file, model, format, limit, data_format,
        dict(chat_template=chat_template, system_prompt=system_prompt, mask=mask, max_length=max_length),
    )  # fmt: skip


@data_app.command("audit")
def data_audit(
    files: Annotated[
        list[Path], typer.Argument(help="data files (.json/.jsonl/.csv/.parquet/.txt) or saved datasets")
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for kept/rejected/review/audit files")],
    model: Annotated[
        str | None, typer.Option(help="score rows with this model: loss, IFD, surprising tokens")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="audit settings: YAML with a hygiene: section")
    ] = None,
    eval_files: Annotated[
        list[Path] | None, typer.Option("--eval", help="an evaluation file to decontaminate against")
    ] = None,
    select: Annotated[
        int | None, typer.Option(help="keep the N best rows by IFD after the rules (needs --model)")
    ] = None,
    decisions: Annotated[
        Path | None, typer.Option(help="decisions.json saved from audit.html, applied after")
    ] = None,
    tokenizer: Annotated[
        str, typer.Option(help="tokenizer for lengths: default, a model name, or 'words'")
    ] = "default",
) -> None:
    """Find, explain and set aside bad training rows; the rest is ready for sftlab train."""
    from sftlab.recipes.audit import audit_command

    audit_command(files, out, model, config, eval_files, select, decisions, tokenizer)


@data_app.command("apply-review")
def data_apply_review(
    audit_dir: Annotated[Path, typer.Argument(help="a folder written by sftlab data audit")],
    decisions: Annotated[Path, typer.Argument(help="decisions.json saved from audit.html")],
) -> None:
    """Apply review decisions: drop moves a kept row to rejected, keep brings a rejected one back."""
    from sftlab.hygiene.review import apply_review

    print(apply_review(audit_dir, decisions).summary())


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by sftlab train")],
    prompt: Annotated[list[str], typer.Option(help="a user message; repeat for several")],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per prompt")] = False,
) -> None:
    """Answer prompts with a trained run, using exactly the template it trained with."""
    from sftlab.eval.generate import generate as run_generate
    from sftlab.eval.generate import user_turn
    from sftlab.export.artifacts import load_run

    run = load_run(run_dir)
    outs = run_generate(
        run.model, run.renderer, [user_turn(p) for p in prompt], run.stop_ids, max_new_tokens,
        temperature=temperature,
    )  # fmt: skip
    for p, g in zip(prompt, outs, strict=True):
        if as_json:
            print(
                json.dumps(
                    {"prompt": p, "response": g.text, "stopped": g.stopped,
                     "finish_reason": g.finish_reason, "tokens": g.tokens},
                    ensure_ascii=False,
                )
            )
        else:
            print(g.text if g.stopped else g.text + "\n[stopped at the token limit]")


@app.command()
def chat(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by sftlab train")],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
) -> None:
    """Talk to a trained run (empty line or Ctrl-D to quit)."""
    from sftlab.recipes.chat import chat_loop

    chat_loop(run_dir, max_new_tokens, temperature)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by sftlab train")],
    merged: Annotated[
        bool, typer.Option("--merged", help="write a merged model (safetensors)")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="output folder (default RUN/merged)")] = None,
) -> None:
    """Export a run: --merged folds LoRA into the base for plain transformers."""
    from sftlab.export.merge import export_merged

    if not merged:
        raise SftlabError("say what to export: --merged")
    export_merged(run_dir, out or run_dir / "merged")


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option(help="run directory (default runs/demo, runs/instruct)")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. train.epochs=4")
    ] = None,
    kind: Annotated[
        str,
        typer.Option(
            help="persona: teach the embedded instruct model a new identity; instruct: turn the "
            "Gemma 3 270M base into an assistant that answers and stops"
        ),
    ] = "persona",
) -> None:
    """Fine-tune an embedded model, then compare base and tuned answers side by side."""
    if kind == "instruct":
        from sftlab.recipes.instruct import run_instruct_demo

        run_instruct_demo(out or Path("runs/instruct"), overrides or [])
        return
    if kind != "persona":
        raise SftlabError(f"--kind must be persona or instruct, not {kind!r}")
    from sftlab.recipes.demo import run_demo

    run_demo(out or Path("runs/demo"), overrides or [])


@app.command("eval")
def evaluate(
    target: Annotated[str, typer.Argument(help="a run directory, or a model (name or folder)")],
    out: Annotated[Path, typer.Option("--out", help="folder for eval.json and eval.html")],
    data: Annotated[str | None, typer.Option(help="held-out rows (default: the run's eval split)")] = None,
    baseline: Annotated[str | None, typer.Option(help="model to compare with (default: the run's base)")] = None,
    shots: Annotated[int, typer.Option(help="few-shot examples in the baseline's prompt", min=0)] = 3,
    train_data: Annotated[str | None, typer.Option("--train", help="where few-shot examples come from (default: the run's training split)")] = None,
    metric: Annotated[str | None, typer.Option(help="exact|contains|regex|numeric|json|json_schema|rouge_l (default rouge_l; a row's 'metric' field wins)")] = None,
    general: Annotated[str | None, typer.Option(help="general text for perplexity (default: the shipped C4 excerpt)")] = None,
    safety: Annotated[bool, typer.Option("--safety", help="refusal / over-refusal probes")] = False,
    lm_eval: Annotated[str | None, typer.Option("--lm-eval", help="lm-eval-harness tasks, e.g. arc_easy (needs sftlab[lm-eval])")] = None,
    max_new_tokens: int = 96,
) -> None:
    """Did fine-tuning help, would a prompt have done as well, what did it cost: eval.json + eval.html."""
    from sftlab.recipes.evaluate import EvalOptions, run_eval

    run_eval(EvalOptions(target, out, data, baseline, shots, train_data, metric, general, safety,
                         lm_eval, max_new_tokens))  # fmt: skip
    print(f"wrote {out / 'eval.json'} and {out / 'eval.html'}")


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="run directories written by sftlab train")],
    out: Annotated[Path, typer.Option("--out", help="folder for compare.html and compare.json")],
) -> None:
    """Several runs on one page: figures, loss and probe curves, answers side by side."""
    from sftlab.recipes.compare import compare_runs

    print(f"wrote {compare_runs(runs, out)}")


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="YAML config file")],
    lr: Annotated[str, typer.Option("--lr", help="learning rates, e.g. 1e-5,5e-5,2e-4")],
    epochs: Annotated[str | None, typer.Option(help="epochs to try, e.g. 1,3")] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="budget per run (steps)", min=1)
    ] = None,
    out: Annotated[Path | None, typer.Option(help="folder (default runs/<name>-sweep)")] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides for every run")
    ] = None,
) -> None:
    """Train a learning-rate (x epochs) grid one run after another; report the best."""
    from sftlab.recipes.sweep import parse_grid
    from sftlab.recipes.sweep import sweep as run_sweep

    lrs, epoch_grid = parse_grid(lr, "--lr"), parse_grid(epochs, "--epochs")
    run_sweep(config, lrs, epoch_grid, out, max_steps, overrides or [])


def _quiet_libraries() -> None:
    """Our own progress and messages only: library progress bars and advisory warnings hide
    what matters on a terminal (they still appear with SFTLAB_VERBOSE=1)."""
    if os.environ.get("SFTLAB_VERBOSE"):
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    _quiet_libraries()
    try:
        app()
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except SftlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
