"""The pre-flight mask report (invariant 5): what will be trained, checked before the first step.

The checks look at the ids and labels themselves, not at how the renderer meant to build them,
so a renderer bug is caught here too:

- every row has supervised tokens;
- every supervised span ends with the end-of-turn token (the model learns to stop);
- for a sample of rows, the inference prompt (messages[:k] + generation prompt) is a token-level
  prefix of the training row (invariant 4) up to its last token, which whole-text tokenization
  may join to the answer's first characters (a "\n\n"), as an inference engine's prompt and its
  tokenized history also differ there;
- the ids equal the whole rendered text tokenized in one call by the tokenizer itself, what vLLM,
  llama.cpp and `apply_chat_template(tokenize=True)` feed the model (every row up to
  WHOLE_TEXT_ROWS, else an even spread of that many); a row that differs is a problem, named.
  Rows where a user typed special-token text differ on purpose (that text stays text, see
  template/wholetext.py) and are counted instead.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import numpy as np

from sftlab.core.errors import MaskError, Rejection, RowError
from sftlab.core.types import IGNORE_INDEX, Conversation, TokenizedExample
from sftlab.template.messages import to_template_dict
from sftlab.template.render import Renderer

SAMPLE = 64
# Rows compared with the tokenizer's own whole-text encoding (all rows up to this many, else an
# even spread). The renderer's ids *are* that encoding (render.py calls the same tokenizer on the
# same text), so this guards the renderer itself; comparing every row of a 50,000-row set would
# re-render and re-tokenize it all (+5.6 s of CPU per 10,000 SmolLM2 rows, about +60% of the
# data stage), 2,048 rows cost about 1 s.
WHOLE_TEXT_ROWS = 2048


def supervised_spans(labels: np.ndarray) -> list[tuple[int, int]]:
    """Maximal [start, end) runs of supervised positions."""
    on = np.concatenate([[False], labels != IGNORE_INDEX, [False]])
    edges = np.flatnonzero(on[1:] != on[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def span_problems(example: TokenizedExample, eot_id: int, check_ends: bool) -> list[str]:
    spans = supervised_spans(example.labels)
    if not spans:
        return ["no supervised tokens"]
    if not check_ends:
        return []
    bad = [s for s in spans if example.labels[s[1] - 1] != eot_id]
    if bad and not (example.truncated and bad == spans[-1:]):
        return [f"{len(bad)} supervised span(s) do not end with the end-of-turn token"]
    return []


def prefix_problems(renderer: Renderer, conv: Conversation, example: TokenizedExample) -> list[str]:
    """Invariant 4 at token level: each assistant turn's inference prompt prefixes the row (its
    last token may merge with the answer's first characters)."""
    problems = []
    ids = example.input_ids.tolist()
    for k, message in enumerate(conv.messages):
        if message.role != "assistant":
            continue
        try:
            prompt = renderer.encode_prompt(Conversation(conv.messages[:k], conv.tools))
        except RowError as err:
            problems.append(f"cannot render the prompt for message {k}: {err}")
            continue
        if (
            len(prompt) <= len(ids)
            and ids[: len(prompt) - 1] != prompt[:-1]
            and not example.truncated
        ):
            problems.append(
                f"the inference prompt for message {k} is not a prefix of the training tokens"
            )
    return problems


def whole_text_problems(
    renderer: Renderer, pairs: Sequence[tuple[Conversation, TokenizedExample]], batch: int = 1024
) -> tuple[list[dict], int]:
    """Rows whose ids differ from the tokenizer's own encoding of the whole rendered text, and the
    number of rows skipped because a user typed special-token text in them."""
    tokenizer = renderer.tokenizer
    specials = [t for t in tokenizer.all_special_tokens if t]
    problems, skipped = [], 0
    for start in range(0, len(pairs), batch):
        chunk, texts = [], []
        for conv, ex in pairs[start : start + batch]:
            messages, tools = renderer.prepare(conv)
            user_text = json.dumps(
                [_user_strings(m) for m in messages] + [tools], ensure_ascii=False
            )
            if any(t in user_text for t in specials):
                skipped += 1
                continue
            chunk.append(ex)
            texts.append(
                renderer.render_text([to_template_dict(m) for m in messages], tools, False)
            )
        wholes = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        for ex, whole in zip(chunk, wholes, strict=True):
            ids = ex.input_ids.tolist()
            if whole[: len(ids)] != ids or (len(whole) != len(ids) and not ex.truncated):
                at = next(
                    (i for i, (a, b) in enumerate(zip(ids, whole, strict=False)) if a != b),
                    min(len(ids), len(whole)),
                )
                problems.append({"row": str(ex.source), "problem": (
                    f"token ids differ from the whole rendered text tokenized in one call (what "
                    f"inference engines feed the model) from token {at} on"
                )})  # fmt: skip
    return problems, skipped


