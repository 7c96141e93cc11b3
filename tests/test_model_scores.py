"""Model-based scores: response loss through the training loss, IFD, surprising tokens, --select.

The loss is checked against a plain forward + cross-entropy written here; IFD and the surprising
tokens on the embedded SmolLM2 with the project's own clean conversations, garbage injected."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_model
from sftlab.config import TemplateConfig
from sftlab.core.types import Conversation, Message, RowRef
from sftlab.hygiene.model_scores import RowScore, score_rows, select_best
from sftlab.model.loss import SupervisedLoss
from sftlab.template.format import build_chat_format
from sftlab.template.render import Renderer


def conv(prompt: str, response: str, name: str = "t.jsonl", line: int = 1) -> Conversation:
    return Conversation(
        (Message("user", prompt), Message("assistant", response)),
        source=RowRef(name, line, line - 1),
    )


def mean_response_loss(model, prompt_ids: list[int], response_ids: list[int]) -> float:
    """Mean cross-entropy of response_ids after prompt_ids, from a plain forward pass."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    n = len(prompt_ids)
    return F.cross_entropy(logits[n - 1 : -1], ids[0, n:]).item()


# -- the tiny model: exact arithmetic against a hand-built token sequence -----------------------


def test_losses_equal_a_plain_forward_on_hand_built_tokens(tiny_tokenizer):
    """The tiny tokenizer's ids are the bytes (specials 257 <|im_start|>, 258 <|im_end|>), so the
    rendered ChatML rows can be written out by hand."""
    model = make_tiny_model().eval()
    renderer = Renderer(tiny_tokenizer, build_chat_format(tiny_tokenizer, TemplateConfig()))
    rows = [conv("add 2 and 2", "four"), conv("hi", "hello there", line=2)]

    scores = score_rows(rows, model, tiny_tokenizer, renderer, progress=False, precision="fp32")

    def turn(role: str, text: str) -> list[int]:
        return [257, *f"{role}\n{text}".encode()]

    for row, score in zip(rows, scores, strict=True):
        prompt, response = row.messages[0].content, row.messages[1].content
        answer = [*response.encode(), 258]  # the content and the end-of-turn token are learned
        given = mean_response_loss(
            model, turn("user", prompt) + [258, 10] + turn("assistant", ""), answer
        )
        alone = mean_response_loss(
            model, turn("user", "") + [258, 10] + turn("assistant", ""), answer
        )
        assert score.response_loss == pytest.approx(given, abs=1e-5)
        assert score.loss_alone == pytest.approx(alone, abs=1e-5)
        assert score.ifd == pytest.approx(given / alone, rel=1e-5)
        assert score.n_tokens == len(answer)


def test_token_losses_sum_to_the_training_loss(tiny_tokenizer):
    from sftlab.pack.collate import collate
    from sftlab.pack.packing import single_rows

    model = make_tiny_model().eval()
    renderer = Renderer(tiny_tokenizer, build_chat_format(tiny_tokenizer, TemplateConfig()))
    examples = [renderer.encode(conv("abc", "defgh")), renderer.encode(conv("x", "yz"))]
    batch = collate(single_rows(examples), 258)
    scorer = SupervisedLoss(model, chunk_tokens=3)  # several chunks
    with torch.no_grad():
        per_token = scorer.token_losses(batch.input_ids, batch.position_ids, batch.targets)
        total = scorer(batch.input_ids, batch.position_ids, batch.targets)
    assert per_token.shape == (batch.n_supervised,)
    assert per_token.sum().item() == pytest.approx(total.item(), rel=1e-6)


def test_rows_that_do_not_render_are_marked_not_dropped(tiny_tokenizer):
    model = make_tiny_model().eval()
    renderer = Renderer(tiny_tokenizer, build_chat_format(tiny_tokenizer, TemplateConfig()))
    bad = Conversation((Message("user", "only a question"),), source=RowRef("t.jsonl", 3, 2))
    scores = score_rows([conv("a", "b"), bad], model, tiny_tokenizer, renderer, progress=False)
    assert len(scores) == 2 and scores[0].error is None and math.isfinite(scores[0].ifd)
    assert scores[1].error == "nothing to score: no supervised token"
    assert not math.isfinite(scores[1].ifd)


def test_each_response_token_is_placed_in_its_message_by_characters(tiny_tokenizer):
    from sftlab.hygiene.model_scores import _token_spans

    renderer = Renderer(tiny_tokenizer, build_chat_format(tiny_tokenizer, TemplateConfig()))
    row = Conversation(
        (Message("system", "be kind"), Message("user", "hi"), Message("assistant", "hé!"),
         Message("user", "and?"), Message("assistant", "ok")),
        source=RowRef("t.jsonl", 1, 0),
    )  # fmt: skip
    spans = _token_spans(renderer, row, renderer.encode(row))
    # one token per byte: "é" is two bytes, both from characters 1-2; each turn ends with the
    # end-of-turn token, which is no message's text
    assert spans == [(2, 0, 1), (2, 1, 2), (2, 1, 2), (2, 2, 3), None, (4, 0, 1), (4, 1, 2), None]


def test_the_progress_bar_counts_tokens_per_second():
    import re
    import time

    from rich.console import Console

    from sftlab.hygiene.model_scores import _progress

    console = Console(record=True, force_terminal=True, width=140)
    with _progress(True, 1000, console=console) as advance:
        time.sleep(0.1)
        advance(400)
        time.sleep(0.1)
        advance(600)
    rates = re.findall(r"1,000/1,000 tokens ([\d,]+) tokens/s", console.export_text())
    assert rates and 0 < int(rates[-1].replace(",", "")) <= 1000 / 0.2  # at least 0.2 s passed


