"""The meter: cheap marks over cumulative joule counters, plus a background sampler.

    with greenprof.Meter(sample_hz=10) as meter:
        work(); meter.mark("prefill")
        more(); meter.mark("token-1")
    m = meter.measurement

``mark`` reads every collector's counter and a monotonic clock and appends one tuple: no lock,
no dict building, nothing else. Attribution is done once, after the window closes: the energy
of a segment is the difference of the counters at its two marks, so it is exact for counter
sources (RAPL, NVML energy) whatever the sampler rate. The sampler (default 10 Hz) records the
power timeline, integrates power-only sources and keeps RAPL's wrap tracking alive between marks.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

from greenprof.errors import SensorLost, UsageError


class GreenprofWarning(UserWarning):
    """Something the user should know about a measurement (a possible missed wrap, a lost domain)."""


@dataclass(frozen=True)
class Segment:
    """The window between two consecutive marks; ``label`` is the label of the closing mark."""

    label: str
    start_s: float  # seconds since the meter started
    end_s: float
    energy_j: dict[str, float]  # gross, per domain
    idle_energy_j: dict[str, float]  # idle power x duration, per domain (empty without a baseline)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def dynamic_energy_j(self) -> dict[str, float]:
        """Gross minus idle, per domain (gross when no baseline was taken). May be negative
        when the work drew less than the idle median: it is not clamped, so nothing is hidden."""
        return {d: e - self.idle_energy_j.get(d, 0.0) for d, e in self.energy_j.items()}


@dataclass(frozen=True)
class PowerSample:
    """Average power of one domain over one sampler interval, stamped at the interval's middle
    (seconds since the meter started; negative during the idle baseline window)."""

    t_s: float
    domain: str
    power_w: float


@dataclass
class Measurement:
    duration_s: float
    energy_j: dict[str, float]
    method: dict[str, str]
    segments: list[Segment]
    idle_power_w: dict[str, float]
    lost: dict[str, str]
    samples: list[PowerSample]
    status: str = "completed"  # "completed" | "failed" | "interrupted"
    idle_window_s: float = 0.0
    sample_hz: float = 0.0
    resolution_s: dict[str, float | None] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    start_clock_s: float = 0.0  # the meter clock's value at the start of the window

    @property
    def idle_energy_j(self) -> dict[str, float]:
        return {d: self.idle_power_w.get(d, 0.0) * self.duration_s for d in self.energy_j}

    @property
    def dynamic_energy_j(self) -> dict[str, float]:
        idle = self.idle_energy_j
        return {d: e - idle[d] for d, e in self.energy_j.items()}

    @property
    def total_energy_j(self) -> float:
        """Sum over domains. The default collector set never overlaps, so this is meaningful."""
        return sum(self.energy_j.values())

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "duration_s": self.duration_s,
            "energy_j": self.energy_j,
            "dynamic_energy_j": self.dynamic_energy_j,
            "idle_power_w": self.idle_power_w,
            "idle_window_s": self.idle_window_s,
            "method": self.method,
            "sources": self.sources,
            "lost": self.lost,
            "warnings": self.warnings,
            "sample_hz": self.sample_hz,
            "segments": [
                {"label": s.label, "start_s": s.start_s, "duration_s": s.duration_s,
                 "energy_j": s.energy_j, "dynamic_energy_j": s.dynamic_energy_j}
                for s in self.segments
            ],
            "samples": len(self.samples),
        }


_NAN = float("nan")


def _nan() -> float:
    return _NAN


class Meter:
    """Measures the energy of a block of code, segment by segment.

    Parameters
    ----------
    collectors:
        ``"auto"`` (every measured source here, else the CPU estimate), a comma-separated string
        or a list of domain names and/or collector objects.
    sample_hz:
        Background sampler rate; 0 disables it (then a power-only source cannot be integrated
        and a RAPL counter may wrap unnoticed between far-apart marks: both are warned about).
    idle_s:
        Seconds of quiet before the work to take an idle baseline (median power per domain).
    """

    def __init__(self, collectors: "str | Sequence" = "auto", sample_hz: float = 10.0,
                 idle_s: float = 0.0, clock: Callable[[], float] = time.perf_counter,
                 **discover_kwargs) -> None:
        if not (isinstance(sample_hz, (int, float)) and math.isfinite(sample_hz) and sample_hz >= 0):
            raise UsageError(f"sample_hz must be a number >= 0 (got {sample_hz!r})")
        if not (isinstance(idle_s, (int, float)) and math.isfinite(idle_s) and idle_s >= 0):
            raise UsageError(f"idle_s must be a number of seconds >= 0 (got {idle_s!r})")
        self._spec = collectors
        self.sample_hz = float(sample_hz)
        self.idle_s = float(idle_s)
        self._clock = clock
        self._discover_kwargs = discover_kwargs
        self._collectors: list = []
        self._readers: list[Callable[[], float]] = []
        self._pollers: list[Callable[[], float]] = []
        self._marks: list[tuple[str, float, list[float]]] = []
        self._samples: list[tuple[float, list[float]]] = []
        self._lost: dict[str, str] = {}
        self._warnings: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "new"
        self._t0 = 0.0
        self._idle_power_w: dict[str, float] = {}
        self._idle_window_s = 0.0
        self._measurement: Measurement | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Meter":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            status = "completed"
        elif not issubclass(exc_type, Exception):
            status = "interrupted"  # Ctrl-C, SIGTERM turned into an exception, SystemExit
        else:
            status = "failed"
        self.stop(status=status)
        return False  # never swallow the user's exception

    @property
    def domains(self) -> list[str]:
        return [c.domain for c in self._collectors]

    def start(self) -> "Meter":
        if self._state != "new":
            raise UsageError("a Meter measures one window: create a new Meter for the next one")
        from greenprof.collectors import check_overlaps, select

        self._collectors = select(self._spec, **self._discover_kwargs)
        if not self._collectors:
            raise UsageError("no energy collector selected: see `greenprof sensors` for what this machine has")
        overlap = check_overlaps(self._collectors)
        if overlap:
            self._close_collectors()
            raise UsageError(overlap)
        self._readers = [c.read_j for c in self._collectors]
        self._pollers = [c.poll for c in self._collectors]
        self._check_sampling_rate()
        self._state = "running"
        try:
            if self.idle_s > 0:
                self._take_idle_baseline()
            # first sample: primes integrating sources and anchors the timeline
            self._sample_once()
            if self.sample_hz > 0:
                self._thread = threading.Thread(target=self._sampler, name="greenprof-sampler", daemon=True)
                self._thread.start()
            self._t0 = self._clock()
            self._marks.append(("start", self._t0, self._read_all()))
        except BaseException:
            self._halt_sampler()
            self._close_collectors()
            self._state = "stopped"
            raise
        return self

    def mark(self, label: str) -> None:
        """Close the current segment. Reads every counter and the clock; nothing else."""
        t = self._clock()
        try:
            vals = [r() for r in self._readers]
        except Exception:
            vals = self._read_all()
        self._marks.append((label, t, vals))

    def stop(self, status: str = "completed") -> Measurement:
        if self._state == "stopped" and self._measurement is not None:
            return self._measurement
        if self._state != "running":
            raise UsageError("the meter was never started: use `with Meter() as meter:` or meter.start()")
        try:
            t = self._clock()
            self._marks.append(("end", t, self._read_all()))
        finally:
            self._halt_sampler()
            self._close_collectors()
            self._state = "stopped"
        self._measurement = self._build(status)
        return self._measurement

    @property
    def measurement(self) -> Measurement:
        if self._measurement is None:
            raise UsageError("no measurement yet: it is ready when the `with Meter()` block ends")
        return self._measurement

    # -- reading ---------------------------------------------------------------------------
    def _read_all(self) -> list[float]:
        """Read each counter separately; a failing one goes to ``lost`` and reads NaN after."""
        vals = []
        for i, r in enumerate(self._readers):
            try:
                vals.append(r())
            except Exception as e:  # SensorLost, or anything a driver throws
                self._lose(i, e)
                vals.append(_NAN)
        return vals

    def _lose(self, i: int, err: BaseException) -> None:
        dom = self._collectors[i].domain
        if dom not in self._lost:
            reason = str(err) if isinstance(err, SensorLost) else f"{type(err).__name__}: {err}"
            self._lost[dom] = reason or type(err).__name__
            msg = f"{dom} lost mid-run ({self._lost[dom]}); the measurement goes on without it"
            self._warnings.append(msg)
        self._readers[i] = _nan
        self._pollers[i] = _nan

    def _sample_once(self) -> None:
        t = self._clock()
        vals = []
        for i, p in enumerate(self._pollers):
            try:
                vals.append(p())
            except Exception as e:
                self._lose(i, e)
                vals.append(_NAN)
        self._samples.append((t, vals))

    def _sampler(self) -> None:
        period = 1.0 / self.sample_hz
        nxt = self._clock() + period
        try:
            while not self._stop.wait(max(0.0, nxt - self._clock())):
                self._sample_once()
                nxt += period
                now = self._clock()
                if nxt < now:  # fell behind (suspended, overloaded): skip, don't burst
                    nxt = now + period
        except BaseException as e:  # the sampler must never take the process down
            self._warnings.append(f"sampler stopped early: {type(e).__name__}: {e}")

    def _halt_sampler(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._state == "running" and self._pollers and self._samples:
            # close the timeline at the end of the window, unless the last sample is so recent
            # that the interval's power would be mostly timing jitter (its energy is in the marks)
            min_gap = 0.25 / self.sample_hz if self.sample_hz > 0 else 0.0
            if self._clock() - self._samples[-1][0] >= min_gap:
                self._sample_once()

    def _close_collectors(self) -> None:
        for c in self._collectors:
            try:
                c.close()
            except Exception:
                pass

    def _check_sampling_rate(self) -> None:
        for c in self._collectors:
            need = getattr(c, "max_read_interval_s", None)
            if need is None:
                continue
            if self.sample_hz <= 0:
                what = "integrate its power" if c.integrates_power else "track counter wraps"
                msg = (f"{c.domain}: the sampler is off, so greenprof cannot {what} between marks "
                       f"more than {need:.3g} s apart; use sample_hz >= {1 / need:.2g}")
            elif 1.0 / self.sample_hz > need:
                msg = (f"{c.domain}: a sampler period of {1 / self.sample_hz:.3g} s could miss a counter "
                       f"wrap (reads needed every {need:.3g} s); use sample_hz >= {1 / need:.2g}")
            else:
                continue
            self._warnings.append(msg)
            warnings.warn(msg, GreenprofWarning, stacklevel=3)

    def _take_idle_baseline(self) -> None:
        hz = max(self.sample_hz, 10.0)
        n = max(3, int(round(self.idle_s * hz)))
        step = self.idle_s / n
        start = len(self._samples)
        self._sample_once()
        t_next = self._clock()
        for _ in range(n):
            t_next += step
            time.sleep(max(0.0, t_next - self._clock()))
            self._sample_once()
        window = self._samples[start:]
        for i, c in enumerate(self._collectors):
            powers = []
            for (ta, va), (tb, vb) in zip(window, window[1:]):
                if tb > ta and not (math.isnan(va[i]) or math.isnan(vb[i])):
                    powers.append((vb[i] - va[i]) / (tb - ta))
            if powers:
                self._idle_power_w[c.domain] = statistics.median(powers)
        self._idle_window_s = window[-1][0] - window[0][0]

    # -- result ----------------------------------------------------------------------------
    def _build(self, status: str) -> Measurement:
        doms = [c.domain for c in self._collectors]
        keep = [i for i, d in enumerate(doms) if d not in self._lost]
        kept = [doms[i] for i in keep]
        idle = {d: w for d, w in self._idle_power_w.items() if d in kept}
        marks = self._marks
        t0 = marks[0][1]
        segments: list[Segment] = []
        for (_, ta, va), (label, tb, vb) in zip(marks, marks[1:]):
            e = {doms[i]: vb[i] - va[i] for i in keep}
            dur = tb - ta
            segments.append(Segment(label, ta - t0, tb - t0, e, {d: w * dur for d, w in idle.items()}))
        if len(segments) > 1 and segments[-1].label == "end" and segments[-1].duration_s == 0:
            segments.pop()
        first, last = marks[0][2], marks[-1][2]
        energy = {doms[i]: last[i] - first[i] for i in keep}
        samples: list[PowerSample] = []
        for (ta, va), (tb, vb) in zip(self._samples, self._samples[1:]):
            if tb <= ta:
                continue
            mid = 0.5 * (ta + tb) - t0
            for i in keep:
                samples.append(PowerSample(mid, doms[i], (vb[i] - va[i]) / (tb - ta)))
        return Measurement(
            duration_s=marks[-1][1] - t0,
            energy_j=energy,
            method={doms[i]: self._collectors[i].method for i in keep},
            segments=segments,
            idle_power_w=idle,
            lost=dict(self._lost),
            samples=samples,
            status=status,
            idle_window_s=self._idle_window_s,
            sample_hz=self.sample_hz,
            resolution_s={doms[i]: getattr(self._collectors[i], "resolution_s", None) for i in keep},
            sources={d: c.source for d, c in zip(doms, self._collectors)},
            warnings=list(self._warnings),
            start_clock_s=t0,
        )
