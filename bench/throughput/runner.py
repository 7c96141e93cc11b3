"""Running children (parent side): every measured step is a fresh interpreter, so no import or
allocation of one run can leak into another's time or memory figures."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from throughput import common as c


class ChildFailed(RuntimeError):
    pass


class ChildTimedOut(ChildFailed):
    pass


def run_child(module: str, spec: dict, work: Path, name: str, timeout: float | None = None) -> dict:
    """Run `python -m throughput.<module> spec`; returns its result plus the wall time, a
    psutil-sampled peak RSS and the share of the CPU other processes used meanwhile."""
    spec_file, log_file = work / f"{name}.spec.json", work / f"{name}.log"
    spec = {**spec, "result_file": str(work / f"{name}.result.json")}
    spec_file.write_text(json.dumps(spec, indent=2))
    cmd = [sys.executable, "-m", f"throughput.{module}", str(spec_file)]
    started = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=c.child_env())
        try:
            watched = watch(proc, timeout)
        except BaseException:  # Ctrl-C reaches the child too; make sure it is gone first
            proc.terminate()
            proc.wait()
            raise
    if watched.get("timed_out"):
        raise ChildTimedOut(f"{name} stopped after {timeout:.0f} s; log {log_file}")
    if proc.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
        raise ChildFailed(f"{name} failed (exit {proc.returncode}); log {log_file}:\n{tail}")
    result = json.loads(Path(spec["result_file"]).read_text())
    result["child_seconds"] = round(time.perf_counter() - started, 1)
    if "sampled_peak_rss_mb" in watched:
        result.setdefault("memory", {})["sampled_peak_rss_mb"] = watched["sampled_peak_rss_mb"]
        result["other_cpu_share"] = watched["other_cpu_share"]
    result["log"] = str(log_file)
    return result


def watch(proc: subprocess.Popen, timeout: float | None = None, interval: float = 0.25) -> dict:
    """Wait for `proc` (killing it after `timeout` s), sampling with psutil its RSS and CPU time
    and the machine's. `other_cpu_share` is the share of the machine's CPU time that went to
    anything but the child while it ran: ~0 on an idle machine; above CONTENDED, contended."""
    try:
        import psutil

        handle = psutil.Process(proc.pid)
    except Exception:  # psutil missing, or the child already gone
        return {"timed_out": wait_or_kill(proc, timeout)}

    def busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    started, busy_before = time.perf_counter(), busy()
    peak, child_cpu, timed_out = 0, 0.0, False
    while proc.poll() is None:
        if timeout is not None and time.perf_counter() - started > timeout:
            timed_out = wait_or_kill(proc, 0)
            break
        try:
            peak = max(peak, handle.memory_info().rss)
            cpu = handle.cpu_times()
            child_cpu = cpu.user + cpu.system
        except psutil.Error:
            break
        time.sleep(interval)
    proc.wait()
    capacity = (time.perf_counter() - started) * (psutil.cpu_count() or 1)
    other = max(0.0, busy() - busy_before - child_cpu)
    return {"sampled_peak_rss_mb": round(peak / 2**20, 1),
            "other_cpu_share": round(other / capacity, 3), "timed_out": timed_out}  # fmt: skip


def wait_or_kill(proc: subprocess.Popen, timeout: float | None) -> bool:
    try:
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True
