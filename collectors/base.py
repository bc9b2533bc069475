"""The one interface every energy source implements.

A collector answers one question: "how many joules has my domain used since I was opened?"
as a cumulative, wrap-corrected, monotonic counter in joules.

Two kinds of source exist:

* counter sources (RAPL ``energy_uj``, NVML total energy, replayed counters, the CPU-time
  estimate) expose a hardware or OS counter; ``read_j`` just reads it;
* power sources (NVML on pre-Volta GPUs, replayed power traces) expose only instantaneous power;
  the meter's sampler calls ``poll`` every period and the collector integrates (trapezoid).
  ``read_j`` then extrapolates from the last sample without touching the device.

``read_j`` and ``poll`` may be called from two threads (the caller's ``mark`` and the sampler);
implementations must not hold a lock across the device read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

#: "replayed" marks figures from a replayed trace (tests, demos): never passed off as measured.
Method = Literal["measured", "estimated", "replayed"]


@dataclass(frozen=True)
class SensorStatus:
    """What ``greenprof sensors`` prints for one domain, available or not."""

    source: str  # "rapl", "nvml", "cpu-estimate", "replay"
    domain: str  # "cpu-package-0", "dram-0", "psys", "gpu-0", "cpu-estimate", ...
    method: Method
    available: bool
    in_default_set: bool  # chosen by collectors="auto"
    detail: str = ""  # what it is: a path, a device name, the TDP used
    why_not: str = ""  # one line, with the fix, when not available or not in the default set
    #: Estimates only: watts charged per busy thread (per busy vCPU in a VM), and where that
    #: figure comes from (one line). Left out of ``to_dict`` when None.
    power_w_per_busy_thread: float | None = None
    basis: str | None = None

    def to_dict(self) -> dict:
        d = {
            "source": self.source,
            "domain": self.domain,
            "method": self.method,
            "available": self.available,
            "in_default_set": self.in_default_set,
            "detail": self.detail,
            "why_not": self.why_not or None,
        }
        if self.power_w_per_busy_thread is not None:
            d["power_w_per_busy_thread"] = self.power_w_per_busy_thread
        if self.basis is not None:
            d["basis"] = self.basis
        return d


@runtime_checkable
class Collector(Protocol):
    """A cumulative joule counter for one energy domain."""

    domain: str
    method: Method
    source: str
    #: True when the value is integrated from power samples taken by ``poll``.
    integrates_power: bool
    #: Reads must come at least this often (seconds) to keep wrap tracking or integration
    #: correct; None when any gap is fine.
    max_read_interval_s: float | None
    #: How often the underlying value changes (seconds), None when continuous / unknown.
    #: NVML energy updates every ~20-100 ms, so per-token GPU figures must use windows.
    resolution_s: float | None

    def read_j(self) -> float:
        """Cumulative joules since open. Cheap; raises SensorLost if the sensor failed."""
        ...

    def poll(self) -> float:
        """Called by the sampler every period: take a sample (integrating sources) or keep
        wrap tracking alive (counter sources). Returns cumulative joules like ``read_j``."""
        ...

    def close(self) -> None:
        ...


class CounterCollector:
    """Helper base for counter sources: ``poll`` is just ``read_j``."""

    integrates_power = False
    max_read_interval_s: float | None = None
    resolution_s: float | None = None

    def read_j(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def poll(self) -> float:
        return self.read_j()

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.domain} ({self.method})>"


class PowerIntegrator:
    """Trapezoid integration of power samples, shared by every power source.

    ``add(t_s, power_w)`` is called by the sampler thread only; ``value_at(t_s)`` may be called
    from any thread and extrapolates the last power forward. State is replaced as one tuple so
    readers never see half an update (no lock needed under the GIL).
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        # (t_last_s, p_last_w, energy_j) or None before the first sample
        self._state: tuple[float, float, float] | None = None

    def add(self, t_s: float, power_w: float) -> float:
        st = self._state
        if st is None:
            self._state = (t_s, power_w, 0.0)
            return 0.0
        t0, p0, e0 = st
        dt = t_s - t0
        if dt < 0:
            dt = 0.0
        e = e0 + 0.5 * (p0 + power_w) * dt
        self._state = (t_s, power_w, e)
        return e

    def value_at(self, t_s: float) -> float:
        st = self._state
        if st is None:
            return 0.0
        t0, p0, e0 = st
        dt = t_s - t0
        return e0 + p0 * dt if dt > 0 else e0

    @property
    def started(self) -> bool:
        return self._state is not None


