"""fp16 training with a gradient scaler (issue 11, item 5).

On GPUs without bf16 (T4, V100) precision resolves to fp16 and accelerate adds a GradScaler. The
scaler multiplies the loss before backward; when a gradient overflows it skips that update and
halves the scale, which is how it finds a usable scale, so the first steps of every fp16 run
overflow by design. The loop must let it do that (count and log the skipped steps) and train on,
while a non-finite LOSS still stops the run.

accelerate gives a CPU run no scaler, so the test hands its Accelerator a real
torch.amp.GradScaler("cpu") and turns on its fp16 autocast: accelerate's own backward, unscale,
clip and optimizer step then run exactly as on a GPU. Overflows are injected as an infinite
entry in one weight's gradient at chosen steps.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny_model
from sftlab.model.loss import SupervisedLoss
from sftlab.train.loop import Hooks, LoopSettings, LoopState, NonFiniteLoss, run
from sftlab.train.optim import build_optimizer
from test_loss import EOS, window_rows

INIT_SCALE = 2.0**12
STEPS = 6


class Records:
    def __init__(self):
        self.steps: list[dict] = []

    def step(self, record: dict) -> None:
        self.steps.append(dict(record))

    def eval(self, record: dict) -> None:
        pass


def fp16_session(overflow_at: set[int]):
    """A tiny full fine-tune under accelerate with fp16 autocast and a real CPU GradScaler; the
    gradient of one weight gets an inf entry during the backward of the steps in `overflow_at`
    (one micro-batch per step, so the n-th backward is step n)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    # growth_interval beyond the run: the scale changes only by overflows (x0.5 each, the
    # GradScaler default backoff_factor), so the expected scale follows from the overflow count.
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=1000)
    accelerator.native_amp = True
    model = make_tiny_model(seed=5)
    wrapped = SupervisedLoss(model, chunk_tokens=16)
    optimizer = build_optimizer(wrapped, 1e-3, 0.0)
    wrapped, optimizer = accelerator.prepare(wrapped, optimizer)
    backward_calls = []

    def poison(grad):
        backward_calls.append(1)
        if len(backward_calls) in overflow_at:
            grad = grad.clone()
            grad.view(-1)[0] = float("inf")
        return grad

    model.model.layers[0].mlp.down_proj.weight.register_hook(poison)
    return accelerator, wrapped, optimizer, model


def settings(skip_nonfinite: int = 0) -> LoopSettings:
    return LoopSettings(
        peak_lr=1e-3, total_steps=STEPS, warmup_steps=0, schedule="constant", min_lr_ratio=0.0,
        max_grad_norm=1.0, batch_tokens=4096, micro_per_step=1, seed=0, pad_id=EOS,
        eval_every=None, skip_nonfinite=skip_nonfinite,
    )  # fmt: skip


def train(accelerator, wrapped, optimizer, model, s: LoopSettings):
    snapshots = [{n: p.detach().clone() for n, p in model.named_parameters()}]
    hooks = Hooks(
        after_step=[
            lambda _state, _record: snapshots.append(
                {n: p.detach().clone() for n, p in model.named_parameters()}
            )
        ]
    )
    records = Records()
    state = run(accelerator, wrapped, optimizer, window_rows(), s, LoopState(), records,
                lambda: 0.0, hooks)  # fmt: skip
    return state, records.steps, snapshots


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[n], after[n]) for n in before)


def test_fp16_overflow_steps_are_skipped_by_the_scaler_and_the_run_trains_to_the_end():
    overflow_at = {2, 4}
    accelerator, wrapped, optimizer, model = fp16_session(overflow_at)
    state, records, snapshots = train(accelerator, wrapped, optimizer, model, settings())

    assert state.step == STEPS and [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert state.skipped_overflow == len(overflow_at)
    assert state.skipped_nonfinite == 0  # an overflow is not a non-finite loss
    assert {r["step"] for r in records if r["overflow_skipped"]} == overflow_at
    assert all(math.isfinite(r["loss"]) for r in records)
    # the scaler halved its scale at each overflow; each record has the scale its backward used
    assert accelerator.scaler.get_scale() == INIT_SCALE * 0.5 ** len(overflow_at)
    assert [r["loss_scale"] for r in records] == [
        INIT_SCALE * 0.5 ** sum(1 for k in overflow_at if k < r["step"]) for r in records
    ]
    for step in range(1, STEPS + 1):  # no update on a skipped step, an update on every other
        assert changed(snapshots[step - 1], snapshots[step]) is (step not in overflow_at), step


def test_fp16_nonfinite_loss_still_stops_the_run(monkeypatch):
    monkeypatch.setenv("SFTLAB_FAULT", "nonfinite:3")  # the loss of step 3 is NaN
    accelerator, wrapped, optimizer, model = fp16_session(overflow_at={1})
    with pytest.raises(NonFiniteLoss, match="step 3: loss is nan"):
        train(accelerator, wrapped, optimizer, model, settings())


def test_fp16_tolerated_nonfinite_loss_keeps_the_scaler_usable(monkeypatch):
    """With train.skip_nonfinite the bad step is skipped and the scaler goes on: its next
    unscale must not find the previous step's unscale still pending."""
    monkeypatch.setenv("SFTLAB_FAULT", "nonfinite:3")
    accelerator, wrapped, optimizer, model = fp16_session(overflow_at={5})
    state, records, snapshots = train(accelerator, wrapped, optimizer, model, settings(1))
    assert state.step == STEPS
    assert state.skipped_nonfinite == 1 and state.skipped_overflow == 1
    assert not changed(snapshots[2], snapshots[3]) and not changed(snapshots[4], snapshots[5])
    assert changed(snapshots[5], snapshots[6])


def test_fp16_resume_restores_the_scale_the_overflows_taught(tmp_path):
    """The scale is learned from overflows; a checkpoint keeps it, so a resumed run does not
    start again at the initial scale (and skip steps the uninterrupted run did not)."""
    from sftlab.train import checkpoint

    accelerator, wrapped, optimizer, model = fp16_session(overflow_at={1, 2})
    train(accelerator, wrapped, optimizer, model, settings())
    learned = accelerator.scaler.get_scale()
    assert learned == INIT_SCALE / 4
    checkpoint.save(tmp_path, model, optimizer, {"step": STEPS}, {}, keep_last=1,
                    scaler=accelerator.scaler)  # fmt: skip

    fresh, _, fresh_optimizer, fresh_model = fp16_session(overflow_at=set())
    assert fresh.scaler.get_scale() == INIT_SCALE
    checkpoint.load(checkpoint.checkpoints(tmp_path)[-1], fresh_model, fresh_optimizer,
                    scaler=fresh.scaler)  # fmt: skip
    assert fresh.scaler.get_scale() == learned
