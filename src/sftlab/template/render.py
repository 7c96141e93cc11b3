"""Conversation + tokenizer -> (input_ids, labels), with the mask built at render time.

How the supervised spans are found, from the model's own template (DESIGN invariant 1):

1. Render the conversation with every message content replaced by a placeholder \\ue000<i>\\ue001.
   The result, the *skeleton*, shows which text the template writes and where each content goes.
2. For each assistant turn k, render messages[:k] + generation prompt. It must be a prefix of the
   skeleton (invariant 4: training and inference see the same prompt). Where it ends, the
   assistant's part begins; it ends with the end-of-turn token right after the content.
3. Render once more with the real contents and check it equals the skeleton with contents put
   back; a template that rewrites or branches on content fails this, and the row is rejected.
4. Cut the skeleton at those boundaries into pieces. Template pieces are tokenized with special
   tokens recognised; content pieces as plain text, so a user typing `<|im_end|>` gets text
   tokens, not a forged turn end. Supervised pieces get labels == ids.

    skeleton:  <|im_start|>user\\n  [P0]  <|im_end|>\\n<|im_start|>assistant\\n  [P1]  <|im_end|>  \\n
    pieces:    template             user  template                            asst  EOT         template
    labels:    .................................................................xxxxxxxxxxxx.......

Skeleton analysis depends only on the conversation's shape (roles, tool calls, train flags), so
it is cached per shape; each row then costs one real render and its content tokenization.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import jinja2
import numpy as np

from sftlab.core.errors import RowError, TemplateError
from sftlab.core.types import IGNORE_INDEX, Conversation, Message, TokenizedExample
from sftlab.template import jinja

_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


def placeholder(i: int) -> str:
    return f"\ue000{i}\ue001"


@dataclass(frozen=True)
class ChatFormat:
    """What must be identical in training and at inference; saved with every run."""

    template: str  # Jinja source, with the run's default system prompt baked in (see format.py)
    end_of_turn: str
    end_of_turn_id: int
    native_tools: bool = False
    mask: str = "assistant"  # assistant | last_assistant | all


@dataclass(frozen=True)
class Piece:
    text: str  # template text, or a message index (as text) when is_content
    is_content: bool
    supervised: bool
    turn_end: bool = False  # an assistant turn ends here: a place truncation may cut


class Renderer:
    """Renders conversations for one tokenizer and ChatFormat."""

    def __init__(self, tokenizer, fmt: ChatFormat):
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.compiled = jinja.compile_template(fmt.template)
        self.special_map = {
            k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)
        }
        self._special, self._plain = _split_tokenizers(tokenizer)
        self._template_ids: dict[str, tuple[int, ...]] = {}
        self._skeletons: dict[tuple, list[Piece]] = {}
        bos = tokenizer.bos_token_id
        plain_ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.text_bos = bos if bos is not None and plain_ids[:1] == [bos] else None

    # -- rendering text -------------------------------------------------------------------

    def render_text(self, messages: list[dict], tools: list | None, generation_prompt: bool) -> str:
        try:
            return jinja.render(
                self.compiled,
                messages=messages,
                tools=tools or None,
                add_generation_prompt=generation_prompt,
                **self.special_map,
            )
        except jinja2.exceptions.TemplateError as exc:
            if isinstance(exc, jinja2.exceptions.SecurityError):
                raise
            raise RowError(f"the chat template refused this conversation: {exc}") from None
        except (TypeError, KeyError, AttributeError, IndexError) as exc:
            raise RowError(f"the chat template failed on this conversation: {exc!r}") from None

    def prepare(self, conv: Conversation) -> tuple[list[Message], list | None]:
        """Fold tool calls into text for templates that cannot render them."""
        messages = list(conv.messages)
        tools = list(conv.tools) or None
        if self.fmt.native_tools:
            return messages, tools
        messages = [fold_tool_calls(m) for m in messages]
        if tools:
            messages = fold_tools_into_system(messages, tools)
        return messages, None

    # -- skeleton analysis (cached per conversation shape) --------------------------------

    def skeleton(
        self, messages: list[Message], tools: list | None, generation_prompt: bool
    ) -> list[Piece]:
        key = (
            tuple((m.role, m.train, _calls_json(m)) for m in messages),
            json.dumps(tools, sort_keys=True) if tools else "",
            generation_prompt,
        )
        if key not in self._skeletons:
            self._skeletons[key] = self._analyse(messages, tools, generation_prompt)
        return self._skeletons[key]

    def _analyse(self, messages: list[Message], tools, generation_prompt: bool) -> list[Piece]:
        dicts = [to_template_dict(m, placeholder(i)) for i, m in enumerate(messages)]
        text = self.render_text(dicts, tools, generation_prompt)
        found = [int(m.group(1)) for m in _PLACEHOLDER.finditer(text)]
        for i, m in enumerate(messages):
            count = found.count(i)
            if count > 1 or (count == 0 and not (m.role == "assistant" and m.tool_calls)):
                raise RowError(
                    f"the chat template renders message {i} ({m.role}) {count} times; expected once"
                )
        spans, turn_ends = self._assistant_spans(messages, dicts, tools, text)
        return _cut(text, spans, turn_ends, self.fmt.mask == "all")

    def _assistant_spans(self, messages, dicts, tools, text: str):
        """[start, end) character spans the model must produce: from the end of the generation
        prompt to the end-of-turn token after the content (tool calls the template writes after
        the content included). Verifies invariant 4 on the way. Also returns the turn ends."""
        chosen = supervised_turns(messages, self.fmt.mask)
        spans, turn_ends = [], []
        eot = self.fmt.end_of_turn
        for k, m in enumerate(messages):
            if m.role != "assistant":
                continue
            prompt = self.render_text(dicts[:k], tools, generation_prompt=True)
            if not text.startswith(prompt):
                raise RowError(
                    f"train/inference mismatch at message {k}: the prompt the template renders for "
                    "generation is not a prefix of the training text"
                )
            mark = text.find(placeholder(k), len(prompt))
            content_end = mark + len(placeholder(k)) if mark >= 0 else len(prompt)
            end = text.find(eot, content_end)
            next_content = _PLACEHOLDER.search(text, content_end)
            if end < 0 or (next_content and next_content.start() < end):
                raise RowError(f"no end-of-turn token {eot!r} after assistant message {k}")
            turn_ends.append(end + len(eot))
            if k in chosen:
                spans.append((len(prompt), end + len(eot)))
        for k, m in enumerate(messages):  # non-assistant turns marked train: true, with their end
            if m.role != "assistant" and m.train:
                start = text.index(placeholder(k))
                end = start + len(placeholder(k))
                spans.append((start, end + len(eot) if text.startswith(eot, end) else end))
        return spans, turn_ends

    # -- tokenization ------------------------------------------------------------------------

    def pieces(
        self, conv: Conversation, generation_prompt: bool = False
    ) -> tuple[list[Piece], list[str]]:
        """The row's pieces and its message contents (verified against a real render)."""
        messages, tools = self.prepare(conv)
        skeleton = self.skeleton(messages, tools, generation_prompt)
        contents = [m.content for m in messages]
        real = self.render_text([to_template_dict(m) for m in messages], tools, generation_prompt)
        if real != _fill(skeleton, contents):
            contents = [c.strip() for c in contents]  # templates that trim content
            if real != _fill(skeleton, contents):
                raise RowError(
                    "the chat template renders this conversation's content differently from the "
                    "content itself (it rewrites or branches on it), so the assistant's tokens "
                    "cannot be located reliably"
                )
        return skeleton, contents

    def template_ids(self, text: str) -> tuple[int, ...]:
        ids = self._template_ids.get(text)
        if ids is None:
            ids = tuple(self._special.encode(text, add_special_tokens=False).ids)
            self._template_ids[text] = ids
        return ids

    def content_ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._plain.encode_batch(texts, add_special_tokens=False)]

    def assemble(self, pieces: list[Piece], content_ids: dict[int, list[int]]):
        """Concatenate piece ids; returns ids, labels and the token offsets of turn ends."""
        ids: list[int] = []
        labels: list[int] = []
        turn_ends: list[int] = []
        for piece in pieces:
            part = (
                content_ids[int(piece.text)] if piece.is_content else self.template_ids(piece.text)
            )
            ids.extend(part)
            labels.extend(part if piece.supervised else [IGNORE_INDEX] * len(part))
            if piece.turn_end:
                turn_ends.append(len(ids))
        if len(ids) > 1 and ids[0] == ids[1] == self.tokenizer.bos_token_id:
            raise RowError("double BOS: the rendered conversation starts with two BOS tokens")
        return ids, labels, turn_ends

    def encode_many(
        self, conversations: Sequence[Conversation], generation_prompt: bool = False
    ) -> list[TokenizedExample | RowError]:
        """Rows -> examples (or the RowError that rejects each). Every content piece of every row
        goes to the tokenizer in one batch, which it spreads over the cores."""
        staged: list = []
        texts: list[str] = []
        for conv in conversations:
            if conv.kind == "text":
                staged.append((conv, None, len(texts)))
                texts.append(conv.text)
                continue
            try:
                pieces, contents = self.pieces(conv, generation_prompt)
            except RowError as err:
                staged.append(err)
                continue
            needed = sorted({int(p.text) for p in pieces if p.is_content})
            staged.append((conv, (pieces, needed), len(texts)))
            texts.extend(contents[i] for i in needed)
        encoded = self.content_ids(texts) if texts else []
        return [
            item if isinstance(item, RowError) else self._finish(*item, encoded) for item in staged
        ]

    def _finish(self, conv: Conversation, layout, offset: int, encoded: list[list[int]]):
        if layout is None:  # raw text: BOS if the tokenizer uses one, the text, EOS; all supervised
            ids = ([self.text_bos] if self.text_bos is not None else []) + encoded[offset]
            if self.tokenizer.eos_token_id is not None:
                ids.append(self.tokenizer.eos_token_id)
            return _example(ids, list(ids), conv, [])
        pieces, needed = layout
        by_index = {i: encoded[offset + k] for k, i in enumerate(needed)}
        try:
            ids, labels, turn_ends = self.assemble(pieces, by_index)
        except RowError as err:
            return err
        return _example(ids, labels, conv, turn_ends)

    def encode(self, conv: Conversation) -> TokenizedExample:
        """One row -> ids and labels (no length limit; see template.encode.fit_length)."""
        result = self.encode_many([conv])[0]
        if isinstance(result, RowError):
            raise result
        return result

    def encode_prompt(self, conv: Conversation) -> list[int]:
        """Inference: messages + generation prompt, tokenized exactly as in training."""
        result = self.encode_many([conv], generation_prompt=True)[0]
        if isinstance(result, RowError):
            raise result
        return result.input_ids.tolist()


