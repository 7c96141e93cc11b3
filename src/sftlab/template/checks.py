"""The pre-flight mask report (invariant 5): what will be trained, checked before the first step.

The checks look at the ids and labels themselves, not at how the renderer meant to build them,
so a renderer bug is caught here too:

- every row has supervised tokens;
- every supervised span ends with the end-of-turn token (the model learns to stop);
- for a sample of rows, the inference prompt (messages[:k] + generation prompt) is a token-level
  prefix of the training row (invariant 4);
- for a sample, our tokens equal a plain whole-text tokenization of the same render, i.e. what
  `transformers` users get at inference elsewhere (reported, not fatal).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from sftlab.core.errors import MaskError, Rejection, RowError
from sftlab.core.types import IGNORE_INDEX, Conversation, TokenizedExample
from sftlab.template.render import Renderer, to_template_dict

SAMPLE = 64


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
    """Invariant 4 at token level: each assistant turn's inference prompt prefixes the row."""
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
        if len(prompt) <= len(ids) and ids[: len(prompt)] != prompt and not example.truncated:
            problems.append(
                f"the inference prompt for message {k} is not a prefix of the training tokens"
            )
    return problems


def whole_text_matches(renderer: Renderer, conv: Conversation, example: TokenizedExample) -> bool:
    messages, tools = renderer.prepare(conv)
    text = renderer.render_text([to_template_dict(m) for m in messages], tools, False)
    whole = renderer.tokenizer(text, add_special_tokens=False)["input_ids"]
    return whole[: len(example)] == example.input_ids.tolist()


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
    mismatched_whole = 0
    for conv, ex in sample:
        if conv.kind != "chat":
            continue
        problems += [
            {"row": str(ex.source), "problem": p} for p in prefix_problems(renderer, conv, ex)
        ]
        mismatched_whole += not whole_text_matches(renderer, conv, ex)
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
        "whole_text_tokenization_mismatches": mismatched_whole,
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
