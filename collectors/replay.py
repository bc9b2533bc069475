"""Replayed power traces: a known ground truth for tests, demos and attribution-error studies.

A trace is a CSV with the header ``t_s,domain,power_w``: for each domain, power samples at
increasing times, starting at ``t_s = 0``. Power between two samples is linear (so the trapezoid
rule is exact) and held at the last value after the end, unless ``loop=True``.

Two ways to expose a trace, mirroring the two kinds of real source:

* ``mode="counter"`` (like RAPL or NVML's energy counter): ``read_j`` returns the exact integral
  from the collector's origin to now, optionally quantised to ``quantum_s`` to mimic a counter
  that only updates every 20-100 ms;
* ``mode="power"`` (like NVML power on pre-Volta GPUs): only instantaneous power is exposed;
  the meter's sampler calls ``poll`` and the collector integrates the samples.

Replayed figures are labelled ``replayed``, never ``measured``.
"""

from __future__ import annotations

import bisect
import csv
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Literal

from greenprof.errors import UsageError

from .base import CounterCollector, Discovery, PowerIntegrator, SensorStatus

ENV_VAR = "GREENPROF_REPLAY"


class TraceError(UsageError):
    """A replay trace file is malformed."""


class PowerTrace:
    """Piecewise-linear power of one domain, with its exact integral."""

    def __init__(self, domain: str, t_s: list[float], power_w: list[float], loop: bool = False) -> None:
        if not t_s:
            raise TraceError(f"trace for {domain!r} has no samples")
        if t_s[0] != 0:
            raise TraceError(f"trace for {domain!r} must start at t_s=0 (starts at {t_s[0]})")
        for a, b in zip(t_s, t_s[1:]):
            if not b > a:
                raise TraceError(f"trace for {domain!r}: times must increase strictly ({a} then {b})")
        for p in power_w:
            if not (math.isfinite(p) and p >= 0):
                raise TraceError(f"trace for {domain!r}: power must be finite and >= 0 (got {p})")
        if loop and len(t_s) < 2:
            raise TraceError(f"trace for {domain!r}: a looping trace needs two samples or more")
        self.domain = domain
        self.t = list(map(float, t_s))
        self.p = list(map(float, power_w))
        self.loop = loop
        self.cum = [0.0]
        for k in range(1, len(self.t)):
            self.cum.append(self.cum[-1] + 0.5 * (self.p[k - 1] + self.p[k]) * (self.t[k] - self.t[k - 1]))

    @property
    def period_s(self) -> float:
        return self.t[-1]

    def power_w(self, t: float) -> float:
        if t <= 0:
            return self.p[0]
        if self.loop:
            t = math.fmod(t, self.period_s)
        if t >= self.t[-1]:
            return self.p[-1]
        k = bisect.bisect_right(self.t, t) - 1
        t0, t1 = self.t[k], self.t[k + 1]
        return self.p[k] + (self.p[k + 1] - self.p[k]) * (t - t0) / (t1 - t0)

    def energy_j(self, t: float) -> float:
        """Exact integral of power from 0 to t."""
        if t <= 0:
            return 0.0
        base = 0.0
        if self.loop:
            n, t = divmod(t, self.period_s)
            base = n * self.cum[-1]
        if t >= self.t[-1]:
            return base + self.cum[-1] + self.p[-1] * (t - self.t[-1])
        k = bisect.bisect_right(self.t, t) - 1
        t0, t1, p0, p1 = self.t[k], self.t[k + 1], self.p[k], self.p[k + 1]
        dt = t - t0
        return base + self.cum[k] + p0 * dt + 0.5 * (p1 - p0) / (t1 - t0) * dt * dt

    def energy_between(self, a: float, b: float) -> float:
        return self.energy_j(b) - self.energy_j(a)


