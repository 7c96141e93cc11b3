"""Figures from the runs (parent side): per-pair ratios, their median/min/max over the pairs no
other process disturbed, 3-seed eval-loss means, and markdown tables for bench/README.md."""

from __future__ import annotations

import statistics

from throughput import common as c


def contended(run: dict) -> bool:
    return (run.get("other_cpu_share") or 0.0) > c.CONTENDED


def spread(values: list[float]) -> dict | None:
    """Median, min and max (None for no values)."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}  # fmt: skip


def pairs(runs: list[dict]) -> list[dict]:
    """One entry per pair with both systems measured: sftlab / TRL ratios, and whether either
    run was contended (then the pair is excluded from the medians)."""
    by_pair: dict[int, dict] = {}
    for run in runs:
        by_pair.setdefault(run["pair"], {})[run["system"]] = run
    out = []
    for pair, both in sorted(by_pair.items()):
        a, b = both.get("sftlab"), both.get("trl")
        if not (a and b):
            continue
        out.append({
            "pair": pair,
            "speedup": a["supervised_tokens_per_s"] / b["supervised_tokens_per_s"],
            "peak_rss_ratio": a["memory"]["peak_rss_mb"] / b["memory"]["peak_rss_mb"],
            "contended": contended(a) or contended(b),
        })  # fmt: skip
    return out


def system_figures(runs: list[dict]) -> dict:
    clean = [r for r in runs if not contended(r)] or []

    def med(key):
        return spread([r[key] for r in clean if r.get(key) is not None])

    losses = [r["eval_loss"] for r in runs if r.get("eval_loss") is not None]
    return {
        "runs": len(runs), "contended_runs": len(runs) - len(clean),
        "supervised_tokens_per_s": med("supervised_tokens_per_s"),
        "tokens_per_s": med("tokens_per_s"), "mfu_vs_bf16": med("mfu_vs_bf16"),
        "mfu_vs_fp32": med("mfu_vs_fp32"),
        "peak_rss_mb": spread([r["memory"]["peak_rss_mb"] for r in clean]),
        "eval_loss_mean": statistics.fmean(losses) if losses else None,
        "eval_losses": losses, "seeds": sorted({r["seed"] for r in runs}),
        "steps": [r["steps"] for r in runs], "settings": runs[0]["settings"] if runs else None,
    }  # fmt: skip


def summarise_case(runs: list[dict]) -> dict:
    paired = pairs(runs)
    clean = [p for p in paired if not p["contended"]]
    systems = {s: system_figures([r for r in runs if r["system"] == s]) for s in ("sftlab", "trl")}
    loss = [systems[s]["eval_loss_mean"] for s in ("sftlab", "trl")]
    return {
        **systems, "pairs": paired,
        "speedup": spread([p["speedup"] for p in clean]),
        "peak_rss_ratio": spread([p["peak_rss_ratio"] for p in clean]),
        "excluded_pairs": len(paired) - len(clean),
        "eval_loss_ratio": loss[0] / loss[1] if None not in loss else None,
    }  # fmt: skip


def add_rates(result: dict, parameters: int, method: str, ceilings: dict) -> dict:
    seconds = max(result["train_seconds"], 1e-9)
    result["supervised_tokens_per_s"] = result["supervised_tokens"] / seconds
    result["tokens_per_s"] = result["tokens"] / seconds
    flops = c.FLOPS_PER_PARAM[method] * parameters * result["tokens_per_s"]
    result["mfu_vs_bf16"] = flops / (ceilings["bf16_gflops"] * 1e9)
    result["mfu_vs_fp32"] = flops / (ceilings["fp32_gflops"] * 1e9)
    return result


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def fmt_spread(s: dict | None, spec: str = ".2f", suffix: str = "") -> str:
    if not s:
        return "-"
    if s["n"] == 1:
        return f"{s['median']:{spec}}{suffix}"
    return f"{s['median']:{spec}}{suffix} ({s['min']:{spec}}-{s['max']:{spec}})"


def results_table(report: dict) -> str:
    """Markdown: one line per case, medians over uncontended pairs."""
    head = ("| case | method | sftlab sup. tok/s | TRL sup. tok/s | speedup, median (min-max) "
            "| pairs used / run | peak RSS ratio | eval loss sftlab / TRL (seeds) | MFU fp32 sftlab / TRL |")  # fmt: skip
    lines = [head, "|" + "---|" * 9]
    for name, s in report["cases"].items():
        a, b = s["sftlab"], s["trl"]
        used = len(s["pairs"]) - s["excluded_pairs"]
        loss = f"{fmt(a['eval_loss_mean'], '.3f')} / {fmt(b['eval_loss_mean'], '.3f')} ({len(a['seeds'])})"
        lines.append(
            f"| {name} | {report['case_info'][name]['method']} "
            f"| {fmt_spread(a['supervised_tokens_per_s'], '.1f')} | {fmt_spread(b['supervised_tokens_per_s'], '.1f')} "
            f"| {fmt_spread(s['speedup'], '.2f', 'x')} | {used} / {len(s['pairs'])} "
            f"| {fmt_spread(s['peak_rss_ratio'], '.2f')} | {loss} "
            f"| {fmt_spread(a['mfu_vs_fp32'], '.1%')} / {fmt_spread(b['mfu_vs_fp32'], '.1%')} |"
        )  # fmt: skip
    if any(s["excluded_pairs"] for s in report["cases"].values()):
        lines.append("")
        lines.append(f"Pairs with a run during which other processes used more than "
                     f"{c.CONTENDED:.0%} of the CPU are excluded from the medians.")  # fmt: skip
    return "\n".join(lines)


def sweep_table(sweep: dict) -> str:
    """Markdown: every configuration the sweep measured, fastest first per method."""
    lines = ["| method | stage | TRL configuration | sup. tok/s | tok/s | peak RSS MB | status |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for method in ("lora", "full"):
        records = [r for r in sweep["records"] if r["method"] == method]
        records.sort(key=lambda r: -(r.get("supervised_tokens_per_s") or -1))
        for r in records:
            win = " **(winner)**" if r["key"] == sweep["winner_key"].get(method) else ""
            lines.append(
                f"| {method} | {r['stage']} | {r['key']}{win} | {fmt(r.get('supervised_tokens_per_s'))} "
                f"| {fmt(r.get('tokens_per_s'))} | {fmt(r.get('peak_rss_mb'), ',.0f')} | {r['status']} |"
            )  # fmt: skip
    liger = sweep.get("liger") or {}
    if not liger.get("usable"):
        lines += ["", f"liger-kernel: not measured ({liger.get('reason')})."]
    return "\n".join(lines)
