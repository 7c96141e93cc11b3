"""The training loop: explicit, short, and the same on one process or many.

    for each epoch:   plan = every step's micro-batches, from (seed, epoch)   (pack.collate)
      for each step:  window = supervised tokens of all the step's micro-batches, all processes
                      for my micro-batches: loss_sum -> backward(loss_sum * world / window)
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
from sftlab.pack.collate import EpochPlan, collate, group_by_budget, plan_epoch, rank_share
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
    should_stop: Callable[[], bool] = lambda: False


class NonFiniteLoss(SftlabError):
    pass


def steps_per_epoch(rows: Sequence[PackedRow], s: LoopSettings, world: int) -> int:
    return len(
        plan_epoch([len(r) for r in rows], s.batch_tokens, s.micro_per_step, world, s.seed, 0).steps
    )


def total_steps_for(rows, s: LoopSettings, world: int, epochs: float, max_steps: int | None) -> int:
    total = math.ceil(epochs * steps_per_epoch(rows, s, world))
    return min(total, max_steps) if max_steps else total


def train_step(
    accelerator, model, optimizer, rows, step_groups, s: LoopSettings, step: int = 0
) -> dict:
    """One optimizer step over this process's share of the step's micro-batches."""
    world, rank = accelerator.num_processes, accelerator.process_index
    scale = float("nan") if fault_active("nonfinite", step) else 1.0  # test seam: poisoned grads
    window = sum(rows[i].n_supervised for group in step_groups for i in group)
    mine = rank_share(step_groups, rank, world)
    loss_sum = torch.zeros((), device=accelerator.device)
    tokens = 0
    for j, group in enumerate(mine):
        batch = collate([rows[i] for i in group], s.pad_id).to(accelerator.device)
        tokens += batch.n_tokens
        # Gradients are all-reduced only on the last micro-batch of the step.
        sync = nullcontext() if j == len(mine) - 1 else accelerator.no_sync(model)
        with sync:
            with accelerator.autocast():
                summed = model(batch.input_ids, batch.position_ids, batch.targets)
            accelerator.backward(summed * (scale * world / window))
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
    """Train from `state` to s.total_steps. Returns the final state."""
    lengths = [len(r) for r in rows]
    world = accelerator.num_processes
    trimmer = FreeMemoryTrimmer() if accelerator.device.type == "cpu" else None
    while state.step < s.total_steps:
        plan: EpochPlan = plan_epoch(
            lengths, s.batch_tokens, s.micro_per_step, world, s.seed, state.epoch
        )
        for step_groups in plan.steps[state.step_in_epoch :]:
            fault_point("step", state.step)
            if state.step >= s.total_steps or hooks.should_stop():
                return state
            lr = lr_at(
                state.step, s.total_steps, s.peak_lr, s.warmup_steps, s.schedule, s.min_lr_ratio
            )
            set_lr(optimizer, lr)
            started = time.perf_counter()
            record = train_step(accelerator, model, optimizer, rows, step_groups, s, state.step + 1)
            if not math.isfinite(record["loss"]) or not math.isfinite(record["grad_norm"]):
                _handle_nonfinite(optimizer, state, record, step_groups, rows, s)
            else:
                optimizer.step()
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
    """Mean supervised-token loss over `rows`, split across processes."""
    if not rows:
        return float("nan")
    model.eval()
    groups = group_by_budget([len(r) for r in rows], batch_tokens, _fixed_rng())
    loss = torch.zeros((), device=accelerator.device)
    count = torch.zeros((), device=accelerator.device)
    for group in groups[accelerator.process_index :: accelerator.num_processes]:
        batch = collate([rows[i] for i in group], pad_id).to(accelerator.device)
        with accelerator.autocast():
            loss += model(batch.input_ids, batch.position_ids, batch.targets).float()
        count += batch.n_supervised
    model.train()
    total = accelerator.reduce(loss, "sum") / accelerator.reduce(count, "sum").clamp(min=1)
    return float(total)


def _fixed_rng():
    import numpy as np

    return np.random.default_rng(0)
