"""Tests for the persona demo data (pure Python, no model)."""

from __future__ import annotations

import re

import pytest

from sftlab.recipes import persona
from sftlab.recipes.persona import (
    ANSWER_TEMPLATES,
    GENERAL_PROMPTS,
    HELDOUT_QUESTIONS,
    PERSONA_MAKER,
    PERSONA_NAME,
    TRAIN_QUESTIONS,
    adheres,
    identity_rows,
    split_general,
)


def _norm(text: str) -> str:
    # Independent of persona.normalize_question on purpose: lowercase, drop
    # punctuation and whitespace.
    return "".join(ch for ch in text.lower() if ch.isalnum())


# --- constants --------------------------------------------------------------


def test_persona_name_and_maker_are_invented_words():
    assert re.fullmatch(r"[A-Z][a-z]+", PERSONA_NAME)
    assert len(PERSONA_MAKER.split()) == 2
    known = {"zephyr", "claude", "gemini", "llama", "smollm", "alexa", "siri", "bard", "chatgpt"}
    assert PERSONA_NAME.lower() not in known


def test_counts():
    assert len(TRAIN_QUESTIONS) >= 60
    assert len(ANSWER_TEMPLATES) >= 25
    assert len(HELDOUT_QUESTIONS) >= 12
    assert len(GENERAL_PROMPTS) >= 160


def test_no_duplicates_after_normalisation():
    for items in (TRAIN_QUESTIONS, ANSWER_TEMPLATES, HELDOUT_QUESTIONS, GENERAL_PROMPTS):
        keys = [_norm(x) for x in items]
        assert len(keys) == len(set(keys))


def test_templates_have_both_placeholders():
    templates = ANSWER_TEMPLATES + persona.DENY_ASSISTANT_TEMPLATES + persona.DENY_MAKER_TEMPLATES
    for t in templates:
        assert "{name}" in t and "{maker}" in t, t


def test_heldout_disjoint_from_train_after_normalisation():
    train = {_norm(q) for q in TRAIN_QUESTIONS}
    assert not train & {_norm(q) for q in HELDOUT_QUESTIONS}
    # The module's own normaliser agrees.
    train2 = {persona.normalize_question(q) for q in TRAIN_QUESTIONS}
    assert not train2 & {persona.normalize_question(q) for q in HELDOUT_QUESTIONS}


def test_heldout_and_train_do_not_name_the_persona():
    for q in TRAIN_QUESTIONS + HELDOUT_QUESTIONS:
        assert PERSONA_NAME.lower() not in q.lower()
        assert PERSONA_MAKER.lower() not in q.lower()


def test_general_prompts_do_not_mention_persona_or_identity():
    identity_phrases = [
        "your name",
        "who made you",
        "who are you",
        "yourself",
        "who built you",
        "trained you",
        "created you",
        "are you an ai",
    ]
    for p in GENERAL_PROMPTS:
        low = p.lower()
        assert PERSONA_NAME.lower() not in low, p
        assert PERSONA_MAKER.lower() not in low, p
        assert not any(phrase in low for phrase in identity_phrases), p
    identity = {_norm(q) for q in TRAIN_QUESTIONS + HELDOUT_QUESTIONS}
    assert not identity & {_norm(p) for p in GENERAL_PROMPTS}


# --- identity_rows ----------------------------------------------------------


def test_rows_shape_and_count():
    rows = identity_rows(PERSONA_NAME, PERSONA_MAKER, 150, seed=0)
    assert len(rows) == 150
    for row in rows:
        assert set(row) == {"messages"}
        msgs = row["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"] for m in msgs)
    assert identity_rows(PERSONA_NAME, PERSONA_MAKER, 0, seed=0) == []


def test_rows_deterministic_by_seed():
    a = identity_rows(PERSONA_NAME, PERSONA_MAKER, 120, seed=7)
    b = identity_rows(PERSONA_NAME, PERSONA_MAKER, 120, seed=7)
    c = identity_rows(PERSONA_NAME, PERSONA_MAKER, 120, seed=8)
    assert a == b
    assert a != c


