"""Every hygiene rule's name, family, default action and default threshold: the one table the
config, the audit and the README agree on. Pure data, so `sftlab.config` can validate names.

    action  reject: the row leaves the training set, with the reason
            review: the row stays, and goes to review.jsonl for a person's eye
            off:    the rule does not run
"""

from __future__ import annotations

from typing import NamedTuple


class RuleSpec(NamedTuple):
    family: str
    action: str  # "reject" | "review" | "off"
    threshold: float
    meaning: str  # what the score measures and which side of the threshold fires


RULES: dict[str, RuleSpec] = {
    "empty_response": RuleSpec("structure", "reject", 0.5, "1 when an answer is empty or whitespace"),
    "echo": RuleSpec("structure", "reject", 0.9, "share of the answer's word 3-grams copied from the prompt (fires at >=)"),
    "truncated": RuleSpec("structure", "reject", 0.5, "1 when the answer ends mid-sentence or leaves a fence, bracket or quote open"),
    "placeholder": RuleSpec("structure", "reject", 0.5, "unfilled placeholders ({{name}}, <noinput>, [INSERT ...], TODO) outside code"),
    "response_too_short": RuleSpec("length", "reject", 1, "answer tokens (fires below the threshold)"),
    "response_too_long": RuleSpec("length", "reject", 4096, "answer tokens (fires above)"),
    "prompt_too_long": RuleSpec("length", "reject", 8192, "prompt tokens (fires above)"),
    "length_ratio": RuleSpec("length", "review", 5.0, "robust z-score of log(answer/prompt tokens) over the dataset (fires above, either side)"),
    "repeated_lines": RuleSpec("repetition", "reject", 0.3, "share of characters in lines or paragraphs that repeat an earlier one"),
    "top_ngram": RuleSpec("repetition", "reject", 2.0, "top 2/3/4-gram character share over Gopher's limits (0.20/0.18/0.16); 2 = twice the limits"),
    "duplicate_ngrams": RuleSpec("repetition", "reject", 2.5, "duplicate 5..10-gram character share over Gopher's limits (0.15..0.10); 2.5 = 2.5x the limits"),
    "looping": RuleSpec("repetition", "reject", 3, "times a block of words repeats back to back (at least 30 words covered)"),
    "slop": RuleSpec("slop", "reject", 15.0, "slop phrases per 1,000 words of answer, short answers counted as 100 words (fires at >=)"),
    "refusal": RuleSpec("refusal", "reject", 0.5, "1 when the answer refuses or moralises although the prompt is benign"),
    "unseen_reference": RuleSpec("hallucination", "reject", 0.5, "1 when a turn refers to an image, file, link or document nobody gave"),
    "missing_input": RuleSpec("hallucination", "reject", 0.5, "1 when the instruction needs an input ('the following text') and none follows"),
    "language_mismatch": RuleSpec("language", "reject", 0.5, "1 when the answer's script or language differs from the prompt's"),
    "mojibake": RuleSpec("encoding", "reject", 0.5, "ftfy's count of mis-decoded character sequences"),
    "control_chars": RuleSpec("encoding", "reject", 0.5, "control characters, U+FFFD or lone surrogates in the text"),
    "exact_duplicate": RuleSpec("duplicates", "reject", 0.5, "1 when the normalised prompt+answer equals a kept row's"),
    "near_duplicate": RuleSpec("duplicates", "reject", 0.8, "word 3-gram Jaccard similarity to a kept row (candidates from MinHash LSH)"),
    "contamination": RuleSpec("contamination", "reject", 0.5, "share of an eval row's word 8-grams found in this row"),
    "surprising_tokens": RuleSpec("model", "review", 0.0, "answer tokens whose surprisal is an outlier for the dataset (with --model)"),
    "not_selected": RuleSpec("model", "reject", 0.0, "row outside the --select N best by IFD"),
}  # fmt: skip

ACTIONS = ("reject", "review", "off")
