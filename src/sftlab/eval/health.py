"""Stop and format health of generations: did the model end its turn, leak template tokens,
answer nothing, fall into a loop, or parrot the prompt back?

Every check works on decoded text, so it applies to any model and any template. Rates are shares
of the generations (floats in [0, 1]); an empty list gives zeros, never a division error.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from sftlab.eval.generate import Generation

_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    """Lower-cased words without punctuation: "Hello, World!" -> ["hello", "world"]."""
    return _WORD.findall(text.lower())


def is_loop(text: str, n: int = 4, min_repeats: int = 3) -> bool:
    """True when some run of `n` words occurs `min_repeats` times or more.

    A greedy decoder that lost its way repeats one block until the token limit; three copies of
    the same four words almost never happen in a sane short answer. Text without spaces (a wall
    of "!!!!" or one endless word) is a loop when one character makes up a run of n*min_repeats+.
    """
    words = _words(text)
    grams = Counter(zip(*(words[i:] for i in range(n)), strict=False))
    if grams and max(grams.values()) >= min_repeats:
        return True
    return re.search(rf"(.)\1{{{n * min_repeats - 1},}}", text) is not None


def is_echo(prompt: str, text: str, min_words: int = 3) -> bool:
    """True when the answer repeats the prompt: the same words, or the prompt's words (at least
    `min_words` of them, so "Hi" in "Hi there" is no echo) contiguously inside the answer."""
    asked, said = _words(prompt), _words(text)
    if not asked or not said:
        return False
    if said == asked:
        return True
    if len(asked) < min_words:
        return False
    width = len(asked)
    return any(said[i : i + width] == asked for i in range(len(said) - width + 1))


def leaked_markers(text: str, markers: Sequence[str]) -> list[str]:
    """The template markers (e.g. "<|im_start|>") found in the answer, each once, in `markers` order."""
    return [m for m in dict.fromkeys(markers) if m and m in text]


def example_health(prompt: str, generation: Generation, markers: Sequence[str]) -> dict:
    """Per-example flags, for the per-example table of the eval report."""
    return {
        "stopped": bool(generation.stopped),
        "loop": is_loop(generation.text),
        "echo": is_echo(prompt, generation.text),
        "empty": not generation.text.strip(),
        "leaked": leaked_markers(generation.text, markers),
        "tokens": len(generation.token_ids),
    }


def health(
    prompts: Sequence[str], generations: Sequence[Generation], markers: Sequence[str]
) -> dict:
    """{"n", "stop_rate", "loop_rate", "echo_rate", "empty_rate", "leak_rate"} over the generations."""
    if len(prompts) != len(generations):
        raise ValueError(f"health: {len(prompts)} prompts but {len(generations)} generations")
    flags = [example_health(p, g, markers) for p, g in zip(prompts, generations, strict=True)]
    n = len(flags)

    def rate(key: str) -> float:
        return sum(bool(f[key]) for f in flags) / n if n else 0.0

    return {
        "n": n,
        "stop_rate": rate("stopped"),
        "loop_rate": rate("loop"),
        "echo_rate": rate("echo"),
        "empty_rate": rate("empty"),
        "leak_rate": rate("leaked"),
    }


def template_markers(tokenizer) -> list[str]:
    """The strings a leaked template would show: the tokenizer's special and added control tokens."""
    specials = list(getattr(tokenizer, "all_special_tokens", []) or [])
    added = [
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special
    ]
    return [m for m in dict.fromkeys(specials + added) if m.strip()]
