"""Loss on supervised positions only, without materialising [tokens x vocab] logits.

The decoder runs on the whole batch; the output layer runs only where a target exists, a chunk
of rows at a time. For a plain linear head (the usual case) a fused linear + cross-entropy
computes each chunk's gradient during the forward pass, so the backward pass is a multiply and
no chunk's logits outlive the chunk: written by hand because torch has no CPU fused kernel and
Liger/CCE are CUDA-only. Any other head (a LoRA on lm_head, logit soft-capping) takes the
generic path: the head module itself on checkpointed chunks.

Calling the decoder and head directly skips whatever the architecture's forward does to the
logits, so each architecture's head transform (a scale, a soft cap) is reproduced from an
allow-list, and an architecture not on it gets its loss from the model's own forward. Packed
rows carry no attention mask; under flash attention they go in as one flattened row, the only
layout in which transformers keeps packed examples apart there (device.packs_into_one_row).

The module returns the *sum* of token losses: normalising by the supervised tokens of the whole
accumulation window across processes (invariant 7) is the loop's job, which knows that count.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sftlab.core.types import IGNORE_INDEX
from sftlab.model.device import (
    BY_LENGTH,
    attention_for,
    compute_dtype,
    packs_into_one_row,
    use_attention,
)
from sftlab.model.token_rows import head_rows


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T, target_i), gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(
        ctx, hidden, weight, targets, chunk: int, compute_dtype: torch.dtype,
        row_ids=None, row_values=None,
    ):  # fmt: skip
        """row_ids/row_values: trained token rows (model/token_rows.py) that replace those rows
        of a frozen `weight`; only their [k x hidden] gradient is computed."""
        w = weight.to(compute_dtype)
        if row_values is not None:
            v = row_values.to(compute_dtype)
            v_minus_w = v - w[row_ids]  # what replacing the rows adds to g @ w
            grad_rows = torch.zeros_like(v)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = None  # [vocab x hidden] in the compute dtype, accumulated in place
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].to(compute_dtype)
            t = targets[start : start + chunk]
            rows = torch.arange(len(t), device=t.device)
            logits = h @ w.T
            if row_values is not None:
                logits[:, row_ids] = h @ v.T
            # log_softmax reduces each row in fp32 internally and writes the compute dtype: one
            # pass over the logits, against five for logsumexp + subtract + exp in fp32 (measured
            # 35% less time for this layer in bf16). Under bf16 the logits are already rounded to
            # bf16, so the bf16 log-probabilities add no error of a larger order.
            logp = torch.log_softmax(logits, dim=-1)
            del logits
            total -= logp[rows, t].float().sum()
            # d(sum CE)/d logits = softmax - one_hot(target), built in place in the same buffer.
            g = logp.exp_()
            g[rows, t] -= 1.0
            grad_h = g @ w
            if row_values is not None:
                g_rows = g[:, row_ids]
                grad_h.addmm_(g_rows, v_minus_w)
                grad_rows.addmm_(g_rows.T, h)
            grad_hidden[start : start + chunk] = grad_h.to(hidden.dtype)
            if weight.requires_grad:  # full fine-tuning (or a trained head)
                if grad_weight is None:
                    grad_weight = g.T @ h
                else:
                    grad_weight.addmm_(g.T, h)
        ctx.weight_dtype = weight.dtype
        ctx.rows_dtype = None if row_values is None else row_values.dtype
        ctx.save_for_backward(
            grad_hidden, grad_weight, grad_rows if row_values is not None else None
        )
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight, grad_rows = ctx.saved_tensors
        grad_w = grad_v = None
        if grad_weight is not None:
            # Scale in the compute dtype, then one cast to the weight's dtype: fresh [vocab x
            # hidden] fp32 buffers at every step cost more than the GEMM that fills them.
            grad_w = grad_weight.mul_(grad_total.to(grad_weight.dtype)).to(ctx.weight_dtype)
        if grad_rows is not None:
            grad_v = (grad_rows * grad_total.to(grad_rows.dtype)).to(ctx.rows_dtype)
        grad_h = grad_hidden * grad_total.to(grad_hidden.dtype)
        return grad_h, grad_w, None, None, None, None, grad_v


# Architectures whose own forward computes exactly logits = softcap(scale * lm_head(decoder(x))),
# with the scale and cap named by the set. An allow-list rather than a numeric comparison at setup:
# a check on one small batch can pass by chance (a soft cap of 30 is close to the identity on small
# logits, a checkpoint's scale of 1.0 hides the code path), costs a full forward at every start,
# and says nothing about what the forward does. Each entry is tested against the model's own
# forward (tests/test_architectures.py); any other class, remote code and subclasses included,
# gets its loss from the model's own forward (with a note), never a silently different loss.
_PLAIN_HEADS = frozenset(
    f"{name}ForCausalLM"
    for name in ("Llama", "Mistral", "Qwen2", "Qwen3", "Gemma", "Phi3", "SmolLM3", "Olmo2")
)
_SOFTCAPPED_HEADS = frozenset({"Gemma2ForCausalLM", "Gemma3ForCausalLM"})  # final_logit_softcapping
_DIVIDED_BY_LOGITS_SCALING = frozenset({"GraniteForCausalLM"})  # logits / config.logits_scaling
_TIMES_LOGIT_SCALE = frozenset({"CohereForCausalLM", "Cohere2ForCausalLM"})  # logits * logit_scale


@dataclass(frozen=True)
class HeadTransform:
    """What an architecture's forward does to the output layer's result: softcap(scale * z)."""

    scale: float = 1.0
    softcap: float | None = None


def head_transform(base: nn.Module) -> HeadTransform | None:
    """The head transform of `base`'s own forward, or None where sftlab does not know it."""
    cls = type(base)
    if not cls.__module__.startswith("transformers.models."):
        return None  # remote code or a subclass: its forward may do anything
    name, config = cls.__name__, base.config
    if name in _PLAIN_HEADS:
        return HeadTransform()
    if name in _SOFTCAPPED_HEADS:
        return HeadTransform(softcap=getattr(config, "final_logit_softcapping", None) or None)
    if name in _DIVIDED_BY_LOGITS_SCALING:
        return HeadTransform(scale=1.0 / float(config.logits_scaling))
    if name in _TIMES_LOGIT_SCALE:
        return HeadTransform(scale=float(base.logit_scale))
    return None


