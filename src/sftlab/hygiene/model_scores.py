"""Model-based scores: how a model sees each row's response.

For every row, under the model and through the training loss itself (`SupervisedLoss`: the same
renderer, the same supervised positions, end-of-turn token included):

    response_loss  mean nats per supervised token of the response given its prompt
    loss_alone     the same tokens with every prompt content (system, user, tool) emptied: the
                   template's structure stays, only what the prompt *says* is gone
    ifd            response_loss / loss_alone: the Instruction-Following Difficulty of Li et al.
                   (2024, "From Quantity to Quality"). Below 1 the prompt helps predict the
                   response; at or above 1 it does not (an unrelated or misleading prompt)

Surprising tokens: each response content token's surprisal s = -ln p(token | context) is
compared with the whole dataset's, as a robust z-score z = (s - median) / (1.4826 * MAD) over
all response content tokens scored. One surprising word in fluent text is normal (a name, a rare
word: on Alpaca, 28% of clean rows hold a token above 10 nats); garbage is a *run* of them. So a
row is flagged where a window of 3 consecutive content tokens has a mean surprisal with z above
`z_threshold` (7) and above `min_surprisal` nats (6; a floor for a very uniform dataset). On
SmolLM2 over 60 Alpaca rows with 20 garbage-injected copies (mojibake, random CJK/Cyrillic), the
highest clean window mean was 8.6 nats and the lowest garbage one 10.2 (median 12.8); z = 7
puts the line at ~10.4 nats there. 6.5 (~9.7) flagged 2 of 37 clean rows of another Alpaca
sample ("hopping mad skills"), so the line errs towards fewer false alarms. The tokens named
are those of flagged windows that are outliers on their own (z > 3 and above `min_surprisal`),
with their text and character offsets in the message content, so a person can see them.

This is the one hygiene module that runs a model; it is imported only when a model is given.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from sftlab.core.errors import RowError
from sftlab.core.types import IGNORE_INDEX, Conversation
from sftlab.model.device import resolve_precision
from sftlab.model.loss import SupervisedLoss
from sftlab.pack.collate import collate, group_by_budget
from sftlab.pack.packing import single_rows

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
OUTLIER_Z = 3.0  # inside a flagged run, the tokens named are those this far out on their own


@dataclass(frozen=True)
class SurprisingToken:
    text: str
    surprisal: float  # nats
    char_start: int  # offsets in the content of messages[message] (as the model saw it)
    char_end: int
    message: int  # index into the row's messages
    z: float = 0.0

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "surprisal": round(self.surprisal, 3),
            "z": round(self.z, 2),
            "char_start": self.char_start,
            "char_end": self.char_end,
            "message": self.message,
        }


@dataclass
class RowScore:
    response_loss: float = float("nan")
    loss_alone: float = float("nan")
    ifd: float = float("nan")
    n_tokens: int = 0  # supervised tokens scored
    surprising: list[SurprisingToken] = field(default_factory=list)
    error: str | None = None  # why the row could not be scored (it would not render)


class ScoredRows(list):
    """list[RowScore], one per input row, plus what the scoring measured."""

    tokens_per_s: float = 0.0
    median: float = 0.0  # dataset surprisal statistics behind the z-scores
    scale: float = 0.0


@dataclass
class _Tokens:
    """Per supervised token of one row: surprisal, and where it is in which message."""

    surprisal: np.ndarray  # float [n]
    surprisal_alone: np.ndarray
    spans: list[tuple[int, int, int] | None]  # (message, char_start, char_end) or None


def score_rows(
    rows: Sequence[Conversation],
    model,
    tokenizer,
    renderer,
    progress: bool = True,
    z_threshold: float = 7.0,
    min_surprisal: float = 6.0,
    batch_tokens: int = 4096,
    precision: str = "auto",
) -> ScoredRows:
    """Score every row (see the module docstring); rows that do not render get `error`.
    precision: fp32, bf16, fp16 or auto (bf16 autocast where the hardware does it fast, as
    training does: several times the tokens/s on such CPUs, per-token losses within ~0.02)."""
    renderer = _as_renderer(renderer, tokenizer)
    encoded = [_encode_pair(renderer, conv) for conv in rows]
    good = [i for i, e in enumerate(encoded) if not isinstance(e, str)]
    examples = [e for i in good for e in encoded[i][:2]]  # (given, alone) per row, interleaved
    start = time.perf_counter()
    losses = _token_losses(
        model, examples, tokenizer.pad_token_id or 0, batch_tokens, progress, precision
    )
    elapsed = time.perf_counter() - start
    out = ScoredRows(RowScore(error=e) if isinstance(e, str) else RowScore() for e in encoded)
    tokens: dict[int, _Tokens] = {}
    for k, i in enumerate(good):
        tokens[i] = _Tokens(losses[2 * k], losses[2 * k + 1], encoded[i][2])
        out[i] = _row_score(tokens[i])
    out.tokens_per_s = sum(len(e) for e in examples) / max(elapsed, 1e-9)
    flag_surprising(out, tokens, rows, renderer, z_threshold, min_surprisal)
    return out


def _as_renderer(renderer_or_format, tokenizer):
    from sftlab.template.render import ChatFormat, Renderer

    if isinstance(renderer_or_format, ChatFormat):
        return Renderer(tokenizer, renderer_or_format)
    return renderer_or_format


def _row_score(tokens: _Tokens) -> RowScore:
    given = float(tokens.surprisal.mean()) if len(tokens.surprisal) else float("nan")
    alone = float(tokens.surprisal_alone.mean()) if len(tokens.surprisal_alone) else float("nan")
    return RowScore(
        given, alone, given / alone if alone > 0 else float("nan"), len(tokens.surprisal)
    )


def _without_prompt(conv: Conversation) -> Conversation:
    """The same conversation with every prompt content emptied (assistant turns untouched)."""
    if conv.kind == "text":
        return conv
    messages = tuple(m if m.role == "assistant" else replace(m, content="") for m in conv.messages)
    return replace(conv, messages=messages)


def _encode_pair(renderer, conv: Conversation):
    """(given, alone, spans) for one row, or the reason it cannot be scored. The supervised
    tokens of both renders are the same tokens (contents are tokenized piece by piece), which is
    what makes their losses comparable one to one."""
    try:
        given = renderer.encode(conv)
        alone = renderer.encode(_without_prompt(conv))
    except RowError as err:
        return str(err)
    if not (given.labels[1:] != IGNORE_INDEX).any():  # position 0 is never predicted
        return "nothing to score: no supervised token"
    supervised = given.input_ids[given.labels != IGNORE_INDEX]
    if not np.array_equal(supervised, alone.input_ids[alone.labels != IGNORE_INDEX]):
        return "the response tokenizes differently without its prompt; IFD is undefined"
    return given, alone, _token_spans(renderer, conv, given)


def _token_spans(renderer, conv: Conversation, example) -> list[tuple[int, int, int] | None]:
    """For each supervised token (label position > 0, the ones a loss is computed for): the
    message index and character span in that message's content; None for template tokens such
    as the end-of-turn marker. Found by character offsets in the whole rendered text, which is
    how the renderer tokenizes a row; a row whose ids that text does not reproduce (a user typed
    a special token, so the renderer guarded it) gets no spans, and so no flags."""
    positions = np.flatnonzero(example.labels != IGNORE_INDEX)
    positions = positions[positions > 0]
    spans: list[tuple[int, int, int] | None] = [None] * len(positions)
    if conv.kind == "text":
        return spans
    skeleton, contents = renderer.pieces(conv)
    pieces = skeleton.pieces
    where, cursor = [], 0  # (start, end, message) of each content piece in the whole text
    for piece in pieces:
        length = len(contents[int(piece.text)]) if piece.is_content else len(piece.text)
        if piece.is_content:
            where.append((cursor, cursor + length, int(piece.text)))
        cursor += length
    text = "".join(contents[int(p.text)] if p.is_content else p.text for p in pieces)
    enc = renderer.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) != example.input_ids.tolist():
        return spans
    offsets = enc["offset_mapping"]
    messages, _ = renderer.prepare(conv)
    shift = len(messages) - len(conv.messages)  # a system message holding folded tool schemas
    for k, p in enumerate(positions):
        a, b = offsets[int(p)]
        for start, end, m in where:
            if start <= a < end and m >= shift and messages[m].role == "assistant":
                lead = max(messages[m].content.find(contents[m]), 0)  # a template that trims
                spans[k] = (m - shift, a - start + lead, min(b, end) - start + lead)
                break
    return spans


@torch.no_grad()
def _token_losses(model, examples, pad_id: int, batch_tokens: int, progress: bool, precision):
    """Per-example arrays of supervised-token losses, in the order of `examples`."""
    rows = single_rows(examples)
    scorer = SupervisedLoss(model).eval()
    device = next(model.parameters()).device
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        resolve_precision(precision, device.type)
    )
    out: list[np.ndarray | None] = [None] * len(rows)
    groups = group_by_budget([len(r) for r in rows], batch_tokens, np.random.default_rng(0))
    with _progress(progress, sum(len(r) for r in rows)) as advance:
        for group in groups:
            batch = collate([rows[i] for i in group], pad_id).to(device)
            with torch.autocast(
                device.type, dtype=half or torch.bfloat16, enabled=half is not None
            ):
                flat = scorer.token_losses(batch.input_ids, batch.position_ids, batch.targets)
            flat = flat.float().cpu().numpy()
            counts = np.cumsum([rows[i].n_supervised for i in group])[:-1]
            for i, part in zip(group, np.split(flat, counts), strict=True):
                out[i] = part
            advance(batch.n_tokens)
    return out


class _progress:
    """A rich progress bar with tokens/s (or nothing), as a context giving `advance(n)`."""

    def __init__(self, enabled: bool, total: int, console=None):
        self.enabled, self.total, self.console = enabled, total, console

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("scoring with the model"), BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), transient=True,
            console=self.console,
        )  # fmt: skip
        self.bar.__enter__()
        task = self.bar.add_task("score", total=self.total, rate="")
        started = time.perf_counter()

        def advance(n: int) -> None:
            done = self.bar.tasks[0].completed + n
            rate = done / max(time.perf_counter() - started, 1e-9)
            self.bar.update(task, advance=n, rate=f"{rate:,.0f} tokens/s")

        return advance

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False


def surprisal_stats(values: np.ndarray) -> tuple[float, float]:
    """Median and robust scale (1.4826 x MAD) of a dataset's token surprisals."""
    if len(values) == 0:
        return 0.0, 1.0
    median = float(np.median(values))
    scale = MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
    return median, max(scale, 1e-6)


