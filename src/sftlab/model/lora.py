"""LoRA adapters with peft; full fine-tuning leaves the model as it is."""

from __future__ import annotations

from torch import nn


def add_lora(model: nn.Module, r: int, alpha: float, dropout: float, target_modules):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )
    # peft keeps the adapter weights in fp32 even when the base is bf16 (autocast_adapter_dtype):
    # the frozen base may be stored in bf16, the trained weights and optimizer state stay fp32.
    return get_peft_model(model, config)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
