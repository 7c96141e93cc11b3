"""Behaviour probes during training: at each eval, greedy answers to a few held-out prompts.

Eval loss says the model fits the held-out answers; it does not say the model ends its turn or
gets the answer right when it speaks for itself. The probe takes the first rows of the eval
split, cuts each at its first supervised token (what precedes it is exactly the prompt the model
saw in training, generation header included), generates a short answer and reports the stop rate
and, scored against the row's own answer, the task accuracy.

It runs on the main process only and holds no collective: the other processes go on to the next
step's agreement and wait there. It generates through the unwrapped model (not DDP's wrapper).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sftlab.core.types import IGNORE_INDEX, TokenizedExample
from sftlab.eval.generate import generate, stop_rate


@dataclass(frozen=True)
class ProbePrompt:
    prompt_ids: list[int]  # the eval row up to its first supervised token
    prompt: str  # decoded, for the report
    reference: str  # the row's first supervised span, end-of-turn token left out


def probe_prompts(
    examples: Sequence[TokenizedExample], tokenizer, stop_ids: Sequence[int], count: int
) -> list[ProbePrompt]:
    """The first `count` eval rows that have a prompt before their first answer (a text row,
    supervised from its first token, has none)."""
    out: list[ProbePrompt] = []
    for example in examples:
        if len(out) >= count:
            break
        supervised = np.flatnonzero(example.labels != IGNORE_INDEX)
        if not len(supervised) or supervised[0] == 0:
            continue
        start = int(supervised[0])
        end = start
        while end < len(example) and example.labels[end] != IGNORE_INDEX:
            end += 1
        answer = [int(t) for t in example.input_ids[start:end] if int(t) not in stop_ids]
        prompt_ids = [int(t) for t in example.input_ids[:start]]
        out.append(ProbePrompt(prompt_ids, _decode(tokenizer, prompt_ids), _decode(tokenizer, answer)))
    return out


class _PromptIds:
    """generate() asks its renderer for each prompt's ids; the probe has them already."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @staticmethod
    def encode_prompt(prompt_ids: list[int]) -> list[int]:
        return prompt_ids


@torch.no_grad()
def run_probe(
    model, tokenizer, prompts: Sequence[ProbePrompt], stop_ids: Sequence[int],
    max_new_tokens: int, metric: str, autocast=None,
) -> tuple[dict, list[dict]]:  # fmt: skip
    """Figures for the eval record ({probe_stop_rate, probe_task_accuracy}) and the answers."""
    from contextlib import nullcontext

    from sftlab.eval import metrics

    score = getattr(metrics, metric)
    was_training = model.training
    model.eval()
    try:
        with autocast or nullcontext():
            outs = generate(model, _PromptIds(tokenizer), [p.prompt_ids for p in prompts],
                            stop_ids, max_new_tokens, batch_size=len(prompts))  # fmt: skip
    finally:
        model.train(was_training)
    answers = []
    for p, g in zip(prompts, outs, strict=True):
        value = float(score(g.text.strip(), p.reference.strip()))  # a verdict, or ROUGE-L in [0, 1]
        answers.append({"prompt": p.prompt, "reference": p.reference, "answer": g.text,
                        "stopped": g.stopped, "score": value})  # fmt: skip
    figures = {"probe_stop_rate": stop_rate(outs)}
    if answers:
        figures["probe_task_accuracy"] = sum(a["score"] for a in answers) / len(answers)
    return figures, answers


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)
