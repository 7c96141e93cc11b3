"""A leaner eager attention for short rows on CPU.

Transformers' eager attention computes the softmax in fp32 and then casts it to bf16, so the
backward pass keeps both: 6 bytes per (head, query, key) entry and layer. This one lets the
softmax read and write the scores' dtype (torch reduces in fp32 inside the kernel anyway) and
keeps one 2-byte tensor, used by both the softmax and the value product in backward. Same
arithmetic otherwise; a test checks it against the plain model on packed and padded batches.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

LEAN_EAGER = "sftlab_eager"


def lean_eager_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs
):
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    if scaling is None:
        scaling = dim**-0.5
    # Grouped-query attention without repeating keys and values: query heads h of one group
    # share key/value head h // groups, so the group's queries stack into one [groups x length]
    # block per key/value head (one copy of the queries instead of copies of keys and values,
    # and no reduction over the copies in backward). The scale goes on the [length x dim]
    # queries, not the [length x length] scores.
    q = (query * scaling).reshape(batch, kv_heads, -1, dim)
    scores = torch.matmul(q, key.transpose(2, 3)).view(batch, kv_heads, -1, length, key.shape[2])
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, None, :, : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1)
    probs = F.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs.view(batch, kv_heads, -1, key.shape[2]), value)
    out = out.view(batch, heads, length, dim).transpose(1, 2).contiguous()
    return out, probs.view(batch, heads, length, -1)


def make_available(implementation: str) -> None:
    """Register LEAN_EAGER with transformers before a model is loaded or switched to it."""
    if implementation == LEAN_EAGER:
        _register_lean_eager()


@lru_cache(maxsize=1)
def _register_lean_eager() -> None:
    """Make LEAN_EAGER a name `set_attn_implementation` accepts, with eager's additive masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(LEAN_EAGER, lean_eager_attention)
    AttentionMaskInterface.register(LEAN_EAGER, eager_mask)
