"""The training loop: explicit, short, and the same on one process or many.

    for each epoch:   plan = every step's micro-batches, from (seed, epoch)   (pack.collate)
      for each step:  stop? (agreed by all processes)
                      window = supervised tokens of all the step's micro-batches, all processes
                      for my micro-batches: loss_sum -> backward(loss_sum * world / window)
                      (+ zero-weight fillers: every process runs as many passes as the others)
                      clip, optimizer step, lr from the step number
                      log, eval, checkpoint

Dividing each micro-batch's summed loss by the whole window's token count makes the gradient the
mean over every supervised token of the step, however the tokens fall into micro-batches or
processes (DDP averages gradients over processes, hence the `* world`). Invariant 7.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch

from sftlab.core.errors import SftlabError
from sftlab.core.types import PackedRow
from sftlab.model.memory import FreeMemoryTrimmer, peak_memory_mb
from sftlab.pack.collate import EpochPlan, collate, group_by_budget, plan_epoch, rank_passes
from sftlab.train.checkpoint import fault_active, fault_point
from sftlab.train.optim import lr_at, set_lr


@dataclass
class LoopState:
    """Where the run is; everything a resume needs besides weights, optimizer and RNG."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0  # steps done in `epoch` (the data cursor)
    tokens: int = 0
    supervised_tokens: int = 0
    skipped_nonfinite: int = 0
    skipped_overflow: int = 0  # fp16 steps the gradient scaler skipped (inf/nan gradients)
    train_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoopSettings:
    peak_lr: float
    total_steps: int
    warmup_steps: int
    schedule: str
    min_lr_ratio: float
    max_grad_norm: float | None
    batch_tokens: int
    micro_per_step: int  # grad_accum x processes
    seed: int
    pad_id: int
    eval_every: int | None
    skip_nonfinite: int = 0


@dataclass
class Hooks:
    """Called on the main flow after each step; each gets the state and the step's record."""

    after_step: list[Callable[[LoopState, dict], None]] = field(default_factory=list)
    # A non-zero code (e.g. a signal number) from any process stops every process before the
    # next step; each is then told the agreed (largest) code.
    should_stop: Callable[[], int] = lambda: 0
    on_stop: Callable[[int], None] = lambda code: None


class NonFiniteLoss(SftlabError):
    pass


def total_steps_for(rows, s: LoopSettings, epochs: float, max_steps: int | None) -> int:
    """The steps of `epochs` epochs (a fraction: that share of the last one's steps). Each
    epoch's plan is a new sample, so epochs can differ by a step: each is counted."""
    lengths, total, epoch = [len(r) for r in rows], 0, 0
    while epoch < epochs:
        steps = len(plan_epoch(lengths, s.batch_tokens, s.micro_per_step, s.seed, epoch).steps)
        total += math.ceil(min(1.0, epochs - epoch) * steps)
        epoch += 1
    return min(total, max_steps) if max_steps else total


def train_step(
    accelerator, model, optimizer, rows, step_groups, s: LoopSettings, step: int = 0
) -> dict:
    """One optimizer step over this process's share of the step's micro-batches."""
    world, rank = accelerator.num_processes, accelerator.process_index
    scale = float("nan") if fault_active("nonfinite", step) else 1.0  # test seam: poisoned grads
    window = sum(rows[i].n_supervised for group in step_groups for i in group)
    # Every process runs as many passes as the others (a filler, weighted 0, where its share of
    # a short last step is smaller), so each enters every collective equally often.
    passes = rank_passes(step_groups, rank, world)
    loss_sum = torch.zeros((), device=accelerator.device)
    tokens = 0
    for j, (group, counted) in enumerate(passes):
        batch = collate([rows[i] for i in group], s.pad_id).to(accelerator.device)
        weight = scale * world / window if counted else 0.0
        # Gradients are all-reduced only on the last micro-batch of the step.
        sync = nullcontext() if j == len(passes) - 1 else accelerator.no_sync(model)
        with sync:
            with accelerator.autocast():
                summed = model(batch.input_ids, batch.position_ids, batch.targets)
            accelerator.backward(summed * weight)
        if counted:
            tokens += batch.n_tokens
            loss_sum += summed.detach().float() * scale
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = s.max_grad_norm if s.max_grad_norm is not None else float("inf")
    grad_norm = accelerator.clip_grad_norm_(params, max_norm)
    loss_total = accelerator.reduce(loss_sum, reduction="sum")
    token_total = accelerator.reduce(torch.tensor(tokens, device=accelerator.device), "sum")
    return {
        "loss": float(loss_total) / window,
        "grad_norm": float(grad_norm),
        "tokens": int(token_total),
        "supervised_tokens": window,
    }


def run(
    accelerator,
    model,
    optimizer,
    rows,
    s: LoopSettings,
    state: LoopState,
    reporter,
    evaluate,
    hooks: Hooks,
):
    """Train from `state` to s.total_steps, or until any process is asked to stop (hooks).
    Returns the final state: the same step, and the same stop decision, on every process."""
    state = _train_steps(accelerator, model, optimizer, rows, s, state, reporter, evaluate, hooks)
    # A request that arrived during the last step must reach every process too: one that stopped
    # alone would leave the others waiting in the final evaluation's collectives.
    _stop_agreed(accelerator, hooks)
    return state


