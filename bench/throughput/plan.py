"""What an invocation runs (parent side): the cases, their sizes, and the ABBA run order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from throughput import common as c


@dataclass(frozen=True)
class Case:
    """One row of the result table: a data set, a model and a method, run in `pairs` pairs."""

    name: str
    kind: str  # generated | alpaca | multiturn | longrow | instruct
    model: str = "default"  # sftlab's name for an embedded model
    method: str = "lora"
    max_length: int = c.MAX_LENGTH
    rows: int | None = None  # training rows (None: up to target_tokens, or all)
    target_tokens: int | None = None
    pairs: int = 3

    def data_spec(self) -> dict:
        return {"kind": self.kind, "model": self.model, "max_length": self.max_length,
                "rows": self.rows, "target_tokens": self.target_tokens}  # fmt: skip


# Sizes (training tokens per run), from rates measured on 2 idle cores without AVX-512 (fp32 for
# both; 2026-11-30: TRL ~105-140 and sftlab ~145-200 tokens/s on SmolLM2 LoRA). The six short
# cases took 53 minutes; alpaca_long adds ~30, so the full invocation stays near 90.
CASES = {
    "generated": Case("generated", "generated"),  # all ~160 rows; its 3 pairs are the 3 seeds
    "alpaca": Case("alpaca", "alpaca", target_tokens=7_000),
    "multiturn": Case("multiturn", "multiturn", max_length=1024, target_tokens=7_000),
    "longrow": Case("longrow", "longrow", max_length=2048, target_tokens=7_000),
    "generated_full": Case("generated_full", "generated", method="full", target_tokens=5_000),
    "gemma": Case("gemma", "instruct", model="gemma3-270m", target_tokens=3_000),
    # a user's run length: ~4 minutes for sftlab and ~5.5 for TRL per run at those rates, so
    # one-time costs (loading, warm-up, compiling) weigh as they do in real use
    "alpaca_long": Case("alpaca_long", "alpaca", target_tokens=45_000),
}
FULL = tuple(CASES)
QUICK = {"generated": Case("generated", "generated", rows=60, pairs=2)}


@dataclass(frozen=True)
class Run:
    system: str  # sftlab | trl
    case: str
    pair: int  # 0-based; also the seed offset: pair i of every case trains with seed SEED + i

    @property
    def name(self) -> str:
        return f"{self.case}-{self.pair}-{self.system}"

    @property
    def seed(self) -> int:
        return c.SEED + self.pair


def abba(case: str, pairs: int) -> list[Run]:
    """sftlab, trl, trl, sftlab, sftlab, trl, ...: each pair is adjacent in time, and which system
    goes first alternates, so a drift of the machine during a pair favours neither."""
    runs = []
    for pair in range(pairs):
        order = ("sftlab", "trl") if pair % 2 == 0 else ("trl", "sftlab")
        runs += [Run(system, case, pair) for system in order]
    return runs


def trl_spec(ds: dict, method: str, cfg: dict, seed: int, run_dir: Path) -> dict:
    return {
        "name": run_dir.name, "run_dir": str(run_dir), "method": method, "seed": seed, "trl": cfg,
        "model_path": ds["model_path"], "chat_template": ds["chat_template"],
        "data_format": ds["data_format"], "max_length": ds["max_length"],
        "token_rows": ds["token_rows"], "train_file": ds["train_file"],
        "mean_row_tokens": ds["mean_row_tokens"],
    }  # fmt: skip


def sftlab_spec(ds: dict, method: str, seed: int, run_dir: Path) -> dict:
    return {
        "name": run_dir.name, "run_dir": str(run_dir), "method": method, "seed": seed,
        "model": ds["model"], "max_length": ds["max_length"], "token_rows": ds["token_rows"],
        "train_file": ds["train_file"], "pack": "auto",
    }  # fmt: skip
