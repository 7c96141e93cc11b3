"""The parent: plan, run the children in ABBA pairs, score, report. Imports neither torch, sftlab
nor trl, so nothing it holds counts in a child's figures."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from throughput import common as c
from throughput import plan, report, sweep
from throughput.runner import ChildFailed, run_child

DEFAULT_OUT = c.RESULTS / "train_throughput.json"
QUICK_OUT = c.RESULTS / "train_throughput_quick.json"
PARTIAL_OUT = c.RESULTS / "train_throughput.partial.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="sftlab vs TRL's best CPU configuration: training "
                                "speed, memory and quality in ABBA pairs (bench/README.md)")  # fmt: skip
    p.add_argument(
        "--quick", action="store_true", help="the generated set only, 60 rows, 2 pairs (<10 min)"
    )
    p.add_argument(
        "--cases", help=f"comma-separated cases (default: all, {','.join(plan.FULL)})"
    )
    p.add_argument("--pairs", type=int, help="ABBA pairs per case (default 3; --quick 2)")
    p.add_argument("--rows", type=int, help="training rows per case instead of the default sizes")
    p.add_argument("--only", choices=["sftlab", "trl"], help="run one system only (no ratios)")
    p.add_argument("--smoke", action="store_true", help="wiring check: 8 rows, 1 pair, a 1-step sweep "
                   "kept in the work directory (never the stored one); numbers mean nothing")  # fmt: skip
    p.add_argument(
        "--sweep", action="store_true", help="re-run TRL's configuration sweep even if stored"
    )
    p.add_argument(
        "--sweep-only", action="store_true", help="run (or reuse) the sweep, print its table, stop"
    )
    p.add_argument(
        "--sweep-table", action="store_true", help="print the stored sweep as markdown, stop"
    )
    p.add_argument("--sweep-file", type=Path, help=f"sweep cache (default {sweep.SWEEP_FILE})")
    p.add_argument("--out", type=Path, help="result JSON (default: train_throughput.json, _quick.json, "
                   "or .partial.json for --rows/--only/--cases/--pairs/--smoke)")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the work directory (data, runs, logs)")
    return p.parse_args(argv)


def chosen_cases(args) -> dict[str, plan.Case]:
    if args.quick:
        cases = dict(plan.QUICK)
    else:
        names = args.cases.split(",") if args.cases else list(plan.FULL)
        unknown = [n for n in names if n not in plan.CASES]
        if unknown:
            sys.exit(f"unknown case(s) {unknown}; known: {', '.join(plan.CASES)}")
        cases = {n: plan.CASES[n] for n in names}
    rows = 8 if args.smoke and args.rows is None else args.rows
    pairs = 1 if args.smoke and args.pairs is None else args.pairs
    alpaca_based = {"alpaca", "multiturn", "longrow"}
    if not c.ALPACA.is_file() and any(k.kind in alpaca_based for k in cases.values()):
        print(f"note: {c.ALPACA} (the shared Alpaca sample, ../shared/data from the repository) "
              "is missing; the alpaca, multiturn and longrow cases are skipped")  # fmt: skip
        cases = {n: k for n, k in cases.items() if k.kind not in alpaca_based}
    return {n: replace(k, rows=rows if rows is not None else k.rows,
                       target_tokens=None if rows is not None else k.target_tokens,
                       pairs=pairs or k.pairs) for n, k in cases.items()}  # fmt: skip


def default_out(args) -> Path:
    if args.out:
        return args.out
    if args.rows or args.only or args.cases or args.pairs or args.smoke:
        return PARTIAL_OUT
    return QUICK_OUT if args.quick else DEFAULT_OUT


def machine_info() -> dict:
    cpu, flags = platform.processor(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                    if ln.startswith("model name")), cpu)  # fmt: skip
        flags = info
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "avx512_bf16": " avx512_bf16" in flags,
            "amx_bf16": " amx_bf16" in flags, "platform": platform.platform(),
            "python": platform.python_version()}  # fmt: skip


def settings() -> dict:
    return {
        "tokens_per_step": c.TOKENS_PER_STEP, "lr": c.LR, "warmup_ratio": c.WARMUP_RATIO,
        "min_lr_ratio": c.MIN_LR_RATIO, "max_grad_norm": c.MAX_GRAD_NORM, "epochs": 1,
        "lora": {"r": c.LORA_R, "alpha": c.LORA_ALPHA, "dropout": c.LORA_DROPOUT,
                 "target_modules": "all-linear"},
        "optimizer": "AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0)",
        "schedule": "cosine to min_lr_ratio x lr on the last step (sftlab's lr_at; TRL via common.lr_factor)",
        "seeds": "pair i trains with seed SEED + i (both systems)", "eval_rows": c.EVAL_ROWS,
        "model_flops_per_token": {"lora": "4N", "full": "6N"}, "contended_above": c.CONTENDED,
        "throughput_clock": {"sftlab": "summary.json train_seconds", "trl": "trainer.train() wall time"},
    }  # fmt: skip


class Session:
    """One invocation: what was prepared and measured so far (written after every run)."""

    def __init__(self, args, work: Path, cases: dict):
        self.args, self.work, self.cases = args, work, cases
        self.started, self.out = time.time(), default_out(args)
        self.machine = machine_info()
        self.data, self.parameters, self.ceilings = {}, {}, []
        self.sweep, self.sweep_reused = None, False
        self.runs, self.failures, self.interrupted = [], [], False

    def ceiling(self, when: str) -> None:
        result = run_child("probe_child", {"task": "ceilings"}, self.work, f"ceilings-{when}")
        self.ceilings.append({"when": when, **result})
        print(f"matmul ceiling ({when}): bf16 {result['bf16_gflops']:.0f}, fp32 "
              f"{result['fp32_gflops']:.0f} GFLOP/s; load average {result['loadavg'][0]:.2f}")  # fmt: skip

    def best_ceilings(self) -> dict:
        return {k: max(x[k] for x in self.ceilings) for k in ("bf16_gflops", "fp32_gflops")}


def prepare(session: Session, need_sweep_data: bool) -> None:
    wanted = {name: case.data_spec() for name, case in session.cases.items()}
    if need_sweep_data:  # the sweep trains on the generated set, all of it (8 rows in --smoke)
        wanted["sweep"] = plan.Case(
            "sweep", "generated", rows=8 if session.args.smoke else None
        ).data_spec()
    print("preparing data (held-out split, token counts, base-model eval loss) ...", flush=True)
    result = run_child("prepare_child", {"workdir": str(session.work), "datasets": wanted},
                       session.work, "prepare")  # fmt: skip
    session.data, session.parameters = result["datasets"], result["parameters"]
    for name, ds in session.data.items():
        print(f"  {name}: {ds['train_rows']} training rows ({ds['train_supervised_tokens']:,} "
              f"supervised of {ds['train_tokens']:,} tokens, {ds['assistant_turns_per_row']:.1f} "
              f"answers per row), {ds['eval_rows']} held out, base eval loss {ds['eval_loss_base']:.3f}")  # fmt: skip


def sweep_file(args, work: Path) -> Path:
    if args.sweep_file:
        return args.sweep_file
    # a smoke sweep is never stored where a real one lives
    return work / "trl_sweep.smoke.json" if args.smoke else sweep.SWEEP_FILE


def find_trl_config(session: Session) -> None:
    args = session.args
    path = sweep_file(args, session.work)

    def measure_now():
        print(f"sweeping TRL's CPU settings (stored in {path}) ...", flush=True)
        liger = run_child("probe_child", {"task": "liger"}, session.work, "liger")
        return sweep.run_sweep(session.data["sweep"], session.work, liger, smoke=args.smoke)

    session.sweep, session.sweep_reused = sweep.load_or_run(
        path, args.sweep or args.sweep_only, measure_now
    )
    when = "reused" if session.sweep_reused else "measured"
    for method, name in session.sweep["winner_key"].items():
        print(f"TRL baseline ({method}, {when} {session.sweep['date']}): {name}")


def run_one(session: Session, run: plan.Run) -> dict | None:
    case = session.cases[run.case]
    ds = session.data[run.case]
    run_dir = session.work / "runs" / run.name
    if run.system == "sftlab":
        spec = plan.sftlab_spec(ds, case.method, run.seed, run_dir)
        module = "sftlab_child"
    else:
        cfg = session.sweep["winner"][case.method]
        spec, module = plan.trl_spec(ds, case.method, cfg, run.seed, run_dir), "trl_child"
    try:
        result = run_child(module, spec, session.work, run.name)
    except ChildFailed as exc:
        print(f"FAILED\n{exc}", flush=True)
        session.failures.append({"run": run.name, "error": str(exc)})
        return None
    params = session.parameters[ds["model"]]
    report.add_rates(result, params, case.method, session.best_ceilings())
    return {"system": run.system, "case": run.case, "pair": run.pair, "seed": run.seed, **result}


def run_case(session: Session, name: str) -> None:
    case = session.cases[name]
    runs = [r for r in plan.abba(name, case.pairs) if session.args.only in (None, r.system)]
    done = []
    for i, run in enumerate(runs, 1):
        print(f"[{name} {i}/{len(runs)}] {run.name} ...", end=" ", flush=True)
        record = run_one(session, run)
        if record is None:
            continue
        done.append(record)
        session.runs.append(record)
        flag = "  CONTENDED" if report.contended(record) else ""
        print(f"{record['supervised_tokens_per_s']:.1f} sup. tok/s, {record['train_seconds']:.0f} s "
              f"training, peak {record['memory']['peak_rss_mb']:,.0f} MB ({record['child_seconds']:.0f} s){flag}")  # fmt: skip
        write_json_atomic(session.out, build_report(session))
    score(session, case, done)


def score(session: Session, case: plan.Case, runs: list[dict]) -> None:
    """Every saved model of the case in one eval child (same code for both systems)."""
    if not runs:
        return
    ds = session.data[case.name]
    spec = {"model": case.model, "max_length": case.max_length, "method": case.method,
            "eval_file": ds["eval_file"], "weights": [r["weights"] for r in runs],
            "delete_full_models": not session.args.keep}  # fmt: skip
    try:
        losses = run_child("eval_child", spec, session.work, f"eval-{case.name}")["eval_loss"]
    except ChildFailed as exc:
        print(f"eval of {case.name} FAILED\n{exc}")
        session.failures.append({"run": f"eval-{case.name}", "error": str(exc)})
        return
    for r in runs:
        r["eval_loss"] = losses[r["weights"]]
    print(
        f"  eval loss ({case.name}): "
        + ", ".join(f"{r['system']}/seed {r['seed']} {r['eval_loss']:.4f}" for r in runs)
    )


def build_report(session: Session) -> dict:
    cases = {}
    for name in session.cases:
        runs = [r for r in session.runs if r["case"] == name]
        if runs:
            cases[name] = report.summarise_case(runs)
    sw = session.sweep or {}
    return {
        "benchmark": "train_throughput", "mode": "quick" if session.args.quick else "full",
        "smoke": session.args.smoke, "only": session.args.only,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(session.started)),
        "machine": session.machine, "versions": c.versions(), "settings": settings(),
        "ceilings": {**(session.best_ceilings() if session.ceilings else {}),
                     "measurements": session.ceilings},
        "trl_baseline": {"config": sw.get("winner"), "name": sw.get("winner_key"),
                         "sweep_date": sw.get("date"), "sweep_reused": session.sweep_reused},
        "case_info": {n: {**vars(k), **{f: session.data.get(n, {}).get(f) for f in
                      ("train_rows", "train_tokens", "train_supervised_tokens", "eval_rows",
                       "eval_loss_base", "assistant_turns_per_row", "data_format")}}
                      for n, k in session.cases.items()},
        "cases": cases, "runs": session.runs, "failures": session.failures,
        "interrupted": session.interrupted, "wall_seconds": round(time.time() - session.started, 1),
    }  # fmt: skip


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def print_sweep_table(path: Path) -> int:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"no stored sweep at {path} ({exc}); run with --sweep-only", file=sys.stderr)
        return 1
    print(f"TRL sweep of {stored['date']} ({stored['versions']}, {stored['seconds']} s):\n")
    print(report.sweep_table(stored))
    return 0


def measure_all(session: Session) -> None:
    args = session.args
    session.ceiling("start")
    need_sweep = args.only != "sftlab" or args.sweep_only
    if need_sweep:
        find_trl_config(session)
    if args.sweep_only:
        print(report.sweep_table(session.sweep))
        return
    for name in session.cases:
        run_case(session, name)
    session.ceiling("end")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.sweep_table:
        return print_sweep_table(args.sweep_file or sweep.SWEEP_FILE)
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}; the CPU is not idle, numbers will be noisy")
    work = Path(tempfile.mkdtemp(prefix="sftlab-bench-"))
    session = Session(args, work, chosen_cases(args))
    session.machine["loadavg_at_start"] = os.getloadavg()
    try:
        stale = args.sweep or args.sweep_only or sweep.cached(sweep_file(args, work)) is None
        prepare(session, need_sweep_data=args.only != "sftlab" and stale)
        measure_all(session)
    except ChildFailed as exc:
        print(f"\n{exc}\nwork directory kept: {work}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: reporting the runs finished so far")
        session.interrupted = True
    return finish(session)


def finish(session: Session) -> int:
    session.machine["loadavg_at_end"] = os.getloadavg()
    if session.args.sweep_only:
        shutil.rmtree(session.work, ignore_errors=True)
        return 0
    result = build_report(session)
    write_json_atomic(session.out, result)
    if result["cases"]:
        print("\n" + report.results_table(result))
    for method, name in (result["trl_baseline"]["name"] or {}).items():
        print(f"TRL baseline ({method}): {name}")
    print(f"results written to {session.out} ({result['wall_seconds']:.0f} s)")
    if session.args.keep or session.failures:
        print(f"work directory kept: {session.work}")
    else:
        shutil.rmtree(session.work, ignore_errors=True)
    return 130 if session.interrupted else (1 if session.failures else 0)