def _train_steps(
    accelerator,
    model,
    optimizer,
    rows,
    s: LoopSettings,
    state: LoopState,
    reporter,
    evaluate,
    hooks: Hooks,
):
    lengths = [len(r) for r in rows]
    trimmer = FreeMemoryTrimmer() if accelerator.device.type == "cpu" else None
    while state.step < s.total_steps:
        plan: EpochPlan = plan_epoch(lengths, s.batch_tokens, s.micro_per_step, s.seed, state.epoch)
        for step_groups in plan.steps[state.step_in_epoch :]:
            fault_point("step", state.step)
            if state.step >= s.total_steps or _stop_agreed(accelerator, hooks):
                return state
            lr = lr_at(
                state.step, s.total_steps, s.peak_lr, s.warmup_steps, s.schedule, s.min_lr_ratio
            )
            set_lr(optimizer, lr)
            started = time.perf_counter()
            record = train_step(accelerator, model, optimizer, rows, step_groups, s, state.step + 1)
            _update(accelerator, optimizer, state, record, step_groups, rows, s)
            optimizer.zero_grad(set_to_none=True)
            if trimmer is not None:
                trimmer.after_step()
            elapsed = time.perf_counter() - started
            state.step += 1
            state.step_in_epoch += 1
            state.tokens += record["tokens"]
            state.supervised_tokens += record["supervised_tokens"]
            state.train_seconds += elapsed
            record.update(
                step=state.step,
                epoch=state.epoch,
                lr=lr,
                step_seconds=elapsed,
                tokens_per_s=record["tokens"] / elapsed,
                supervised_tokens_per_s=record["supervised_tokens"] / elapsed,
                peak_memory_mb=round(peak_memory_mb(accelerator.device)),
            )
            reporter.step(record)
            if s.eval_every and state.step % s.eval_every == 0:
                reporter.eval({"step": state.step, "eval_loss": evaluate()})
            for hook in hooks.after_step:
                hook(state, record)
        state.epoch += 1
        state.step_in_epoch = 0
        if not s.eval_every and state.step < s.total_steps:
            reporter.eval({"step": state.step, "eval_loss": evaluate()})
    return state


def _stop_agreed(accelerator, hooks: Hooks) -> bool:
    """Whether any process was asked to stop: one all-reduce of the request per step.

    A process that stopped on its own signal one step before the others would leave them
    waiting in that step's gradient all-reduce forever; agreeing first, all stop at the same step.
    """
    code = int(hooks.should_stop())
    if accelerator.num_processes > 1:
        flag = torch.tensor(code, device=accelerator.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        code = int(flag)
    if code:
        hooks.on_stop(code)
    return code != 0


def _update(accelerator, optimizer, state: LoopState, record, step_groups, rows, s) -> None:
    """Step the optimizer, or skip the step.

    Under fp16, accelerate's gradient scaler multiplies the loss before backward; an infinite
    gradient then means the scale was too high, not that training diverged, and the scaler's own
    step skips the update and halves the scale (that is how it finds a usable scale: the first
    steps of an fp16 run overflow by design). Those steps are counted as overflow skips and logged
    with the scale. A non-finite loss is a real problem in any precision.
    """
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None:
        record["loss_scale"] = float(scaler.get_scale())  # the scale this step's backward used
    if not math.isfinite(record["loss"]) or (
        scaler is None and not math.isfinite(record["grad_norm"])
    ):
        if scaler is not None:
            # clip_grad_norm_ unscaled the gradients; without update() the next step's unscale
            # raises ("unscale_() has already been called ... since the last update()").
            scaler.update()
        _handle_nonfinite(optimizer, state, record, step_groups, rows, s)
        return
    optimizer.step()  # with a scaler: scaler.step (skipped on inf/nan gradients) + update
    if scaler is not None:
        # update() lowers the scale exactly when it found inf/nan gradients (backoff_factor < 1)
        # and skipped the step. accelerate's `step_was_skipped` cannot tell: a fused AdamW skips
        # inside its own step. Every process agrees: DDP reduced the gradients first.
        record["overflow_skipped"] = float(scaler.get_scale()) < record["loss_scale"]
        state.skipped_overflow += record["overflow_skipped"]


def _handle_nonfinite(
    optimizer, state: LoopState, record, step_groups, rows, s: LoopSettings
) -> None:
    """Skip the update; stop the run once more than `skip_nonfinite` steps went bad."""
    state.skipped_nonfinite += 1
    if state.skipped_nonfinite > s.skip_nonfinite:
        sources = sorted(
            {str(src) for g in step_groups for i in g for src in rows[i].sources if src}
        )
        raise NonFiniteLoss(
            f"step {state.step + 1}: loss is {record['loss']} (grad norm {record['grad_norm']}); "
            f"the weights were not updated. The step's rows: {', '.join(sources[:20])}"
            f"{' ...' if len(sources) > 20 else ''}. Lower train.lr, check these rows, or set "
            "train.skip_nonfinite to tolerate a few bad batches."
        )


@torch.no_grad()
def eval_loss(
    accelerator, model, rows: Sequence[PackedRow], batch_tokens: int, pad_id: int
) -> float:
    """Mean supervised-token loss over `rows`, split across processes.

    Every process runs the same number of forward passes (fillers count for nothing): a process
    with one pass more would sit in the wrapped model's collective (DDP's buffer broadcast) while
    the others wait in the final all-reduce, forever.
    """
    if not rows:
        return float("nan")
    model.eval()
    groups = group_by_budget([len(r) for r in rows], batch_tokens, _fixed_rng())
    loss = torch.zeros((), device=accelerator.device)
    count = torch.zeros((), device=accelerator.device)
    for group, counted in rank_passes(groups, accelerator.process_index, accelerator.num_processes):
        batch = collate([rows[i] for i in group], pad_id).to(accelerator.device)
        with accelerator.autocast():
            summed = model(batch.input_ids, batch.position_ids, batch.targets).float()
        if counted:
            loss += summed
            count += batch.n_supervised
    model.train()
    total = accelerator.reduce(loss, "sum") / accelerator.reduce(count, "sum").clamp(min=1)
    return float(total)


def _fixed_rng():
    import numpy as np

    return np.random.default_rng(0)
