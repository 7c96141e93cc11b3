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


class Generator:
    """generate() with the side's renderer and stop tokens, timed into a shared `speed` dict."""

    def __init__(self, model, renderer, stop_ids, max_new_tokens: int, batch_size: int, speed):
        self.model, self.renderer, self.stop_ids = model, renderer, list(stop_ids)
        self.max_new_tokens, self.batch_size, self.speed = max_new_tokens, batch_size, speed

    def __call__(self, conversations) -> list[Generation]:
        started = time.perf_counter()
        out = generate(self.model, self.renderer, conversations, self.stop_ids,
                       self.max_new_tokens, self.batch_size)  # fmt: skip
        self.speed["seconds"] += time.perf_counter() - started
        self.speed["tokens"] += sum(len(g.token_ids) for g in out)
        return out


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
    ask = Generator(model, renderer, stop_ids, opts.max_new_tokens, opts.batch_size, speed)
    markers = template_markers(renderer.tokenizer)
    out = {"task": task_block(rows, ask([r.prompt for r in rows]), markers)}
    if shots:
        few = ask([few_shot_conversation(shots, r.prompt) for r in rows])
        out["few_shot"] = task_block(rows, few, markers)
    if texts:
        out["general_text"] = perplexity(model, renderer, texts)
    if prompts:
        out["general_answers"] = [g.text for g in ask([user_turn(p) for p in prompts])]
    if probes:
        answers = [g.text for g in ask([user_turn(p["prompt"]) for p in probes])]
        out["safety"] = safety_rates(probes, answers) | {"answers": answers}
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
