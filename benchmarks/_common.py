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


MEETS, INCONCLUSIVE, MISSES = "meets", "inconclusive", "misses"


def verdict(value: float, ci95: Sequence[float] | None, target: float, *, higher_is_better: bool) -> str:
    """``inconclusive`` when the 95 % interval ``ci95`` straddles ``target`` (this run cannot
    tell a pass from a miss, whichever side the median fell on); otherwise ``meets`` when the
    measured ``value`` meets ``target`` and ``misses`` when it does not. Nothing else (no cost
    model, no best-of) turns a miss into a pass.

    With ``higher_is_better`` the target is a minimum (``value >= target`` meets), else a
    maximum (``value <= target`` meets)."""
    if ci95 is not None:
        lo, hi = ci95
        if lo < target < hi:
            return INCONCLUSIVE
    ok = value >= target if higher_is_better else value <= target
    return MEETS if ok else MISSES


def ratio_verdict(ratio: float, pair_ratios: Sequence[float], target: float) -> str:
    """The verdict on a throughput ratio (higher is better) that is the median of
    ``pair_ratios``, with the distribution-free 95 % interval of that median."""
    return verdict(ratio, median_ci95(pair_ratios), target, higher_is_better=True)


def median_with_ci(xs: Sequence[float]) -> dict[str, Any]:
    """``{"median": m, "ci95": [lo, hi] or None, "n": len(xs)}`` (see :func:`median_ci95`)."""
    import statistics

    ci = median_ci95(xs)
    return {"median": statistics.median(xs) if xs else float("nan"), "ci95": list(ci) if ci else None,
            "n": len(xs)}


def shout(v: str) -> str:
    """A verdict as the human summary prints it: a miss in capitals."""
    return v.upper() if v == MISSES else v


def save_result(name: str, doc: dict[str, Any], folder: str | os.PathLike[str] | None = None) -> str:
    """Write ``doc`` as ``benchmarks/results/<name>-<UTC date>.json`` (the folder beside this file
    unless ``folder`` is given), with the date and the machine in it; returns the path. Written to
    a temp file and renamed, so a reader never sees half a file. A run saved earlier the same day
    is kept, renamed ``<name>-<date>T<its HHMMSS UTC>.json``: the dated file is the latest run."""
    import json
    from pathlib import Path

    out = Path(folder) if folder is not None else Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    path = out / f"{name}-{day}.json"
    body = {"benchmark": name, "date": day, "saved_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **doc}
    body.setdefault("machine", machine_info())
    if path.exists():
        try:
            stamp = json.loads(path.read_text(encoding="utf-8"))["saved_utc"].split("T")[1].rstrip("Z").replace(":", "")
        except (ValueError, KeyError, IndexError, AttributeError, TypeError):
            stamp = time.strftime("%H%M%S", time.gmtime(path.stat().st_mtime))
        keep = path.with_name(f"{name}-{day}T{stamp}.json")
        n = 1
        while keep.exists():
            n += 1
            keep = path.with_name(f"{name}-{day}T{stamp}-{n}.json")
        os.replace(path, keep)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return str(path)


def emit(name: str, doc: dict[str, Any], *, save: bool, as_json: bool) -> None:
    """The end of every script: ``--save`` writes the dated results file (and says where),
    ``--json`` prints the document on stdout."""
    import json

    if save:
        log(f"  saved {save_result(name, doc)}")
    if as_json:
        print(json.dumps(doc, indent=2))