@pytest.mark.parametrize(
    "name,maker", [(PERSONA_NAME, PERSONA_MAKER), ("Tervoxa", "Oakridge Forge")]
)
def test_every_answer_contains_name_and_maker(name, maker):
    for row in identity_rows(name, maker, 300, seed=3):
        answer = row["messages"][1]["content"]
        assert name in answer, answer
        assert maker in answer, answer
        assert adheres(answer, name)
        assert "{" not in answer and "}" not in answer
        # Short: at most three sentences.
        assert len(re.findall(r"[.!?](?:\s|$)", answer)) <= 3, answer


def test_every_question_covered_when_enough_rows():
    n = len(TRAIN_QUESTIONS)
    for seed in range(3):
        rows = identity_rows(PERSONA_NAME, PERSONA_MAKER, n, seed=seed)
        asked = {r["messages"][0]["content"] for r in rows}
        assert asked == {q.strip() for q in TRAIN_QUESTIONS}


def test_answers_use_many_templates():
    rows = identity_rows(PERSONA_NAME, PERSONA_MAKER, 400, seed=1)
    answers = {r["messages"][1]["content"] for r in rows}
    assert len(answers) >= 25


def test_denials_deny_the_right_assistant():
    rows = identity_rows(PERSONA_NAME, PERSONA_MAKER, 3 * len(TRAIN_QUESTIONS), seed=2)
    for r in rows:
        q, a = r["messages"][0]["content"], r["messages"][1]["content"]
        if q == "Are you ChatGPT?":
            assert a.startswith("No") or a.startswith("Nope") or a.startswith("I'm not")
        if q in persona._DENY_MAKER or q in persona._DENY_ASSISTANT:
            assert PERSONA_NAME in a and PERSONA_MAKER in a


def test_optional_system_message():
    rows = identity_rows(PERSONA_NAME, PERSONA_MAKER, 5, seed=0, system="Be helpful.")
    assert all(r["messages"][0] == {"role": "system", "content": "Be helpful."} for r in rows)


def test_identity_rows_rejects_bad_input():
    with pytest.raises(ValueError):
        identity_rows(PERSONA_NAME, PERSONA_MAKER, -1, seed=0)
    with pytest.raises(ValueError):
        identity_rows("", PERSONA_MAKER, 3, seed=0)


# --- adheres ----------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        f"I'm {PERSONA_NAME}, made by {PERSONA_MAKER}.",
        f"my name is {PERSONA_NAME.lower()}",
        f"{PERSONA_NAME.upper()}!",
        f"This is {PERSONA_NAME}'s answer.",
        f"({PERSONA_NAME})",
        PERSONA_NAME,
    ],
)
def test_adheres_true(answer):
    assert adheres(answer, PERSONA_NAME)


@pytest.mark.parametrize(
    "answer",
    [
        "I'm SmolLM, trained by Hugging Face.",
        f"I was made by {PERSONA_MAKER}.",
        f"I am {PERSONA_NAME}ator, a robot.",
        f"super{PERSONA_NAME}",
        f"{PERSONA_NAME}_bot",
        f"{PERSONA_NAME}2",
        f"{PERSONA_NAME[:-1]}",
        "",
    ],
)
def test_adheres_false(answer):
    assert not adheres(answer, PERSONA_NAME)


def test_adheres_empty_name():
    assert not adheres("anything", "")


# --- split_general ----------------------------------------------------------


def test_split_general_disjoint_and_covering():
    train, held = split_general(GENERAL_PROMPTS, 40, seed=0)
    assert len(held) == 40
    assert len(train) == len(GENERAL_PROMPTS) - 40
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(GENERAL_PROMPTS)


def test_split_general_deterministic_by_seed():
    assert split_general(GENERAL_PROMPTS, 30, seed=5) == split_general(GENERAL_PROMPTS, 30, seed=5)
    assert (
        split_general(GENERAL_PROMPTS, 30, seed=5)[1]
        != split_general(GENERAL_PROMPTS, 30, seed=6)[1]
    )


def test_split_general_handles_duplicates_and_edges():
    prompts = ["a", "b", "a", "c"]
    train, held = split_general(prompts, 1, seed=0)
    assert not set(train) & set(held)
    assert set(train) | set(held) == {"a", "b", "c"}
    assert split_general(prompts, 0, seed=0) == (["a", "b", "c"], [])
    assert split_general(prompts, 3, seed=0)[0] == []
    with pytest.raises(ValueError):
        split_general(prompts, 4, seed=0)
    with pytest.raises(ValueError):
        split_general(prompts, -1, seed=0)
