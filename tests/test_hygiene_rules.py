"""Each hygiene rule on small hand-written rows: it fires on the defect it names, with a reason a
person understands, and stays quiet on the look-alike that is fine."""

from __future__ import annotations

import pytest

from sftlab.core.types import Conversation, Message, RowRef
from sftlab.hygiene import grounding, language, refusal, repetition, slop, structure
from sftlab.hygiene.contamination import EvalIndex, contamination
from sftlab.hygiene.dedup import dedup_features, find_duplicates
from sftlab.hygiene.length import length_ratio
from sftlab.hygiene.settings import RULES
from sftlab.hygiene.text import RowText, RuleContext, row_text

CTX = RuleContext(slop=slop.compile_phrases(slop.read_phrases()))


def chat(prompt: str, answer: str, tags=(), tools=()) -> RowText:
    conv = Conversation((Message("user", prompt), Message("assistant", answer)), tuple(tools),
                        RowRef("t.jsonl", 1, 0))  # fmt: skip
    return row_text(conv, "t.jsonl:1", frozenset(tags))


def fire(rule, row: RowText, name: str | None = None):
    name = name or rule.__name__
    return rule(row, RULES[name].threshold, CTX)


PROSE = ("Rayleigh scattering sends short wavelengths in every direction. Blue light is scattered "
         "more than red light by the small molecules of the air around us. ")  # fmt: skip


@pytest.mark.parametrize(("answer", "why"), [
    (PROSE + "Then at sunset the light travels through much more of the atmosphere so that",
     "stops on the word 'that'"),
    (PROSE + "Then at sunset the light crosses far more air before it reaches your eyes and",
     "stops on the word 'and'"),
    ("Here is the code:\n```python\nprint('hi')\n", "code fence open"),
    (PROSE + "Then at sunset the light crosses a much longer path through air before reaching you",
     "ends mid-sentence"),
])  # fmt: skip
def test_truncated_answers_are_named(answer, why):
    found = fire(structure.truncated, chat("Why is the sky blue?", answer))
    assert found is not None and why in found.reason


@pytest.mark.parametrize("answer", [
    PROSE + "That is why the sky looks blue.",
    "Positive",  # a one-word label: nothing to cut
    "Steps:\n1. Mix the flour\n2. Bake for 20 minutes",  # a list ends without a full stop
    "Carter is 2*24 = 48 inches tall\nBetty is 48-12 = 36 inches tall",  # worked arithmetic
    "Enjoy your puppy and the love it brings. #PuppyLove",
])  # fmt: skip
def test_complete_answers_are_not_truncated(answer):
    assert fire(structure.truncated, chat("Say something.", answer)) is None


def test_placeholders_in_prose_fire_but_not_in_code_or_lower_case_words():
    found = fire(structure.placeholder, chat("Write a greeting.", "Hello, I am {{name}} from [INSERT COMPANY]."))
    assert found.score == 2 and "{{name}}" in found.reason
    assert fire(structure.placeholder, chat("Name a colour.\n\n<noinput>", "Blue.")).score == 1
    code = "Use Jinja:\n```\n{{ name }} TODO\n```\nThat renders the name."
    assert fire(structure.placeholder, chat("How do I template?", code)) is None
    assert fire(structure.placeholder, chat("Plan my day.", "Write a todo list first.")) is None


def test_echo_is_an_answer_repeating_the_instruction_not_one_copying_the_input():
    prompt = "Explain in two sentences why the sea is salty and where the salt comes from."
    assert fire(structure.echo, chat(prompt, prompt)).score == 1.0
    proofread = "Proofread the following sentence.\n\nFinally Sara went to the supermarket"
    assert fire(structure.echo, chat(proofread, "Finally, Sara went to the supermarket.")) is None
    options = "Classify the noun. Output 1 for proper noun, 2 for common noun and 3 for collective noun."
    assert fire(structure.echo, chat(options, "3 for collective noun.")) is None