# -- helpers ------------------------------------------------------------------------------------


def supervised_turns(messages: list[Message], mask: str) -> set[int]:
    """Indices of assistant messages whose tokens carry loss under the policy and train flags."""
    assistant = [i for i, m in enumerate(messages) if m.role == "assistant"]
    chosen = set(assistant[-1:]) if mask == "last_assistant" else set(assistant)
    for i in assistant:
        if messages[i].train is True:
            chosen.add(i)
        elif messages[i].train is False:
            chosen.discard(i)
    return chosen


def _cut(text: str, spans, turn_ends, supervise_all: bool) -> list[Piece]:
    """Split the skeleton at placeholders, span boundaries and turn ends; mark supervised pieces."""
    cuts = {0, len(text), *turn_ends}
    for start, end in spans:
        cuts.update((start, end))
    for match in _PLACEHOLDER.finditer(text):
        cuts.update(match.span())
    bounds = sorted(cuts)
    pieces = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        match = _PLACEHOLDER.fullmatch(text, a, b)
        inside = supervise_all or any(s <= a and b <= e for s, e in spans)
        pieces.append(
            Piece(
                match.group(1) if match else text[a:b], bool(match), inside, turn_end=b in turn_ends
            )
        )
    return pieces


def _fill(pieces: list[Piece], contents: list[str]) -> str:
    return "".join(contents[int(p.text)] if p.is_content else p.text for p in pieces)


