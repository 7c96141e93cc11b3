"""The whole supervised fine-tuning run, top to bottom. Composes the stages; holds no stage logic.

    config -> data (read, convert, mix, split) -> template (render ids+labels, pre-flight report)
           -> pack (rows) -> model (load, LoRA) -> train loop -> save (adapter, tokenizer, template)
           -> export (merged model, optional)
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import sftlab
from sftlab.config import RunConfig, to_yaml
from sftlab.core.errors import SftlabError
from sftlab.core.hashing import hash_path, hash_text
from sftlab.core.io import write_json, write_jsonl, write_text_atomic
from sftlab.data.mixture import Mixture, build_mixture, load_source
from sftlab.export.artifacts import save_chat_format, save_tokenizer, save_trained
from sftlab.model.device import (
    accelerate_precision,
    resolve_attention,
    resolve_packing,
    resolve_precision,
    storage_dtype,
)
from sftlab.model.load import ModelRef, load_model, load_tokenizer, resolve_model
from sftlab.model.lora import add_lora, count_parameters
from sftlab.model.loss import SupervisedLoss
from sftlab.pack.packing import build_rows
from sftlab.template.checks import mask_report, preflight
from sftlab.template.encode import EncodedSet, encode_dataset
from sftlab.template.format import build_chat_format
from sftlab.template.render import Renderer
from sftlab.train import loop
from sftlab.train.metrics import Reporter
from sftlab.train.optim import build_optimizer


@dataclass
class Prepared:
    """Everything decided before a model is loaded."""

    ref: ModelRef
    tokenizer: object
    renderer: Renderer
    mixture: Mixture
    train: EncodedSet
    eval: EncodedSet
    report: dict


def prepare_run_dir(config: RunConfig) -> Path:
    run_dir = config.run_dir()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SftlabError(f"cannot write to the run directory {run_dir}: {exc.strerror}") from None
    write_text_atomic(run_dir / "config.yaml", to_yaml(config))
    return run_dir


def prepare_data(config: RunConfig, base_dir: Path | None, say=print) -> Prepared:
    """Data and template stages: every row kept or rejected with a reason; the mask checked."""
    sources = [load_source(source, base_dir) for source in config.data.sources]
    sizes = [(s.ratio, s.rows) for s in config.data.sources]
    d = config.data
    mixture = build_mixture(sources, sizes, d.eval_fraction, d.eval_rows, d.seed)
    ref = resolve_model(config.model.name, config.model.allow_pickle)
    tokenizer = load_tokenizer(ref, config.model.trust_remote_code)
    renderer = Renderer(tokenizer, build_chat_format(tokenizer, config.template))
    t = config.template
    train_set = encode_dataset(renderer, mixture.train, t.max_length, t.truncation)
    eval_set = encode_dataset(renderer, mixture.eval, t.max_length, t.truncation)
    rejected = dedupe(mixture.rejected + train_set.rejected + eval_set.rejected)
    report = mask_report(
        renderer, train_set.conversations, train_set.examples, rejected, train_set.truncated
    )
    report["data"] = mixture.report
    report["eval_rows"] = len(eval_set.examples)
    say(
        f"data: {report['rows']} training rows ({report['supervised_tokens']:,} supervised of "
        f"{report['tokens']:,} tokens, {report['supervised_share']:.0%}), {len(eval_set.examples)} eval "
        f"rows, {len(rejected)} rejected, {report['truncated_rows']} truncated"
    )
    return Prepared(ref, tokenizer, renderer, mixture, train_set, eval_set, report)


def dedupe(rejections):
    """A repeated source (ratio > 1) can reject the same row twice; list it once."""
    seen, out = set(), []
    for r in rejections:
        key = (r.file, r.index, r.stage, r.reason)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def write_preflight(run_dir: Path, prepared: Prepared) -> None:
    write_json(run_dir / "mask_report.json", prepared.report)
    rejected = dedupe(prepared.mixture.rejected + prepared.train.rejected + prepared.eval.rejected)
    write_jsonl(run_dir / "rejected.jsonl", (r.to_json() for r in rejected))
    preflight(prepared.report)


def build_model(config: RunConfig, ref: ModelRef, precision: str, attention: str):
    t = config.train
    dtype = storage_dtype(config.model.dtype, precision, t.method)
    model = load_model(
        ref,
        dtype=dtype,
        attn_implementation=attention,
        trust_remote_code=config.model.trust_remote_code,
        allow_pickle=config.model.allow_pickle,
    )
    model.config.use_cache = False
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if t.method == "lora":
        lc = config.lora
        model = add_lora(model, lc.r, lc.alpha, lc.dropout, lc.target_modules)
    model.train()
    return model


def make_accelerator(config: RunConfig, precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one global state per process; a second run in the same process
        # (tests, notebooks) with another precision must not inherit the first one's.
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        mixed_precision=accelerate_precision(precision),
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=1,  # the loop accumulates itself (token-normalised)
    )


def manifest(config: RunConfig, prepared: Prepared, extra: dict) -> dict:
    import accelerate
    import peft
    import transformers

    renderer = prepared.renderer
    tokenizer_file = Path(prepared.ref.path) / "tokenizer.json"
    return {
        "sftlab_version": sftlab.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": config.train.seed,
        "model": {
            "name": config.model.name,
            "path": prepared.ref.path,
            "allow_pickle": config.model.allow_pickle,
        },
        "tokenizer_sha256": hash_path(tokenizer_file) if tokenizer_file.is_file() else None,
        "template_sha256": hash_text(renderer.fmt.template),
        "end_of_turn": renderer.fmt.end_of_turn,
        "data": [
            {**source, "sha256": hash_path(source["file"])}
            for source in prepared.mixture.report.get("sources", [])
        ],
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "accelerate": accelerate.__version__,
        },
        **extra,
    }


def train(config: RunConfig, base_dir: Path | None = None) -> Path:
    """Run the whole recipe; returns the run directory."""
    from accelerate.utils import set_seed

    run_dir = prepare_run_dir(config)
    set_seed(config.train.seed)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(config.train.precision, device_type)
    packing = resolve_packing(config.pack.enabled, device_type)
    attention = resolve_attention(config.model.attn_implementation, device_type, packing)
    accelerator = make_accelerator(config, precision)
    main = accelerator.is_main_process
    say = print if main else (lambda *a, **k: None)

    prepared = prepare_data(config, base_dir, say)
    if main:
        write_preflight(run_dir, prepared)
    else:
        preflight(prepared.report)
    t, tmpl = config.train, config.template
    train_rows = build_rows(prepared.train.examples, tmpl.max_length, packing)
    eval_rows = build_rows(prepared.eval.examples, tmpl.max_length, packing)

    model = build_model(config, prepared.ref, precision, attention)
    trainable, total = count_parameters(model)
    say(
        f"model: {config.model.name} ({t.method}, {trainable:,} of {total:,} parameters trained; "
        f"{precision}, {attention} attention, packing {'on' if packing else 'off'})"
    )
    wrapped = SupervisedLoss(model)
    optimizer = build_optimizer(wrapped, t.peak_lr(), t.weight_decay)
    wrapped, optimizer = accelerator.prepare(wrapped, optimizer)
    if t.compile:
        wrapped = torch.compile(wrapped, dynamic=True)

    settings = loop.LoopSettings(
        peak_lr=t.peak_lr(), total_steps=0, warmup_steps=0, schedule=t.schedule,
        min_lr_ratio=t.min_lr_ratio, max_grad_norm=t.max_grad_norm,
        batch_tokens=max(t.batch_tokens, tmpl.max_length), micro_per_step=t.grad_accum * accelerator.num_processes,
        seed=t.seed, pad_id=pad_id(prepared.tokenizer), eval_every=t.eval_every,
    )  # fmt: skip
    settings.total_steps = loop.total_steps_for(train_rows, settings, accelerator.num_processes, t.epochs, t.max_steps)
    settings.warmup_steps = round(t.warmup_ratio * settings.total_steps)

    def evaluate() -> float:
        return loop.eval_loss(accelerator, wrapped, eval_rows, settings.batch_tokens, settings.pad_id)

    reporter = Reporter(run_dir / "metrics.jsonl", settings.total_steps, enabled=main)
    if main:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    eval_before = evaluate()
    reporter.eval({"step": 0, "eval_loss": eval_before})
    state = loop.run(accelerator, wrapped, optimizer, train_rows, settings, loop.LoopState(), reporter, evaluate, loop.Hooks())
    eval_after = evaluate()
    reporter.eval({"step": state.step, "eval_loss": eval_after})
    reporter.close()

    if main:
        save_outputs(run_dir, accelerator.unwrap_model(wrapped).model, prepared, config)
        write_json(run_dir / "manifest.json", manifest(config, prepared, {
            "precision": precision, "attention": attention, "packing": packing,
            "device": str(accelerator.device),
            "processes": accelerator.num_processes, "method": t.method,
            "trainable_parameters": trainable, "total_parameters": total,
        }))  # fmt: skip
        write_json(run_dir / "summary.json", {
            "steps": state.step, "epochs": t.epochs, "train_seconds": round(state.train_seconds, 2),
            "tokens": state.tokens, "supervised_tokens": state.supervised_tokens,
            "eval_loss_before": eval_before, "eval_loss_after": eval_after,
            "train_examples": len(prepared.train.examples), "train_rows": len(train_rows),
        })  # fmt: skip
        say(f"eval loss {eval_before:.4f} -> {eval_after:.4f}; run saved to {run_dir}")
    accelerator.wait_for_everyone()
    if config.export.merged and main:
        from sftlab.export.merge import export_merged

        export_merged(run_dir, run_dir / "merged")
    return run_dir


def save_outputs(run_dir: Path, model, prepared: Prepared, config: RunConfig) -> None:
    save_trained(model, run_dir, config.train.method)
    save_tokenizer(prepared.tokenizer, prepared.renderer.fmt, run_dir / "tokenizer")
    save_chat_format(run_dir, prepared.renderer.fmt)


def pad_id(tokenizer) -> int:
    # Padding is masked by position, so any id works; prefer the tokenizer's own.
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0