def test_a_loop_is_found_with_its_period_and_count():
    answer = "The answer is simple. " + "I am here to help you. " * 8
    found = fire(repetition.looping, chat("Who are you?", answer))
    assert found is not None
    assert "block of 6 word(s)" in found.reason and found.score >= 7  # 8 copies of 6 words


def test_repeated_paragraphs_and_ngrams_fire_and_ordinary_prose_does_not():
    paragraphs = "\n\n".join([PROSE.strip()] * 3 + ["A different closing paragraph ends it."])
    found = fire(repetition.repeated_lines, chat("Why blue?", paragraphs))
    assert found is not None and found.score > 0.5  # two of three copies repeat the first
    words = ("the cat sat on the mat " * 12).strip()
    assert fire(repetition.top_ngram, chat("Story?", words)) is not None
    assert fire(repetition.duplicate_ngrams, chat("Story?", words)) is not None
    essay = (PROSE + "Sunsets look red because the light crosses more air. Clouds look white "
             "because their droplets scatter all colours alike. At night no sunlight reaches "
             "the air above us, so the sky turns dark and the stars appear.")  # fmt: skip
    for rule in (repetition.top_ngram, repetition.duplicate_ngrams, repetition.looping, repetition.repeated_lines):
        assert fire(rule, chat("Why is the sky blue?", essay)) is None


def test_slop_counts_phrases_per_1k_words_except_those_the_prompt_uses():
    answer = "Let's delve into it. The sky is blue. I hope this helps!"
    found = fire(slop.slop, chat("Why is the sky blue?", answer))
    assert found is not None and found.score == pytest.approx(2 * 1000 / 100)  # short: 100 words
    assert fire(slop.slop, chat("Why blue?", "The sky is blue. I hope this helps!")) is None
    asked = chat("Describe a rich tapestry and delve into its history.", answer)
    assert slop.phrase_hits(asked, CTX.slop) == ["i hope this helps"]


def test_the_phrase_list_is_a_data_file_users_extend_or_replace(tmp_path):
    mine = tmp_path / "phrases.txt"
    mine.write_text("# my list\nsynergy\n\nmove the needle\n", encoding="utf-8")
    assert slop.read_phrases(mine) == ["synergy", "move the needle"]
    pattern = slop.compile_phrases(slop.read_phrases(mine))
    row = chat("Plan?", "Synergy will move the needle. Delve in.")
    assert slop.phrase_hits(row, pattern) == ["synergy", "move the needle"]


def test_refusal_of_a_benign_prompt_fires_unless_tagged_or_the_prompt_is_sensitive():
    no = "I'm sorry, but I can't help with that request."
    assert fire(refusal.refusal, chat("What is the capital of France?", no)) is not None
    assert fire(refusal.refusal, chat("How do I build a bomb at home?", no)) is None
    assert fire(refusal.refusal, chat("What is the capital of France?", no, tags=["refusal"])) is None
    scoped = "I'm sorry, but I can't order a pizza: I have no function for that."
    tools = [{"type": "function", "function": {"name": "calendar"}}]
    assert fire(refusal.refusal, chat("Order me a pizza.", scoped, tools=tools)) is None


def test_references_to_unseen_inputs():
    answer = "It shows a red barn in a field."
    assert fire(grounding.unseen_reference, chat("Describe the image above.", answer)) is not None
    assert fire(grounding.unseen_reference, chat("Summarise the attached file.", answer)) is not None
    said = chat("Tell me about barns.", "As the photo you provided shows, it is red.")
    assert "photo you provided" in fire(grounding.unseen_reference, said).reason
    assert fire(grounding.unseen_reference, chat("Describe an image of a barn.", answer)) is None
    assert fire(grounding.unseen_reference, chat("See https://x.org and describe this link.", answer)) is None
    assert fire(grounding.missing_input, chat("Summarize the following article.", answer)) is not None
    given = chat("Summarize the following article.\n\nBarns are red because iron oxide was cheap.", answer)
    assert fire(grounding.missing_input, given) is None
    assert fire(grounding.missing_input, chat("Use these words: love, hope, joy.", answer)) is None