def _example(ids, labels, conv, turn_ends) -> TokenizedExample:
    return TokenizedExample(
        np.asarray(ids, dtype=np.int32),
        np.asarray(labels, dtype=np.int32),
        conv.source,
        turn_ends=tuple(turn_ends),
    )


def to_template_dict(message: Message, content: str | None = None) -> dict:
    out = {"role": message.role, "content": message.content if content is None else content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    return out


def _calls_json(message: Message) -> str:
    if not message.tool_calls:
        return ""
    return json.dumps([[c.name, c.arguments] for c in message.tool_calls], sort_keys=True)


def fold_tool_calls(message: Message) -> Message:
    """Templates without tool support drop `tool_calls`; write them into the content instead
    (Hermes-style tags) so the model still learns to emit them."""
    if not message.tool_calls:
        return message
    calls = "\n".join(
        "<tool_call>\n"
        + json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False)
        + "\n</tool_call>"
        for c in message.tool_calls
    )
    content = f"{message.content}\n{calls}" if message.content else calls
    return replace(message, content=content, tool_calls=())


def fold_tools_into_system(messages: list[Message], tools: list) -> list[Message]:
    schema = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    note = (
        'You can call these tools. To call one, answer with <tool_call>{"name": ..., '
        f'"arguments": {{...}}}}</tool_call>.\n<tools>\n{schema}\n</tools>'
    )
    if messages and messages[0].role == "system":
        first = messages[0]
        return [replace(first, content=f"{first.content}\n\n{note}"), *messages[1:]]
    return [Message("system", note), *messages]


@lru_cache(maxsize=8)
def _tokenizer_pair(serialized: str):
    from tokenizers import Tokenizer

    special = Tokenizer.from_str(serialized)
    special.encode_special_tokens = False
    plain = Tokenizer.from_str(serialized)
    plain.encode_special_tokens = True  # content: `<|im_end|>` typed by a user stays text
    return special, plain


def _split_tokenizers(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TemplateError(
            f"{type(tokenizer).__name__} has no fast (Rust) backend; sftlab needs a fast tokenizer "
            "to keep message content from being parsed as special tokens"
        )
    return _tokenizer_pair(backend.to_str())
