"""Few-shot prompts ("try a prompt first"): K training examples as earlier user/assistant turns
of the same conversation, so the chat template renders them exactly as it renders any dialogue.

The query's system message (if any) stays first; the examples' own system messages are dropped
(one conversation has one system prompt), and their turns carry no train flags.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from sftlab.core.types import Conversation, Message


def split_reference(conv: Conversation) -> tuple[Conversation, str]:
    """A held-out row -> (the conversation up to its last user turn, the reference answer)."""
    messages = list(conv.messages)
    if not messages or messages[-1].role != "assistant":
        where = f"{conv.source}: " if conv.source else ""
        raise ValueError(f"{where}an eval row must end with an assistant answer (the reference)")
    return replace(conv, messages=tuple(messages[:-1])), messages[-1].content


def few_shot_conversation(examples: Sequence[Conversation], query: Conversation) -> Conversation:
    """`query` preceded by the user/assistant turns of `examples`, in order."""
    system = [m for m in query.messages if m.role == "system"]
    shots = [
        Message(m.role, m.content, m.tool_calls)
        for example in examples
        for m in example.messages
        if m.role != "system"
    ]
    rest = [m for m in query.messages if m.role != "system"]
    return replace(query, messages=tuple(system + shots + rest))


def pick_shots(pool: Sequence[Conversation], k: int, seed: int = 0) -> list[Conversation]:
    """K examples drawn once (seeded) and shared by every query, as a prompt engineer would."""
    if k <= 0 or not pool:
        return []
    return random.Random(seed).sample(list(pool), min(k, len(pool)))
