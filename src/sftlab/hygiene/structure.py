"""Structure rules: empty answers, answers that echo the prompt, truncated answers, unfilled
placeholders. Each: (row, threshold, context) -> Finding | None."""

from __future__ import annotations

import re

from sftlab.hygiene.text import Finding, RowText, RuleContext, without_code, words_of

# Sentence ends in the scripts we meet; closing quotes/brackets and markdown emphasis may follow.
SENTENCE_END = re.compile(r"[.!?…。！？；;:)\]}>\"'”’»」』）*_`~\d%]\s*$")
# A prose line that stops on one of these words was cut off.
DANGLING = {"the", "a", "an", "and", "or", "of", "to", "in", "with", "for", "that", "is", "are",
            "but", "because", "which", "as", "by", "from", "at", "was", "were", "be"}  # fmt: skip
SENTENCE_INSIDE = re.compile(r"[a-z][.!?]\s+[A-Z]")
LIST_OR_TABLE = re.compile(r"^\s*(?:[-*+•|#>]|\d+[.)]|[a-zA-Z][.)]\s)")
PLACEHOLDERS = re.compile(
    r"\{\{\s*[\w.]+\s*\}\}"  # {{name}}: a template variable nobody filled
    r"|<\s*no\s*input\s*>|<\s*noinput\s*>"  # alpaca's marker for an absent input
    r"|\[\s*(?:INSERT|PLACEHOLDER|TBD|FILL(?:\s+IN)?)\b[^\]\n]{0,60}\]"
    r"|\bTODO\b|\bTBD\b(?!\])|\bLorem ipsum\b",
    re.IGNORECASE,
)
PLACEHOLDER_HINT = re.compile(r"\{\{|<|\[|TODO|TBD|[Ll]orem")
TODO_CASE = re.compile(r"\bTODO\b|\bTBD\b")  # upper case only: "todo list" is fine


def empty_response(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    empty = [i for i, (_, answer) in enumerate(row.turns) if not answer.strip()]
    if len(empty) < threshold:
        return None
    return Finding("empty_response", float(len(empty)), threshold,
                   f"answer {empty[0] + 1} is empty or only whitespace")  # fmt: skip


ECHO_LENGTH = 0.5  # an echo is at least half as long as the instruction it repeats


def _trigrams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)} or {tuple(words)}


def echo(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    """An answer that repeats its instruction (or the whole prompt) teaches the model to parrot.

    Copying the *input* is often the task ("proofread: ...", "put these in order: ..."), so an
    answer is compared with the instruction: the prompt's first paragraph. And it must be about
    as long as what it copies: "3 for collective noun." quoting an option is an answer, not an echo.
    """
    worst = 0.0
    for prompt, answer in row.turns:
        answer_words = row.words if len(row.turns) == 1 else words_of(answer)
        instruction = words_of(prompt.strip().split("\n\n")[0])
        if not instruction or len(answer_words) < ECHO_LENGTH * len(instruction):
            continue
        vocab = set(instruction)
        # Cheap bound first: answers with few prompt words cannot copy many prompt 3-grams.
        if sum(w in vocab for w in answer_words) < 0.8 * threshold * len(answer_words):
            continue
        grams = _trigrams(answer_words)
        share = len(grams & _trigrams(instruction)) / len(grams)
        worst = max(worst, share)
    if worst < threshold or worst == 0:
        return None
    return Finding("echo", worst, threshold,
                   f"{worst:.0%} of the answer's word 3-grams are copied from the instruction")  # fmt: skip


def truncated(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    if row.is_text:
        return None  # raw documents end on category lists, link text, cut-off pages: no answer to finish
    for i, (_, answer) in enumerate(row.turns):
        why = _truncation(answer)
        if why:
            return Finding("truncated", 1.0, threshold, f"answer {i + 1} {why}")
    return None


def _truncation(answer: str) -> str | None:
    text = answer.rstrip()
    if not text:
        return None
    if text.count("```") % 2:
        return "leaves a ``` code fence open"
    prose = without_code(text)
    opened = prose.count("(") + prose.count("（")  # full-width brackets close ASCII ones in CJK text
    if opened > prose.count(")") + prose.count("）") and prose.rstrip()[-1:] not in ")）":
        return "leaves a '(' open at the end"
    if prose.count("“") > prose.count("”") or prose.count('"') % 2:
        if not text.endswith(('"', "”")) and '"' not in text[-40:] and "”" not in text[-40:]:
            return "leaves a quotation open"
    last_line = text.split("\n")[-1].strip()
    words = words_of(last_line)
    if text.endswith("```") or LIST_OR_TABLE.match(last_line) or SENTENCE_END.search(last_line):
        return None
    if words and words[-1] in DANGLING and len(words) >= 4:
        return f"stops on the word {words[-1]!r}, mid-sentence"
    if len(words) >= 8 and last_line[-1:] in ",–—(":
        return f"ends mid-sentence ({last_line[-40:]!r})"
    if _unfinished_sentence(text, last_line, words):
        return f"ends mid-sentence ({last_line[-40:]!r})"
    return None


def _unfinished_sentence(text: str, last_line: str, words: list[str]) -> bool:
    """A long prose line ending on a lower-case word, in an answer whose earlier sentences do
    end properly: the answer's own style says this one was cut. Calculations ('= 43 hats') and
    hashtags are how some data ends a line; they are not judged."""
    last = last_line.split()[-1]
    return (
        len(words) >= 12
        and len(set(words[-12:])) > 4  # a tail of a few words going round is a loop, not a cut
        and last.isalpha()
        and last.islower()
        and "=" not in last_line
        and not any(ch.isdigit() for ch in " ".join(last_line.split()[-3:]))
        and SENTENCE_INSIDE.search(text[: len(text) - len(last_line)] + last_line[:-1]) is not None
    )


def placeholder(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    texts = [row.context, row.response] if not row.is_text else [row.response]
    hits: list[str] = []
    for text in texts:
        if not PLACEHOLDER_HINT.search(text):
            continue  # one fast scan for the characters every placeholder starts with
        for match in PLACEHOLDERS.finditer(without_code(text)):
            found = match.group()
            if found.upper() in ("TODO", "TBD") and not TODO_CASE.fullmatch(found):
                continue
            hits.append(found)
    if len(hits) < threshold:
        return None
    shown = ", ".join(sorted(set(hits))[:3])
    return Finding("placeholder", float(len(hits)), threshold, f"unfilled placeholder(s): {shown}")
