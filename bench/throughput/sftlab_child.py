"""One sftlab training run, in its own process: `python -m throughput.sftlab_child SPEC.json`.

sftlab with its CPU defaults (packing, attention, precision all `auto`), through the same
`sftlab.recipes.sft.train` that `sftlab train` calls; the optimizer-step size and schedule are
the benchmark's shared settings (common.py)."""

from __future__ import annotations

import json
from pathlib import Path

from throughput import common as c


def run_config(spec: dict):
    from sftlab import config as cfg

    method = spec["method"]
    batch_tokens, grad_accum = c.sftlab_batching(spec["max_length"])
    return cfg.RunConfig(
        name=spec["name"], output_dir=spec["run_dir"],
        model=cfg.ModelConfig(name=spec["model"]),
        data=cfg.DataConfig(sources=[cfg.SourceConfig(path=spec["train_file"], format="messages")],
                            eval_rows=0, seed=spec["seed"]),
        template=cfg.TemplateConfig(max_length=spec["max_length"], chat_template="auto"),
        pack=cfg.PackConfig(enabled=spec.get("pack", "auto")),
        lora=cfg.LoraConfig(r=c.LORA_R, alpha=c.LORA_ALPHA, dropout=c.LORA_DROPOUT,
                            target_modules="all-linear"),
        train=cfg.TrainConfig(
            method=method, lr=c.LR[method], epochs=1, batch_tokens=batch_tokens,
            grad_accum=grad_accum, warmup_ratio=c.WARMUP_RATIO, schedule="cosine",
            min_lr_ratio=c.MIN_LR_RATIO, max_grad_norm=c.MAX_GRAD_NORM, seed=spec["seed"],
            token_rows=spec.get("token_rows") or "none",
        ),
    )  # fmt: skip


def run(spec: dict) -> dict:
    from sftlab.recipes.sft import train

    run_dir, method = Path(spec["run_dir"]), spec["method"]
    train(run_config(spec))
    memory = c.peak_rss_mb()
    summary = json.loads((run_dir / "summary.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, filter(None, lines)) if "step_seconds" in r]
    seconds = [r["step_seconds"] for r in steps]
    supervised = [r["supervised_tokens"] for r in steps]
    precision = manifest["precision"]
    return {
        "train_seconds": summary["train_seconds"], "tokens": summary["tokens"],
        "supervised_tokens": summary["supervised_tokens"], "steps": summary["steps"],
        "train_rows": summary["train_examples"],
        "step_seconds": [round(x, 3) for x in seconds], "step_supervised_tokens": supervised,
        "supervised_tokens_per_s_after_first_step": c.after_first_step(seconds, supervised),
        "memory": memory, "weights": str(run_dir / ("adapter" if method == "lora" else "model")),
        "trained_token_rows": manifest.get("trained_token_rows"),
        "settings": {k: manifest[k] for k in ("precision", "attention", "packing")}
        | {"batch_tokens": c.sftlab_batching(spec["max_length"]),
           "frozen_base_dtype": "bf16" if method == "lora" and precision == "bf16" else "fp32"},
    }  # fmt: skip


if __name__ == "__main__":
    c.child_main(run)
