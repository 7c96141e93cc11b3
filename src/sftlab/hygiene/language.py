"""Language and encoding rules.

language_mismatch: the answer is written in another language than the prompt. Decided by
  script first (Latin, Han/kana, Hangul, Cyrillic, Arabic, ...: exact, instant, no model), then,
  between Latin-script languages, by function-word counts for English, French, German, Spanish,
  Portuguese, Italian and Dutch. A language-ID package (langdetect, lingua) was not used: on short
  chat turns they guess, are slow on 50,000 rows, and langdetect is random without a seed; the
  failures that matter in SFT data (an English answer to a Chinese prompt, a translation pipeline
  gone wrong) show in the script or in the function words. Prompts that ask for a translation or
  a language are spared; code is ignored.
mojibake: ftfy's detector of text decoded with the wrong codec ("cafÃ©", "â€™").
control_chars: C0/C1 control characters (not tab/newline), U+FFFD, lone surrogates.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from ftfy.badness import badness

from sftlab.hygiene.text import Finding, RowText, RuleContext, without_code, words_of

SCRIPTS = (
    ("Han/Kana", re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")),
    ("Hangul", re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")),
    ("Cyrillic", re.compile(r"[\u0400-\u04ff]")),
    ("Arabic", re.compile(r"[\u0600-\u06ff\u0750-\u077f]")),
    ("Devanagari", re.compile(r"[\u0900-\u097f]")),
    ("Greek", re.compile(r"[\u0370-\u03ff]")),
    ("Hebrew", re.compile(r"[\u0590-\u05ff]")),
    ("Thai", re.compile(r"[\u0e00-\u0e7f]")),
    ("Latin", re.compile(r"[A-Za-z\u00c0-\u024f]")),
)
FUNCTION_WORDS = {
    "en": "the and is are of to that it for with this was you have not be on were which would",
    "fr": "le les et est des une du que dans pour pas sur avec ce il sont nous vous qui",
    "de": "der die das und ist nicht ein eine zu den mit sich auf für dem ich wir",
    "es": "el los las y es del que en una por con para se lo como más pero",
    "pt": "os as e é do da em um uma para com não que se mais mas nós",
    "it": "il lo gli le è di che un una per con non del della sono anche",
    "nl": "het een en is van dat niet op te met voor zijn ook ik",
}
# Only words that name one language count: a word in two lists ("que", "is") says nothing, nor
# does a non-English word that is also an English word ("as", "do", "die", "is").
_ENGLISH_LOOKALIKES = {"as", "do", "die", "is", "on", "a", "e", "in", "me", "no", "lo", "con", "per", "op", "den"}
_ALL = Counter(w for words in FUNCTION_WORDS.values() for w in set(words.split()))
WORD_LANG = [
    (lang, {w for w in words.split() if _ALL[w] == 1 and (lang == "en" or w not in _ENGLISH_LOOKALIKES)})
    for lang, words in FUNCTION_WORDS.items()
]
LANGS_OF_WORD: dict[str, list[str]] = {}
for _lang, _vocab in WORD_LANG:
    for _word in _vocab:
        LANGS_OF_WORD.setdefault(_word, []).append(_lang)
ENGLISH_ONLY = dict(WORD_LANG)["en"]
CJK_WEIGHT = 3  # one Han/kana/Hangul character carries about a word: ~3 Latin letters
MIN_LETTERS = 20
MIN_PROMPT_LETTERS = 8  # "What is DNA?" says which script the user writes in
MIN_FUNCTION_WORDS = 6
MIN_PROMPT_FUNCTION_WORDS = 4  # prompts are short; the answer must still be clearly other
ASKS_LANGUAGE = re.compile(
    r"translat|traduc|tradu|übersetz|перев|翻译|翻譯|译|英文|英语|中文|日语|日本語|韩语|法语|德语|"
    r"\b(?:in|into|to) (?:english|chinese|french|german|spanish|portuguese|italian|dutch|japanese|"
    r"korean|russian|arabic|hindi|greek|hebrew|thai|latin|pinyin)\b|\b(?:english|spanish|french|"
    r"german|chinese|japanese)\b"
)  # matched against lower-cased prompts
BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd\ud800-\udfff]")


def script_of(text: str, min_letters: int = MIN_LETTERS) -> tuple[str | None, float]:
    """The script with the most letters, and its share of all letters counted."""
    counts = {name: len(pattern.findall(text)) for name, pattern in SCRIPTS}
    for name in ("Han/Kana", "Hangul"):
        counts[name] *= CJK_WEIGHT
    total = sum(counts.values())
    if total < min_letters:
        return None, 0.0
    name = max(counts, key=counts.get)
    return name, counts[name] / total


def latin_language(text: str, min_words: int = MIN_FUNCTION_WORDS) -> str | None:
    """The language whose function words are clearly most frequent, or None when unsure."""
    scores: Counter[str] = Counter()
    for word in words_of(text):
        for lang in LANGS_OF_WORD.get(word, ()):
            scores[lang] += 1
    ranked = scores.most_common(2) + [("", 0), ("", 0)]
    (lang, best), (_, second) = ranked[0], ranked[1]
    return lang if best >= min_words and best >= 2 * second else None


def _plainly_english(row: RowText) -> bool:
    """A single answer whose words are mostly English function words' company: checked on the
    row's cached words, without a second pass over the text."""
    if len(row.turns) != 1:
        return False
    english = sum(1 for w in row.words if w in ENGLISH_ONLY)
    return english >= MIN_FUNCTION_WORDS and english >= 0.05 * len(row.words)


