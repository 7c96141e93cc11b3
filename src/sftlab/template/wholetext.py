"""Tokenize the whole rendered text, as inference engines do, with only the template's own
markers as control tokens.

vLLM, llama.cpp and `apply_chat_template(tokenize=True)` tokenize the rendered conversation in
one call. Tokenizing template and content pieces apart gives other ids: SentencePiece adds its
dummy-prefix "▁" at every piece, byte-level BPE merges whitespace across a boundary, Phi-3's
markers swallow the whitespace after them. So a row is tokenized whole, and its mask is placed by
character offsets.

One call recognises special-token text wherever it is, also in what a user typed (`<|im_end|>`
in a message or a tool argument would end the turn). A row whose token ids hold more special
tokens than the template wrote itself is tokenized again with every special token read as text,
except the template's own markers, which are first replaced by one private-use character each,
registered as a (non-special) added token with the same matching rules (lstrip, rstrip, ...):

    text:      <|im_start|>user\\nsay <|im_end|><|im_end|>\\n
    tokenized: \\U000f0001user\\nsay <|im_end|>\\U000f0002\\n     (encode_special_tokens=True)
    ids:       [im_start] user \\n say ␣< | im _ end |> [im_end] \\n

The tokenizer splits text at an added token before normalising and pre-tokenizing each segment,
so a sentinel cuts the text exactly where its marker did: for ordinary content the two calls give
the same ids, and specials typed by users become text.
"""

from __future__ import annotations

import re
from functools import lru_cache

from sftlab.core.errors import RowError, TemplateError

SENTINEL_BASE = 0xF0000  # Supplementary Private Use Area-A: one character per special token


class WholeText:
    """The tokenizers sftlab encodes with, and the template markers' sentinels."""

    def __init__(self, tokenizer):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TemplateError(
                f"{type(tokenizer).__name__} has no fast (Rust) backend; sftlab needs a fast "
                "tokenizer to keep message content from being parsed as special tokens"
            )
        serialized = backend.to_str()
        self.special, self.plain = _tokenizer_pair(serialized)
        added = backend.get_added_tokens_decoder()
        self.specials = {t.content: i for i, t in added.items() if t.special}
        # Longest first: the tokenizer matches the longest added token at a position.
        alternatives = sorted(self.specials, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None
        self._serialized = serialized
        self._sentinels: tuple | None = None

    def markers(self, text: str) -> list[tuple[int, int]]:
        """[start, end) of each special-token string in template text."""
        return [m.span() for m in self.pattern.finditer(text)] if self.pattern else []

    def has_special_text(self, text: str) -> bool:
        return bool(self.pattern and self.pattern.search(text))

    def count_specials(self, text: str) -> int:
        """Special tokens the tokenizer will find in `text` (it matches longest first, as here)."""
        return sum(1 for _ in self.pattern.finditer(text)) if self.pattern else 0

    # -- the guarded path: template markers become sentinels, every other special is text -------

    def sentinel(self, marker: str) -> str:
        return self._sentinel_tables()[0][marker]

    def encode_guarded(self, texts: list[str]) -> list:
        """Encode sentinel-substituted texts (see `sentinel`); map ids back with `marker_ids`."""
        return self._sentinel_tables()[1].encode_batch(texts, add_special_tokens=False)

    def check_reserved(self, text: str) -> None:
        """A user text holding a sentinel character would forge a marker: reject the row."""
        if any(ch in text for ch in self._sentinel_tables()[2]["chars"]):
            raise RowError(
                "the row contains private-use characters (U+F0000 and up) that sftlab reserves "
                "to mark the template's own special tokens"
            )

    def marker_ids(self, ids: list[int]) -> list[int]:
        by_sentinel = self._sentinel_tables()[2]["ids"]
        return [by_sentinel.get(i, i) for i in ids]

    def _sentinel_tables(self):
        if self._sentinels is None:
            self._sentinels = _sentinel_tokenizer(self._serialized)
        return self._sentinels


@lru_cache(maxsize=8)
def _tokenizer_pair(serialized: str):
    from tokenizers import Tokenizer

    special = Tokenizer.from_str(serialized)
    special.encode_special_tokens = False  # exactly `tokenizer(text, add_special_tokens=False)`
    plain = Tokenizer.from_str(serialized)
    plain.encode_special_tokens = True  # raw text rows: `<|im_end|>` typed by a user stays text
    return special, plain


@lru_cache(maxsize=8)
def _sentinel_tokenizer(serialized: str):
    from tokenizers import AddedToken, Tokenizer

    tokenizer = Tokenizer.from_str(serialized)
    tokenizer.encode_special_tokens = True
    specials = [t for t in tokenizer.get_added_tokens_decoder().items() if t[1].special]
    chars = {token.content: chr(SENTINEL_BASE + k) for k, (_, token) in enumerate(specials)}
    # One call: each add_tokens call rebuilds the added-token matcher, so adding Gemma's 6,249
    # special tokens one by one took minutes.
    tokenizer.add_tokens([
        AddedToken(chars[token.content], single_word=token.single_word, lstrip=token.lstrip,
                   rstrip=token.rstrip, normalized=token.normalized, special=False)
        for _, token in specials
    ])  # fmt: skip
    ids = {tokenizer.token_to_id(chars[token.content]): token_id for token_id, token in specials}
    return chars, tokenizer, {"ids": ids, "chars": set(chars.values())}


# -- placing the mask by character offsets ------------------------------------------------------


def first_token_at(encoding, pos: int, n_chars: int, n_tokens: int) -> int:
    """Index of the first token that starts at or after character `pos` (n_tokens if none).

    A token that starts before `pos` and reaches past it (the template's "\\n" merged with an
    answer's leading "\\n", a marker that swallows the whitespace after it) belongs to the side
    it starts on."""
    index, at = None, pos
    while index is None and at < n_chars:
        index = encoding.char_to_token(at)
        at += 1
    if index is None:
        return n_tokens
    while index > 0 and encoding.token_to_chars(index - 1)[0] >= pos:  # byte-fallback groups
        index -= 1
    while index < n_tokens and encoding.token_to_chars(index)[0] < pos:
        index += 1
    return index


def token_labels(encoding, ids: list[int], spans, n_chars: int, ignore: int) -> list[int]:
    """Labels: ids of the tokens that start inside a supervised character span, else `ignore`."""
    labels = [ignore] * len(ids)
    for start, end in spans:
        a = first_token_at(encoding, start, n_chars, len(ids))
        b = first_token_at(encoding, end, n_chars, len(ids))
        labels[a:b] = ids[a:b]
    return labels
