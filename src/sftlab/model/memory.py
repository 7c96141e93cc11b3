"""Peak memory on CPU: what the backward pass keeps alive, and what the allocator keeps from the OS.

Two measured levers (SmolLM2, LoRA, 1,024-token micro-batches; see bench/README.md):

- The gated MLP, down(act(gate(x)) * up(x)), keeps five [tokens x 1536] tensors per layer for
  the backward pass: half of all saved activations. Recomputing act(gate) * up in the backward
  pass (two elementwise ops) keeps three. Transformers' Llama, Mistral, Qwen and Gemma MLPs
  all have this shape; a module is switched only after its output is checked to be unchanged.
- glibc keeps freed memory for reuse, and micro-batches of varying shapes fragment it:
  `FreeMemoryTrimmer` returns it to the OS when it has grown, not after every step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import types
from functools import lru_cache

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_GATED = ("gate_proj", "up_proj", "down_proj", "act_fn")


def _gated_product(act_fn, gate, up):
    return act_fn(gate) * up


def _lean_gated_mlp(self, x):
    gate, up = self.gate_proj(x), self.up_proj(x)
    if torch.is_grad_enabled():
        return self.down_proj(
            checkpoint(_gated_product, self.act_fn, gate, up, use_reentrant=False)
        )
    return self.down_proj(_gated_product(self.act_fn, gate, up))


def recompute_gated_products(model: nn.Module) -> int:
    """Switch every gated MLP to the lean forward; returns how many were switched (0 when the
    first one's output would change, i.e. the model's MLP is not the plain gated form)."""
    mlps = [m for m in model.modules() if all(hasattr(m, a) for a in _GATED)]
    if not mlps or not _same_output(mlps[0]):
        return 0
    for mlp in mlps:
        mlp.forward = types.MethodType(_lean_gated_mlp, mlp)
    return len(mlps)


@torch.no_grad()
def _same_output(mlp: nn.Module) -> bool:
    weight = (
        mlp.gate_proj.weight
        if hasattr(mlp.gate_proj, "weight")
        else mlp.gate_proj.base_layer.weight
    )
    x = torch.randn(3, weight.shape[1], dtype=weight.dtype, device=weight.device)
    return torch.equal(mlp(x), _lean_gated_mlp(mlp, x))


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


def release_free_memory() -> None:
    """Give memory the allocator holds but no tensor uses back to the operating system."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class FreeMemoryTrimmer:
    """Trims the allocator when resident memory at the end of a step has grown `slack_mb` past
    where it settled after the first step (or the first step after the last trim).

    glibc keeps freed memory for reuse, and micro-batches of varying shapes fragment it:
    untrimmed, resident memory grew by ~600 MB over a few steps. Trimming after every step kept
    it flat but cost 10-15% of the step time: every page returned to the OS is faulted back in
    (and zeroed) by the next step, ~1 GB per step here."""

    def __init__(self, slack_mb: float = 256):
        self.slack_mb = slack_mb
        self.settled_mb: float | None = None
        self.trims = 0

    def after_step(self) -> None:
        resident = resident_mb()
        if self.settled_mb is None:
            self.settled_mb = resident
        elif resident > self.settled_mb + self.slack_mb:
            release_free_memory()
            self.trims += 1
            self.settled_mb = None


def resident_mb() -> float:
    """Resident memory now (VmRSS), in MB; 0 where /proc is not there."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: resident set (VmHWM) on CPU, allocated memory on CUDA."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
