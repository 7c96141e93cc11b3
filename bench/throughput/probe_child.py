"""Small measurements in their own process: `python -m throughput.probe_child SPEC.json` with
spec task `ceilings` (the matmul ceilings: the best of up to 10 timed GEMMs, 2048^3 unless one
product is too slow, bf16 and fp32) or `liger` (whether liger-kernel runs on this CPU)."""

from __future__ import annotations

import math
import time

from throughput import common as c


def gflops(dtype, n: int = 2048, repeats: int = 10, budget_s: float = 20.0) -> tuple[float, int]:
    """(GFLOP/s, size): the best of up to `repeats` timed n^3 products after a warm-up, as many
    as fit in `budget_s` (at least 3). A CPU without AVX-512 BF16 multiplies bf16 through a slow
    fallback (one 2048^3 product took minutes on the development machine), so the size grows
    from 256 only while one product takes under 1/8 s."""
    import torch

    gen = torch.Generator().manual_seed(0)
    size = 256
    while True:
        a = torch.randn(size, size, generator=gen).to(dtype)
        b = torch.randn(size, size, generator=gen).to(dtype)
        started = time.perf_counter()
        a @ b
        slow = time.perf_counter() - started > 1.0 / 8
        if size >= n or slow:
            break
        size *= 2
    best, started_all = math.inf, time.perf_counter()
    for i in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
        if i >= 2 and time.perf_counter() - started_all > budget_s:
            break
    return 2 * size**3 / best / 1e9, size


def ceilings() -> dict:
    import os

    import torch

    bf16, bf16_size = gflops(torch.bfloat16)
    fp32, fp32_size = gflops(torch.float32)
    return {"bf16_gflops": round(bf16, 1), "fp32_gflops": round(fp32, 1),
            "bf16_size": bf16_size, "fp32_size": fp32_size,
            "threads": torch.get_num_threads(), "loadavg": os.getloadavg()}  # fmt: skip


def liger() -> dict:
    """Liger's kernels are Triton kernels; Triton needs a GPU backend. Try one on a CPU tensor."""
    try:
        import torch
        from liger_kernel.transformers import LigerRMSNorm

        LigerRMSNorm(64)(torch.randn(2, 8, 64))
    except Exception as exc:  # ImportError when absent; Triton's driver error on CPU
        return {"usable": False, "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {"usable": True, "reason": None}


def run(spec: dict) -> dict:
    return {"ceilings": ceilings, "liger": liger}[spec["task"]]()


if __name__ == "__main__":
    c.child_main(run)
