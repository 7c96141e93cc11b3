"""lr_at (the schedule as a pure function of the step) and build_optimizer (param groups)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny_model
from sftlab.train.optim import build_optimizer, lr_at, set_lr

PEAK = 2e-4


# ---------------------------------------------------------------------------------------------
# lr_at


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_is_linear_up_to_peak(schedule):
    lrs = [lr_at(s, 100, PEAK, 10, schedule, 0.1) for s in range(10)]
    # Step s (0-based) of a 10-step warmup: peak * (s + 1) / 10; the first step is not zero.
    assert lrs == pytest.approx([PEAK * (s + 1) / 10 for s in range(10)], rel=1e-12)
    assert lrs[0] > 0 and lrs[-1] == pytest.approx(PEAK)
    assert all(b > a for a, b in zip(lrs, lrs[1:], strict=False))


def test_cosine_values_after_warmup():
    total, warmup, ratio = 111, 10, 0.1  # 101 decay steps: progress = (step - 10) / 100
    floor = PEAK * ratio
    assert lr_at(warmup, total, PEAK, warmup, "cosine", ratio) == pytest.approx(PEAK)
    # Halfway through the decay: halfway between peak and floor.
    assert lr_at(60, total, PEAK, warmup, "cosine", ratio) == pytest.approx((PEAK + floor) / 2)
    # A quarter in: floor + (peak - floor) * (1 + cos(pi/4)) / 2.
    expect = floor + (PEAK - floor) * 0.5 * (1 + math.cos(math.pi / 4))
    assert lr_at(35, total, PEAK, warmup, "cosine", ratio) == pytest.approx(expect)
    # At the last step, and past it, the floor.
    for step in (total - 1, total, total + 50):
        assert lr_at(step, total, PEAK, warmup, "cosine", ratio) == pytest.approx(floor)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_reaches_floor_at_the_last_step(schedule):
    total, warmup, ratio = 50, 5, 0.1
    assert lr_at(total - 1, total, PEAK, warmup, schedule, ratio) == pytest.approx(
        PEAK * ratio, rel=1e-9
    )
    assert lr_at(total - 2, total, PEAK, warmup, schedule, ratio) > PEAK * ratio


@pytest.mark.parametrize("warmup", [0, 7])
def test_cosine_is_monotone_non_increasing_after_warmup(warmup):
    total, ratio = 73, 0.05
    lrs = [lr_at(s, total, PEAK, warmup, "cosine", ratio) for s in range(warmup, total + 5)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:], strict=False))
    assert all(PEAK * ratio - 1e-18 <= lr <= PEAK for lr in lrs)
    assert lrs[0] == pytest.approx(PEAK)
    assert lrs[-1] == pytest.approx(PEAK * ratio)


def test_linear_schedule_values():
    total, warmup, ratio = 31, 10, 0.0
    # 21 decay steps: step 10 + k -> peak * (1 - k / 20), zero from the last step on.
    for k in range(0, 25):
        expect = PEAK * max(0.0, 1 - k / 20)
        assert lr_at(warmup + k, total, PEAK, warmup, "linear", ratio) == pytest.approx(
            expect, abs=1e-15
        )
    with_floor = lr_at(20, total, PEAK, warmup, "linear", 0.2)  # halfway
    assert with_floor == pytest.approx(PEAK * 0.2 + PEAK * 0.8 * 0.5)


def test_constant_schedule_ignores_the_floor():
    assert [lr_at(s, 20, PEAK, 4, "constant", 0.1) for s in range(4, 30)] == [PEAK] * 26
    assert [lr_at(s, 20, PEAK, 0, "constant", 0.1) for s in range(0, 20)] == [PEAK] * 20


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_no_warmup_starts_at_peak(schedule):
    assert lr_at(0, 100, PEAK, 0, schedule, 0.1) == pytest.approx(PEAK)
    assert lr_at(1, 100, PEAK, 0, schedule, 0.1) <= PEAK


def test_total_not_beyond_warmup_gives_peak_after_warmup():
    assert lr_at(3, 5, PEAK, 5, "cosine", 0.1) == pytest.approx(PEAK * 4 / 5)
    assert lr_at(5, 5, PEAK, 5, "cosine", 0.1) == PEAK
    assert lr_at(9, 5, PEAK, 8, "linear", 0.1) == PEAK


def test_lr_at_is_pure():
    a = [lr_at(s, 40, PEAK, 3, "cosine", 0.1) for s in range(45)]
    b = [lr_at(s, 40, PEAK, 3, "cosine", 0.1) for s in reversed(range(45))][::-1]
    assert a == b


# ---------------------------------------------------------------------------------------------
# build_optimizer


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_build_optimizer_decays_only_matrices_and_skips_frozen():
    model = make_tiny_model()
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(False)  # frozen matrix
    model.model.norm.weight.requires_grad_(False)  # frozen vector
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert len(optimizer.param_groups) == 2
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    named = dict(model.named_parameters())  # tied head/embedding appear once
    want_decay = {n for n, p in named.items() if p.requires_grad and p.ndim >= 2}
    want_plain = {n for n, p in named.items() if p.requires_grad and p.ndim < 2}
    assert _ids(decay["params"]) == _ids(named[n] for n in want_decay)
    assert _ids(no_decay["params"]) == _ids(named[n] for n in want_plain)
    # Spot checks: norms are not decayed, embeddings and projections are; frozen are absent.
    assert "model.layers.0.input_layernorm.weight" in want_plain
    assert (
        "model.embed_tokens.weight" in want_decay
        and "model.layers.1.mlp.down_proj.weight" in want_decay
    )
    in_opt = _ids(decay["params"]) | _ids(no_decay["params"])
    assert id(named["model.layers.0.self_attn.q_proj.weight"]) not in in_opt
    assert id(named["model.norm.weight"]) not in in_opt
    assert len(in_opt) == sum(p.requires_grad for p in model.parameters())
    assert all(g["lr"] == 1e-3 for g in optimizer.param_groups)
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8


def test_build_optimizer_lora_only_adapter_weights_and_set_lr():
    from sftlab.model.lora import add_lora

    model = add_lora(make_tiny_model(), r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.01)
    lora = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    assert _ids(optimizer.param_groups[0]["params"]) == lora
    assert len(optimizer.param_groups) == 1  # no trainable 1-D tensors
    set_lr(optimizer, 3e-5)
    assert [g["lr"] for g in optimizer.param_groups] == [3e-5]


def test_build_optimizer_weight_decay_applies_only_to_matrices():
    """One AdamW step with zero gradients: only decayed params move (by lr * wd * p)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = list(model.parameters())
    # Linear.weight (2-D) decays; Linear.bias, LayerNorm weight and bias do not.
    torch.testing.assert_close(after[0].detach(), before[0] * (1 - 0.1 * 0.5))
    for b, a in zip(before[1:], after[1:], strict=True):
        torch.testing.assert_close(a.detach(), b)
