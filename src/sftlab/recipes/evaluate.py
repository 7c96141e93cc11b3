"""`sftlab eval MODEL_OR_RUN`: did fine-tuning help, would a prompt have done as well, what did
it cost? Writes eval.json (every figure, per example) and eval.html (the same, as a page).

    task       answers to held-out prompts, judged by a metric per dataset or per row
    few-shot   the baseline zero-shot and with K training examples as earlier turns
    general    perplexity on general text, and general instructions answered side by side
    safety     refusal of harmful requests, over-refusal of benign look-alikes (--safety)
    health     stop rate, template-token leakage, empty answers, loops (eval/health.py)

Models are evaluated one after the other, so only one is in memory at a time. With a run
directory the baseline is the run's base model, prompted through the run's own renderer (same
template and system prompt), and the data is the run's eval split; for an adapter run the base
model is loaded once: its pass runs first, then the adapter is merged into the same weights.
Each model answers all its prompts in one generate() call (eval/generate.py: batched by prompt
length, a row leaving its batch when it stops); the token limits per kind are in eval.json.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from sftlab.config import TemplateConfig, load_config
from sftlab.core.errors import DataError, SftlabError
from sftlab.core.io import read_json, write_json
from sftlab.data.mixture import build_mixture, load_source
from sftlab.eval.fewshot import pick_shots
from sftlab.eval.perplexity import default_general_text, read_general_text
from sftlab.eval.safety import load_probes
from sftlab.eval.suites import evaluate_side, generation_limits, require_lm_eval, run_lm_eval
from sftlab.eval.tasks import TaskRow, load_task_file, task_rows
from sftlab.export.artifacts import attach_adapter, load_run, stop_token_ids
from sftlab.model.device import default_device
from sftlab.model.load import load_model, load_tokenizer, resolve_model
from sftlab.template.format import build_chat_format
from sftlab.template.render import Renderer


@dataclass
class EvalOptions:
    target: str
    out: Path
    data: str | None = None
    baseline: str | None = None
    shots: int = 3
    train: str | None = None  # where few-shot examples come from (a run: its training split)
    metric: str | None = None
    general: str | None = None
    safety: bool = False
    lm_eval: str | None = None
    max_new_tokens: int = 96
    batch_size: int = 64  # rows of one generation batch; length_batches splits by prompt length
    seed: int = 0


@dataclass
class Side:
    """One model under evaluation, with the renderer and stop tokens it is prompted with."""

    label: str
    name: str
    load: object  # () -> (model, renderer, stop_ids): loaded only when its turn comes
    results: dict = field(default_factory=dict)


@dataclass
class Plan:
    rows: list[TaskRow]
    pool: list  # training conversations for few-shot examples
    data: str
    sides: list[Side]  # in report order: the tuned model first
    base_first: bool = False  # the tuned model is built on the base pass's loaded weights

    def run_order(self) -> list[Side]:
        return (
            sorted(self.sides, key=lambda s: s.label != "base") if self.base_first else self.sides
        )


def run_eval(opts: EvalOptions, say=print) -> dict:
    started = time.perf_counter()
    if opts.lm_eval:
        require_lm_eval()  # before minutes of loading and generating, not after
    plan = make_plan(opts)
    texts = read_general_text(opts.general)
    prompts = general_prompts()
    probes = load_probes() if opts.safety else []
    shots = pick_shots(plan.pool, opts.shots, opts.seed)
    speed = {"tokens": 0, "seconds": 0.0}
    for side in plan.run_order():
        say(f"evaluating {side.label} model ({side.name}) ...")
        model, renderer, stop_ids = side.load()
        model = model.to(default_device())  # CUDA/MPS when present; generation follows the model
        # few-shot prompts go to the baseline (or to a lone model)
        use_shots = shots if side is not plan.sides[0] or len(plan.sides) == 1 else []
        side.results = evaluate_side(model, renderer, stop_ids, plan.rows, use_shots, texts,
                                     prompts, probes, opts, speed)  # fmt: skip
        if opts.lm_eval:
            side.results["lm_eval"] = run_lm_eval(model, renderer.tokenizer, opts.lm_eval)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next model gets the memory back
    report = assemble(opts, plan, shots, probes, prompts, speed)
    report = {"headline": headline(report)} | report
    report["seconds"] = round(time.perf_counter() - started, 1)
    opts.out.mkdir(parents=True, exist_ok=True)
    write_json(opts.out / "eval.json", report)
    from sftlab.report.eval_page import write_eval_page

    write_eval_page(opts.out)
    say(summary_line(report))
    return report


def make_plan(opts: EvalOptions) -> Plan:
    target = Path(opts.target)
    if (target / "manifest.json").is_file():
        return _run_plan(opts, target)
    if opts.data is None:
        raise SftlabError("--data HELDOUT is needed when evaluating a model (not a run directory)")
    pool = _pool(opts.train)
    sides = [Side("tuned", opts.target, lambda: _load_model(opts.target))]
    if opts.baseline:
        sides.append(Side("base", opts.baseline, lambda: _load_model(opts.baseline)))
    else:
        sides[0].label = "model"
    return Plan(load_task_file(opts.data, opts.metric), pool, opts.data, sides)


def _run_plan(opts: EvalOptions, run_dir: Path) -> Plan:
    manifest = read_json(run_dir / "manifest.json")
    base_name = opts.baseline or manifest["model"].get("source") or manifest["model"]["name"]
    config = load_config(run_dir / "config.yaml")
    mixture = None
    if opts.data is None or opts.train is None:
        d = config.data
        # the manifest records each source's absolute path: config paths may be relative
        files = [entry["file"] for entry in manifest.get("data", [])]
        sources = [s.model_copy(update={"path": files[i]}) if i < len(files) else s
                   for i, s in enumerate(d.sources)]  # fmt: skip
        try:
            loaded = [load_source(s) for s in sources]
        except DataError as exc:
            raise SftlabError(f"{exc}\nthe run's data is needed for its eval split; "
                              "pass --data HELDOUT (and --train FILE for few-shot examples)") from None  # fmt: skip
        sizes = [(s.ratio, s.rows) for s in d.sources]
        mixture = build_mixture(loaded, sizes, d.eval_fraction, d.eval_rows, d.seed)
    if opts.data is not None:
        rows, data = load_task_file(opts.data, opts.metric), opts.data
    else:
        rows, data = task_rows(mixture.eval, opts.metric), f"{run_dir} (the run's eval split)"
    pool = _pool(opts.train) if opts.train else list(mixture.train)

    # An adapter run evaluated against its own base loads the base model once: the base pass
    # runs first, then the adapter is merged into the same weights for the tuned pass.
    shared = {} if opts.baseline is None and (run_dir / "adapter").is_dir() else None

    def tuned():
        if shared:
            model, renderer, stop_ids = shared.pop("base")
            return attach_adapter(model, run_dir, renderer.fmt).eval(), renderer, stop_ids
        run = load_run(run_dir)
        return run.model, run.renderer, run.stop_ids

    def base():
        if opts.baseline:  # a model of the user's choosing: prompted through its own template
            return _load_model(opts.baseline)
        trained = manifest["model"]
        allow_pickle, remote = (
            trained.get("allow_pickle", False),
            trained.get("trust_remote_code", False),
        )
        ref = resolve_model(base_name, allow_pickle, run_dir)
        renderer, stop_ids = load_run_format(run_dir)
        model = load_model(ref, allow_pickle=allow_pickle, trust_remote_code=remote).eval()
        if shared is not None:
            shared["base"] = (model, renderer, stop_ids)
        return model, renderer, stop_ids

    sides = [Side("tuned", str(run_dir), tuned), Side("base", base_name, base)]
    return Plan(rows, pool, data, sides, base_first=shared is not None)


def load_run_format(run_dir: Path):
    """The run's renderer and stop ids: the base model is prompted exactly as the tuned one."""
    from sftlab.export.artifacts import load_chat_format
    from sftlab.model.load import ModelRef

    fmt = load_chat_format(run_dir)
    tokenizer = load_tokenizer(ModelRef("run tokenizer", str(run_dir / "tokenizer"), True))
    return Renderer(tokenizer, fmt), stop_token_ids(tokenizer, fmt)


