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
from sftlab.core.errors import Interrupted, SftlabError
from sftlab.core.hashing import hash_path, hash_text
from sftlab.core.io import write_json, write_text_atomic
from sftlab.export.artifacts import save_chat_format, save_tokenizer, save_trained
from sftlab.model.device import (
    accelerate_precision,
    attention_for,
    compile_layers,
    resolve_attention,
    resolve_packing,
    resolve_precision,
    storage_dtype,
)
from sftlab.model.load import ModelRef, load_model
from sftlab.model.lora import add_lora, count_parameters
from sftlab.model.loss import SupervisedLoss
from sftlab.model.memory import recompute_gated_products
from sftlab.model.token_rows import plan_token_rows, trained_rows
from sftlab.model.vocab import grow_embeddings
from sftlab.pack.packing import build_rows
from sftlab.recipes.observe import RunObserver
from sftlab.recipes.prepare import Prepared, prepare_data, write_preflight
from sftlab.template.checks import preflight
from sftlab.train import checkpoint, loop
from sftlab.train.metrics import Reporter, tracker_config
from sftlab.train.optim import build_optimizer
from sftlab.train.resume import (
    StopSignals,
    check_disk_space,
    check_resumable,
    pick_checkpoint,
    truncate_metrics,
)


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


def build_model(
    config: RunConfig, ref: ModelRef, precision: str, attention: str, added_ids=(),
    choose_rows=None,
):  # fmt: skip
    """`added_ids`: template markers the chat format added to the tokenizer (rows to grow).
    `choose_rows(base model)`: the token ids whose embedding rows LoRA trains too."""
    t = config.train
    dtype = storage_dtype(config.model.dtype, precision, t.method)
    model = load_model(
        ref,
        dtype=dtype,
        attn_implementation=attention,
        trust_remote_code=config.model.trust_remote_code,
        allow_pickle=config.model.allow_pickle,
    )
    grow_embeddings(model, added_ids)
    model.config.use_cache = False
    if not t.compile and not torch.cuda.is_available():  # compiled layers recompute by themselves
        recompute_gated_products(model)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    token_rows = choose_rows(model) if choose_rows is not None else []
    if t.method == "lora":
        lc = config.lora
        model = add_lora(
            model, lc.r, lc.alpha, lc.dropout, lc.target_modules, autocast=precision != "fp32",
            token_rows=token_rows,
        )  # fmt: skip
    model.train()
    return model


def make_accelerator(config: RunConfig, precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one global state per process; a second run in the same process
        # (tests, notebooks) with another precision must not inherit the first one's.
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        mixed_precision=accelerate_precision(precision),
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=1,  # the loop accumulates itself (token-normalised)
        # trackers (train.report_to) through accelerate's integration, their files in RUN/trackers
        log_with=list(config.train.report_to) or None,
        project_config=ProjectConfiguration(
            project_dir=str(config.run_dir()), logging_dir=str(config.run_dir() / "trackers")
        ),
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
            "source": prepared.ref.source,  # absolute: a reload never depends on its directory
            "allow_pickle": config.model.allow_pickle,
            "trust_remote_code": config.model.trust_remote_code,
        },
        "tokenizer_sha256": hash_path(tokenizer_file) if tokenizer_file.is_file() else None,
        "template": renderer.fmt.name,  # "model", a library format (auto-chosen or named), a file
        "added_token_ids": list(renderer.fmt.added_token_ids),
        "template_sha256": hash_text(renderer.fmt.template),
        "end_of_turn": renderer.fmt.end_of_turn,
        "data": prepared.sources,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "accelerate": accelerate.__version__,
        },
        **extra,
    }


@dataclass
class Session:
    """The live pieces of a training run, built once by `setup`."""

    accelerator: object
    model: torch.nn.Module  # SupervisedLoss, prepared (maybe DDP-wrapped)
    optimizer: torch.optim.Optimizer
    train_rows: list
    eval_rows: list
    settings: loop.LoopSettings
    facts: dict  # precision, attention, packing, parameter counts: for the manifest

    @property
    def unwrapped(self) -> SupervisedLoss:
        return self.accelerator.unwrap_model(self.model)

    @property
    def scaler(self):
        """fp16's gradient scaler (accelerate adds one), else None."""
        return getattr(self.accelerator, "scaler", None)

    def evaluate(self) -> float:
        s = self.settings
        return loop.eval_loss(
            self.accelerator, self.model, self.eval_rows, s.batch_tokens, s.pad_id
        )


