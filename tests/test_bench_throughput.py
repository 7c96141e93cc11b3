"""bench/train_throughput.py's logic: ABBA order, paired ratios, contended runs, the sweep's
cache and search, and the shared helpers. Fast: no training."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from throughput import common, plan, report, sweep  # noqa: E402


def test_abba_order_alternates_which_system_goes_first():
    runs = plan.abba("generated", 3)
    assert [(r.system, r.pair) for r in runs] == [
        ("sftlab", 0), ("trl", 0), ("trl", 1), ("sftlab", 1), ("sftlab", 2), ("trl", 2),
    ]  # fmt: skip
    # both systems of a pair train with the same seed; each pair a different one
    assert [r.seed for r in runs] == [0, 0, 1, 1, 2, 2]
    assert len({r.name for r in runs}) == 6


def fake_run(system, pair, rate, rss=1000.0, other=0.0, loss=1.0):
    return {"system": system, "pair": pair, "seed": pair, "supervised_tokens_per_s": rate,
            "tokens_per_s": 2 * rate, "mfu_vs_bf16": None, "mfu_vs_fp32": 0.1,
            "memory": {"peak_rss_mb": rss}, "other_cpu_share": other, "eval_loss": loss,
            "steps": 8, "settings": {}}  # fmt: skip


def three_pairs(trl_other_in_pair_1=0.0):
    # sftlab / TRL per pair: 300/100 = 3.0, 350/100 = 3.5, 240/120 = 2.0
    return [
        fake_run("sftlab", 0, 300, rss=900, loss=1.30), fake_run("trl", 0, 100, rss=1800, loss=1.20),
        fake_run("trl", 1, 100, rss=2000, other=trl_other_in_pair_1, loss=1.40),
        fake_run("sftlab", 1, 350, rss=1000, loss=1.50),
        fake_run("sftlab", 2, 240, rss=1100, loss=1.40), fake_run("trl", 2, 120, rss=2200, loss=1.30),
    ]  # fmt: skip


def test_paired_ratios_median_min_max():
    s = report.summarise_case(three_pairs())
    assert s["speedup"] == {"median": 3.0, "min": 2.0, "max": 3.5, "n": 3}
    # peak RSS per pair: 0.5, 0.5, 0.5
    assert s["peak_rss_ratio"]["median"] == pytest.approx(0.5)
    assert s["excluded_pairs"] == 0
    # 3-seed eval-loss means: sftlab (1.3 + 1.5 + 1.4) / 3 = 1.4, TRL (1.2 + 1.4 + 1.3) / 3 = 1.3
    assert s["sftlab"]["eval_loss_mean"] == pytest.approx(1.4)
    assert s["trl"]["eval_loss_mean"] == pytest.approx(1.3)
    assert s["eval_loss_ratio"] == pytest.approx(1.4 / 1.3)


def test_contended_pair_is_excluded_from_the_medians_but_flagged():
    s = report.summarise_case(three_pairs(trl_other_in_pair_1=0.3))
    assert s["excluded_pairs"] == 1
    assert [p["contended"] for p in s["pairs"]] == [False, True, False]
    # the medians come from pairs 0 and 2 only: ratios 3.0 and 2.0
    assert s["speedup"] == {"median": 2.5, "min": 2.0, "max": 3.0, "n": 2}
    assert s["trl"]["contended_runs"] == 1
    assert s["trl"]["supervised_tokens_per_s"]["n"] == 2
    # the eval loss does not depend on the CPU: all three seeds still count
    assert s["trl"]["eval_loss_mean"] == pytest.approx(1.3)
    table = report.results_table({"cases": {"generated": s},
                                  "case_info": {"generated": {"method": "lora"}}})  # fmt: skip
    assert "| 2 / 3 |" in table and "excluded from the medians" in table


def test_sweep_cache_reused_for_the_same_versions_and_rerun_otherwise(tmp_path):
    path, calls = tmp_path / "trl_sweep.json", []

    def measure_now():
        calls.append(1)
        return {"format": sweep.SWEEP_FORMAT, "versions": common.versions(common.VERSION_PACKAGES),
                "winner": {"lora": sweep.START, "full": sweep.START}, "n": len(calls)}  # fmt: skip

    first, reused = sweep.load_or_run(path, False, measure_now)
    assert (reused, len(calls)) == (False, 1) and path.is_file()
    again, reused = sweep.load_or_run(path, False, measure_now)
    assert (reused, len(calls), again["n"]) == (True, 1, 1)
    _, reused = sweep.load_or_run(path, True, measure_now)  # --sweep
    assert (reused, len(calls)) == (False, 2)
    stored = json.loads(path.read_text())
    stored["versions"]["trl"] = "0.0.1"  # measured with another TRL
    path.write_text(json.dumps(stored))
    _, reused = sweep.load_or_run(path, False, measure_now)
    assert (reused, len(calls)) == (False, 3)
    assert json.loads(path.read_text())["versions"] == common.versions(common.VERSION_PACKAGES)


def test_sweep_search_keeps_the_best_setting_of_each_stage(tmp_path, monkeypatch):
    """The greedy order, with made-up rates: accum 2 wins the shape stage, padded unpacked rows
    the packing stage (so group_by_length is tried on them), bf16 loses; full fine-tuning takes
    the 3 best LoRA configurations with an fp32 base."""

    def fake_probe(cfg, method, stage, ds, ctx):
        rate = (
            100
            + 20 * (cfg["accum"] == 2)
            + 30 * (cfg["packing"] is None and not cfg["padding_free"])
        )
        rate += 5 * cfg["group_by_length"] - 50 * cfg["bf16"] - 10 * (cfg["base_dtype"] == "bf16")
        rate -= 7 * (cfg["attn"] == "eager")
        return {"key": sweep.key(cfg), "config": cfg, "method": method, "stage": stage,
                "status": "ok", "supervised_tokens_per_s": float(rate), "child_seconds": 1.0}  # fmt: skip

    monkeypatch.setattr(sweep, "probe", fake_probe)
    ds = {"kind": "generated", "train_rows": 8, "train_tokens": 800, "mean_row_tokens": 100.0}
    result = sweep.run_sweep(ds, tmp_path, {"usable": False, "reason": "no triton"})
    win = result["winner"]["lora"]
    assert (win["accum"], win["packing"], win["padding_free"], win["group_by_length"]) == (
        2,
        None,
        False,
        True,
    )
    assert (win["bf16"], win["base_dtype"], win["attn"]) == (False, "fp32", "sdpa")
    lora = [r for r in result["records"] if r["method"] == "lora"]
    assert len({r["key"] for r in lora}) == len(lora)  # nothing measured twice
    assert not any(r["config"]["liger"] for r in lora)  # liger unusable: not tried
    full = [r for r in result["records"] if r["method"] == "full"]
    assert len(full) == 3 and all(r["config"]["base_dtype"] == "fp32" for r in full)
    assert result["winner"]["full"] == win


def test_lr_factor_matches_sftlab_schedule():
    from sftlab.train.optim import lr_at

    for total in (1, 2, 3, 7, 8, 40):
        warmup = common.warmup_steps(total)
        for step in range(total):
            expected = lr_at(step, total, 2e-4, warmup, "cosine", common.MIN_LR_RATIO) / 2e-4
            assert math.isclose(common.lr_factor(step, total, warmup), expected, rel_tol=1e-12)


def test_batch_shapes_hold_the_same_tokens_per_step():
    # packed rows of 512: 4 per 2,048-token step, in 4, 2 or 1 micro-batches
    assert common.trl_batching(4, True, 512, 85.0) == (1, 4)
    assert common.trl_batching(2, True, 512, 85.0) == (2, 2)
    assert common.trl_batching(1, True, 512, 85.0) == (4, 1)
    # unpacked rows of ~85 tokens: round(2048 / 85) = 24 rows per step
    assert common.trl_batching(4, False, 512, 85.0) == (6, 4)
    # long rows (packed to 2,048): one row per step, however many micro-batches were asked for
    assert common.trl_batching(4, True, 2048, 1500.0) == (1, 1)
    assert common.sftlab_batching(512) == (512, 4)
    assert common.sftlab_batching(2048) == (2048, 1)


@pytest.mark.parametrize("max_length", [256, 512, 1024, 2048])
def test_the_bench_gives_sftlab_its_own_default_batching(max_length):
    # The sftlab child is handed (batch_tokens, grad_accum) explicitly; they must be what
    # sftlab picks by itself, or the bench would measure a tuned sftlab, not its defaults.
    from sftlab.config import DEFAULT_STEP_TOKENS, load_config

    base = {"data": {"sources": [{"path": "x.jsonl"}]}}
    config = load_config(None, [f"template.max_length={max_length}"], base=base)
    assert common.TOKENS_PER_STEP == DEFAULT_STEP_TOKENS
    mine = (config.micro_batch_tokens(), config.micro_batches_per_step())
    assert common.sftlab_batching(max_length) == mine
