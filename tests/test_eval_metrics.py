"""Task metrics on hand-checked examples; every expected value is worked out in the comment."""

from __future__ import annotations

import pytest

from sftlab.core.errors import SftlabError
from sftlab.eval.metrics import (
    contains,
    exact_match,
    extract_number,
    json_schema_match,
    json_valid,
    numeric_match,
    parse_metric,
    regex_match,
    rouge_l,
    score,
)


def test_exact_match_ignores_case_spaces_and_a_final_period():
    assert exact_match("  Paris. ", "paris")
    assert exact_match("New   York", "new york")
    assert not exact_match("Paris, France", "Paris")


def test_contains_and_regex():
    assert contains("I am Sage, your assistant.", "sage")
    assert not contains("I am an AI assistant.", "Sage")
    assert regex_match("The answer is 42.", "", pattern=r"answer is \d+")
    assert regex_match("Paris is the capital", r"^Paris")  # the reference is the pattern
    assert not regex_match("It is Paris", r"^Paris")
    with pytest.raises(SftlabError, match="bad pattern"):
        regex_match("x", "(")


def test_numeric_answer_after_hashes_or_last_number():
    # GSM8K reference: the number after ####, with a thousands separator
    assert extract_number("3 boxes of 412 ... = 1236\n#### 1,236") == 1236.0
    assert extract_number("She pays $18 for 3 and then 7.5 more") == 7.5  # last number
    assert extract_number("no number here") is None
    assert numeric_match("So she has 18 - 4 = 14 apples. #### 14", "#### 14")
    assert numeric_match("The total is 14.", "#### 14")
    assert not numeric_match("#### 15 apples, not 14", "#### 14")  # the #### answer wins
    assert not numeric_match("I cannot say", "#### 14")
    assert numeric_match("-3", "#### -3")


def test_json_valid_and_schema():
    assert json_valid('{"name": "Ada", "age": 36}')
    assert json_valid('```json\n{"a": 1}\n```')  # one fence around it is allowed
    assert not json_valid("{'name': 'Ada'}")  # single quotes are not JSON
    schema = {"type": "object", "required": ["name", "age"],
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}  # fmt: skip
    assert json_schema_match('{"name": "Ada", "age": 36}', "", schema=schema)
    assert not json_schema_match('{"name": "Ada", "age": "36"}', "", schema=schema)  # age a string
    assert not json_schema_match('{"name": "Ada"}', "", schema=schema)  # age missing
    assert not json_schema_match("not json", "", schema=schema)
    # no schema option: the reference is the schema
    assert json_schema_match("[1, 2]", '{"type": "array"}')


def test_rouge_l_f_measure_by_hand():
    # LCS of "the cat sat on the mat" and "the cat is on the mat" is "the cat on the mat" (5 words):
    # precision 5/6, recall 5/6, F = 5/6
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # prediction 4 words, reference 3, LCS 3: P = 3/4, R = 1, F = 2*(3/4)/(7/4) = 6/7
    assert rouge_l("the cat sat down", "the cat sat") == pytest.approx(6 / 7)
    assert rouge_l("dogs bark", "the cat sat") == 0.0


def test_metric_specs_and_scores():
    assert parse_metric("contains") == ("contains", {})
    assert parse_metric("numeric_match") == ("numeric", {})  # the function's name is an alias
    assert parse_metric({"name": "regex", "pattern": "^A"}) == ("regex", {"pattern": "^A"})
    with pytest.raises(SftlabError, match="unknown metric 'bleu'"):
        parse_metric("bleu", where="eval.jsonl:3")
    with pytest.raises(SftlabError, match="eval.jsonl:4"):
        parse_metric(7, where="eval.jsonl:4")
    assert score("contains", "I am Sage.", "Sage") == 1.0
    assert score("regex", "abc", "", pattern="^b") == 0.0
    with pytest.raises(SftlabError, match="metric exact"):
        score("exact", "a", "a", pattern="x")
