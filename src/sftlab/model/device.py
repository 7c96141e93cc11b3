"""Device and precision choices, made once per run and recorded in the manifest."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from sftlab.core.errors import ModelError
from sftlab.model.attention import LEAN_EAGER, make_available


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matrix products run several times faster than fp32 there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(choice: str, device_type: str) -> str:
    """auto -> bf16 where the hardware does it fast (or fp16 on older GPUs), else fp32."""
    if choice != "auto":
        return choice
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device_type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def storage_dtype(choice: str, precision: str, method: str) -> torch.dtype:
    """Frozen LoRA base weights can live in bf16 (adapters and optimizer stay fp32); full
    fine-tuning keeps fp32 master weights and relies on autocast."""
    if choice != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            choice
        ]
    if method == "lora" and precision == "bf16":
        return torch.bfloat16
    return torch.float32


def accelerate_precision(precision: str) -> str:
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_packing(choice, device_type: str) -> bool:
    if choice == "auto":
        return device_type == "cuda"
    return bool(choice)


# Measured on 2 CPU cores, SmolLM2 LoRA step (bench/README.md): eager attention is 1.25-1.4x
# faster than SDPA on rows of up to 512 tokens; at 1024 SDPA is 1.5x faster and peaks at 2.8 GB
# against eager's 4.6 GB, because eager keeps every layer's L x L probabilities for backward
# (model/attention.py keeps a third of them).
CPU_EAGER_MAX_TOKENS = 512
BY_LENGTH = f"auto (lean eager up to {CPU_EAGER_MAX_TOKENS} tokens per row, sdpa above)"


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix products on x run in: autocast's when it is on, else x's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def resolve_attention(choice: str, device_type: str) -> str:
    if choice != "auto":
        return choice
    return BY_LENGTH if device_type == "cpu" else "sdpa"


def attention_for(mode: str, row_tokens: int) -> str:
    """The implementation one batch runs with: fixed, unless the mode picks by row length."""
    if mode != BY_LENGTH:
        return mode
    return LEAN_EAGER if row_tokens <= CPU_EAGER_MAX_TOKENS else "sdpa"


def packs_into_one_row(implementation: str | None) -> bool:
    """Whether a batch of packed rows must be flattened into one row for `implementation` to keep
    its examples apart (the rows carry no attention mask, only restarting position ids).

    Transformers 5 keeps packed examples apart in two different ways:
    - mask-building implementations (eager, sdpa, flex, sftlab's lean eager) build a
      block-diagonal mask from each row's position ids (masking_utils.find_packed_sequence_indices),
      whatever the number of rows;
    - flash attention has no mask: it derives cu_seqlens from the position ids, but only when the
      batch has ONE row (modeling_flash_attention_utils._is_packed_sequence); with more rows it runs
      plain causal attention and every example sees the ones before it in its row. Flattening the
      batch to one row gives it the cu_seqlens it needs, at no cost (varlen kernels do not pad).
    Anything else (a custom kernel without a mask function) cannot be shown to keep examples
    apart, so it is refused rather than trained on a silently wrong attention pattern.
    """
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
    from transformers.utils.generic import is_flash_attention_requested

    if implementation is None:  # transformers' default: sdpa or eager, both mask-building
        return False
    if is_flash_attention_requested(requested_attention_implementation=implementation):
        return True
    make_available(implementation)
    masks = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping  # what transformers itself consults
    if implementation in masks and masks[implementation] is not flash_attention_mask:
        return False
    raise ModelError(
        f"attention implementation {implementation!r}: sftlab cannot tell whether it keeps packed "
        "examples apart (it builds no attention mask and is not a flash-attention variant). Use "
        "model.attn_implementation=sdpa, eager or flash_attention_2."
    )


def use_attention(model, implementation: str) -> None:
    """Switch a loaded model's attention; transformers reads it at every forward, and masks
    follow, so switching between batches is safe (a compiled layer keeps one graph per choice)."""
    if model.config._attn_implementation != implementation:
        make_available(implementation)
        model.set_attn_implementation(implementation)


def compile_layers(model) -> int:
    """Compile each decoder layer in place ("regional" compilation). The layers share one graph,
    so compiling costs about one layer's worth (~35 s on 2 CPU cores for SmolLM2 the first time,
    ~13 s with torch's kernel cache warm, against ~7 min for the whole model) and parameter names
    stay unchanged for checkpoints. Measured +25% tokens/s after the first step on CPU; it pays
    off for runs longer than a few minutes. The first layer compiles twice: its input (the
    frozen embedding's output) does not require grad, the others' do."""
    from torch import nn

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    compiled = 0
    for module in base.get_decoder().children():
        if isinstance(module, nn.ModuleList):
            for layer in module:
                layer.compile(dynamic=True)
                compiled += 1
    return compiled
