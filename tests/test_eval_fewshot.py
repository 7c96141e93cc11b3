"""Few-shot prompts rendered through the chat template: golden text written by hand, and the
rendered ids equal to the tokenizer's own encoding of that whole text."""

from __future__ import annotations

from sftlab.config import TemplateConfig
from sftlab.core.types import Conversation, Message
from sftlab.eval.fewshot import few_shot_conversation, pick_shots, split_reference
from sftlab.template.format import build_chat_format
from sftlab.template.render import Renderer


def conv(*turns: tuple[str, str]) -> Conversation:
    return Conversation(tuple(Message(role, text) for role, text in turns))


EXAMPLES = [
    conv(("system", "ignored"), ("user", "2+2?"), ("assistant", "4")),
    conv(("user", "3+3?"), ("assistant", "6")),
]
HELDOUT = conv(("system", "Be brief."), ("user", "5+5?"), ("assistant", "10"))


def test_few_shot_prompt_golden_and_equal_to_whole_text_encoding(tiny_tokenizer):
    query, reference = split_reference(HELDOUT)
    assert reference == "10"
    prompt = few_shot_conversation(EXAMPLES, query)
    renderer = Renderer(tiny_tokenizer, build_chat_format(tiny_tokenizer, TemplateConfig()))
    golden = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n6<|im_end|>\n"
        "<|im_start|>user\n5+5?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = renderer.encode_prompt(prompt)
    assert tiny_tokenizer.decode(ids) == golden
    assert ids == tiny_tokenizer(golden, add_special_tokens=False)["input_ids"]
    # 7 turns opened (system, 3 user, 3 assistant), 6 closed (the last assistant turn is open)
    assert ids.count(257) == 7 and ids.count(258) == 6


def test_few_shot_on_the_real_embedded_tokenizer(smol_tokenizer):
    renderer = Renderer(
        smol_tokenizer, build_chat_format(smol_tokenizer, TemplateConfig(system_prompt="Be brief."))
    )
    query, _ = split_reference(conv(("user", "5+5?"), ("assistant", "10")))
    ids = renderer.encode_prompt(few_shot_conversation(EXAMPLES[1:], query))
    golden = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n6<|im_end|>\n"
        "<|im_start|>user\n5+5?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ids == smol_tokenizer(golden, add_special_tokens=False)["input_ids"]


def test_zero_shots_is_the_query_itself_and_shots_are_seeded():
    query, _ = split_reference(HELDOUT)
    assert few_shot_conversation([], query) == query
    pool = [conv(("user", str(i)), ("assistant", str(i))) for i in range(10)]
    assert pick_shots(pool, 3, seed=1) == pick_shots(pool, 3, seed=1)
    assert len(pick_shots(pool, 3)) == 3 and pick_shots(pool, 0) == []
    assert len(pick_shots(pool[:2], 5)) == 2
