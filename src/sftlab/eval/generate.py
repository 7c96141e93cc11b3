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


# generation_config keys that leave greedy decoding unchanged; any other key set by the model
# (repetition_penalty, no_repeat_ngram_size, suppress_tokens, ...) sends generation through
# transformers' generate(), which applies it
_GREEDY_NEUTRAL = {"transformers_version", "_from_model_config", "bos_token_id", "eos_token_id",
                   "pad_token_id", "decoder_start_token_id", "use_cache", "output_attentions",
                   "output_hidden_states", "do_sample", "temperature", "top_k", "top_p",
                   "max_length", "max_new_tokens", "cache_implementation"}  # fmt: skip


@torch.no_grad()
def generate(
    model,
    renderer: Renderer,
    conversations: Sequence[Conversation],
    stop_ids: Sequence[int],
    max_new_tokens: int | Sequence[int] = 128,
    batch_size: int = 16,
    temperature: float = 0.0,
) -> list[Generation]:
    """Batched generation with a KV cache, left-padded; greedy unless temperature > 0.

    `max_new_tokens` is one limit or one per conversation. Prompts are batched in order of
    length, so a batch pads little, and a greedy row leaves its batch as soon as it emits a stop
    token or reaches its limit: transformers' generate() would go on computing it until the
    batch's last row ends. The answers come back in the order of `conversations`.
    """
    limits = _limits(max_new_tokens, len(conversations))
    prompts = [renderer.encode_prompt(c) for c in conversations]
    step = _greedy_batch if temperature <= 0 and _plain_greedy(model) else _hf_batch
    out: list[Generation | None] = [None] * len(prompts)
    for chunk in length_batches([len(p) for p in prompts], batch_size):
        rows = step(model, [prompts[i] for i in chunk], [limits[i] for i in chunk], stop_ids,
                    _pad_id(renderer.tokenizer, stop_ids), temperature)  # fmt: skip
        for i, row in zip(chunk, rows, strict=True):
            out[i] = _finish(row, renderer.tokenizer, stop_ids)
    return out


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in order of length, cut into batches of at most `batch_size` whose longest prompt
    is at most twice its shortest: left-padding then at most doubles a batch's prompt tokens
    (a few-shot prompt of 150 tokens does not pad thirty prompts of 30 to its length)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and len(batches[-1]) < batch_size and lengths[i] <= 2 * lengths[batches[-1][0]]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _limits(max_new_tokens: int | Sequence[int], n: int) -> list[int]:
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * n
    limits = list(max_new_tokens)
    if len(limits) != n:
        raise ValueError(f"{len(limits)} max_new_tokens limits for {n} conversations")
    return limits


def _pad_id(tokenizer, stop_ids: Sequence[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]


def _plain_greedy(model) -> bool:
    config = getattr(model, "generation_config", None)
    return config is None or set(config.to_diff_dict()) <= _GREEDY_NEUTRAL


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


def _greedy_batch(model, prompts, limits, stop_ids, pad, _temperature) -> list[list[int]]:
    """Greedy decoding of one batch, as transformers' generate() does it (same positions, same
    argmax over fp32 logits), but a row that is done is dropped from the batch and its cache."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in _left_pad(prompts, pad))
    # generate()'s positions: counted over the real tokens, pads at 1 (masked out anyway)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   past_key_values=cache, use_cache=True, logits_to_keep=1).logits  # fmt: skip
    stops = torch.tensor(list(stop_ids), device=device)
    live = torch.arange(len(prompts), device=device)  # the original row of each batch row
    position = positions[:, -1:]
    out: list[list[int]] = [[] for _ in prompts]
    while len(live):
        token = logits[:, -1, :].float().argmax(-1)
        for row, t in zip(live.tolist(), token.tolist(), strict=True):
            out[row].append(t)
        done = torch.isin(token, stops) | torch.tensor(
            [len(out[r]) >= limits[r] for r in live.tolist()], device=device
        )
        if done.any():
            keep = (~done).nonzero().squeeze(-1)
            live, token, mask, position = live[keep], token[keep], mask[keep], position[keep]
            if not len(live):
                break
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=-1)
        position = position + 1
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                       past_key_values=cache, use_cache=True).logits  # fmt: skip
    return out


def _hf_batch(model, prompts, limits, stop_ids, pad, temperature) -> list[list[int]]:
    """Sampling, or a model whose generation_config changes greedy decoding: transformers'
    generate() to the batch's longest limit, each row cut at its own."""
    ids, mask = _left_pad(prompts, pad)
    device = next(model.parameters()).device
    sampled = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max(limits),
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=None,
        top_k=None,
        eos_token_id=list(stop_ids),
        pad_token_id=pad,
    )
    return [
        row[:limit] for row, limit in zip(sampled[:, ids.shape[1] :].tolist(), limits, strict=True)
    ]


def _finish(row: list[int], tokenizer, stop_ids: Sequence[int]) -> Generation:
    cut = next((i for i, t in enumerate(row) if t in stop_ids), None)
    kept = row if cut is None else row[:cut]
    return Generation(tokenizer.decode(kept, skip_special_tokens=False), kept, cut is not None)


def stop_rate(generations: Sequence[Generation]) -> float:
    return sum(g.stopped for g in generations) / len(generations) if generations else 0.0