def flag_surprising(
    scores: ScoredRows,
    tokens: dict[int, _Tokens],
    rows,
    renderer,
    z_threshold,
    min_surprisal,
    window: int = 3,
) -> None:
    """Flag runs of out-of-distribution content tokens (module docstring): a window of `window`
    consecutive tokens whose mean surprisal has a robust z above `z_threshold` and is above
    `min_surprisal` nats. Named: the window's tokens that are outliers themselves (z > 3 and
    above `min_surprisal`): a window reaching into garbage also holds a clean word or two."""
    content = [t.surprisal[[s is not None for s in t.spans]] for t in tokens.values()]
    median, scale = surprisal_stats(np.concatenate(content) if content else np.zeros(0))
    scores.median, scores.scale = median, scale
    for i, t in tokens.items():
        keep = [k for k, s in enumerate(t.spans) if s is not None]
        values = t.surprisal[keep]
        if len(values) == 0:
            continue
        width = min(window, len(values))
        means = np.convolve(values, np.ones(width) / width, mode="valid")
        hot = np.flatnonzero(((means - median) / scale > z_threshold) & (means > min_surprisal))
        named = sorted({int(s) + j for s in hot for j in range(width)})
        messages, _ = renderer.prepare(rows[i])
        shift = len(messages) - len(rows[i].messages)
        for k in named:
            z = (float(values[k]) - median) / scale
            if z <= OUTLIER_Z or values[k] <= min_surprisal:
                continue
            m, a, b = t.spans[keep[k]]
            text = messages[m + shift].content[a:b]
            scores[i].surprising.append(SurprisingToken(text, float(values[k]), a, b, m, z))


def select_best(scores: Sequence[RowScore], n: int) -> list[int]:
    """Indices of the n rows to keep by IFD, following Li et al.: rows whose prompt helps
    (IFD < 1) from the highest IFD down (the prompt helps, but the response still has much to
    teach), then rows with IFD >= 1 from the lowest up; unscored rows last. Ties: input order."""

    def rank(i: int) -> tuple[int, float, int]:
        ifd = scores[i].ifd
        if not np.isfinite(ifd):
            return (2, 0.0, i)
        return (0, -ifd, i) if ifd < 1 else (1, ifd, i)

    return sorted(sorted(range(len(scores)), key=rank)[: max(n, 0)])
