"""AdamW over the trainable parameters and the learning rate as a pure function of the step."""

from __future__ import annotations

import math

import torch
from torch import nn


def lr_at(
    step: int, total: int, peak: float, warmup: int, schedule: str, min_ratio: float
) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then the schedule.

    A pure function, so a resumed run needs only the step number to continue the same curve.
    """
    if warmup and step < warmup:
        return peak * (step + 1) / warmup  # the last warmup step is at the peak
    if schedule == "constant" or total <= warmup:
        return peak
    # Decay starts from the peak and lands on the floor at the last step (total - 1).
    decay_steps = total - warmup
    progress = 1.0 if decay_steps <= 1 else min(1.0, (step - warmup) / (decay_steps - 1))
    floor = peak * min_ratio
    if schedule == "linear":
        return floor + (peak - floor) * (1.0 - progress)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norm weights (1-D tensors), as is usual."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            # Trained token rows (model/token_rows.py) hold the rows themselves, not a change to
            # them: decay would pull a pretrained embedding row towards zero.
            plain = param.ndim >= 2 and "trainable_tokens_delta" not in name
            (decay if plain else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    # The fused CPU/CUDA kernel is faster; foreach is the portable fallback.
    kwargs = {"fused": True} if _fused_ok(decay + no_decay) else {}
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, **kwargs)


def _fused_ok(params) -> bool:
    return all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params) and all(
        p.device.type in ("cpu", "cuda") for p in params
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
