"""Refusals in the wrong place: the answer refuses or moralises while the prompt is benign.

A row meant to teach refusals carries a tag: `"tags": ["refusal"]` in its source row (a list or a
comma-separated string; the names are `hygiene.refusal_tags`). Such rows are spared. A prompt
that touches a sensitive topic (the SENSITIVE words) is not benign: refusing it may be right.
"""

from __future__ import annotations

import re

from sftlab.hygiene.text import Finding, RowText, RuleContext

REFUSAL = re.compile(
    r"\b(?:I'?m sorry,? but|I am sorry,? but|sorry, but I|I apologi[sz]e,? but)\b[^.]{0,60}\b(?:can(?:no|')t|unable|not able|won'?t)\b"
    r"|\bI (?:cannot|can't|can not|won't|will not|am unable to|'m unable to|am not able to|'m not able to)"
    r" (?:help|assist|provide|fulfil+|comply|answer|complete|do that|generate|create|write|engage|support)"
    r"|\bI must (?:decline|refuse)\b"
    r"|\bas an AI(?: language model| assistant)?,? I (?:cannot|can't|don't|do not|am not able|am unable)"
    r"|\bI(?:'m| am) not (?:allowed|permitted|comfortable) to\b"
    r"|\b(?:it|this) (?:would|is) (?:not be |not |be )?(?:inappropriate|unethical) (?:for me )?to\b"
    r"|\bI (?:strongly )?(?:advise|urge|caution) (?:you )?against\b",
    re.IGNORECASE,
)
SENSITIVE = re.compile(
    r"\b(?:kill|murder|bomb|explosive|weapon|gun|firearm|poison|hack|hacking|malware|ransomware|"
    r"steal|theft|fraud|scam|launder|drug|cocaine|heroin|meth|suicide|self-harm|harm|hurt|abuse|"
    r"racist|sexist|slur|porn|sexual|nude|violence|violent|terror|attack|illegal|crime|criminal|"
    r"cheat|counterfeit|jailbreak|extremis\w*|hate|insult|password|private|personal data)\b",
    re.IGNORECASE,
)
# With tools declared, "I can't order a pizza: I have no function for that" is the assistant
# keeping to its tools, which tool-use data teaches on purpose.
OUT_OF_SCOPE = re.compile(r"function|capabilit|tool|abilit|access to|external task|can only|limited to", re.IGNORECASE)
HEAD_CHARS = 400  # refusals open the answer; a sentence deep inside a long answer is context


def refusal(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    if row.is_text or row.tags & ctx.refusal_tags:
        return None
    for i, (prompt, answer) in enumerate(row.turns):
        match = REFUSAL.search(answer[:HEAD_CHARS])
        if row.has_tools and match and OUT_OF_SCOPE.search(answer[:HEAD_CHARS]):
            continue
        if match and not SENSITIVE.search(prompt):
            return Finding("refusal", 1.0, threshold,
                           f"answer {i + 1} refuses a benign prompt: {match.group()!r} "
                           "(tag the row 'refusal' if that is intended)")  # fmt: skip
    return None
