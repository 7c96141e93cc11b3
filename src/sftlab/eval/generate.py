"""Generate with the run's own renderer: the prompt tokens are exactly those of training.

A generation *stopped* when it ended on a stop token (the end-of-turn token, or EOS) before the
token limit: its finish_reason is "stop", else "length" (as OpenAI-style servers report it); the
share of stopped generations is the stop rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sftlab.core.types import Conversation, Message
from sftlab.template.render import Renderer

FINISH_REASONS = ("stop", "length")


@dataclass
class Generation:
    """One answer: its text and ids without the stop token that ended it (if one did)."""

    text: str
    token_ids: list[int]
    stopped: bool
    finish_reason: str = ""  # "stop" | "length"; derived from `stopped` when not given

    def __post_init__(self) -> None:
        derived = "stop" if self.stopped else "length"
        if not self.finish_reason:
            self.finish_reason = derived
        elif self.finish_reason != derived:
            raise ValueError(
                f"finish_reason {self.finish_reason!r} contradicts stopped={self.stopped} "
                f"(expected one of {FINISH_REASONS}: {derived!r})"
            )

    @property
    def tokens(self) -> int:
        """Generated tokens in the answer (the stop token that ended it is not counted)."""
        return len(self.token_ids)


def user_turn(prompt: str) -> Conversation:
    return Conversation((Message("user", prompt),))


@torch.no_grad()
def generate(
    model,
    renderer: Renderer,
    conversations: Sequence[Conversation],
    stop_ids: Sequence[int],
    max_new_tokens: int = 128,
    batch_size: int = 16,
    temperature: float = 0.0,
) -> list[Generation]:
    """Batched generation, left-padded; greedy unless temperature > 0."""
    tokenizer = renderer.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    device = next(model.parameters()).device
    out: list[Generation] = []
    for start in range(0, len(conversations), batch_size):
        prompts = [renderer.encode_prompt(c) for c in conversations[start : start + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        sampled = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=None,
            top_k=None,
            eos_token_id=list(stop_ids),
            pad_token_id=pad,
        )
        for row in sampled[:, width:].tolist():
            out.append(_finish(row, tokenizer, stop_ids))
    return out


def _finish(row: list[int], tokenizer, stop_ids: Sequence[int]) -> Generation:
    cut = next((i for i, t in enumerate(row) if t in stop_ids), None)
    kept = row if cut is None else row[:cut]
    return Generation(tokenizer.decode(kept, skip_special_tokens=False), kept, cut is not None)


def stop_rate(generations: Sequence[Generation]) -> float:
    return sum(g.stopped for g in generations) / len(generations) if generations else 0.0
