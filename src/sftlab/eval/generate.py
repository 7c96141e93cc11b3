"""Generate with the run's own renderer: the prompt tokens are exactly those of training.

A generation *stopped* when it ended on a stop token (the end-of-turn token, or EOS) before the
token limit: its finish_reason is "stop", else "length" (as OpenAI-style servers report it); the
share of stopped generations is the stop rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

from sftlab.core.types import Conversation, Message
from sftlab.template.render import Renderer

FINISH_REASONS = ("stop", "length")
# a batch's common prompt prefix this long or longer is computed once for all its rows (one
# extra forward call: worth it for the chat template's system prompt, ~30 tokens on SmolLM2)
MIN_SHARED = 16


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


# generation_config keys that leave sftlab's decoding unchanged (greedy, or sampling at the
# caller's temperature: the model's own top_k/top_p are not applied on either path); any other
# key set by the model (repetition_penalty, no_repeat_ngram_size, suppress_tokens, ...) sends
# generation through transformers' generate(), which applies it
_DECODING_NEUTRAL = {"transformers_version", "_from_model_config", "bos_token_id", "eos_token_id",
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

    `max_new_tokens` is one limit or one per conversation. Prompts are prefilled in batches of
    similar length, so a batch pads little, and a batch's common prefix (system prompt, few-shot
    examples) is computed once; up to `batch_size` prompts then decode together; and a row leaves
    its batch as soon as it emits a stop token or reaches its limit: transformers' generate()
    would go on computing it until the batch's last row ends. Sampling draws from torch's global
    RNG (seed it with torch.manual_seed). The answers come back in the order of `conversations`.
    """
    limits = _limits(max_new_tokens, len(conversations))
    prompts = [renderer.encode_prompt(c) for c in conversations]
    pad, tokenizer = _pad_id(renderer.tokenizer, stop_ids), renderer.tokenizer
    chunks = length_batches([len(p) for p in prompts], batch_size)
    out: list[Generation | None] = [None] * len(prompts)
    if not _plain_decoding(model):
        for chunk in chunks:
            rows = _hf_batch(model, [prompts[i] for i in chunk], [limits[i] for i in chunk],
                             stop_ids, pad, temperature)  # fmt: skip
            _collect(out, chunk, rows, tokenizer, stop_ids)
        return out
    mergeable = _full_attention(DynamicCache(config=model.config))
    groups = decode_groups(chunks, batch_size) if mergeable else [[c] for c in chunks]
    for group in groups:
        order = [i for chunk in group for i in chunk]
        rows = _decode(model, [[prompts[i] for i in chunk] for chunk in group],
                       [limits[i] for i in order], stop_ids, pad, temperature)  # fmt: skip
        _collect(out, order, rows, tokenizer, stop_ids)
    return out


def _collect(out, order, rows, tokenizer, stop_ids) -> None:
    for i, row in zip(order, rows, strict=True):
        out[i] = _finish(row, tokenizer, stop_ids)


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