def _user_strings(message) -> list:
    return [message.content, [[c.name, c.arguments] for c in message.tool_calls]]


def mask_report(
    renderer: Renderer,
    conversations: Sequence[Conversation],
    examples: Sequence[TokenizedExample],
    rejected: Sequence[Rejection],
    truncated: int,
) -> dict:
    """Statistics and problems; `conversations[i]` is the source of `examples[i]`."""
    eot = renderer.fmt.end_of_turn_id
    problems: list[dict] = []
    spans = ending = 0
    for conv, ex in zip(conversations, examples, strict=True):
        chat_turns = conv.kind == "chat" and renderer.fmt.mask != "all"
        for problem in span_problems(ex, eot, chat_turns):
            problems.append({"row": str(ex.source), "problem": problem})
        runs = supervised_spans(ex.labels)
        spans += len(runs)
        ending += int(sum(ex.labels[end - 1] == eot for _, end in runs))
    step = max(1, len(examples) // SAMPLE)
    sample = list(zip(conversations, examples, strict=True))[::step][:SAMPLE]
    for conv, ex in sample:
        if conv.kind != "chat":
            continue
        problems += [
            {"row": str(ex.source), "problem": p} for p in prefix_problems(renderer, conv, ex)
        ]
    chat = [(c, e) for c, e in zip(conversations, examples, strict=True) if c.kind == "chat"]
    chat = chat[:: max(1, -(-len(chat) // WHOLE_TEXT_ROWS))]
    whole_problems, special_text_rows = whole_text_problems(renderer, chat)
    problems += whole_problems
    tokens = sum(len(e) for e in examples)
    supervised = sum(e.n_supervised for e in examples)
    return {
        "rows": len(examples),
        "tokens": tokens,
        "supervised_tokens": supervised,
        "supervised_share": round(supervised / tokens, 4) if tokens else 0.0,
        "rows_without_supervised_tokens": int(sum(e.n_supervised == 0 for e in examples)),
        "supervised_spans": spans,
        "end_of_turn_token": renderer.fmt.end_of_turn,
        "spans_ending_in_end_of_turn": ending,
        "truncated_rows": truncated,
        "rejected_rows": len(rejected),
        "rejected_by_reason": dict(Counter(_reason_key(r) for r in rejected).most_common(20)),
        "prefix_checked_rows": len(sample),
        "whole_text_checked_rows": len(chat),
        "whole_text_tokenization_mismatches": len(whole_problems),
        "rows_with_special_token_text": special_text_rows,
        "problems": problems[:200],
        "problem_count": len(problems),
    }


def _reason_key(rejection: Rejection) -> str:
    return f"{rejection.stage}: {rejection.reason.split(':')[0][:80]}"


def preflight(report: dict) -> None:
    """Stop before training when the mask is broken; say which rows and why."""
    if report["rows"] == 0:
        raise MaskError(
            "no trainable rows: every row was rejected "
            f"({report['rejected_rows']}); see rejected.jsonl. Reasons: {report['rejected_by_reason']}"
        )
    if report["problem_count"]:
        listed = "\n".join(f"  {p['row']}: {p['problem']}" for p in report["problems"][:20])
        raise MaskError(
            f"the mask check failed for {report['problem_count']} row(s); training would learn the "
            f"wrong thing:\n{listed}"
        )
