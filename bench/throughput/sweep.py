"""TRL's best CPU configuration, found by measurement (parent side).

On one data set (the generated set) and at the same tokens per optimizer step as sftlab, each
configuration trains a few steps in its own process (a warm-up step, then measured steps);
supervised tokens/s over the measured steps ranks them. The search is greedy, one setting at a
time from TRL's fastest configuration known before (issue 12: packed rows of 512, batch 1 x 4
accumulation), keeping the best after each stage:

    shape      micro-batches per step: 4 (1 x 4), 2 (2 x 2), 1 (4 x 1: one flattened sequence)
    packing    bfd (padding-free), wrapped, none (padded), none + padding-free
    grouping   group_by_length (only when the best is unpacked and padded)
    precision  bf16 autocast
    base       frozen base loaded in bf16
    attention  eager instead of sdpa
    liger      use_liger_kernel (only when liger-kernel is installed and runs on this CPU)

A probe taking twice as long as the best so far is stopped (recorded as such). Full fine-tuning
re-measures the best 3 LoRA configurations (with an fp32 base: a bf16 base would train bf16
weights). The result is cached in bench/results/trl_sweep.json under the installed trl,
transformers, peft and torch versions, and reused until one changes (`--sweep` re-runs it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from throughput import common as c
from throughput.runner import ChildFailed, ChildTimedOut, run_child

SWEEP_FILE = c.RESULTS / "trl_sweep.json"
SWEEP_FORMAT = 1  # bump when the search changes, so an old cache is not reused
START = {"accum": 4, "packing": "bfd", "padding_free": True, "bf16": False, "base_dtype": "fp32",
         "attn": "sdpa", "group_by_length": False, "liger": False}  # fmt: skip
PROBE = {"warmup": 1, "measure": 1}  # ~45 s per 2,048-token fp32 step on 2 cores: keep it short
STOP_FACTOR = 2.0  # a probe taking twice the best probe's whole time cannot be the winner
MIN_TIMEOUT_S = 120.0


def key(cfg: dict) -> str:
    pack = cfg["packing"] or ("padding-free" if cfg["padding_free"] else "padded")
    parts = [f"accum{cfg['accum']}", pack, "bf16-autocast" if cfg["bf16"] else "fp32",
             f"{cfg['base_dtype']}-base", cfg["attn"]]  # fmt: skip
    parts += ["group-by-length"] * bool(cfg["group_by_length"]) + ["liger"] * bool(cfg["liger"])
    return " ".join(parts)


def stages(liger_usable: bool) -> list[tuple[str, callable]]:
    """(stage, best config -> candidates). Candidates equal to a measured config are skipped."""

    def packing(b):
        return [b | {"packing": "bfd", "padding_free": True}, b | {"packing": "wrapped", "padding_free": False},
                b | {"packing": None, "padding_free": False}, b | {"packing": None, "padding_free": True}]  # fmt: skip

    def grouping(b):
        padded = b["packing"] is None and not b["padding_free"]
        return [b | {"group_by_length": True}] if padded else []

    out = [("shape", lambda b: [b | {"accum": a} for a in (4, 2, 1)]), ("packing", packing),
           ("grouping", grouping), ("precision", lambda b: [b | {"bf16": True}]),
           ("base", lambda b: [b | {"base_dtype": "bf16"}]),
           ("attention", lambda b: [b | {"attn": "eager"}])]  # fmt: skip
    if liger_usable:
        out.append(("liger", lambda b: [b | {"liger": True}]))
    return out


def rate(record: dict) -> float:
    return record.get("supervised_tokens_per_s") or 0.0


def best_of(records: list[dict], method: str) -> dict | None:
    ok = [r for r in records if r["method"] == method and r["status"] == "ok"]
    return max(ok, key=rate) if ok else None


def probe(cfg: dict, method: str, stage: str, ds: dict, ctx: dict) -> dict:
    """One configuration's few steps; a record whatever happened (ok, failed, stopped)."""
    from throughput.plan import trl_spec

    name = f"sweep-{method}-{len(ctx['records']):02d}"
    spec = trl_spec(ds, method, cfg, c.SEED, ctx["work"] / "runs" / name) | {"probe": ctx["probe"]}
    record = {"key": key(cfg), "config": cfg, "method": method, "stage": stage}
    best = best_of(ctx["records"], method)
    timeout = max(MIN_TIMEOUT_S, STOP_FACTOR * best["child_seconds"]) if best else None
    print(f"  sweep [{method}] {record['key']} ...", end=" ", flush=True)
    try:
        result = run_child("trl_child", spec, ctx["work"], name, timeout)
    except ChildTimedOut:
        print(f"stopped after {timeout:.0f} s (slower than 1/{STOP_FACTOR:.0f} of the best)")
        return record | {"status": f"stopped after {timeout:.0f} s", "child_seconds": timeout}
    except ChildFailed as exc:
        print("FAILED")
        return record | {"status": "failed", "error": str(exc)[-2000:]}
    seconds = max(result["train_seconds"], 1e-9)
    record |= {
        "status": "ok", "supervised_tokens_per_s": result["supervised_tokens"] / seconds,
        "tokens_per_s": result["tokens"] / seconds, "step_seconds": result["step_seconds"],
        "measured_tokens": result["tokens"], "peak_rss_mb": result["memory"]["peak_rss_mb"],
        "other_cpu_share": result.get("other_cpu_share"), "child_seconds": result["child_seconds"],
        "settings": result["settings"],
    }  # fmt: skip
    print(
        f"{record['supervised_tokens_per_s']:.1f} sup. tok/s, peak {record['peak_rss_mb']:,.0f} MB"
    )
    return record