class WrapTracker:
    """Turns a raw counter that wraps at ``range_raw`` into a monotonic cumulative value.

    Lock-free for two readers (the caller's marks and the sampler). A read that races with
    another may see a raw value older than the last committed one; such a "stale" read is told
    apart from a real wrap by size: between two committed reads the counter advances by less
    than half its range (the sampler's period guarantees it, and the meter warns otherwise), so

    * ``raw < prev`` by more than half the range is a wrap;
    * ``raw < prev`` by less is a stale read (value held, nothing committed);
    * ``raw > prev`` by more than half the range is a stale pre-wrap read racing a committed
      wrap (value corrected, nothing committed).

    Given ``wrap_time`` (the shortest time the counter can take to go all the way round:
    range / max power) and a time ``t`` with every update (taken just before the read, on a
    monotonic clock in the same unit), the tracker also uses elapsed time:

    * a read more than ``wrap_time / 2`` after the last committed one cannot be a racing stale
      read, so its advance is taken modulo the range (a wrap is never held as a stale value);
    * a read more than ``wrap_time`` after it may have missed whole wraps: its value is the best
      guess (no lap missed) and counts in ``uncertain``, with the gap in ``last_gap``.
    """

    __slots__ = ("range_raw", "_half", "_state", "_origin", "wraps", "wrap_time", "uncertain",
                 "last_gap")

    def __init__(self, first_raw: int, range_raw: int, wrap_time: float | None = None,
                 t: float | None = None) -> None:
        self.range_raw = range_raw
        self._half = range_raw // 2
        # (last raw value, wrap offset in raw units, time of that read or None)
        self._state: tuple[int, int, float | None] = (first_raw, 0, t)
        self.wraps = 0
        self._origin = first_raw
        self.wrap_time = wrap_time
        self.uncertain = 0  # updates that may have missed a wrap
        self.last_gap: float | None = None  # elapsed time before the latest such update

    def update(self, raw: int, t: float | None = None) -> int:
        """Cumulative raw units since construction."""
        prev, off, t_prev = self._state
        delta = raw - prev
        wrap_time = self.wrap_time
        if t is None:
            t = t_prev
        elif t_prev is not None and wrap_time is not None and t - t_prev > wrap_time / 2:
            if delta < 0:  # far apart: the counter went round, not a stale read
                off += self.range_raw
                self.wraps += 1
            if t - t_prev > wrap_time:
                self.uncertain += 1
                self.last_gap = t - t_prev
            self._state = (raw, off, t)
            return raw + off - self._origin
        if delta >= 0:
            if delta > self._half and off >= self.range_raw:
                # stale read from before a wrap that another reader already committed
                return raw + off - self.range_raw - self._origin
            self._state = (raw, off, t)
            return raw + off - self._origin
        if -delta > self._half:
            off += self.range_raw
            self._state = (raw, off, t)
            self.wraps += 1
            return raw + off - self._origin
        return prev + off - self._origin  # stale read: hold the committed value

    @property
    def origin(self) -> int:
        """The first raw value: cumulative values count from it."""
        return self._origin

    @property
    def last_t(self) -> float | None:
        """Time of the last committed read."""
        return self._state[2]

    @property
    def committed(self) -> tuple[int, int, float | None]:
        """``(raw, raw + wrap offset, t)`` of the last committed read."""
        raw, off, t = self._state
        return raw, raw + off, t

    def sync(self, raw: int, unwrapped: int, t: float) -> None:
        """Commit a read resolved elsewhere (``unwrapped`` = raw + the whole ranges gone by since
        construction), unless a later read is already committed."""
        prev, off, t_prev = self._state
        if t_prev is None or t >= t_prev:
            new_off = unwrapped - raw
            if new_off > off:
                self.wraps += (new_off - off) // self.range_raw
            self._state = (raw, new_off, t)


class Discovery:
    """What one source found: a status line for every domain it knows of (available or not)
    and an opened collector for every available domain (the default set and the extras)."""

    def __init__(self, statuses: list[SensorStatus] | None = None,
                 collectors: dict[str, Collector] | None = None) -> None:
        self.statuses: list[SensorStatus] = list(statuses or [])
        self.collectors: dict[str, Collector] = dict(collectors or {})

    def extend(self, other: "Discovery") -> "Discovery":
        self.statuses.extend(other.statuses)
        self.collectors.update(other.collectors)
        return self

    def default_set(self) -> list[Collector]:
        chosen = {s.domain for s in self.statuses if s.available and s.in_default_set}
        return [c for d, c in self.collectors.items() if d in chosen]

    def check_moving(self, min_s: float = 0.3, max_s: float = 1.0) -> dict[str, float | None]:
        """Read every available *measured* counter twice, ``min_s`` apart (or three of its update
        periods, at most ``max_s``): {domain: watts over the check}, 0.0 for a counter that did
        not move (some platforms list a DRAM or GPU domain that never counts), None where the
        second read failed."""
        import time

        counters = {s.domain: self.collectors[s.domain] for s in self.statuses
                    if s.available and s.method == "measured" and s.domain in self.collectors}
        if not counters:
            return {}
        wait = min(max_s, max([min_s] + [3 * (getattr(c, "resolution_s", None) or 0) for c in counters.values()]))
        first: dict[str, tuple[float, float]] = {}
        for d, c in counters.items():
            try:
                first[d] = (time.monotonic(), c.poll())
            except Exception:
                pass
        time.sleep(wait)
        out: dict[str, float | None] = {}
        for d, (t0, e0) in first.items():
            try:
                e1, t1 = counters[d].poll(), time.monotonic()
            except Exception:
                out[d] = None
                continue
            out[d] = max(0.0, e1 - e0) / (t1 - t0) if t1 > t0 else None
        return out

    def close(self, keep: "list[Collector] | tuple[()]" = ()) -> None:
        """Close every collector except those in ``keep``."""
        kept = {id(c) for c in keep}
        for c in self.collectors.values():
            if id(c) not in kept:
                try:
                    c.close()
                except Exception:  # closing must never raise
                    pass
