"""The skeleton of a conversation: its render with every message content replaced by a
placeholder, cut into template and content pieces (see render.py for how it is derived)."""

from __future__ import annotations

import re
from dataclasses import dataclass

PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


def placeholder(i: int) -> str:
    return f"\ue000{i}\ue001"


@dataclass(frozen=True)
class Piece:
    text: str  # template text, or a message index (as text) when is_content
    is_content: bool
    supervised: bool
    turn_end: bool = False  # an assistant turn ends here: a place truncation may cut
    neutral: str | None = None  # template text with user-typed special tokens masked (tool data)


@dataclass(frozen=True)
class Skeleton:
    pieces: tuple[Piece, ...]
    markers: int  # special tokens the template itself writes: more in a row's ids means injection


def cut(text: str, spans, turn_ends, supervise_all: bool, neutral: str | None) -> list[Piece]:
    """Split the skeleton at placeholders, span boundaries and turn ends; mark supervised pieces."""
    cuts = {0, len(text), *turn_ends}
    for start, end in spans:
        cuts.update((start, end))
    for match in PLACEHOLDER.finditer(text):
        cuts.update(match.span())
    bounds = sorted(cuts)
    pieces = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        match = PLACEHOLDER.fullmatch(text, a, b)
        inside = supervise_all or any(s <= a and b <= e for s, e in spans)
        masked = neutral[a:b] if neutral is not None and neutral[a:b] != text[a:b] else None
        pieces.append(
            Piece(
                match.group(1) if match else text[a:b], bool(match), inside, b in turn_ends, masked
            )
        )
    return pieces


def trimmed_contents(pieces, contents: list[str], real: str) -> list[str] | None:
    """Contents as a trimming template wrote them (Llama 2 trims each message but the first user
    message's, which it joins to the system prompt), found by walking the real render piece by
    piece; None if some content is not its own text, trimmed or not."""
    chosen, pos = list(contents), 0
    for k, piece in enumerate(pieces):
        if not piece.is_content:
            if not real.startswith(piece.text, pos):
                return None
            pos += len(piece.text)
            continue
        i = int(piece.text)
        after = pieces[k + 1].text if k + 1 < len(pieces) else ""
        c = contents[i]
        fits = [
            t for t in (c, c.strip(), c.lstrip(), c.rstrip()) if real.startswith(t + after, pos)
        ]
        if not fits:
            return None
        chosen[i] = fits[0]
        pos += len(fits[0])
    return chosen if pos == len(real) else None


def fill(pieces: list[Piece], contents: list[str]) -> str:
    return "".join(contents[int(p.text)] if p.is_content else p.text for p in pieces)
