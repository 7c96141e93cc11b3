"""A leaner eager attention for short rows on CPU.

Transformers' eager attention computes the softmax in fp32 and then casts it to bf16, so the
backward pass keeps both: 6 bytes per (head, query, key) entry and layer. This one lets the
softmax read and write the scores' dtype (torch reduces in fp32 inside the kernel anyway) and
keeps one 2-byte tensor, used by both the softmax and the value product in backward. Same
arithmetic otherwise; a test checks it against the plain model on packed and padded batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LEAN_EAGER = "sftlab_eager"


def lean_eager_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs
):
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def register_lean_eager() -> None:
    """Make LEAN_EAGER a name `set_attn_implementation` accepts, with eager's additive masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(LEAN_EAGER, lean_eager_attention)
    AttentionMaskInterface.register(LEAN_EAGER, eager_mask)
