"""How fast sftlab turns 50,000 Alpaca-style rows into packed training rows, cold and cached.

    python bench/preprocess.py [--rows 50000]

Writes a 50,000-row alpaca JSON file (the Alpaca sample in ../shared/data, cycled with a
unique suffix per row, or generated rows where that file is absent), then in two fresh
processes runs the recipe's data stage (read, convert, mix, render with the embedded SmolLM2
template, tokenize, mask, pre-flight report) followed by best-fit-decreasing packing into rows of
512: once with an empty cache, once again (a cache hit). Prints a table and writes
bench/results/preprocess.json. "stage" excludes Python and library imports; "process" is the
whole command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALPACA = HERE.parent.parent / "shared" / "data" / "alpaca_en_demo.json"


def write_rows(path: Path, n: int) -> str:
    if ALPACA.is_file():
        base, source = json.loads(ALPACA.read_text(encoding="utf-8")), ALPACA.name
    else:
        base = [
            {"instruction": f"Explain topic {i} in two sentences.", "input": "",
             "output": f"Topic {i} is a subject people study. " * (3 + i % 7)}
            for i in range(1000)
        ]  # fmt: skip
        source = "generated"
    rows = [
        dict(base[i % len(base)], instruction=f"{base[i % len(base)]['instruction']} (#{i})")
        for i in range(n)
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return source


def stage(data: str) -> dict:
    """One timed run of the data stage + packing (called in a child process)."""
    from sftlab.config import load_config
    from sftlab.pack.packing import build_rows
    from sftlab.recipes.prepare import prepare_data

    config = load_config(None, base={
        "data": {"sources": [{"path": data}], "eval_rows": 200},
        "template": {"max_length": 512},
    })  # fmt: skip
    # The clock times the data stage, not Python importing the libraries every sftlab run loads
    # anyway (torch, transformers' tokenizer classes: ~2-3 s in a fresh process); the
    # `process s` column keeps the whole child, imports included.
    import torch  # noqa: F401
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401
    from transformers.models.auto import tokenization_auto  # noqa: F401

    started = time.perf_counter()
    prepared = prepare_data(config, None, say=lambda *_: None)
    rows = build_rows(prepared.train, 512, packing=True)
    seconds = time.perf_counter() - started
    return {
        "stage_seconds": round(seconds, 3),
        "cache_hit": prepared.cache_hit,
        "examples": len(prepared.train),
        "rejected": len(prepared.rejected),
        "tokens": prepared.report["tokens"],
        "packed_rows": len(rows),
    }


def run_child(data: Path, cache: Path) -> dict:
    env = {**os.environ, "SFTLAB_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "true"}
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(data)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(time.perf_counter() - started, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(stage(args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "alpaca.json", Path(tmp) / "cache"
        source = write_rows(data, args.rows)
        # The embedded model's converted copy is shared, so the cold run times data work only.
        models = Path(os.environ.get("SFTLAB_CACHE", Path.home() / ".cache" / "sftlab")) / "models"
        if models.is_dir():
            cache.mkdir()
            (cache / "models").symlink_to(models)
        cold, warm = run_child(data, cache), run_child(data, cache)
    results = {"rows": args.rows, "source": source, "cold": cold, "cached": warm,
               "targets": {"cold_stage_seconds": 30, "cached_stage_seconds": 3}}  # fmt: skip
    print(f"{args.rows:,} alpaca rows ({source}): {cold['examples']:,} examples, {cold['tokens']:,} tokens, "
          f"{cold['rejected']:,} rejected, {cold['packed_rows']:,} packed rows of 512")  # fmt: skip
    print(f"{'run':<8}{'stage s':>10}{'process s':>12}{'rows/s':>10}{'target s':>10}")
    for name, r, target in (("cold", cold, 30), ("cached", warm, 3)):
        print(f"{name:<8}{r['stage_seconds']:>10.2f}{r['process_seconds']:>12.2f}"
              f"{args.rows / r['stage_seconds']:>10,.0f}{target:>10}")  # fmt: skip
    out = HERE / "results" / "preprocess.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