def setup(config: RunConfig, prepared: Prepared, accelerator, device_type: str, say) -> Session:
    t, tmpl = config.train, config.template
    precision = resolve_precision(t.precision, device_type)
    packing = resolve_packing(config.pack.enabled, device_type)
    attention = resolve_attention(config.model.attn_implementation, device_type)
    train_rows = build_rows(prepared.train, tmpl.max_length, packing)
    eval_rows = build_rows(prepared.eval, tmpl.max_length, packing)
    report = prepared.report

    def choose_rows(base) -> list[int]:  # the base model's untrained template tokens
        rows, report["untrained_tokens"] = plan_token_rows(
            base, t.token_rows, prepared.renderer, prepared.train, say
        )
        return rows if t.method == "lora" else []  # full fine-tuning trains every row anyway

    model = build_model(config, prepared.ref, precision, attention_for(attention, tmpl.max_length),
                        prepared.renderer.fmt.added_token_ids, choose_rows)  # fmt: skip
    trainable, total = count_parameters(model)
    say(
        f"model: {config.model.name} ({t.method}, {trainable:,} of {total:,} parameters trained; "
        f"{precision}, {attention} attention, packing {'on' if packing else 'off'})"
    )
    wrapped = SupervisedLoss(model, attention=attention)
    optimizer = build_optimizer(wrapped, t.peak_lr(), t.weight_decay)
    wrapped, optimizer = accelerator.prepare(wrapped, optimizer)
    if t.compile:
        compile_layers(model)
    world = accelerator.num_processes
    settings = loop.LoopSettings(
        peak_lr=t.peak_lr(), total_steps=0, warmup_steps=0, schedule=t.schedule,
        min_lr_ratio=t.min_lr_ratio, max_grad_norm=t.max_grad_norm,
        batch_tokens=config.micro_batch_tokens(),
        micro_per_step=config.micro_batches_per_step() * world,
        seed=t.seed, pad_id=pad_id(prepared.tokenizer), eval_every=t.eval_every,
        skip_nonfinite=t.skip_nonfinite,
    )  # fmt: skip
    settings.total_steps = loop.total_steps_for(train_rows, settings, t.epochs, t.max_steps)
    settings.warmup_steps = round(t.warmup_ratio * settings.total_steps)
    facts = {
        "precision": precision, "attention": attention, "packing": packing,
        "device": str(accelerator.device), "processes": world, "method": t.method,
        "trainable_parameters": trainable, "total_parameters": total,
        "trained_token_rows": trained_rows(model),
    }  # fmt: skip
    return Session(accelerator, wrapped, optimizer, train_rows, eval_rows, settings, facts)


def checkpoint_meta(config: RunConfig, prepared: Prepared) -> dict:
    """What a resume must find unchanged (see train/resume.py)."""
    return {
        "config": config.model_dump(mode="json"),
        "data": [{"file": s["file"], "sha256": s["sha256"]} for s in prepared.sources],
        "template_sha256": hash_text(prepared.renderer.fmt.template),
    }


def train(
    config: RunConfig,
    base_dir: Path | None = None,
    restart: bool = False,
    force_resume: bool = False,
) -> Path:
    """Run the whole recipe (or resume it); returns the run directory. restart: start over,
    deleting earlier checkpoints; force_resume: resume even if the config or data changed."""
    from accelerate.utils import set_seed

    config.micro_batch_tokens()  # a contradiction in a config built in code: stop before anything
    run_dir = prepare_run_dir(config)
    resume_from = pick_checkpoint(run_dir / "checkpoints", config.train.resume, restart)
    set_seed(config.train.seed)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    accelerator = make_accelerator(config, resolve_precision(config.train.precision, device_type))
    main = accelerator.is_main_process
    say = print if main else (lambda *a, **k: None)
    if config.train.report_to:  # init_trackers runs on the main process only
        accelerator.init_trackers(config.name, config=tracker_config(config.model_dump(mode="json")))

    prepared = prepare_data(config, base_dir, say)
    meta = checkpoint_meta(config, prepared)
    if resume_from is not None:
        for change in check_resumable(resume_from, meta, force_resume):
            say(f"warning: resuming despite a change (--force-resume): {change}")
    if main:
        write_preflight(run_dir, prepared)
    else:
        preflight(prepared.report)
    session = setup(config, prepared, accelerator, device_type, say)
    if main:  # again, with the base model's untrained tokens (checked once it was loaded)
        write_json(run_dir / "mask_report.json", prepared.report)
    f = session.facts
    check_disk_space(run_dir, f["trainable_parameters"], f["total_parameters"], config.train.keep_last,
                     f["method"] == "full", config.export.merged)  # fmt: skip

    observer = RunObserver(run_dir, config, prepared, session,
                           resume_from.step if resume_from else 0, say)  # fmt: skip
    state, meta["eval_loss_before"] = start_or_resume(session, run_dir, resume_from, main, say,
                                                      observer)  # fmt: skip
    state = train_with_checkpoints(session, config, run_dir, state, meta, main, observer)
    eval_after = session.evaluate()
    if main:
        observer.log_eval({"step": state.step, "eval_loss": eval_after})
        finish(run_dir, session, prepared, config, state, meta["eval_loss_before"], eval_after, say)
        observer.report()  # now with the summary
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # flush and close (end_training would also end the
        tracker.finish()  # process group, which a caller running more than one train needs)
    if config.export.merged and main:
        from sftlab.export.merge import export_merged

        export_merged(run_dir, run_dir / "merged")
    return run_dir


