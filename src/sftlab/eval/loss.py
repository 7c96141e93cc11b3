"""Mean supervised-token loss of a model on conversations, through the training path itself
(same renderer, same rows, same loss), so eval numbers and training numbers mean the same."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sftlab.core.types import Conversation
from sftlab.model.loss import SupervisedLoss
from sftlab.pack.collate import collate, group_by_budget
from sftlab.pack.packing import single_rows
from sftlab.template.render import Renderer


@torch.no_grad()
def conversation_loss(
    model, renderer: Renderer, conversations: Sequence[Conversation], batch_tokens: int = 4096
) -> float:
    rows = single_rows([renderer.encode(c) for c in conversations])
    scorer = SupervisedLoss(model).eval()
    device = next(model.parameters()).device
    pad = renderer.tokenizer.pad_token_id or 0
    total, count = 0.0, 0
    for group in group_by_budget([len(r) for r in rows], batch_tokens, np.random.default_rng(0)):
        batch = collate([rows[i] for i in group], pad).to(device)
        total += float(scorer(batch.input_ids, batch.position_ids, batch.targets))
        count += batch.n_supervised
    return total / max(count, 1)
