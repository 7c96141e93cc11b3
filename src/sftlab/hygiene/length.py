"""Length rules, in tokens of the target tokenizer (or approximate tokens without one).

Per row: answer too short or too long, prompt too long. Over the dataset: answer/prompt ratio
outliers by a robust z-score (median and MAD of log ratios), so "outlier" means outlier *for this
dataset*, not against a fixed number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from sftlab.hygiene.text import Finding, RowText, RuleContext

TokenCounter = Callable[[list[str]], list[int]]
APPROX_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
MAD_TO_SIGMA = 1.4826  # the MAD of a normal distribution times this is its standard deviation


def approximate_tokens(texts: list[str]) -> list[int]:
    """Words and punctuation marks: about one BPE token each for English, fewer for CJK."""
    return [len(APPROX_TOKEN.findall(t)) for t in texts]


def tokenizer_counter(tokenizer) -> TokenCounter:
    """Token counts from a Hugging Face tokenizer (no special tokens: content only)."""

    def count(texts: list[str]) -> list[int]:
        out = []
        for start in range(0, len(texts), 1024):
            batch = tokenizer(texts[start : start + 1024], add_special_tokens=False)["input_ids"]
            out += [len(ids) for ids in batch]
        return out

    return count


def response_too_short(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    if row.response_tokens >= threshold or not row.response.strip():
        return None  # an empty answer is empty_response's to report
    return Finding("response_too_short", row.response_tokens, threshold,
                   f"the answer has {row.response_tokens} tokens, fewer than {threshold:g}")  # fmt: skip


def response_too_long(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    if row.response_tokens <= threshold or row.is_text:
        return None  # a long raw document is normal pretraining text; rendering cuts it to length
    return Finding("response_too_long", row.response_tokens, threshold,
                   f"the answer has {row.response_tokens} tokens, more than {threshold:g}")  # fmt: skip


def prompt_too_long(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None:
    if row.prompt_tokens <= threshold:
        return None
    return Finding("prompt_too_long", row.prompt_tokens, threshold,
                   f"the prompt has {row.prompt_tokens} tokens, more than {threshold:g}")  # fmt: skip


def length_ratio(rows: Sequence[RowText], threshold: float) -> list[Finding | None]:
    """Rows whose answer/prompt length ratio sits far from the dataset's typical ratio."""
    chat = [i for i, r in enumerate(rows) if not r.is_text and r.prompt_tokens > 0]
    out: list[Finding | None] = [None] * len(rows)
    if len(chat) < 20:
        return out  # too few rows to say what is typical
    ratios = np.log(np.array([(rows[i].response_tokens + 1) / (rows[i].prompt_tokens + 1)
                              for i in chat]))  # fmt: skip
    median = float(np.median(ratios))
    spread = float(np.median(np.abs(ratios - median))) * MAD_TO_SIGMA or float(ratios.std()) or 1.0
    for i, value in zip(chat, ratios, strict=True):
        z = (value - median) / spread
        if abs(z) > threshold:
            typical = float(np.exp(median))
            side = "long" if z > 0 else "short"
            out[i] = Finding("length_ratio", abs(z), threshold,
                             f"answer/prompt = {rows[i].response_tokens}/{rows[i].prompt_tokens} tokens: "
                             f"unusually {side} for this dataset (typical ratio {typical:.2g}, "
                             f"robust z {z:+.1f})")  # fmt: skip
    return out