_noted_fallbacks: set[str] = set()


def _note_fallback(name: str) -> None:
    if name not in _noted_fallbacks:
        _noted_fallbacks.add(name)
        print(
            f"note: sftlab's fused loss does not know how {name} turns decoder states into "
            "logits; the loss is computed from the model's own forward instead (same result, "
            "more memory: logits at every supervised position).",
            file=sys.stderr,
        )


def _chunk_loss_sum(
    head: nn.Module, hidden, targets, transform: HeadTransform, reduction: str = "sum"
) -> torch.Tensor:
    logits = head(hidden).float()
    if transform.scale != 1.0:
        logits = logits * transform.scale
    if transform.softcap:
        logits = transform.softcap * torch.tanh(logits / transform.softcap)
    return F.cross_entropy(logits, targets, reduction=reduction)


class SupervisedLoss(nn.Module):
    """Wraps a causal LM (plain or peft) so that forward() returns the summed supervised loss.

    Being one module keeps DDP's gradient hooks on the path (accelerate wraps this, not the LM).
    """

    def __init__(self, model: nn.Module, chunk_tokens: int = 256, attention: str | None = None):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.attention = attention or base.config._attn_implementation
        if self.attention != BY_LENGTH:
            packs_into_one_row(self.attention)  # refuse an unusable implementation at setup
        self.decoder = base.get_decoder()
        self.head = base.get_output_embeddings()
        # A head whose token rows are trained (model/token_rows.py) stays fused: its plain layer
        # and the rows go to the fused function, which computes only the rows' gradient. A tuple,
        # not attributes: a Parameter or Module attribute would register under a second name
        # (checkpoints name each trained tensor once, by its first name).
        self._head_rows = head_rows(self.head)
        self.transform = head_transform(base)
        if self.transform is None:
            _note_fallback(type(base).__name__)
        self._logits_to_keep = "logits_to_keep" in inspect.signature(base.forward).parameters
        # type() is exact on purpose: a LoRA-wrapped head subclasses nothing of nn.Linear's.
        self.fused = (
            type(self._head_rows[0]) is nn.Linear
            and self._head_rows[0].bias is None
            and self.transform is not None
            and not self.transform.softcap
        )

    def _for_attention(self, input_ids, position_ids, targets):
        """Select the batch's attention implementation; flatten the rows into one where that
        implementation keeps packed examples apart only in a one-row batch (flash attention:
        see device.packs_into_one_row). Row-major flattening keeps the supervised positions in
        the same order, so nothing downstream changes."""
        implementation = attention_for(self.attention, input_ids.shape[1])
        use_attention(self.decoder, implementation)
        if input_ids.shape[0] > 1 and packs_into_one_row(implementation):
            return input_ids.reshape(1, -1), position_ids.reshape(1, -1), targets.reshape(1, -1)
        return input_ids, position_ids, targets

    def supervised_hidden(self, input_ids, position_ids, targets):
        """Decoder states at supervised positions [n x hidden] and their targets [n], row-major."""
        input_ids, position_ids, targets = self._for_attention(input_ids, position_ids, targets)
        # use_cache=False matters: with a cache, transformers ignores the restarting position ids
        # and packed examples attend to each other.
        hidden = self.decoder(
            input_ids=input_ids, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        keep = targets != IGNORE_INDEX
        return hidden[keep], targets[keep]

    def model_logits(self, input_ids, position_ids, targets):
        """The model's own forward's logits at supervised positions [n x vocab] and their
        targets [n], row-major: the path for an architecture whose head transform sftlab does
        not know. Logits are computed only at positions where some row has a target."""
        input_ids, position_ids, targets = self._for_attention(input_ids, position_ids, targets)
        keep = targets != IGNORE_INDEX
        columns = keep.any(dim=0).nonzero().squeeze(1)
        extra = {"logits_to_keep": columns} if self._logits_to_keep else {}
        logits = self.model(
            input_ids=input_ids, position_ids=position_ids, use_cache=False, **extra
        ).logits
        if not self._logits_to_keep:
            logits = logits[:, columns]
        chosen = keep[:, columns]
        return logits[chosen], targets[:, columns][chosen]

    @torch.no_grad()
    def token_losses(self, input_ids, position_ids, targets) -> torch.Tensor:
        """Loss of each supervised token [n] (fp32, row-major order), for scoring data rather
        than training: the same decoder, head and soft-capping as forward(), unreduced."""
        if self.transform is None:
            logits, wanted = self.model_logits(input_ids, position_ids, targets)
            return F.cross_entropy(logits.float(), wanted, reduction="none")
        hidden, wanted = self.supervised_hidden(input_ids, position_ids, targets)
        parts = [
            _chunk_loss_sum(self.head, h, t, self.transform, reduction="none")
            for h, t in zip(
                hidden.split(self.chunk_tokens), wanted.split(self.chunk_tokens), strict=True
            )
        ]
        return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)

    def forward(self, input_ids, position_ids, targets) -> torch.Tensor:
        if self.transform is None:
            logits, wanted = self.model_logits(input_ids, position_ids, targets)
            return F.cross_entropy(logits.float(), wanted, reduction="sum")
        hidden, wanted = self.supervised_hidden(input_ids, position_ids, targets)
        if self.fused and torch.is_grad_enabled():
            if self.transform.scale != 1.0:  # s * (h @ W.T) == (s * h) @ W.T: stays fused
                hidden = hidden * self.transform.scale
            return _FusedLinearCrossEntropy.apply(
                hidden, self._head_rows[0].weight, wanted, self.chunk_tokens, compute_dtype(hidden),
                *self._head_rows[1:],
            )  # fmt: skip
        total = hidden.new_zeros((), dtype=torch.float32)
        for h, t in zip(
            hidden.split(self.chunk_tokens), wanted.split(self.chunk_tokens), strict=True
        ):
            if torch.is_grad_enabled():  # recompute the chunk's logits in backward, don't keep them
                part = checkpoint(
                    _chunk_loss_sum, self.head, h, t, self.transform, use_reentrant=False
                )
            else:
                part = _chunk_loss_sum(self.head, h, t, self.transform)
            total = total + part
        return total
