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
from sftlab.eval.generate import generate, length_batches, user_turn

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
LIMITS = [24, 24, 24, 5, 24]


def one_at_a_time(model, renderer, conv, stop_ids, limit) -> list[int]:
    """transformers' greedy generate on the prompt alone; the answer's ids up to its stop token."""
    prompt = renderer.encode_prompt(conv)
    ids = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                         dtype=torch.long), max_new_tokens=limit, do_sample=False,
                         eos_token_id=stop_ids, pad_token_id=stop_ids[0])[0, len(prompt):].tolist()  # fmt: skip
    cut = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
    return ids[:cut]


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


def test_a_generation_config_that_changes_greedy_goes_through_transformers():
    """A repetition penalty in the model's generation_config is applied, as transformers'
    generate() applies it: the answer is the penalised one, not plain argmax."""
    from sftlab.config import TemplateConfig
    from sftlab.template.format import build_chat_format
    from sftlab.template.render import Renderer

    tokenizer = make_tiny_tokenizer()
    fmt = build_chat_format(tokenizer, TemplateConfig())
    renderer, stop_ids = Renderer(tokenizer, fmt), [fmt.end_of_turn_id]
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