def start_or_resume(session: Session, run_dir: Path, resume_from, main: bool, say, observer):
    """A fresh LoopState and the eval loss before training, or both restored from a checkpoint."""
    metrics = run_dir / "metrics.jsonl"
    if resume_from is None:
        if main:
            metrics.unlink(missing_ok=True)
        before = session.evaluate()
        if main:
            observer.log_eval(record := {"step": 0, "eval_loss": before})
            probe = record.get("probe_stop_rate")
            say(f"eval loss before training: {before:.4f}"
                + (f" (probe stop rate {probe:.2f})" if probe is not None else ""))  # fmt: skip
        return loop.LoopState(), before
    saved = checkpoint.load(resume_from, session.unwrapped, session.optimizer, session.scaler)
    if main:
        truncate_metrics(metrics, resume_from.step)
    say(f"resumed from {resume_from.path} (step {resume_from.step})")
    return loop.LoopState(**saved["loop"]), saved["eval_loss_before"]


def train_with_checkpoints(
    session: Session, config: RunConfig, run_dir: Path, state, meta, main: bool, observer
):
    """The loop, with a checkpoint every save_every steps, at the end, and on SIGINT/SIGTERM."""
    t = config.train
    root = run_dir / "checkpoints"

    def save(current: loop.LoopState) -> Path | None:
        if not main:
            return None
        return checkpoint.save(
            root, session.unwrapped, session.optimizer, current.to_dict(), meta, t.keep_last,
            session.scaler,
        )

    def periodic(current: loop.LoopState, record: dict) -> None:
        if (
            t.save_every
            and current.step % t.save_every == 0
            and current.step < session.settings.total_steps
        ):
            save(current)

    reporter = Reporter(
        run_dir / "metrics.jsonl", session.settings.total_steps, enabled=main, start_step=state.step,
        log_every=t.log_every, accelerator=session.accelerator, on_eval=observer.probe,
        after_eval=observer.report,
    )  # fmt: skip
    with StopSignals() as signals:
        hooks = loop.Hooks(
            after_step=[periodic], should_stop=lambda: signals.received or 0, on_stop=signals.adopt
        )
        try:
            state = loop.run(session.accelerator, session.model, session.optimizer, session.train_rows,
                             session.settings, state, reporter, session.evaluate, hooks)  # fmt: skip
        finally:
            reporter.close()
    where = save(state)
    session.accelerator.wait_for_everyone()
    if signals.received is not None:
        code = 128 + signals.received
        raise Interrupted(
            f"stopped at step {state.step} of {session.settings.total_steps}; checkpoint saved to "
            f"{where or root}. Resume with: sftlab train <config> --resume", code
        )  # fmt: skip
    return state


def finish(
    run_dir, session: Session, prepared: Prepared, config: RunConfig, state, before, after, say
) -> None:
    save_outputs(run_dir, session.unwrapped.model, prepared, config)
    write_json(run_dir / "manifest.json", manifest(config, prepared, session.facts))
    write_json(run_dir / "summary.json", {
        "steps": state.step, "epochs": config.train.epochs, "train_seconds": round(state.train_seconds, 2),
        "tokens": state.tokens, "supervised_tokens": state.supervised_tokens,
        "eval_loss_before": before, "eval_loss_after": after,
        "train_examples": len(prepared.train), "train_rows": len(session.train_rows),
        "skipped_nonfinite_steps": state.skipped_nonfinite,
        "skipped_overflow_steps": state.skipped_overflow,
    })  # fmt: skip
    say(f"eval loss {before:.4f} -> {after:.4f}; run saved to {run_dir}")


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
