"""Loss on supervised positions only, without materialising [tokens x vocab] logits.

The decoder runs on the whole batch; the output layer runs only where a target exists, in
chunks that are recomputed in the backward pass. Prompt and padding positions never reach the
vocabulary projection, which is most of the cost for a small model with a large vocabulary.

The module returns the *sum* of token losses: normalising by the supervised tokens of the whole
accumulation window across processes (invariant 7) is the loop's job, which knows that count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sftlab.core.types import IGNORE_INDEX


def _chunk_loss_sum(head: nn.Module, hidden, targets, softcap: float | None) -> torch.Tensor:
    # Call the head module itself (not its weight): a LoRA on the output layer must apply.
    logits = head(hidden).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, targets, reduction="sum")


class SupervisedLoss(nn.Module):
    """Wraps a causal LM (plain or peft) so that forward() returns the summed supervised loss.

    Being one module keeps DDP's gradient hooks on the path (accelerate wraps this, not the LM).
    """

    def __init__(self, model: nn.Module, chunk_tokens: int = 1024):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = base.get_decoder()
        self.head = base.get_output_embeddings()
        self.softcap = getattr(base.config, "final_logit_softcapping", None)

    def forward(self, input_ids, position_ids, targets) -> torch.Tensor:
        # use_cache=False matters: with a cache, transformers ignores the restarting position ids
        # and packed examples attend to each other.
        hidden = self.decoder(
            input_ids=input_ids, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        keep = targets != IGNORE_INDEX
        hidden, wanted = hidden[keep], targets[keep]
        total = hidden.new_zeros((), dtype=torch.float32)
        for h, t in zip(hidden.split(self.chunk_tokens), wanted.split(self.chunk_tokens), strict=True):
            if torch.is_grad_enabled():  # recompute the chunk's logits in backward, don't keep them
                part = checkpoint(_chunk_loss_sum, self.head, h, t, self.softcap, use_reentrant=False)
            else:
                part = _chunk_loss_sum(self.head, h, t, self.softcap)
            total = total + part
        return total