def language_mismatch(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    if row.is_text:
        return None
    for i, (prompt, answer) in enumerate(row.turns):
        if not prompt or ASKS_LANGUAGE.search(prompt.lower()):
            continue
        prompt_text, answer_text = without_code(prompt), without_code(answer)
        if not (prompt_text.isascii() and answer_text.isascii()):
            asked, asked_share = script_of(prompt_text, MIN_PROMPT_LETTERS)
            got, got_share = script_of(answer_text)
            if asked and got and asked != got and asked_share > 0.6 and got_share > 0.8:
                return Finding("language_mismatch", 1.0, threshold,
                               f"turn {i + 1}: the prompt is in {asked} script, the answer in {got}")  # fmt: skip
            if asked != "Latin" or got != "Latin":
                continue
        said = latin_language(prompt_text, MIN_PROMPT_FUNCTION_WORDS)
        if said:
            answered = latin_language(answer_text) if said != "en" or not _plainly_english(row) else None
            if answered and said != answered:
                return Finding("language_mismatch", 1.0, threshold,
                               f"turn {i + 1}: the prompt reads as {said}, the answer as {answered}")  # fmt: skip
    return None


def mojibake(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    texts = (row.context, row.response)
    if all(t.isascii() for t in texts):
        return None  # mojibake needs non-ASCII characters
    found = sum(badness(t) for t in texts if not t.isascii())
    if found < threshold:
        return None
    sample = next((m for t in texts for m in _mojibake_samples(t)), "")
    return Finding("mojibake", float(found), threshold,
                   f"{found} mis-decoded character sequence(s), e.g. {sample!r} (text decoded with the wrong codec)")  # fmt: skip


def _mojibake_samples(text: str):
    from ftfy.badness import BADNESS_RE

    for match in BADNESS_RE.finditer(text):
        start = max(match.start() - 8, 0)
        yield text[start : match.end() + 8]


def control_chars(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    bad = [(m.start(), m.group()) for t in (row.context, row.response) for m in BAD_CHARS.finditer(t)]
    if len(bad) < threshold:
        return None
    names = sorted({f"U+{ord(ch):04X} {unicodedata.name(ch, 'control')}" for _, ch in bad})
    return Finding("control_chars", float(len(bad)), threshold,
                   f"{len(bad)} control or invalid character(s): {', '.join(names[:3])}")  # fmt: skip
