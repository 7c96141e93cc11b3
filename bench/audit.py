"""Data hygiene benchmarks: audit speed on 50,000 conversations, and what the audit finds in the
real datasets of ../shared/data.

    python bench/audit.py                    # speed: heuristic rules + dedup over 50,000 rows
    python bench/audit.py --rows 10000       # a smaller set
    python bench/audit.py --tokenizer default  # lengths in the embedded SmolLM2 tokenizer's tokens
    python bench/audit.py --real             # per-rule counts and examples on each real set

Speed set: every row of the real sets (Alpaca sample, GSM8K, Glaive tool calls, Chinese Alpaca),
then new conversations made from them until there are --rows: a real prompt and an answer
assembled from 2-6 sentences drawn from other answers, so no two rows are copies (a set of copies
would make deduplication trivially fast). Without ../shared/data the rows are generated.
Writes bench/results/audit_speed.json or bench/results/audit_real.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
REAL_SETS = ["alpaca_en_demo.json", "gsm8k_train_alpaca.json", "glaive_toolcall_en_demo.json",
             "alpaca_zh_demo.json", "identity.json"]  # fmt: skip
SENTENCE = re.compile(r"(?<=[.!?。！？])\s+")


def real_pairs() -> list[tuple[str, str]]:
    """(prompt, answer) of every single-answer row of the real sets."""
    from sftlab.hygiene.load import load_input

    pairs = []
    for name in REAL_SETS[:4]:
        for row in load_input(SHARED / name).rows:
            users = [m.content for m in row.conversation.messages if m.role == "user"]
            answers = [m.content for m in row.conversation.messages if m.role == "assistant" and m.content]
            if users and answers:
                pairs.append((users[-1], answers[-1]))
    return pairs


def generated_pairs(n: int) -> list[tuple[str, str]]:
    rng = random.Random(1)
    words = [f"w{i}" for i in range(3000)]
    return [(f"Explain item {i}.", ". ".join(" ".join(rng.choice(words) for _ in range(12))
                                               for _ in range(5)) + ".") for i in range(n)]  # fmt: skip


def build_set(path: Path, rows: int) -> str:
    """Write `rows` conversations as JSON lines; returns where they came from."""
    if SHARED.is_dir():
        pairs, source = real_pairs(), "real sets + recombined answers"
    else:
        pairs, source = generated_pairs(10_000), "generated"
    sentences = [s for _, a in pairs for s in SENTENCE.split(a) if len(s.split()) >= 4]
    rng = random.Random(0)
    out = list(pairs[:rows])
    while len(out) < rows:
        prompt = rng.choice(pairs)[0]
        out.append((prompt, " ".join(rng.choice(sentences) for _ in range(rng.randint(2, 6)))))
    with open(path, "w", encoding="utf-8") as handle:
        for prompt, answer in out:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return source


def options(tokenizer: str):
    from sftlab.config import HygieneConfig
    from sftlab.hygiene.run import build_options

    if tokenizer == "words":
        return build_options(HygieneConfig())
    from sftlab.hygiene.length import tokenizer_counter
    from sftlab.model.load import load_tokenizer, resolve_model

    ref = resolve_model(tokenizer)
    return build_options(HygieneConfig(), count_tokens=tokenizer_counter(load_tokenizer(ref)),
                         tokenizer_name=ref.name)  # fmt: skip


def speed(rows: int, tokenizer: str, out: Path) -> dict:
    from sftlab.hygiene.run import run_audit

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "conversations.jsonl"
        source = build_set(data, rows)
        opts = options(tokenizer)
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        _, summary = run_audit([data], opts, Path(tmp) / "audit", say=lambda _: None)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    result = {
        "rows": rows, "source": source, "tokenizer": summary["lengths"]["tokenizer"],
        "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
        "timings_s": summary["timings_s"], "totals": summary["totals"],
        "fired": {k: v["fired"] for k, v in summary["per_rule"].items() if v["fired"]},
        "cpu_s": round(cpu, 2), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()[0],
    }  # fmt: skip
    print(f"{rows} rows in {seconds:.1f} s: {result['rows_per_s']} rows/s "
          f"(read+audit+write; tokenizer: {result['tokenizer']})")  # fmt: skip
    print("  timings (s):", ", ".join(f"{k} {v}" for k, v in summary["timings_s"].items()))
    print(f"  CPU time {cpu:.1f} s over this process and its workers; load average "
          f"{result['load_avg_at_end']:.1f} (other processes on the machine slow the wall clock)")
    return result


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the rule workers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def examples_per_rule(out_dir: Path, per_rule: int = 2) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for name in ("rejected.jsonl", "review.jsonl"):
        for line in (out_dir / name).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            messages = (record.get("row") or {}).get("messages") or record.get("messages") or []
            for finding in record.get("rules", record.get("why", [])):
                shown = found.setdefault(finding["rule"], [])
                if len(shown) < per_rule:
                    shown.append({"id": record.get("id"), "reason": finding["reason"],
                                  "prompt": next((m["content"][:200] for m in messages if m["role"] == "user"), ""),
                                  "answer": next((m["content"][-200:] for m in reversed(messages)
                                                  if m["role"] == "assistant" and m["content"]), "")})  # fmt: skip
    return found


def real(tokenizer: str) -> dict:
    from sftlab.hygiene.run import run_audit

    report = {}
    opts = options(tokenizer)
    for name in REAL_SETS:
        with tempfile.TemporaryDirectory() as tmp:
            _, summary = run_audit([SHARED / name], opts, Path(tmp), say=lambda _: None)
            examples = examples_per_rule(Path(tmp))
        rows = summary["totals"]["rows"]
        fired = {k: v["fired"] for k, v in summary["per_rule"].items() if v["fired"]}
        report[name] = {"totals": summary["totals"], "fired": fired,
                        "fired_share": {k: round(v / rows, 4) for k, v in fired.items()},
                        "examples": examples}  # fmt: skip
        print(f"{name}: {rows} rows, {summary['totals']['rejected']} rejected, "
              f"{summary['totals']['review']} to review; " + ", ".join(f"{k} {v}" for k, v in fired.items()))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--tokenizer", default="words", help="words (approximate) or a model name")
    parser.add_argument("--real", action="store_true", help="audit each real set in ../shared/data")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.real and not SHARED.is_dir():
        sys.exit(f"no real data at {SHARED}")
    result = real(args.tokenizer) if args.real else speed(args.rows, args.tokenizer, args.out)
    out = args.out or HERE / "results" / ("audit_real.json" if args.real else "audit_speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
