"""sftlab's batched generation gives the answers of one-prompt-at-a-time greedy decoding.

generate() sorts prompts by length, batches them left-padded with a KV cache and drops a row
from its batch once it stops or reaches its own limit. None of that may change an answer: the
expected ids come from transformers' `model.generate` on each prompt alone (no padding, no
batch), not from sftlab's loop.
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model, make_tiny_tokenizer
from sftlab.core.types import Conversation, Message
from sftlab.eval.fewshot import few_shot_conversation
from sftlab.eval.generate import (
    decode_groups,
    generate,
    length_batches,
    shared_prefix,
    user_turn,
)

# different lengths (unsorted), one with earlier turns; some answers end on <|im_end|> early,
# some run to their limit, so rows leave the batch at different steps
PROMPTS = [
    user_turn("Write a long story about a lighthouse keeper and his cat."),
    user_turn("Capital of France? One word."),
    Conversation(
        (
            Message("user", "Name a colour."),
            Message("assistant", "Blue."),
            Message("user", "Name a fruit. One word only."),
        )
    ),  # fmt: skip
    user_turn("Hi"),
    user_turn("List three prime numbers, separated by commas, and nothing else."),
]
# two few-shot prompts: a batch of their own (length), whose long common prefix (system prompt
# and the examples' turns) is computed once and its cache copied to both rows
SHOTS = [user_turn("Say hello in French."), user_turn("Say thanks in German.")]
SHOT_ANSWERS = ["Bonjour.", "Danke."]
PROMPTS += [
    few_shot_conversation(
        [
            Conversation((*s.messages, Message("assistant", a)))
            for s, a in zip(SHOTS, SHOT_ANSWERS, strict=True)
        ],
        user_turn(q),
    )
    for q in ("Say goodbye in Italian.", "Say yes in Spanish, please.")
]
LIMITS = [24, 24, 24, 5, 24, 16, 16]


def one_at_a_time(model, renderer, conv, stop_ids, limit) -> list[int]:
    """transformers' greedy generate on the prompt alone; the answer's ids up to its stop token."""
    prompt = renderer.encode_prompt(conv)
    ids = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                         dtype=torch.long), max_new_tokens=limit, do_sample=False,
                         eos_token_id=stop_ids, pad_token_id=stop_ids[0])[0, len(prompt):].tolist()  # fmt: skip
    cut = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
    return ids[:cut]


def tiny_renderer():
    """The tiny ChatML tokenizer's renderer and its end-of-turn stop id."""
    from sftlab.config import TemplateConfig
    from sftlab.template.format import build_chat_format
    from sftlab.template.render import Renderer

    tokenizer = make_tiny_tokenizer()
    fmt = build_chat_format(tokenizer, TemplateConfig())
    return Renderer(tokenizer, fmt), [fmt.end_of_turn_id]


@pytest.fixture(scope="module")
def smol():
    from sftlab.config import TemplateConfig
    from sftlab.model.load import load_model, load_tokenizer, resolve_model
    from sftlab.template.format import build_chat_format
    from sftlab.template.render import Renderer

    ref = resolve_model("default")
    tokenizer = load_tokenizer(ref)
    fmt = build_chat_format(tokenizer, TemplateConfig())
    return load_model(ref).eval(), Renderer(tokenizer, fmt), [fmt.end_of_turn_id]


@pytest.mark.real
@pytest.mark.parametrize("batch_size", [8, 2])
def test_batched_generation_matches_one_prompt_at_a_time(smol, batch_size):
    model, renderer, stop_ids = smol
    expected = [
        one_at_a_time(model, renderer, c, stop_ids, n) for c, n in zip(PROMPTS, LIMITS, strict=True)
    ]
    # the case the batch loop exists for: rows that end early next to rows that run on
    assert any(len(e) < 24 for e in expected) and any(len(e) == 24 for e in expected)
    got = generate(model, renderer, PROMPTS, stop_ids, LIMITS, batch_size=batch_size)
    assert [g.token_ids for g in got] == expected
    assert [g.text for g in got] == [renderer.tokenizer.decode(e) for e in expected]
    assert [g.stopped for g in got] == [len(e) < n for e, n in zip(expected, LIMITS, strict=True)]
    assert len(got[3].token_ids) <= 5  # "Hi" under its own limit of 5


@pytest.mark.real
def test_a_common_prefix_is_computed_once(smol):
    """The few-shot prompts' examples (and every prompt's system prompt) go through the model
    once per batch, not once per row: the prompt tokens the model sees are fewer than the
    prompts hold, by the shared prefix times (rows - 1)."""
    model, renderer, stop_ids = smol
    prompts = [renderer.encode_prompt(c) for c in PROMPTS[-2:]]
    shared = shared_prefix(prompts)
    assert shared > 50  # the system prompt and two example turns
    seen = []
    hook = model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        generate(model, renderer, PROMPTS[-2:], stop_ids, 1, batch_size=2)
    finally:
        hook.remove()
    # one new token: the prefix once, then both rows' rest (left-padded to the longer)
    rest = max(len(p) for p in prompts) - shared
    assert seen == [torch.Size([1, shared]), torch.Size([2, rest])]


