"""Small measurements in their own process: `python -m throughput.probe_child SPEC.json` with
spec task `ceilings` (the matmul ceilings: best of 10 timed 2048^3 GEMMs, bf16 and fp32) or
`liger` (whether liger-kernel is installed and its kernels run on this CPU)."""

from __future__ import annotations

import math
import time

from throughput import common as c


def gflops(dtype, n: int = 2048, warmup: int = 2, repeats: int = 10) -> float:
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    for _ in range(warmup):
        a @ b
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def ceilings() -> dict:
    import os

    import torch

    return {
        "bf16_gflops": round(gflops(torch.bfloat16), 1),
        "fp32_gflops": round(gflops(torch.float32), 1),
        "threads": torch.get_num_threads(),
        "size": 2048,
        "loadavg": os.getloadavg(),
    }


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
