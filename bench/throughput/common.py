"""What both training children and the parent share. Imports neither sftlab nor trl (nor torch):
the TRL child must measure TRL alone, so nothing of sftlab may be loaded into it."""

from __future__ import annotations

import json
import math
import os
import resource
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent  # bench/
RESULTS = BENCH / "results"
SHARED_DATA = BENCH.parent.parent / "shared" / "data"  # ../shared/data from the repository
ALPACA = SHARED_DATA / "alpaca_en_demo.json"

SEED = 0
MAX_LENGTH = 512  # single-turn sets; the multi-turn and long-row sets set their own
TOKENS_PER_STEP = 2048  # every optimizer step of both systems holds about this many tokens
LORA_R, LORA_ALPHA, LORA_DROPOUT = 16, 32, 0.0
LR = {"lora": 2e-4, "full": 2e-5}
WARMUP_RATIO = 0.05  # sftlab's default
MIN_LR_RATIO = 0.1  # sftlab's default cosine floor
MAX_GRAD_NORM = 1.0
EVAL_ROWS = 40  # held-out conversations per data set, never trained on
EVAL_TOKENS = 6_000  # ... or fewer, up to this many tokens (long rows: ~4; each pass is a forward)
FLOPS_PER_PARAM = {"lora": 4, "full": 6}
CONTENDED = 0.1  # other_cpu_share above this: another process used the CPU during the run
VERSION_PACKAGES = ("trl", "transformers", "peft", "torch")  # the sweep's cache key


def lr_factor(step: int, total: int, warmup: int, min_ratio: float = MIN_LR_RATIO) -> float:
    """sftlab's schedule (`sftlab.train.optim.lr_at`, cosine) as a factor of the peak, for TRL's
    LambdaLR. A copy, because the TRL child must not import sftlab; a test holds the two equal.
    Warmup ends at the peak; the cosine lands on the floor on the last step (total - 1)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    decay_steps = total - warmup
    progress = 1.0 if decay_steps <= 1 else min(1.0, (step - warmup) / (decay_steps - 1))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(total: int) -> int:
    return round(WARMUP_RATIO * total)  # as sftlab.recipes.sft rounds it


def sftlab_batching(max_length: int) -> tuple[int, int]:
    """sftlab's (batch_tokens, grad_accum) for TOKENS_PER_STEP, as its defaults set them: 512-token
    micro-batches, or one full row when rows can be longer (sftlab.config.micro_batches_per_step)."""
    batch_tokens = max(512, max_length)
    return batch_tokens, max(1, TOKENS_PER_STEP // batch_tokens)


def trl_batching(
    accum: int, packed: bool, pack_length: int, mean_row_tokens: float
) -> tuple[int, int]:
    """TRL's (per_device_train_batch_size, gradient_accumulation_steps) holding TOKENS_PER_STEP:
    packed rows of `pack_length`, or unpacked rows of the mean length, split into `accum`
    micro-batches (fewer when a step holds fewer rows than that)."""
    row = pack_length if packed else max(mean_row_tokens, 1.0)
    rows_per_step = max(1, round(TOKENS_PER_STEP / row))
    accum = max(1, min(accum, rows_per_step))
    return max(1, round(rows_per_step / accum)), accum


def after_first_step(seconds: list[float], supervised: list[int]) -> float | None:
    """Supervised tokens/s over every step but the first (which pays one-time warm-up costs)."""
    if len(seconds) < 2 or len(seconds) != len(supervised):
        return None
    return sum(supervised[1:]) / max(sum(seconds[1:]), 1e-9)


def peak_rss_mb() -> dict:
    """This process's peak RSS. VmHWM belongs to the process's own memory map; ru_maxrss can
    carry the parent's high-water mark across vfork+exec, so it is kept only for reference."""
    out = {"ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["vmhwm_mb"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    out["peak_rss_mb"] = out.get("vmhwm_mb", out["ru_maxrss_mb"])
    return out


def child_env() -> dict:
    """Environment of every child: offline, CPU only, and `throughput` importable."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
        CUDA_VISIBLE_DEVICES="",  # a CPU benchmark, even on a machine with a GPU
        PYTHONPATH=os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")])),
    )  # fmt: skip
    # oneDNN's primitive cache: sftlab sets 64 on import (1,024 by default: varying shapes grew
    # resident memory ~1 GB); the TRL child gets the same setting, so memory compares like with like.
    env.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    return env


def read_messages(path: Path) -> list[list[dict]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"] for line in lines if line.strip()]


def write_messages(path: Path, rows: list[list[dict]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for msgs in rows:
            handle.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")


def versions(
    packages=("sftlab", "torch", "transformers", "trl", "peft", "accelerate", "datasets"),
) -> dict:
    out = {}
    for package in packages:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def child_main(task) -> None:
    """A child's entry point: `python -m throughput.X SPEC.json`; the result goes to the file the
    spec names, so the child's stdout stays a log."""
    import sys

    spec = json.loads(Path(sys.argv[1]).read_text())
    result = task(spec)
    Path(spec["result_file"]).write_text(json.dumps(result, indent=2))