def decode_groups(chunks: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    """Consecutive prefill batches joined into decode batches of at most `batch_size` rows.

    A decoding step reads every weight of the model whatever the batch, so a small batch costs
    nearly what a full one does (SmolLM2-135M on 2 CPU cores: 76 ms a step for 1 row, 145 ms for
    16). Prompts are prefilled in batches of similar length (little padding), then decoded
    together: the steps that run while a batch's last long answers finish are shared."""
    groups: list[list[list[int]]] = []
    for chunk in chunks:
        if groups and sum(len(c) for c in groups[-1]) + len(chunk) <= batch_size:
            groups[-1].append(chunk)
        else:
            groups.append([chunk])
    return groups


def _limits(max_new_tokens: int | Sequence[int], n: int) -> list[int]:
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * n
    limits = list(max_new_tokens)
    if len(limits) != n:
        raise ValueError(f"{len(limits)} max_new_tokens limits for {n} conversations")
    return limits


def _pad_id(tokenizer, stop_ids: Sequence[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]


def _plain_decoding(model) -> bool:
    config = getattr(model, "generation_config", None)
    return config is None or set(config.to_diff_dict()) <= _DECODING_NEUTRAL


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


def _decode(model, batches, limits, stop_ids, pad, temperature) -> list[list[int]]:
    """Decoding of prefill batches as one batch, as transformers' generate() does it (same
    positions; argmax over fp32 logits, or sampling from softmax(logits / temperature)), with
    savings: each prefill batch's common prefix is computed once, the batches decode together,
    and a row that is done leaves the batch and its cache. Rows come back in batch order."""
    device = next(model.parameters()).device
    cache, logits, mask, position = _merge([_prefill(model, b, pad, device) for b in batches])
    for layer in cache.layers:
        if isinstance(layer, ReservedLayer):
            layer.reserve(max(limits))
    stops = torch.tensor(list(stop_ids), device=device)
    live = torch.arange(len(limits), device=device)  # the original row of each batch row
    out: list[list[int]] = [[] for _ in limits]
    while len(live):
        token = _next_tokens(logits[:, -1, :], temperature)
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


def _next_tokens(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        return logits.float().argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1).squeeze(-1)  # torch's global RNG: torch.manual_seed


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with (the system prompt, a few-shot prompt's examples), short
    of each prompt's last token, whose logits start the answer."""
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def _prefill(model, prompts, pad, device):
    """The prompts through the model: (cache, last logits, attention mask, last positions).

    A common prefix of MIN_SHARED tokens or more is run once and its cache copied to every row;
    the rest of each prompt follows it, left-padded. The pads then sit between the prefix and
    the rest: masked out, and the positions count real tokens only, as generate()'s do."""
    cache = DynamicCache(config=model.config)
    if _full_attention(cache):
        cache.layers = [ReservedLayer() for _ in cache.layers]
    shared = shared_prefix(prompts) if len(prompts) > 1 else 0
    shared = shared if shared >= MIN_SHARED else 0
    if shared:
        prefix = torch.tensor([prompts[0][:shared]], device=device)
        model(input_ids=prefix, position_ids=torch.arange(shared, device=device)[None],
              past_key_values=cache, use_cache=True, logits_to_keep=1)  # fmt: skip
        cache.batch_repeat_interleave(len(prompts))
    ids, rest_mask = (t.to(device) for t in _left_pad([p[shared:] for p in prompts], pad))
    # generate()'s positions: counted over the real tokens, pads at 1 (masked out anyway)
    positions = (shared + rest_mask.cumsum(-1) - 1).masked_fill(rest_mask == 0, 1)
    mask = torch.cat([rest_mask.new_ones((len(prompts), shared)), rest_mask], dim=-1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   past_key_values=cache, use_cache=True, logits_to_keep=1).logits  # fmt: skip
    return cache, logits, mask, positions[:, -1:]


def _full_attention(cache: DynamicCache) -> bool:
    """Whether a fresh cache holds plain full-attention layers only, which can be joined by
    left-padding and given reserved room (a sliding-window layer, as in Gemma 3, keeps its own
    count of what it has seen)."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _merge(states):
    """Prefilled batches (cache, last logits, mask, positions) -> one, each left-padded to the
    longest: its cache with zero keys and values where its mask is 0."""
    if len(states) == 1:
        return states[0]
    width = max(mask.shape[1] for _, _, mask, _ in states)
    cache = states[0][0]
    for i, layer in enumerate(cache.layers):
        for part in ("keys", "values"):
            padded = [F.pad(getattr(c.layers[i], part), (0, 0, width - m.shape[1], 0))
                      for c, _, m, _ in states]  # fmt: skip
            setattr(layer, part, torch.cat(padded))
    mask = torch.cat([F.pad(m, (width - m.shape[1], 0)) for _, _, m, _ in states])
    logits = torch.cat([lg for _, lg, _, _ in states])
    return cache, logits, mask, torch.cat([p for _, _, _, p in states])


class ReservedLayer(DynamicLayer):
    """A full-attention cache layer that, once `reserve`d, writes new keys and values into room
    set aside for them. transformers' DynamicLayer concatenates the whole cache with each new
    token: at 64 rows of ~250 tokens that copy was 44% of a decoding step on 2 CPU cores."""

    room: tuple[torch.Tensor, torch.Tensor] | None = None

    def reserve(self, extra: int) -> None:
        n = self.keys.shape[-2]
        self.room = tuple(F.pad(t, (0, 0, 0, extra)) for t in (self.keys, self.values))
        self._view(n)

    def _view(self, n: int) -> None:
        self.keys, self.values = (t[..., :n, :] for t in self.room)

    def update(self, key_states, value_states, *args, **kwargs):
        if self.room is None or self.keys.shape[-2] + key_states.shape[-2] > self.room[0].shape[-2]:
            self.room = None  # out of room (or never reserved): concatenate
            return super().update(key_states, value_states, *args, **kwargs)
        n, m = self.keys.shape[-2], key_states.shape[-2]
        self.room[0][..., n : n + m, :] = key_states
        self.room[1][..., n : n + m, :] = value_states
        self._view(n + m)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.room is None:
            return super().batch_select_indices(indices)
        n = self.keys.shape[-2]
        self.room = (self.room[0][indices], self.room[1][indices])
        self._view(n)


def _hf_batch(model, prompts, limits, stop_ids, pad, temperature) -> list[list[int]]:
    """A model whose generation_config changes decoding (a repetition penalty, ...): transformers'
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
