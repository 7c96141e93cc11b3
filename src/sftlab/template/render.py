"""Conversation + tokenizer -> (input_ids, labels), with the mask built at render time.

How the supervised spans are found, from the model's own template (DESIGN invariant 1):

1. Render the conversation with every message content replaced by a placeholder \\ue000<i>\\ue001.
   The result, the *skeleton*, shows which text the template writes and where each content goes.
2. For each assistant turn k, render messages[:k] + generation prompt. It must be a prefix of the
   skeleton (invariant 4: training and inference see the same prompt). Where it ends, the
   assistant's part begins; it ends with the end-of-turn token right after the content.
3. Render once more with the real contents and check it equals the skeleton with contents put
   back; a template that rewrites or branches on content fails this, and the row is rejected.
4. Cut the skeleton at those boundaries into pieces; supervised pieces give character spans.
5. Tokenize the whole rendered text in one call, as inference engines do (template/wholetext.py:
   user-typed special tokens stay text), and label the tokens that start inside a span.

    skeleton:  <|im_start|>user\\n  [P0]  <|im_end|>\\n<|im_start|>assistant\\n  [P1]  <|im_end|>  \\n
    pieces:    template             user  template                            asst  EOT         template
    labels:    .................................................................xxxxxxxxxxxx.......

Skeleton analysis depends only on the conversation's shape (roles, empty contents, train flags),
so it is cached per shape; each row then costs one real render and its tokenization. Rows whose
template writes tool calls or tool schemas itself (user data inside template text) are analysed
one by one, so the cache never grows with argument values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import jinja2
import numpy as np

from sftlab.core.errors import RowError
from sftlab.core.types import IGNORE_INDEX, Conversation, Message, TokenizedExample
from sftlab.template import jinja
from sftlab.template.messages import (
    fold_tool_calls,
    fold_tools_into_system,
    masked_specials,
    masked_tool_calls,
    to_template_dict,
    tool_call_data,
)
from sftlab.template.skeleton import (
    PLACEHOLDER,
    Piece,
    Skeleton,
    cut,
    fill,
    placeholder,
    trimmed_contents,
)
from sftlab.template.wholetext import WholeText, first_token_at, token_labels


@dataclass(frozen=True)
class ChatFormat:
    """What must be identical in training and at inference; saved with every run."""

    template: str  # Jinja source, with the run's default system prompt baked in (see format.py)
    end_of_turn: str
    end_of_turn_id: int
    native_tools: bool = False
    mask: str = "assistant"  # assistant | last_assistant | all
    name: str = "model"  # the model's own template, a library format's name, or a file's path
    added_token_ids: tuple[int, ...] = ()  # markers added to the vocabulary (rows to train)


class Renderer:
    """Renders conversations for one tokenizer and ChatFormat."""

    def __init__(self, tokenizer, fmt: ChatFormat):
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.compiled = jinja.compile_template(fmt.template)
        self.special_map = {
            k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)
        }
        self.whole = WholeText(tokenizer)
        self._skeletons: dict[tuple, Skeleton] = {}
        self._guarded: dict[tuple[str, str | None], str] = {}
        bos = tokenizer.bos_token_id
        plain_ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.text_bos = bos if bos is not None and plain_ids[:1] == [bos] else None

    @property
    def cached_shapes(self) -> int:
        """Conversation shapes analysed so far (rows carrying tool data are not cached)."""
        return len(self._skeletons)

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
    ) -> Skeleton:
        if tools or any(m.tool_calls for m in messages):  # user data in template text: per row
            return self._analyse(messages, tools, generation_prompt)
        key = (tuple((m.role, m.train, not m.content) for m in messages), generation_prompt)
        if key not in self._skeletons:
            self._skeletons[key] = self._analyse(messages, tools, generation_prompt)
        return self._skeletons[key]

    def _analyse(self, messages: list[Message], tools, generation_prompt: bool) -> Skeleton:
        # An empty content stays empty: templates branch on it (`{% if message.content %}`).
        dicts = [
            to_template_dict(m, placeholder(i) if m.content else "") for i, m in enumerate(messages)
        ]
        text = self.render_text(dicts, tools, generation_prompt)
        found = [int(m.group(1)) for m in PLACEHOLDER.finditer(text)]
        for i, m in enumerate(messages):
            if m.content and found.count(i) != 1:
                raise RowError(
                    f"the chat template renders message {i} ({m.role}) {found.count(i)} times; "
                    "expected once"
                )
        neutral = self._neutral_text(messages, tools, generation_prompt, text)
        spans, turn_ends = self._assistant_spans(messages, dicts, tools, text, neutral or text)
        pieces = cut(text, spans, turn_ends, self.fmt.mask == "all", neutral)
        markers = sum(
            len(self.whole.markers(p.neutral or p.text)) for p in pieces if not p.is_content
        )
        return Skeleton(tuple(pieces), markers)

    def _neutral_text(self, messages, tools, generation_prompt: bool, text: str) -> str | None:
        """The skeleton rendered with special-token text in tool names, arguments and schemas
        masked: where it still has a special token, the template wrote it (None: no such text)."""
        user_data = json.dumps([tool_call_data(m) for m in messages] + [tools], ensure_ascii=False)
        if not self.whole.has_special_text(user_data):
            return None
        mask = self.whole.pattern
        masked = [masked_tool_calls(m, mask) for m in messages]
        dicts = [
            to_template_dict(m, placeholder(i) if m.content else "") for i, m in enumerate(masked)
        ]
        neutral = self.render_text(dicts, masked_specials(tools, mask), generation_prompt)
        if len(neutral) != len(text) or any(
            text[a:b] != neutral[a:b] for a, b in self.whole.markers(neutral)
        ):
            raise RowError(
                "a tool name, argument or schema contains special-token text and the chat "
                "template transforms it, so its own markers cannot be told from the user's"
            )
        return neutral

    def _assistant_spans(self, messages, dicts, tools, text: str, neutral: str):
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
            end = neutral.find(eot, content_end)  # the template's own, not one in a tool argument
            next_content = PLACEHOLDER.search(text, content_end)
            if end < 0 or (next_content and next_content.start() < end):
                raise RowError(f"no end-of-turn token {eot!r} after assistant message {k}")
            turn_ends.append(end + len(eot))
            if k in chosen:
                spans.append((len(prompt), end + len(eot)))
        for k, m in enumerate(messages):  # non-assistant turns marked train: true, with their end
            if m.role != "assistant" and m.train and m.content:
                start = text.index(placeholder(k))
                end = start + len(placeholder(k))
                spans.append((start, end + len(eot) if text.startswith(eot, end) else end))
        return spans, turn_ends

    # -- tokenization ------------------------------------------------------------------------

    def pieces(
        self, conv: Conversation, generation_prompt: bool = False
    ) -> tuple[Skeleton, list[str]]:
        """The row's skeleton and its message contents (verified against a real render)."""
        messages, tools = self.prepare(conv)
        skeleton = self.skeleton(messages, tools, generation_prompt)
        contents = [m.content for m in messages]
        real = self.render_text([to_template_dict(m) for m in messages], tools, generation_prompt)
        if real != fill(skeleton.pieces, contents):
            contents = trimmed_contents(skeleton.pieces, contents, real)
            if contents is None:
                raise RowError(
                    "the chat template renders this conversation's content differently from the "
                    "content itself (it rewrites or branches on it), so the assistant's tokens "
                    "cannot be located reliably"
                )
        return skeleton, contents

    def encode_many(
        self, conversations: Sequence[Conversation], generation_prompt: bool = False
    ) -> list[TokenizedExample | RowError]:
        """Rows -> examples (or the RowError that rejects each). Whole texts go to the tokenizer
        in one batch, which it spreads over the cores."""
        out: list = []
        chat: list[int] = []  # positions in `out` of chat rows that rendered
        raw: list[int] = []
        for conv in conversations:
            if conv.kind == "text":
                raw.append(len(out))
                out.append(conv)
                continue
            try:
                out.append((conv, *self.pieces(conv, generation_prompt)))
                chat.append(len(out) - 1)
            except RowError as err:
                out.append(err)
        for i, result in zip(chat, self._encode_chat([out[i] for i in chat]), strict=True):
            out[i] = result
        texts = self.whole.plain.encode_batch([out[i].text for i in raw], add_special_tokens=False)
        for i, encoding in zip(raw, texts, strict=True):
            out[i] = self._raw_example(out[i], encoding.ids)
        return out

    def _encode_chat(self, rows: list[tuple[Conversation, Skeleton, list[str]]]) -> list:
        """Each row's whole text, tokenized as `tokenizer(text)` does. A row holding more special
        tokens than its template writes (a user typed one) is encoded again, guarded: only the
        template's own markers special (template/wholetext.py)."""
        texts = [fill(skeleton.pieces, contents) for _, skeleton, contents in rows]
        encodings = self.whole.special.encode_batch(texts, add_special_tokens=False)
        forged = [
            k
            for k, ((_, skeleton, _), text) in enumerate(zip(rows, texts, strict=True))
            if self.whole.count_specials(text) != skeleton.markers
        ]
        results: list = [None] * len(rows)
        guarded: list[int] = []
        for k in forged:
            try:
                self.whole.check_reserved(texts[k])
                guarded.append(k)
            except RowError as err:
                results[k] = err
        if guarded:  # the guarded tokenizer is built on first use: seconds for a big vocabulary
            retexts = ["".join(self._parts(*rows[k][1:], guarded=True)) for k in guarded]
            for k, encoding in zip(guarded, self.whole.encode_guarded(retexts), strict=True):
                results[k] = self._chat_example(*rows[k], encoding, guarded=True)
        for k, row in enumerate(rows):
            if results[k] is None:
                results[k] = self._chat_example(*row, encodings[k], guarded=False)
        return results

    def _parts(self, skeleton: Skeleton, contents: list[str], guarded: bool) -> list[str]:
        return [
            contents[int(p.text)] if p.is_content else self._guard(p) if guarded else p.text
            for p in skeleton.pieces
        ]

    def _guard(self, piece: Piece) -> str:
        """Template text with each of the template's own markers replaced by its sentinel."""
        key = (piece.text, piece.neutral)
        if key not in self._guarded:
            text, out, at = piece.text, [], 0
            for a, b in self.whole.markers(piece.neutral or text):
                out += [text[at:a], self.whole.sentinel(text[a:b])]
                at = b
            self._guarded[key] = "".join(out) + text[at:]
        return self._guarded[key]

    def _raw_example(self, conv: Conversation, text_ids: list[int]) -> TokenizedExample:
        """Raw text: BOS if the tokenizer uses one, the text, EOS; all supervised."""
        ids = ([self.text_bos] if self.text_bos is not None else []) + text_ids
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return _example(ids, list(ids), conv, [])

    def _chat_example(
        self, conv: Conversation, skeleton: Skeleton, contents: list[str], encoding, guarded: bool
    ) -> TokenizedExample | RowError:
        """Label the tokens that start inside a supervised piece's characters."""
        lengths = [len(part) for part in self._parts(skeleton, contents, guarded)]
        ends = np.cumsum(lengths).tolist()
        n_chars = ends[-1] if ends else 0
        spans: list[tuple[int, int]] = []
        for piece, end, length in zip(skeleton.pieces, ends, lengths, strict=True):
            if not piece.supervised:
                continue
            if spans and spans[-1][1] == end - length:  # adjacent supervised pieces: one span
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((end - length, end))
        ids = self.whole.marker_ids(encoding.ids) if guarded else encoding.ids
        labels = token_labels(encoding, ids, spans, n_chars, IGNORE_INDEX)
        turn_ends = [
            first_token_at(encoding, end, n_chars, len(ids))
            for piece, end in zip(skeleton.pieces, ends, strict=True)
            if piece.turn_end
        ]
        if len(ids) > 1 and ids[0] == ids[1] == self.tokenizer.bos_token_id:
            return RowError("double BOS: the rendered conversation starts with two BOS tokens")
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


def _example(ids, labels, conv, turn_ends) -> TokenizedExample:
    return TokenizedExample(
        np.asarray(ids, dtype=np.int32),
        np.asarray(labels, dtype=np.int32),
        conv.source,
        turn_ends=tuple(turn_ends),
    )
