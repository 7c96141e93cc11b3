"""Hallucination markers: turns that refer to what the model cannot see.

    unseen_reference  "the image above", "the attached file", "this link", "the article you
                      shared" ... while the prompt holds no such thing (no URL, no long input)
    missing_input     "Summarize the following article." and nothing follows
"""

from __future__ import annotations

import re

from sftlab.hygiene.text import Finding, RowText, RuleContext

MEDIA = r"(?:image|picture|photo|photograph|screenshot|video|audio clip|recording|diagram|chart|graph)"
DOCUMENT = r"(?:file|document|attachment|pdf|spreadsheet|article|link|url|web ?page|website|paper|report)"
# A prompt that asks about something only an attachment could hold. "the video game" and
# "these photos" (counted in a math problem) are not attachments: only pointing words count.
PROMPT_UNSEEN = re.compile(
    rf"\b(?:this|the attached|the given|the following|the above|the provided) {MEDIA}s?\b(?! of\b| that\b| which\b| about\b| game)"
    rf"|\bthe {MEDIA}s? (?:above|below|attached|provided|I (?:sent|shared|attached|uploaded))\b"
    rf"|\b(?:the )?attached {DOCUMENT}s?\b|\bthis (?:link|url)\b|\bthe (?:link|url) (?:above|below)\b"
    rf"|\b(?:in|from|see|watch|look at|listen to) the {MEDIA}s? (?:above|below|attached|provided)\b",
    re.IGNORECASE,
)
# An answer that speaks of an input the user supposedly gave.
ANSWER_UNSEEN = re.compile(
    rf"\b(?:the|your) (?:{MEDIA}|{DOCUMENT})s? (?:you(?: have)? (?:provided|shared|sent|attached|uploaded|linked|posted)|"
    rf"(?:above|below|attached))\b|\bin the (?:attached|provided|linked) (?:{MEDIA}|{DOCUMENT})\b",
    re.IGNORECASE,
)
MEDIA_WORDS = ("image", "picture", "photo", "screenshot", "video", "audio", "recording", "diagram",
               "chart", "graph", "file", "document", "attach", "pdf", "spreadsheet", "article",
               "link", "url", "web", "paper", "report")  # fmt: skip
URL = re.compile(r"https?://|www\.", re.IGNORECASE)
# "the following X" / "given X" / "this X:" needs an X after it.
NEEDS_INPUT = re.compile(
    r"\b(?:the following|the given|the below|this|these|given)\s+(?:\w+\s+){0,2}?"
    r"(?:text|sentence|sentences|passage|paragraph|article|story|poem|code|snippet|data|dataset|"
    r"list|table|email|letter|review|tweet|statement|words|phrase|essay|document|song|lyrics|"
    r"equation|function|program|input)\b",
    re.IGNORECASE,
)
AFTER_MAX_WORDS = 6  # "Classify this sentence as positive or negative." has no sentence


def _mentions_media(text: str) -> bool:
    """A fast pre-check: every pattern above names one of these words."""
    lower = text.lower()
    return any(word in lower for word in MEDIA_WORDS)


def unseen_reference(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    if row.is_text or not (_mentions_media(row.prompt) or _mentions_media(row.response)):
        return None
    if URL.search(row.context):
        return None
    for i, (prompt, answer) in enumerate(row.turns):
        match = PROMPT_UNSEEN.search(prompt)
        where = "prompt"
        if not match:
            match, where = ANSWER_UNSEEN.search(answer), "answer"
        if match and len(prompt) < 400:  # a long prompt may hold the text it refers to
            return Finding("unseen_reference", 1.0, threshold,
                           f"the {where} of turn {i + 1} refers to {match.group()!r}, "
                           "which the conversation does not contain")  # fmt: skip
    return None


def missing_input(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    """Only the first turn: later turns may point at text an earlier answer wrote."""
    if row.is_text or not row.turns:
        return None
    prompt = row.turns[0][0].rstrip()
    for match in NEEDS_INPUT.finditer(prompt):
        after = prompt[match.end() :]
        head, colon, body = after.partition(":")
        if colon and body.strip():
            continue  # "... these words: love, hope"
        if len(after.split()) <= AFTER_MAX_WORDS and "\n" not in after.strip():
            return Finding("missing_input", 1.0, threshold,
                           f"the prompt asks about {match.group()!r} but no input follows it")  # fmt: skip
    return None