def measure(cfg: dict, method: str, stage: str, ds: dict, ctx: dict) -> None:
    if any(r["key"] == key(cfg) and r["method"] == method for r in ctx["records"]):
        return
    ctx["records"].append(probe(cfg, method, stage, ds, ctx))


def run_sweep(ds: dict, work: Path, liger: dict, smoke: bool = False) -> dict:
    """The greedy LoRA search, then full fine-tuning on the best 3 LoRA configurations."""
    ctx = {"work": work, "records": [],
           "probe": {"warmup": 0, "measure": 1} if smoke else PROBE}  # fmt: skip
    started = time.time()
    best = START
    for stage, candidates in [("start", lambda b: [b])] + stages(liger["usable"]):
        for cfg in candidates(best):
            measure(cfg, "lora", stage, ds, ctx)
        top = best_of(ctx["records"], "lora")
        best = top["config"] if top else best
    lora = sorted((r for r in ctx["records"] if r["status"] == "ok"), key=rate, reverse=True)
    for r in lora[:3]:
        measure(r["config"] | {"base_dtype": "fp32"}, "full", "full", ds, ctx)
    winners = {m: best_of(ctx["records"], m) for m in ("lora", "full")}
    return {
        "format": SWEEP_FORMAT, "versions": c.versions(c.VERSION_PACKAGES),
        "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(time.time() - started),
        "dataset": {k: ds[k] for k in ("kind", "train_rows", "train_tokens", "mean_row_tokens")},
        "probe": ctx["probe"], "tokens_per_step": c.TOKENS_PER_STEP, "liger": liger,
        "records": ctx["records"],
        "winner": {m: w and w["config"] for m, w in winners.items()},
        "winner_key": {m: w and w["key"] for m, w in winners.items()},
    }  # fmt: skip


def cached(path: Path) -> dict | None:
    """The stored sweep, if it was measured with the installed versions (and this search)."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = stored.get("versions") == c.versions(c.VERSION_PACKAGES)
    return (
        stored if same and stored.get("format") == SWEEP_FORMAT and stored.get("winner") else None
    )


def load_or_run(path: Path, force: bool, measure_now) -> tuple[dict, bool]:
    """(sweep, reused): the cached one unless forced or stale; else `measure_now()`, stored."""
    stored = None if force else cached(path)
    if stored is not None:
        return stored, True
    result = measure_now()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return result, False
