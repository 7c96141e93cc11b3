"""LoRA adapters with peft; full fine-tuning leaves the model as it is."""

from __future__ import annotations

import types
from collections.abc import Sequence

import torch
from torch import nn

from sftlab.model.device import compute_dtype
from sftlab.model.token_rows import token_rows_target, use_fast_token_rows


def add_lora(
    model: nn.Module,
    r: int,
    alpha: float,
    dropout: float,
    target_modules,
    autocast: bool = False,
    token_rows: Sequence[int] = (),
):
    """LoRA on `target_modules`, plus the embedding rows of `token_rows` trained in full (input
    embedding and output layer, tied or not; model/token_rows.py)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
        trainable_token_indices=token_rows_target(model, token_rows) if token_rows else None,
    )
    # peft keeps the adapter weights in fp32 even when the base is bf16 (autocast_adapter_dtype):
    # the frozen base may be stored in bf16, the trained weights and optimizer state stay fp32.
    model = get_peft_model(model, config)
    if autocast:
        # Under autocast the adapter matmuls run in bf16 anyway. peft would first cast each
        # layer's input to fp32 (the adapter's dtype): a copy per adapted layer, kept for the
        # backward pass. Measured on SmolLM2: -20% peak memory, -14% step time without it.
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    use_fused_lora_layers(model)
    use_fast_token_rows(model)
    return model


def _lora_forward(self, x, *args, **kwargs):
    """peft's result + B(A(x)) * scaling as one autograd function (`_LoraLinear`). Anything
    but the plain single-adapter case on a frozen nn.Linear (dropout, DoRA, a bias on B, merged
    or disabled adapters, several adapters) goes to peft's own forward."""
    name = self.active_adapters[0] if len(self.active_adapters) == 1 else None
    if (
        args or kwargs or name is None or self.disable_adapters or self.merged
        or name not in self.lora_A or name in self.lora_variant
        or not isinstance(self.lora_dropout[name], nn.Identity)
        or self.lora_B[name].bias is not None or type(self.base_layer) is not nn.Linear
        or any(p.requires_grad for p in self.base_layer.parameters())
    ):  # fmt: skip
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer
    return _LoraLinear.apply(
        x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
        self.scaling[name],
    )  # fmt: skip


class _LoraLinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T with the adapter's sum done inside the matrix products.

    Written by hand because autograd on the plain expression allocates and adds a [tokens x out]
    tensor in the forward pass and a [tokens x in] one in the backward pass for every adapted
    layer; here the adapter's product accumulates into the base layer's output (and the input
    gradient) with addmm_, and s scales B's [out x r] weight, not the product. Every product
    runs in the autocast dtype when autocast is on, as F.linear would; the adapter gradients
    come back in the adapter weights' own dtype (fp32 master weights).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):
        dtype = compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            w, a_w = weight.to(dtype), lora_a.to(dtype)
            b_w = (lora_b * scaling).to(dtype)
            a = x2 @ a_w.t()
            y = x2 @ w.t() if bias is None else torch.addmm(bias.to(dtype), x2, w.t())
            y.addmm_(a, b_w.t())
        ctx.save_for_backward(x2, a, w, a_w, b_w)
        ctx.scaling, ctx.x_shape = scaling, x.shape
        ctx.dtypes = (x.dtype, lora_a.dtype, lora_b.dtype)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, a, w, a_w, b_w = ctx.saved_tensors
        x_dtype, a_dtype, b_dtype = ctx.dtypes
        g = grad.reshape(-1, grad.shape[-1]).to(w.dtype)
        grad_x = grad_a = grad_b = None
        g_a = g @ b_w  # the gradient at A's output, [tokens x r]
        if ctx.needs_input_grad[0]:
            grad_x = (g @ w).addmm_(g_a, a_w).view(ctx.x_shape).to(x_dtype)
        if ctx.needs_input_grad[3]:
            grad_a = (g_a.t() @ x2).to(a_dtype)
        if ctx.needs_input_grad[4]:
            grad_b = (g.t() @ a).mul_(ctx.scaling).to(b_dtype)
        return grad_x, None, None, grad_a, grad_b, None


def use_fused_lora_layers(model: nn.Module) -> int:
    """Route every peft LoRA Linear through `_lora_forward`; returns how many."""
    from peft.tuners.lora import Linear

    layers = [m for m in model.modules() if type(m) is Linear and not m.fan_in_fan_out]
    for layer in layers:
        layer.forward = types.MethodType(_lora_forward, layer)
    return len(layers)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
