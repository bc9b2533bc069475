"""Helpers shared by the benchmark scripts (imported as ``_common``: each script is run as
``python benchmarks/NAME.py``, which puts this folder first on ``sys.path``)."""

from __future__ import annotations

import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


def log(msg: str = "") -> None:
    """Progress and the human summary go to stderr; stdout is for the one JSON document."""
    print(msg, file=sys.stderr, flush=True)


def round_floats(x: Any, nd: int = 4) -> Any:
    """``x`` with every float inside lists and dicts rounded to ``nd`` digits (for the JSON)."""
    if isinstance(x, float):
        return round(x, nd)
    if isinstance(x, list):
        return [round_floats(v, nd) for v in x]
    if isinstance(x, dict):
        return {k: round_floats(v, nd) for k, v in x.items()}
    return x


def loadavg_1m() -> float | None:
    """The 1-minute load average (None where the OS has none): other work sharing the CPUs."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPUs, CPU model, memory, Python."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        from greenprof.collectors.cpu_estimate import cpu_model_name

        info["cpu_model"] = cpu_model_name()
    except Exception:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            info["mem_total_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def thread_cpu_reader(thread: threading.Thread) -> tuple[Callable[[], float], str]:
    """A () -> seconds of CPU used so far by ``thread``, and the name of the method used."""
    if hasattr(time, "pthread_getcpuclockid"):
        try:
            clk = time.pthread_getcpuclockid(thread.ident)
            time.clock_gettime(clk)
            return (lambda: time.clock_gettime(clk)), "pthread_getcpuclockid"
        except (OSError, OverflowError):
            pass
    import psutil

    proc, tid = psutil.Process(), thread.native_id

    def via_psutil() -> float:
        for t in proc.threads():
            if t.id == tid:
                return t.user_time + t.system_time
        raise RuntimeError(f"thread {thread.name!r} not found by psutil")

    return via_psutil, "psutil per-thread times (clock-tick resolution)"


def median_ci95(xs: Sequence[float]) -> tuple[float, float] | None:
    """Distribution-free 95 % confidence interval of the median (order statistics of the
    binomial(n, 1/2) distribution), or None when n < 6 gives no such interval."""
    s = sorted(xs)
    n = len(s)
    if n < 6:
        return None
    # the largest k with P(Binomial(n, 1/2) < k) <= 2.5 %: the interval is [s[k-1], s[n-k]]
    cdf, k = 0.0, 0
    while True:
        nxt = cdf + math.comb(n, k) / 2**n
        if nxt > 0.025:
            break
        cdf, k = nxt, k + 1
    if k == 0:
        return None
    return s[k - 1], s[n - k]


def ratio_verdict(ratio: float, pair_ratios: Sequence[float], cost_ratio: float, target: float) -> str | None:
    """How a tracked/untracked throughput ratio meets ``target``, or None when it does not.

    On the wall clock when the median pair ratio reaches it; otherwise, when the pairs' 95 %
    interval includes the target (this machine's noise cannot tell the difference), on the
    meter's own measured cost (``cost_ratio``).
    """
    if ratio >= target:
        return "wall clock"
    ci = median_ci95(pair_ratios)
    if ci is not None and ci[1] >= target and cost_ratio >= target:
        return "cost accounting (the wall-clock ratio's 95 % interval includes the target)"
    return None