@pytest.mark.real
def test_prefill_batches_decode_as_one(smol):
    """The short prompts and the few-shot prompts are prefilled apart (their lengths differ more
    than 2x) and decoded in one batch: one decoding step per token of the longest answer, not
    one per token of each prefill batch's longest answer."""
    model, renderer, stop_ids = smol
    lengths = [len(renderer.encode_prompt(c)) for c in PROMPTS]
    assert len(length_batches(lengths, 8)) == 2
    steps = []
    hook = model.register_forward_pre_hook(
        lambda _m, args, kwargs: steps.append(kwargs["input_ids"].shape[1] == 1), with_kwargs=True
    )
    try:
        got = generate(model, renderer, PROMPTS, stop_ids, LIMITS, batch_size=8)
    finally:
        hook.remove()
    produced = [g.tokens + g.stopped for g in got]  # the stop token is generated too
    assert sum(steps) == max(produced) - 1
    assert max(produced) < sum(max(produced[i] for i in b) for b in length_batches(lengths, 8))


def test_decode_groups_join_consecutive_prefill_batches_up_to_the_batch_size():
    chunks = [[2, 0], [4], [5, 6, 7], [3, 1]]
    assert decode_groups(chunks, 4) == [[[2, 0], [4]], [[5, 6, 7]], [[3, 1]]]
    assert decode_groups(chunks, 7) == [[[2, 0], [4], [5, 6, 7]], [[3, 1]]]
    assert decode_groups(chunks, 8) == [chunks]
    assert decode_groups(chunks, 1) == [[c] for c in chunks]  # a lone batch is never split


def test_shared_prefix_keeps_every_prompts_last_token():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # [1, 2, 3] must still be run: its logits
    assert shared_prefix([[7, 1], [8, 1]]) == 0
    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2


def test_sampling_draws_from_the_models_distribution():
    """The first sampled token of one prompt, over 600 draws, has the frequencies of
    softmax(logits / temperature) (each within 5 standard errors); a tiny temperature is greedy."""
    renderer, stop_ids = tiny_renderer()
    model = make_tiny_model().eval()
    prompt = user_turn("abc")
    ids = torch.tensor([renderer.encode_prompt(prompt)])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].float() / 2.0, dim=-1)
    torch.manual_seed(0)
    draws = generate(model, renderer, [prompt] * 600, stop_ids, 1, batch_size=64, temperature=2.0)
    firsts = torch.tensor([g.token_ids[0] if g.token_ids else stop_ids[0] for g in draws])
    for token in probs.topk(3).indices.tolist():
        p, freq = probs[token].item(), (firsts == token).float().mean().item()
        assert abs(freq - p) < 5 * (p * (1 - p) / 600) ** 0.5, (token, p, freq)
    assert len(set(firsts.tolist())) > 3  # not greedy
    greedy = generate(model, renderer, [prompt], stop_ids, 8)[0]
    assert generate(model, renderer, [prompt], stop_ids, 8, temperature=1e-4)[0] == greedy


def test_a_generation_config_that_changes_greedy_goes_through_transformers():
    """A repetition penalty in the model's generation_config is applied, as transformers'
    generate() applies it: the answer is the penalised one, not plain argmax."""
    renderer, stop_ids = tiny_renderer()
    model = make_tiny_model().eval()
    plain = generate(model, renderer, [user_turn("abc")], stop_ids, 12)[0]
    model.generation_config.repetition_penalty = 50.0
    penalised = generate(model, renderer, [user_turn("abc")], stop_ids, 12)[0]
    assert penalised.token_ids == one_at_a_time(model, renderer, user_turn("abc"), stop_ids, 12)
    assert penalised.token_ids != plain.token_ids


def test_limits_must_match_the_conversations():
    tokenizer = make_tiny_tokenizer()
    with pytest.raises(ValueError, match="2 max_new_tokens limits for 1 conversations"):
        generate(make_tiny_model(), _Ids(tokenizer), [[1, 2]], [0], [4, 4])


class _Ids:
    """A renderer whose prompts are ids already (as the training probe passes them)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @staticmethod
    def encode_prompt(ids):
        return ids


def test_length_batches_sort_and_keep_long_prompts_apart():
    # sorted: 25 (2), 30 (0), 39 (4) fill a batch of 3; 60 (5) starts one that 145 would more
    # than double, so 145 (3) and 150 (1) share the last
    assert length_batches([30, 150, 25, 145, 39, 60], 3) == [[2, 0, 4], [5], [3, 1]]
    assert length_batches([], 4) == []
