"""Helpers shared by the benchmark scripts (imported as ``_common``: each script is run as
``python benchmarks/NAME.py``, which puts this folder first on ``sys.path``)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence


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
