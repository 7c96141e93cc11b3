"""What `sftlab eval` measures on one model: task answers (zero- and few-shot), general-text
perplexity, general answers, safety probes, and optionally lm-eval-harness tasks.

Generation is batched and left-padded with a KV cache (eval/generate.py); `speed` accumulates the
generated tokens and seconds so the report can state tokens/s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sftlab.core.errors import SftlabError
from sftlab.eval.fewshot import few_shot_conversation
from sftlab.eval.generate import Generation, generate, user_turn
from sftlab.eval.health import example_health, health, template_markers
from sftlab.eval.perplexity import perplexity
from sftlab.eval.safety import safety_rates
from sftlab.eval.tasks import TaskRow

# Refusals open the answer (hygiene/refusal.py): 48 tokens (~200 characters) hold the opening a
# refusal is judged on; on the demo's probes the verdicts at 32, 48, 64 and 96 tokens agree
SAFETY_MAX_NEW_TOKENS = 48
# General answers are shown side by side for a person to compare the two models' behaviour, and
# judged by nothing: 64 tokens (~45 words) show how each answer sets out; at the user's 96 they
# were ~15% of the demo eval's generated tokens
GENERAL_MAX_NEW_TOKENS = 64


class Generator:
    """generate() with the side's renderer and stop tokens, timed into a shared `speed` dict."""

    def __init__(self, model, renderer, stop_ids, batch_size: int, speed):
        self.model, self.renderer, self.stop_ids = model, renderer, list(stop_ids)
        self.batch_size, self.speed = batch_size, speed

    def __call__(self, jobs: dict[str, tuple[list, int]]) -> dict[str, list[Generation]]:
        """{kind: (conversations, max_new_tokens)} -> {kind: generations}, in one generate()
        call, so prompts of every kind share batches and no batch runs half empty."""
        convs = [c for conversations, _ in jobs.values() for c in conversations]
        limits = [n for conversations, n in jobs.values() for _ in conversations]
        started = time.perf_counter()
        out = generate(self.model, self.renderer, convs, self.stop_ids, limits, self.batch_size)
        self.speed["seconds"] += time.perf_counter() - started
        self.speed["tokens"] += sum(len(g.token_ids) for g in out)
        answers, start = {}, 0
        for kind, (conversations, _) in jobs.items():
            answers[kind] = out[start : start + len(conversations)]
            start += len(conversations)
        return answers


def generation_limits(max_new_tokens: int) -> dict[str, int]:
    """Token limits per kind of prompt (eval.json settings): the task answers get the user's
    limit, the general answers what a side-by-side reading needs, the safety probes what a
    refusal verdict reads."""
    return {"task": max_new_tokens, "general": min(max_new_tokens, GENERAL_MAX_NEW_TOKENS),
            "safety": min(max_new_tokens, SAFETY_MAX_NEW_TOKENS)}  # fmt: skip


def task_block(rows: Sequence[TaskRow], generations: Sequence[Generation], markers) -> dict:
    """Answers, per-example scores and health flags, and their means."""
    prompts = [r.prompt_text for r in rows]
    scores = [r.judge(g.text) for r, g in zip(rows, generations, strict=True)]
    return {
        "answers": [g.text for g in generations],
        "scores": scores,
        "score": sum(scores) / len(scores) if scores else 0.0,
        "flags": [example_health(p, g, markers) for p, g in zip(prompts, generations, strict=True)],
        "health": health(prompts, generations, markers),
    }


def evaluate_side(model, renderer, stop_ids, rows, shots, texts, prompts, probes, opts, speed):
    """Every figure for one model; few-shot answers only when `shots` is non-empty."""
    limits = generation_limits(opts.max_new_tokens)
    jobs = {"task": ([r.prompt for r in rows], limits["task"])}
    if shots:
        jobs["few_shot"] = ([few_shot_conversation(shots, r.prompt) for r in rows], limits["task"])
    if prompts:
        jobs["general"] = ([user_turn(p) for p in prompts], limits["general"])
    if probes:
        jobs["safety"] = ([user_turn(p["prompt"]) for p in probes], limits["safety"])
    answers = Generator(model, renderer, stop_ids, opts.batch_size, speed)(jobs)
    markers = template_markers(renderer.tokenizer)
    out = {"task": task_block(rows, answers["task"], markers)}
    if shots:
        out["few_shot"] = task_block(rows, answers["few_shot"], markers)
    if texts:
        out["general_text"] = perplexity(model, renderer, texts)
    if prompts:
        out["general_answers"] = [g.text for g in answers["general"]]
    if probes:
        said = [g.text for g in answers["safety"]]
        out["safety"] = safety_rates(probes, said) | {"answers": said}
    return out


def require_lm_eval() -> None:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise SftlabError(
            "--lm-eval needs lm-evaluation-harness, which is not installed: "
            "pip install 'sftlab[lm-eval]' (it is optional; everything else runs without it)"
        )


def run_lm_eval(model, tokenizer, tasks: str, batch_size: int = 8) -> dict:
    """EleutherAI's lm-evaluation-harness on the model in memory, when it is installed. Its tasks
    read their data through `datasets`; offline, only tasks whose data is in the local cache run."""
    require_lm_eval()
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    try:
        result = lm_eval.simple_evaluate(
            model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), tasks=names
        )
    except Exception as exc:  # missing task data offline surfaces as many exception types
        raise SftlabError(f"lm-eval could not run {names}: {exc} (is the task's data available "
                          "locally? set HF_DATASETS_OFFLINE=1 with a filled cache)") from None  # fmt: skip
    return {"tasks": names, "results": _plain(result.get("results", {}))}


def _plain(value):
    """lm-eval results hold numpy scalars and NaNs: make them JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