def _load_model(name: str):
    ref = resolve_model(name)
    tokenizer = load_tokenizer(ref)
    fmt = build_chat_format(tokenizer, TemplateConfig())
    return load_model(ref).eval(), Renderer(tokenizer, fmt), stop_token_ids(tokenizer, fmt)


def _pool(path: str | None) -> list:
    if path is None:
        return []
    from sftlab.config import SourceConfig

    return [c for c in load_source(SourceConfig(path=path)).conversations if c.kind == "chat"]


def general_prompts() -> list[str]:
    text = (
        resources.files("sftlab").joinpath("assets/eval/general_prompts.jsonl").read_text("utf-8")
    )
    return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]


# -- eval.json ---------------------------------------------------------------------------------


def assemble(opts: EvalOptions, plan: Plan, shots, probes, prompts, speed) -> dict:
    """eval.json: the figures by variant ("tuned", "base", "base_few_shot"; a lone model is
    "model" / "model_few_shot") and every example with each variant's answer and score."""
    variants = {}
    for side in plan.sides:
        variants[side.label] = side.results["task"]
        if "few_shot" in side.results:
            variants[f"{side.label}_few_shot"] = side.results["few_shot"]
    return {
        "models": [{"label": s.label, "name": s.name} for s in plan.sides],
        "data": plan.data,
        "settings": {
            "shots": len(shots),
            "max_new_tokens": opts.max_new_tokens,  # the task answers' limit (stop rate)
            "max_new_tokens_by_kind": generation_limits(opts.max_new_tokens),
            "metric": opts.metric,
            "seed": opts.seed,
            "safety": opts.safety,
        },  # fmt: skip
        "task": task_summary(plan.rows, variants, len(shots)),
        "health": {k: v["health"] for k, v in variants.items()},
        "examples": examples(plan.rows, variants),
        "few_shot_examples": [[m.content for m in c.messages if m.role != "system"] for c in shots],
        "general_text": general_summary(opts, plan.sides),
        "general_answers": [
            {"prompt": p} | {s.label: s.results["general_answers"][i] for s in plan.sides}
            for i, p in enumerate(prompts)
        ],  # fmt: skip
        "safety": safety_summary(probes, plan.sides) if probes else None,
        "lm_eval": {s.label: s.results["lm_eval"] for s in plan.sides if "lm_eval" in s.results}
        or None,
        "speed": speed | {"tokens_per_second": speed["tokens"] / max(speed["seconds"], 1e-9)},
    }


