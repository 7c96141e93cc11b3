"""Peak memory on CPU: what the backward pass keeps alive, and what the allocator keeps from the OS.

Two measured levers (SmolLM2, LoRA, 1,024-token micro-batches; see bench/README.md):

- The gated MLP, down(act(gate(x)) * up(x)), keeps five [tokens x 1536] tensors per layer for
  the backward pass: half of all saved activations. Recomputing act(gate) * up in the backward
  pass (two elementwise ops) keeps three. Transformers' Llama, Mistral, Qwen and Gemma MLPs
  all have this shape; a module is switched only after its output is checked to be unchanged.
- glibc keeps freed memory for reuse, and micro-batches of varying shapes fragment it: resident
  memory grew by ~600 MB over a few steps. Trimming after each optimizer step returns it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