def load_trace(path: str | os.PathLike, loop: bool = False) -> dict[str, PowerTrace]:
    """Read a ``t_s,domain,power_w`` CSV into one PowerTrace per domain."""
    path = Path(path)
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise TraceError(f"cannot read replay trace {path}: {e.strerror or e}") from None
    cols: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    with f:
        reader = csv.DictReader(f)
        need = {"t_s", "domain", "power_w"}
        try:
            fieldnames = reader.fieldnames
        except UnicodeDecodeError as e:
            raise TraceError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): a replay trace is a "
                             "UTF-8 CSV with columns t_s,domain,power_w") from None
        if not fieldnames or not need <= set(fieldnames):
            raise TraceError(f"{path}: header must be t_s,domain,power_w (got {reader.fieldnames})")
        try:
            for line, row in enumerate(reader, start=2):
                try:
                    t, p = float(row["t_s"]), float(row["power_w"])
                except (TypeError, ValueError):
                    raise TraceError(f"{path}:{line}: t_s and power_w must be numbers") from None
                dom = (row["domain"] or "").strip()
                if not dom:
                    raise TraceError(f"{path}:{line}: empty domain")
                cols[dom][0].append(t)
                cols[dom][1].append(p)
        except UnicodeDecodeError as e:
            raise TraceError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): a replay trace is a "
                             "UTF-8 CSV with columns t_s,domain,power_w") from None
    if not cols:
        raise TraceError(f"{path}: no samples")
    try:
        return {d: PowerTrace(d, ts, ps, loop=loop) for d, (ts, ps) in cols.items()}
    except TraceError as e:
        raise TraceError(f"{path}: {e}") from None


class ReplayCounterCollector(CounterCollector):
    """Exposes a trace as an energy counter (exact integral, optionally quantised)."""

    source = "replay"
    method = "replayed"

    def __init__(self, trace: PowerTrace, clock: Callable[[], float] = time.perf_counter,
                 quantum_s: float | None = None, domain: str | None = None) -> None:
        self.trace = trace
        self.domain = domain or trace.domain
        self._clock = clock
        self.quantum_s = quantum_s
        self.resolution_s = quantum_s
        self.origin_s = clock()  # trace time 0, in the clock's time base

    def read_j(self) -> float:
        t = self._clock() - self.origin_s
        if self.quantum_s:
            t = math.floor(t / self.quantum_s) * self.quantum_s
        return self.trace.energy_j(t)


class ReplayPowerCollector:
    """Exposes a trace as instantaneous power only; the sampler's polls are integrated."""

    source = "replay"
    method = "replayed"
    integrates_power = True
    resolution_s = None

    def __init__(self, trace: PowerTrace, clock: Callable[[], float] = time.perf_counter,
                 max_read_interval_s: float = 0.5, domain: str | None = None) -> None:
        self.trace = trace
        self.domain = domain or trace.domain
        self._clock = clock
        self.max_read_interval_s = max_read_interval_s
        self.origin_s = clock()
        self._int = PowerIntegrator()
        self._int.add(self.origin_s, trace.power_w(0.0))

    def poll(self) -> float:
        t = self._clock()
        return self._int.add(t, self.trace.power_w(t - self.origin_s))

    def read_j(self) -> float:
        return self._int.value_at(self._clock())

    def close(self) -> None:
        pass


def collectors_from_trace(path: str | os.PathLike, mode: Literal["counter", "power"] = "counter",
                          loop: bool = False, quantum_s: float | None = None,
                          clock: Callable[[], float] = time.perf_counter) -> list:
    """One replay collector per domain of the trace at ``path``."""
    traces = load_trace(path, loop=loop)
    if mode == "counter":
        return [ReplayCounterCollector(t, clock=clock, quantum_s=quantum_s, domain=f"replay:{d}")
                for d, t in traces.items()]
    if mode == "power":
        return [ReplayPowerCollector(t, clock=clock, domain=f"replay:{d}") for d, t in traces.items()]
    raise UsageError(f"replay mode must be 'counter' or 'power', not {mode!r}")


def discover(env: dict[str, str] | None = None) -> Discovery:
    """Replay is never chosen automatically; it is listed so users know it exists."""
    env = os.environ if env is None else env
    path = env.get(ENV_VAR, "")
    if not path:
        return Discovery([SensorStatus(
            source="replay", domain="replay:*", method="replayed", available=False, in_default_set=False,
            why_not=f"no trace given: set {ENV_VAR}=trace.csv (columns t_s,domain,power_w) to replay one",
        )])
    try:
        cols = collectors_from_trace(path, loop=True)
    except TraceError as e:
        return Discovery([SensorStatus(source="replay", domain="replay:*", method="replayed",
                                       available=False, in_default_set=False, why_not=str(e))])
    statuses = [SensorStatus(source="replay", domain=c.domain, method="replayed", available=True,
                             in_default_set=False, detail=f"looping trace {path}",
                             why_not="replay is used only when asked for (collectors=[...] / --collectors)")
                for c in cols]
    return Discovery(statuses, {c.domain: c for c in cols})