def test_select_best_follows_the_ifd_paper():
    ifds = [0.5, 0.95, float("nan"), 1.3, 0.8, 1.05]
    scores = [RowScore(ifd=v) for v in ifds]
    # IFD < 1 from the highest down (0.95 -> 1, 0.8 -> 4, 0.5 -> 0), then >= 1 from the lowest
    # up (1.05 -> 5, 1.3 -> 3), unscored last (2); returned in input order.
    assert select_best(scores, 2) == [1, 4]
    assert select_best(scores, 4) == [0, 1, 4, 5]
    assert select_best(scores, 10) == [0, 1, 2, 3, 4, 5]
    assert select_best(scores, 0) == []


# -- the embedded SmolLM2: IFD and surprising tokens --------------------------------------------

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
    ("What is 12 multiplied by 3?", "12 multiplied by 3 is 36."),
]
GREEDY_ANSWERS = Path(__file__).parent / "fixtures" / "data" / "general_answers_greedy.jsonl"
MOJIBAKE = "cafÃ© â€œnaÃ¯veâ€\x9d rÃ©sumÃ©"  # UTF-8 read as cp1252, twice over
RANDOM_SCRIPT = "".join(random.Random(7).choice("йцшщзхъжэюбьӁӂҗ龍鬱鑿ョヶ") for _ in range(9))


def clean_rows(n: int) -> list[Conversation]:
    """The embedded model's own greedy answers to the demo's general prompts (fluent to it, so
    what is injected is what surprises it), shortest-first middle range."""
    text = GREEDY_ANSWERS.read_text(encoding="utf-8")
    records = [json.loads(x) for x in text.splitlines()]
    chosen = [r for r in records if 60 <= len(r["response"]) <= 260][:n]
    return [conv(r["prompt"], r["response"], "general.jsonl", i + 1) for i, r in enumerate(chosen)]


def inject(row: Conversation, junk: str, line: int) -> tuple[Conversation, int]:
    response = row.messages[1].content
    cut = response.index(" ", len(response) // 2)
    new = response[:cut] + " " + junk + response[cut:]
    return conv(row.messages[0].content, new, "garbage.jsonl", line), cut + 1


@pytest.fixture(scope="module")
def smol_scores(smol_path, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smol_path).eval()
    renderer = Renderer(smol_tokenizer, build_chat_format(smol_tokenizer, TemplateConfig()))
    clean = clean_rows(12)
    garbage = [
        inject(clean[i], junk, i + 1) for i, junk in enumerate([MOJIBAKE, RANDOM_SCRIPT, MOJIBAKE])
    ]
    matched = [conv(p, r, "pairs.jsonl", i + 1) for i, (p, r) in enumerate(PAIRS)]
    swapped = [conv(PAIRS[(i + 1) % 3][0], PAIRS[i][1], "swapped.jsonl", i + 1) for i in range(3)]
    rows = clean + [g for g, _ in garbage] + matched + swapped
    # fp32 everywhere, so that the plain-forward comparison is exact on bf16-capable CPUs too
    scores = score_rows(rows, model, smol_tokenizer, renderer, progress=True, precision="fp32")
    return {
        "model": model, "tokenizer": smol_tokenizer, "scores": scores, "rows": rows,
        "clean": scores[:12], "garbage": list(zip(garbage, scores[12:15], strict=True)),
        "matched": scores[15:18], "swapped": scores[18:21],
    }  # fmt: skip


@pytest.mark.real
def test_response_loss_is_the_mean_token_loss_of_a_plain_forward(smol_scores):
    tokenizer, model = smol_scores["tokenizer"], smol_scores["model"]
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row, score in list(zip(smol_scores["rows"], smol_scores["scores"], strict=True))[15:17]:
        messages = [{"role": "user", "content": row.messages[0].content}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        answer = tokenizer(row.messages[1].content, add_special_tokens=False)["input_ids"] + [eot]
        assert score.n_tokens == len(answer)
        assert score.response_loss == pytest.approx(
            mean_response_loss(model, prompt, answer), abs=1e-3
        )


@pytest.mark.real
def test_ifd_is_lower_when_the_response_follows_from_its_prompt(smol_scores):
    for matched, swapped in zip(smol_scores["matched"], smol_scores["swapped"], strict=True):
        assert matched.ifd < 1.0
        assert matched.ifd < swapped.ifd
    assert smol_scores["scores"].tokens_per_s > 0


@pytest.mark.real
def test_injected_garbage_is_flagged_with_its_offsets(smol_scores):
    rows = smol_scores["rows"]
    for ((row, start), score), junk in zip(
        smol_scores["garbage"], [MOJIBAKE, RANDOM_SCRIPT, MOJIBAKE], strict=True
    ):
        assert score.surprising, f"nothing flagged in {row.messages[1].content!r}"
        content = row.messages[1].content
        for token in score.surprising:
            assert token.message == 1
            assert content[token.char_start : token.char_end] == token.text
            # the token lies in (or touches) the injected run, not in the clean text around it
            assert token.char_start < start + len(junk) + 1 and token.char_end > start - 1, token
    flagged_clean = [
        r for r, s in zip(rows[:12], smol_scores["clean"], strict=True) if s.surprising
    ]
    assert len(flagged_clean) <= 1, [
        (r.source, s.surprising)
        for r, s in zip(rows, smol_scores["clean"], strict=False)
        if s.surprising
    ]
    assert np.isfinite([s.ifd for s in smol_scores["clean"]]).all()