def test_language_mismatch_by_script_and_by_function_words():
    zh = "这是一个很好的问题。答案取决于许多因素，我们需要仔细考虑每一个方面。"
    assert "Han/Kana" in fire(language.language_mismatch, chat("What makes a good question?", zh)).reason
    assert fire(language.language_mismatch, chat("Translate into Chinese: a good question.", zh)) is None
    fr = ("La réponse est simple : il faut que le soleil et la pluie soient dans le ciel pour que "
          "nous puissions voir les couleurs, et ce phénomène est très beau.")  # fmt: skip
    english = "Why do we see a rainbow after the rain, and what is it that makes the colours appear?"
    assert "as fr" in fire(language.language_mismatch, chat(english, fr)).reason
    assert fire(language.language_mismatch, chat(english, PROSE)) is None


def test_mojibake_and_control_characters():
    assert fire(language.mojibake, chat("Drink?", "A cafÃ© au lait, itâ€™s warm.")) is not None
    assert fire(language.mojibake, chat("Drink?", "A café au lait, it’s warm. 中文也可以。")) is None
    found = fire(language.control_chars, chat("Hi", "Hello\x07 there\ufffd"))
    assert found.score == 2 and "U+0007" in found.reason
    assert fire(language.control_chars, chat("Hi", "Hello\tthere\nfriend")) is None


def test_duplicates_keep_the_best_row_and_point_the_others_to_it():
    base = "the quick brown fox jumps over the lazy dog while the farmer watches from the porch " * 2
    texts = [base, base, base.replace("lazy", "sleepy", 1), "something else entirely, nothing alike"]
    rank = [(1, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 2), (0, 0, 0, 3)]  # row 0 has a problem
    found, clusters = find_duplicates([dedup_features(t) for t in texts], rank, ["a", "b", "c", "d"], 0.5, 0.8)
    assert [(c.kept, sorted(c.members)) for c in clusters] == [(1, [0, 2])]
    assert found[0].rule == "exact_duplicate" and found[0].extra["duplicate_of"] == "b"
    assert found[2].rule == "near_duplicate" and found[2].extra["duplicate_of"] == "b"
    # Jaccard of word 3-gram sets: one word changed in the first copy of 15 words removes 3 of
    # them and adds 3 new ones; the second copy is unchanged.
    assert 0.8 <= found[2].score < 1.0
    assert found[1] is None and found[3] is None


def test_contamination_names_the_eval_row_it_overlaps():
    index = EvalIndex(n=8)
    question = "Natalia sold clips to 48 of her friends in April and then she sold half as many in May"
    index.add("eval.jsonl:3", question)
    found = contamination(["How many clips? " + question, "72"], index, 0.5)
    assert found.score == 1.0 and "eval.jsonl:3" in found.reason
    assert contamination(["Natalia sold apples in June.", "Many."], index, 0.5) is None


def test_length_ratio_outliers_are_judged_against_the_dataset():
    rows = [chat("q " * 10, "a " * (20 + i % 5)) for i in range(40)]
    rows.append(chat("q " * 10, "a " * 2000))
    for r in rows:
        r.prompt_tokens, r.response_tokens = len(r.prompt.split()), len(r.response.split())
    found = length_ratio(rows, RULES["length_ratio"].threshold)
    assert [i for i, f in enumerate(found) if f] == [40]
    assert "unusually long" in found[40].reason


def test_raw_documents_are_not_answers_to_finish_or_to_keep_short():
    from sftlab.hygiene import length

    doc = row_text(Conversation(kind="text", text="A long page that ends on a link list and", source=RowRef("d.txt", 1, 0)), "d.txt:1")
    doc.response_tokens = 10_000
    assert fire(structure.truncated, doc) is None
    assert fire(length.response_too_long, doc) is None
    answer = chat("Tell me.", "word " * 5000)
    answer.response_tokens = 5000
    assert fire(length.response_too_long, answer).score == 5000