def task_summary(rows: list[TaskRow], variants: dict, shots: int) -> dict:
    scores = {k: v["score"] for k, v in variants.items()}
    summary = {"metrics": sorted({r.metric for r in rows}), "n": len(rows), "scores": scores}
    if "tuned" in scores and "base_few_shot" in scores:
        tuned, few = scores["tuned"], scores["base_few_shot"]
        summary["prompting_reached_tuned"] = few >= tuned
        summary["verdict"] = (
            f"Prompting the base model with {shots} training example(s) scored {few:.2f} against "
            f"the tuned model's {tuned:.2f}: prompting "
            + (
                "reached the tuned score; fine-tuning was not needed for this task."
                if few >= tuned
                else "did not reach the tuned score."
            )  # fmt: skip
        )
    return summary


def examples(rows: list[TaskRow], variants: dict) -> list[dict]:
    return [
        {
            "where": r.where,
            "prompt": r.prompt_text,
            "reference": r.reference,
            "metric": r.metric,
            "answers": {k: v["answers"][i] for k, v in variants.items()},
            "scores": {k: v["scores"][i] for k, v in variants.items()},
            "health": {k: v["flags"][i] for k, v in variants.items()},
        }  # fmt: skip
        for i, r in enumerate(rows)
    ]


def general_summary(opts: EvalOptions, sides: list[Side]) -> dict:
    out = {"file": opts.general or f"{default_general_text().name} (shipped C4 excerpt, ODC-BY)"}
    out |= {s.label: s.results["general_text"] for s in sides}
    if "tuned" in out and "base" in out:
        out["perplexity_change"] = out["tuned"]["perplexity"] / out["base"]["perplexity"] - 1
    return out


def safety_summary(probes: list[dict], sides: list[Side]) -> dict:
    rates = {s.label: {k: s.results["safety"][k] for k in ("refusal_rate", "over_refusal_rate")}
             for s in sides}  # fmt: skip
    rows = [
        p
        | {
            "answers": {s.label: s.results["safety"]["answers"][i] for s in sides},
            "refused": {s.label: s.results["safety"]["refused"][i] for s in sides},
        }  # fmt: skip
        for i, p in enumerate(probes)
    ]
    return {"rates": rates, "n_harmful": sides[0].results["safety"]["n_harmful"],
            "n_benign": sides[0].results["safety"]["n_benign"], "probes": rows}  # fmt: skip


def headline(report: dict) -> dict:
    """The few numbers a comparison of runs shows first (sftlab compare reads two levels deep)."""
    out = {f"{k}_score": v for k, v in report["task"]["scores"].items()}
    out |= {f"{k}_stop_rate": v["stop_rate"] for k, v in report["health"].items()}
    if "perplexity_change" in report["general_text"]:
        out["perplexity_change"] = report["general_text"]["perplexity_change"]
    return out


def summary_line(report: dict) -> str:
    task, general = report["task"], report["general_text"]
    parts = ["task score (" + ", ".join(task["metrics"]) + "): "
             + ", ".join(f"{k} {v:.2f}" for k, v in task["scores"].items())]  # fmt: skip
    parts.append(
        "stop rate: " + ", ".join(f"{k} {v['stop_rate']:.2f}" for k, v in report["health"].items())
    )
    ppl = {k: v["perplexity"] for k, v in general.items() if isinstance(v, dict)}
    parts.append(
        "general-text perplexity: "
        + ", ".join(f"{k} {v:.2f}" for k, v in ppl.items())
        + (f" ({general['perplexity_change']:+.1%})" if "perplexity_change" in general else "")
    )
    if report["safety"]:
        parts.append("refusal / over-refusal: " + ", ".join(
            f"{k} {v['refusal_rate']:.2f} / {v['over_refusal_rate']:.2f}"
            for k, v in report["safety"]["rates"].items()))  # fmt: skip
    if "verdict" in task:
        parts.append(task["verdict"])
    speed = report["speed"]
    parts.append(
        f"{speed['tokens']:,} tokens generated at {speed['tokens_per_second']:.0f} tokens/s; "
        f"eval took {report['seconds']:.0f} s"
    )
    return "\n".join(parts)
