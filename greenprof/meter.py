"""The meter: one process-wide reader of the energy counters, shared by every open window.

    with greenprof.Meter(sample_hz=10) as meter:
        work(); meter.mark("prefill")
        more(); meter.mark("token-1")
    m = meter.measurement

A :class:`Meter` is a *window* on a process-wide *hub*. The hub owns the collectors (opened when
the first window on that collector set starts, closed when the last one stops) and one
background sampler; every window open at the same time reads the same counters, so concurrent
windows (track blocks in threads, asyncio tasks, requests of a server, nested Meters) never
charge the same joule twice:

* **Gross**: what a counter saw over a segment (its difference at the two marks). A RAPL package
  sees the whole socket, a GPU the whole device.
* **This process's share** of a machine-wide counter (scope ``machine``: RAPL packages, DRAM,
  psys) over each interval between two *share points* (sampler ticks, window starts and stops):
  this process's CPU time over the machine's busy CPU time (/proc/stat), as Kepler and Scaphandre
  apportion. GPUs (scope ``gpu``): the process's share of the GPU's activity where NVML reports
  it, else the whole GPU, flagged "not shared-checked". Sources that already count only this
  process (scope ``process``: the CPU-time estimate, replayed traces) are charged whole.
* **Between windows**: in every interval between two counter reads, the process's energy is split
  among the windows open in it. Each window has a parent: the window that was current in its
  context when it started (a contextvar, so an asyncio task's windows have the enclosing
  window as parent; a new thread starts with none). A parent's energy goes to its *split*
  children (``split=True``: track() blocks, served requests) in proportion to the CPU time of
  their threads in the interval (equally among windows of one thread, such as asyncio tasks,
  and equally when no thread used CPU time); a child that does not split (a plain Meter, the
  default) sees all of its parent's energy, like an outer reference, and is transparent to the
  split: the split windows opened inside it split with the other split children of its nearest
  split ancestor (the process at the top). So a reference Meter around some of the blocks
  changes nobody's part, and the split windows under one split ancestor add up to its energy
  over the union of their spans: each joule is charged once.
* **Attributed** = the window's part of the split x this process's share, per domain and
  segment; ``energy_j`` stays gross beside it.

``mark`` reads every counter and the clock under the hub's lock (a few microseconds; the lock
keeps concurrent reads in time order so no interval is counted twice or negative), adds each
open window's part, and appends one row to the marking window. Shares are applied once, when the
window closes. A counter that fails mid-run is *lost*: its energy until the failure is kept
(marked partial), never dropped. A counter whose reads may have missed a wrap (its collector
says so), or a measured counter that did not update at all during the window (shorter than its
update period), makes the window's domain *uncertain*, with the reason.
"""

from __future__ import annotations

import bisect
import contextvars
import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from greenprof.labels import TOKEN_LABEL
from greenprof.errors import SensorLost, UsageError


class GreenprofWarning(UserWarning):
    """Something the user should know about a measurement. ``greenprof.track`` raises every
    warning of its run this way when the run ends (other processes' load, a lost domain, a
    possibly missed wrap); a bare :class:`Meter` raises only the sampler-rate one at its start
    and keeps the rest in ``measurement.warnings``."""


#: Other processes' share of the machine's busy CPU time above which a run is warned about.
OTHER_LOAD_WARN = 0.10
#: /proc/stat counts busy time in clock ticks (10 ms): the CPU share of an interval is taken over
#: a span widened around it (earlier sampler intervals, then later ones in the window) until the
#: machine was busy this long, so a short interval's share is not a ratio of two or three ticks.
SHARE_MIN_BUSY_S = 0.5
#: How far back before a window the hub's share history is used to widen short spans.
SHARE_HISTORY_S = 2.0
#: How often a lost counter is tried again (at a window's start): see _Hub._revive.
REVIVE_EVERY_S = 1.0
#: A device counter whose energy was charged whole (its share unknown) for at least this part
#: of the window's charge is flagged uncertain.
UNCHECKED_SHARE_FLAG = 0.01
#: A measured counter that did not move in a window this many update periods long is not just
#: too coarse for the window: it may not count at all on this machine (both are flagged uncertain).
STILL_COUNTER_UPDATES = 20
#: A measured counter that moved in a window but then stood still this long (and at least
#: STILL_COUNTER_UPDATES of its update periods) stalled: the window is flagged uncertain.
STALL_S = 1.0


@dataclass(frozen=True)
class Segment:
    """The window between two consecutive marks; ``label`` is the label of the closing mark."""

    label: str
    start_s: float  # seconds since the meter started
    end_s: float
    energy_j: dict[str, float]  # gross, per domain
    idle_energy_j: dict[str, float]  # idle power x duration, per domain (empty without a baseline)
    attributed_energy_j: dict[str, float] = field(default_factory=dict)  # this window's share
    #: generated tokens in a ``decode`` segment that holds several (a Meter with
    #: ``token_segments=False``); None: the label says (``token-N`` is one token)
    tokens: int | None = None

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
    energy_j: dict[str, float]  # gross per domain (a lost domain: what it measured until lost)
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
    #: this window's share of each domain (see the module docs)
    attributed_energy_j: dict[str, float] = field(default_factory=dict)
    #: what a domain's counter sees: "process" (already this process), "machine", "gpu"
    scope: dict[str, str] = field(default_factory=dict)
    #: {domain: reason} where a reading may be wrong (a possibly missed counter wrap)
    uncertain: dict[str, str] = field(default_factory=dict)
    #: {domain: one line} on how the process share was found ("not shared-checked", ...)
    share_notes: dict[str, str] = field(default_factory=dict)
    #: this process's and the machine's busy CPU seconds over the window (None without /proc)
    process_cpu_s: float | None = None
    machine_busy_cpu_s: float | None = None
    #: other processes' share of the machine's busy CPU time over the window (None: unknown)
    other_cpu_share: float | None = None
    #: other windows whose spans overlapped this one (the energy was split with them)
    concurrent_windows: int = 0
    split: bool = False

    @property
    def domains(self) -> list[str]:
        return list(self.energy_j)

    @property
    def share(self) -> dict[str, float | None]:
        """Attributed over gross, per domain (None when the counter saw nothing)."""
        return {d: (self.attributed_energy_j.get(d, 0.0) / g if g > 0 else None)
                for d, g in self.energy_j.items()}

    @property
    def idle_energy_j(self) -> dict[str, float]:
        return {d: self.idle_power_w.get(d, 0.0) * self.duration_s for d in self.energy_j}

    @property
    def dynamic_energy_j(self) -> dict[str, float]:
        idle = self.idle_energy_j
        return {d: e - idle[d] for d, e in self.energy_j.items()}

    @property
    def total_energy_j(self) -> float:
        """Gross, summed over domains. The default collector set never overlaps."""
        return math.fsum(self.energy_j.values())

    @property
    def attributed_total_energy_j(self) -> float:
        return math.fsum(self.attributed_energy_j.values())

    def to_dict(self) -> dict:
        from greenprof.accounting import clean_json

        return clean_json({
            "status": self.status,
            "duration_s": self.duration_s,
            "domains": self.domains,
            "energy_j": self.energy_j,
            "attributed_energy_j": self.attributed_energy_j,
            "share": self.share,
            "scope": self.scope,
            "dynamic_energy_j": self.dynamic_energy_j,
            "idle_power_w": self.idle_power_w,
            "idle_window_s": self.idle_window_s,
            "method": self.method,
            "sources": self.sources,
            "lost": self.lost,
            "uncertain": self.uncertain,
            "share_notes": self.share_notes,
            "process_cpu_s": self.process_cpu_s,
            "machine_busy_cpu_s": self.machine_busy_cpu_s,
            "other_cpu_share": self.other_cpu_share,
            "concurrent_windows": self.concurrent_windows,
            "warnings": self.warnings,
            "sample_hz": self.sample_hz,
            "segments": [
                {"label": s.label, "start_s": s.start_s, "duration_s": s.duration_s,
                 "energy_j": s.energy_j, "attributed_energy_j": s.attributed_energy_j,
                 "dynamic_energy_j": s.dynamic_energy_j}
                for s in self.segments
            ],
            "samples": len(self.samples),
        })


_NAN = float("nan")


def _sample_t(sample: tuple[float, list[float]]) -> float:
    return sample[0]

#: The window current in this context (thread, or asyncio task): the parent of the next one.
_CURRENT: contextvars.ContextVar["Meter | None"] = contextvars.ContextVar("greenprof_window", default=None)


# --------------------------------------------------------------------------------------------
# The hub: one per collector set in this process


@dataclass
class _SharePoint:
    t: float
    cpu: Any  # CpuTimes | None (tick-based, /proc)
    proc_s: float  # this process's CPU seconds, nanosecond clock (time.process_time)
    p: list[float | None]  # GPU domains: this process's share over the interval ending here
    notes: dict[int, str]
    #: a window was open on the hub over the whole interval ending here (else the hub lingered
    #: idle, or took an idle baseline, in it: what the process did then is no window's history)
    covered: bool = False


class _Hub:
    """The collectors, the sampler and every window open on them. All state under ``lock``."""

    def __init__(self, key: Any, collectors: list, clock: Callable[[], float]) -> None:
        from greenprof.cpushare import CpuTimesReader

        self.key = key
        self.collectors = collectors
        self.domains = [c.domain for c in collectors]
        self.scopes = [_scope_of(c) for c in collectors]
        self.has_machine = "machine" in self.scopes
        # what every measurement on this hub says of its domains (fixed per collector)
        self.methods = {c.domain: c.method for c in collectors}
        self.sources = {c.domain: c.source for c in collectors}
        self.resolutions = {c.domain: getattr(c, "resolution_s", None) for c in collectors}
        self.scope_of = dict(zip(self.domains, self.scopes))
        self.clock = clock
        self.readers: list[Callable[[], float]] = [c.read_j for c in collectors]
        self.pollers: list[Callable[[], float]] = [c.poll for c in collectors]
        self._raw_readers = list(self.readers)  # a lost counter's own, to try again (_revive)
        self._raw_pollers = list(self.pollers)
        #: subtracted from each counter's reads: what it counted while it was lost (unknown
        #: when, so no window's), so its values go on from where it was lost
        self.offset: list[float] = [0.0] * len(collectors)
        self._revive_at: dict[int, float] = {}
        self.lock = threading.Lock()
        self.windows: list[Meter] = []
        self.lost: dict[int, tuple[str, float]] = {}
        self.warnings: list[str] = []  # hub-wide events (lost domains), broadcast to windows
        self.samples: list[tuple[float, list[float]]] = []
        self.points: list[_SharePoint] = []
        self.point_base = 0  # index of points[0] among every point this hub made
        self.sample_base = 0
        self.cpu_reader = CpuTimesReader()
        self.last_vals: list[float] = [0.0] * len(collectors)
        self.thread_clocks: dict[int, tuple[Callable[[], float] | None, float]] = {}
        self.sample_hz = 0.0
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.sampler_error: str | None = None
        self.refs = 0
        self.closed = False
        self.idle_gen = 0  # bumped whenever the hub goes idle: a pending close checks it
        self.hold_hz = 0.0  # the highest sample rate a ProcessReader holding this hub asked for
        self.idle_j: list[float] = [0.0] * len(collectors)  # gross J while no window was open
        self.held: list[float] = [0.0] * len(collectors)  # each counter's last good value
        self.tok_at_t: dict[Any, tuple[float, int]] = {}  # see read()
        #: a window is open now, so the interval that ends at the next share point is covered
        #: (windows change only at add/remove, which make a point each)
        self.covered = False
        self.last_vals = self._read_vals(self.readers)
        self._share_point(self.clock())

    # -- reading (lock held by the caller) ---------------------------------------------------
    def _read_vals(self, fns: list[Callable[[], float]]) -> list[float]:
        """One value per counter; a lost one holds its last good value (``held``), which may
        come from a window's mark after the hub's last read."""
        vals = []
        held = self.held
        off = self.offset
        for i, f in enumerate(fns):
            if i in self.lost:
                vals.append(held[i])
                continue
            try:
                v = f() - off[i]
                if v != v:  # NaN from a reader: treat as lost
                    raise SensorLost("the counter read NaN")
                vals.append(v)
                held[i] = v
            except Exception as e:  # SensorLost, or anything a driver throws
                self._lose(i, e)
                vals.append(held[i])
        return vals

    def _lose(self, i: int, err: BaseException) -> None:
        dom = self.domains[i]
        reason = str(err) if isinstance(err, SensorLost) else f"{type(err).__name__}: {err}"
        reason = reason or type(err).__name__
        self.lost[i] = lost = (reason, self.clock())
        msg = (f"{dom} lost mid-run ({reason}); its energy until then is kept and marked partial, "
               "the measurement goes on without it")
        for w in self.windows:
            w._warn(msg)
            w._lost_seen[i] = lost
        self.readers[i] = _nan_reader
        self.pollers[i] = _nan_reader
        self._revive_at[i] = lost[1] + REVIVE_EVERY_S

    def _revive(self) -> None:
        """Try each lost counter again (at most every :data:`REVIVE_EVERY_S`): one that reads
        again (a transient driver or file error) counts again from here, for the windows that
        start from now on, which a server's hub, never idle, would otherwise not get until it
        closed. Its values go on from where it was lost: what it counted meanwhile is no
        window's (when, is not known). Windows open across the loss stay partial."""
        now = self.clock()
        for i in list(self.lost):
            if now < self._revive_at.get(i, 0.0):
                continue
            self._revive_at[i] = now + REVIVE_EVERY_S
            try:
                v = self._raw_readers[i]()
            except Exception:
                continue
            if v != v:
                continue
            self.offset[i] = v - self.held[i]
            self.readers[i] = self._raw_readers[i]
            self.pollers[i] = self._raw_pollers[i]
            del self.lost[i]
            for w in self.windows:
                w._warn(f"{self.domains[i]} reads again; the energy it counted while it was lost is "
                        "not charged to any window")

    def _thread_weights(self, up: list[int]) -> list[float]:
        """CPU seconds each open split window's thread used since the last read, shared equally
        among the split windows of one group (``up``: each window's nearest split ancestor, see
        _distribute) running on that thread: asyncio tasks, each of which is told so (see
        Meter._thread_shared). A window nested in another on its thread is in a group of its
        own, so it does not halve its parent's weight. A suspended window (a tracked generator
        between items) has none: its thread's time is the others'. Plain windows weigh nothing
        (they take their split ancestor's part)."""
        per_slot: dict[tuple[int, int], int] = {}
        for k, w in enumerate(self.windows):
            if w.split and not w._suspended:
                key = (w._tid, up[k])
                per_slot[key] = per_slot.get(key, 0) + 1
        used: dict[int, float] = {}
        for tid in {w._tid for w in self.windows}:  # a suspended window's thread clock moves on too
            reader, last = self.thread_clocks.get(tid, (None, _NAN))
            if reader is None:
                used[tid] = 0.0
                continue
            now = reader()
            used[tid] = now - last if (now == now and last == last and now >= last) else 0.0
            self.thread_clocks[tid] = (reader, now)
        out = []
        for k, w in enumerate(self.windows):
            if w._suspended or not w.split:
                out.append(0.0)
                continue
            n = per_slot[(w._tid, up[k])]
            if n - 1 > w._thread_shared:
                w._thread_shared = n - 1
            out.append(used[w._tid] / n)
        return out

    def _clock_thread(self, tid: int) -> None:
        """Start reading ``tid``'s CPU clock (lock held), if it is not read yet."""
        if tid not in self.thread_clocks:
            from greenprof.cpushare import thread_cpu_clock

            reader = thread_cpu_clock(tid)
            self.thread_clocks[tid] = (reader, reader() if reader else _NAN)

    def _distribute(self, delta: list[float], last: list[float]) -> None:
        """Add each open window's part of ``delta`` (one value per domain, since the counters
        read ``last``) to its accumulator, and settle the rows its marks left pending."""
        ws = self.windows
        if len(ws) == 1:
            w = ws[0]
            acc = w._acc
            if w._pending:
                w._settle(1.0, last)
            for i, d in enumerate(delta):
                acc[i] += d
            return
        # each window's nearest open *split* ancestor (-1: the process): a plain window in
        # between is transparent, so a reference Meter around some blocks does not make them a
        # group of their own that is charged its energy a second time
        index = {id(w): k for k, w in enumerate(ws)}
        up = []
        for w in ws:
            p = w._open_parent()
            while p is not None and not p.split:
                p = p._open_parent()
            up.append(index.get(id(p), -1) if p is not None else -1)
        weights = self._thread_weights(up)
        kids: dict[int, list[int]] = {}
        for k, w in enumerate(ws):
            if w.split:
                kids.setdefault(up[k], []).append(k)
        frac = [0.0] * len(ws)
        level = [(-1, 1.0)]  # breadth-first from the process, over the split windows
        while level:
            nxt = []
            for parent, f_parent in level:
                group = kids.get(parent)
                if not group:
                    continue
                total = math.fsum(weights[k] for k in group)
                for k in group:
                    frac[k] = f_parent * (weights[k] / total if total > 0 else 1.0 / len(group))
                    nxt.append((k, frac[k]))
            level = nxt
        for k, w in enumerate(ws):  # a plain window sees all of its nearest split ancestor's part
            if not w.split:
                frac[k] = frac[up[k]] if up[k] >= 0 else 1.0
        for k, w in enumerate(ws):
            f = frac[k]
            if w._pending:
                w._settle(f, last)
            if f:
                acc = w._acc
                for i, d in enumerate(delta):
                    acc[i] += d * f

    def read(self, poll: bool = False) -> tuple[float, list[float]]:
        """Read every counter, give each open window its part. Lock held by the caller."""
        t = self.clock()
        # where each merging window's token count stood at t (tokens are marked without the
        # lock, so while the counters are read below, more may come: they belong after t)
        self.tok_at_t = {w: w._tok for w in self.windows if not w.token_segments}
        vals = self._read_vals(self.pollers if poll else self.readers)
        last = self.last_vals
        delta = [v - a for v, a in zip(vals, last)]
        self.last_vals = vals
        if self.windows:
            self._distribute(delta, last)
        else:
            idle = self.idle_j
            for i, d in enumerate(delta):
                idle[i] += d
        return t, vals

    def _share_point(self, t: float, cpu_view: bool = True) -> int:
        """Close a share interval at ``t``: this process's share per domain since the last point.
        Returns the point's absolute index. ``cpu_view=False`` skips reading the machine's CPU
        times (/proc) unless a machine-wide counter needs them for its share."""
        cpu = self.cpu_reader.read() if cpu_view or self.has_machine else None
        proc_s = time.process_time() if cpu is not None else _NAN  # only read beside ``cpu``
        p: list[float | None] = []
        notes: dict[int, str] = {}
        for i, (c, scope) in enumerate(zip(self.collectors, self.scopes)):
            if scope == "process":
                p.append(1.0)
            elif scope == "gpu":
                fn = getattr(c, "process_share", None)
                share, why = (None, "this GPU collector reports no per-process share")
                if fn is not None:
                    try:
                        share, why = fn()
                    except Exception as e:  # never let a share query break the meter
                        share, why = None, f"{type(e).__name__}: {e}"
                if share is None:
                    notes[i] = why or "not shared-checked"
                p.append(share)
            else:  # machine-wide counter: apportioned by CPU time, over spans (see _build)
                if cpu is None:
                    notes[i] = "not shared-checked: " + (self.cpu_reader.why_not or "no /proc/stat")
                p.append(None)
        self.points.append(_SharePoint(t, cpu, proc_s, p, notes, self.covered))
        return self.point_base + len(self.points) - 1

    def share_read(self, poll: bool = False) -> tuple[float, list[float], int]:
        t, vals = self.read(poll=poll)
        idx = self._share_point(t)
        for w in self.windows:
            w._row(t, None, vals, idx)
        return t, vals, idx

    # -- windows -------------------------------------------------------------------------------
    def add(self, w: "Meter", cut: "tuple[Meter, str] | None" = None) -> None:
        """Register ``w`` (lock held): a share point opens its first row. ``cut=(window, label)``:
        that open window's row at the same reading is a mark ``label`` (see Meter.start)."""
        if self.lost:
            self._revive()
        self._clock_thread(w._tid)
        t, vals = self.read()  # energy so far goes to the windows already open
        w._lost_seen.update(self.lost)  # lost before the window: none of its energy is counted
        self.windows.append(w)
        idx = self._share_point(t, w.cpu_view)
        self.covered = True
        for o in self.windows:
            o._row(t, "start" if o is w else cut[1] if cut is not None and o is cut[0] else None, vals, idx)
        for o in self.windows:
            if o is not w:
                o._overlaps += 1
                w._overlaps += 1
        if w.sample_hz > self.sample_hz:
            self.sample_hz = w.sample_hz  # the sampler reads it at its next tick

    def remove(self, w: "Meter") -> tuple[float, list[float], int]:
        t, vals = self.read()
        idx = self._share_point(t, w.cpu_view)
        for o in self.windows:
            o._row(t, "end" if o is w else None, vals, idx)
        self.windows.remove(w)
        self.covered = bool(self.windows)
        self.sample_hz = max([o.sample_hz for o in self.windows] + [self.hold_hz])
        alive = {o._tid for o in self.windows}
        for tid in list(self.thread_clocks):
            if tid not in alive:
                del self.thread_clocks[tid]
        self._trim(keep=w)  # w's own points and samples are read after this (Meter.stop)
        return t, vals, idx

    def _trim(self, keep: "Meter | None" = None) -> None:
        """Drop share points and samples that no open window, nor ``keep`` (a window being
        removed, which reads its own next), can need. Without ``keep`` a long window removed
        after a newer one had opened (the node window, cut at every renewal) lost its points
        here and was charged a machine-wide counter whole."""
        users = self.windows + [keep] if keep is not None else self.windows
        if not users:
            return
        oldest_point = min(o._first_point for o in users)
        drop = oldest_point - self.point_base - 1  # keep the point that opens the oldest interval
        if drop > 256:
            del self.points[:drop]
            self.point_base += drop
        oldest_t = min(o._t0 for o in users)
        # keep the last sample at or before the oldest window's start (samples are in time order)
        k = max(0, bisect.bisect_right(self.samples, oldest_t, key=_sample_t) - 1)
        if k > 256:
            del self.samples[:k]
            self.sample_base += k

    # -- sampler --------------------------------------------------------------------------------
    def sample(self) -> None:
        with self.lock:
            t, vals, _ = self.share_read(poll=True)
            self.samples.append((t, vals))
            if len(self.points) > 4096 and len(self.points) % 1024 == 0:
                self._trim()

    def ensure_sampler(self) -> None:
        if self.sample_hz > 0 and self.thread is None:
            self.thread = threading.Thread(target=self._sampler, name="greenprof-sampler", daemon=True)
            self.thread.start()

    def _sampler(self) -> None:
        clock = self.clock
        nxt = clock()
        try:
            while not self._stop.is_set():
                hz = self.sample_hz
                period = 1.0 / hz if hz > 0 else 0.5
                nxt += period
                now = clock()
                if nxt < now:  # fell behind (suspended, overloaded): skip, don't burst
                    nxt = now + period
                if self._stop.wait(max(0.0, nxt - clock())):
                    break
                if hz > 0:
                    self.sample()
        except BaseException as e:  # the sampler must never take the process down
            self.sampler_error = f"sampler stopped early: {type(e).__name__}: {e}"
            with self.lock:
                for w in self.windows:
                    w._warn(self.sampler_error)

    def pause_sampler(self) -> None:
        """Stop the sampler thread (no window needs it); ``ensure_sampler`` starts a new one."""
        self._stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()
        self.thread = None
        self._stop = threading.Event()

    def close(self) -> None:
        self.closed = True
        self.pause_sampler()
        for c in self.collectors:
            try:
                c.close()
            except Exception:
                pass
        self.cpu_reader.close()


def _nan_reader() -> float:
    return _NAN


def _scope_of(c: Any) -> str:
    scope = getattr(c, "scope", None)
    if scope in ("process", "machine", "gpu"):
        return scope
    src = getattr(c, "source", "")
    if src in ("cpu-estimate", "replay"):  # counts this process only / a trace taken as this run's
        return "process"
    if src == "nvml" or str(getattr(c, "domain", "")).startswith("gpu-"):
        return "gpu"
    return "machine"


_HUBS: dict[Any, _Hub] = {}
#: Seconds a hub stays open after its last window closes, so back-to-back windows (the runs of
#: one `measure`, a benchmark's rounds) reuse its collectors, and RAPL's watcher process, instead
#: of discovering and starting them again. Its sampler stops at once.
HUB_LINGER_S = 2.0
_HUBS_LOCK = threading.Lock()


def _hub_key(spec: Any, clock: Callable, discover_kwargs: dict) -> Any:
    def norm(v: Any) -> Any:
        try:
            hash(v)
            return v
        except TypeError:
            return ("id", id(v))

    if isinstance(spec, str):
        s: Any = spec if spec == "auto" else tuple(sorted(x.strip() for x in spec.split(",") if x.strip()))
    else:
        s = tuple(sorted(x if isinstance(x, str) else ("id", id(x)) for x in spec))
    env = None
    if spec == "auto" or isinstance(spec, str) or any(isinstance(x, str) for x in spec):
        import os

        env = (os.environ.get("GREENPROF_POWERCAP_ROOT"), os.environ.get("GREENPROF_REPLAY"),
               os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("GREENPROF_CPU_TDP_W"))
    return (s, ("id", id(clock)), tuple(sorted((k, norm(v)) for k, v in discover_kwargs.items())), env)


class ProcessReader:
    """Holds the process-wide reader of a collector set open between measurement windows (a
    server, an exporter) and reads its cumulative counters.

        with ProcessReader(collectors="auto", sample_hz=1) as r:
            ...  # Meter windows on the same collector set share its counters
            snap = r.read()  # gross J per domain since open, and the part no window was open for

    ``read()`` returns ``{"t_s", "energy_j": {domain: gross J}, "idle_energy_j": {domain: gross J
    while no window was open}, "method": {domain: ...}, "scope": {...}}``: ``energy_j`` is a
    monotonic counter suitable for a Prometheus ``_total``; ``idle_energy_j`` is the energy between
    requests (not charged to any of them).
    """

    def __init__(self, collectors: "str | Sequence" = "auto", sample_hz: float = 1.0,
                 clock: Callable[[], float] = time.perf_counter, **discover_kwargs) -> None:
        self._probe = Meter(collectors=collectors, sample_hz=sample_hz, clock=clock, **discover_kwargs)
        self.sample_hz = float(sample_hz)
        self._hub: _Hub | None = None
        self._origin: list[float] = []
        self._idle0: list[float] = []
        self._t0 = 0.0

    def start(self) -> "ProcessReader":
        if self._hub is not None:
            raise UsageError("this ProcessReader is already open")
        hub = self._probe._open_hub()
        with hub.lock:
            hub.hold_hz = max(hub.hold_hz, self.sample_hz)
            hub.sample_hz = max(hub.sample_hz, self.sample_hz)
            t, vals = hub.read()
            self._origin = list(vals)
            self._idle0 = list(hub.idle_j)
            self._t0 = t
            hub.ensure_sampler()
        self._hub = hub
        return self

    @property
    def domains(self) -> list[str]:
        return list(self._hub.domains) if self._hub is not None else []

    def read(self) -> dict:
        hub = self._hub
        if hub is None:
            raise UsageError("the ProcessReader is not open: use `with ProcessReader() as r:`")
        with hub.lock:
            t, vals = hub.read()
            idle = list(hub.idle_j)
        return {
            "t_s": t - self._t0,
            "energy_j": {d: v - o for d, v, o in zip(hub.domains, vals, self._origin)},
            "idle_energy_j": {d: v - o for d, v, o in zip(hub.domains, idle, self._idle0)},
            "method": {d: c.method for d, c in zip(hub.domains, hub.collectors)},
            "scope": dict(zip(hub.domains, hub.scopes)),
            "lost": {hub.domains[i]: why for i, (why, _t) in hub.lost.items()},
        }

    def close(self) -> None:
        hub, self._hub = self._hub, None
        if hub is not None:
            self._probe._release_hub(hub)

    def __enter__(self) -> "ProcessReader":
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


# --------------------------------------------------------------------------------------------
# The window


class Meter:
    """Measures the energy of a block of code, segment by segment.

    Parameters
    ----------
    collectors:
        ``"auto"`` (every measured source here, else the CPU estimate), a comma-separated string
        or a list of domain names and/or collector objects. Windows open at the same time on the
        same collector set share one reader (see the module docs).
    sample_hz:
        Background sampler rate; 0 disables it (then a power-only source cannot be integrated
        and a RAPL counter may wrap unnoticed between far-apart marks: both are warned about).
        With several windows open, the sampler runs at the highest rate any of them asked for.
    idle_s:
        Seconds of quiet before the work to take an idle baseline (median power per domain).
    split:
        False (the default): the window sees all the energy of its parent (the process, or the
        window it is nested in), like an outer reference. True: it is one of several concurrent
        windows (requests, track() blocks) that split their parent's energy among themselves.
    token_segments:
        True (the default): every ``token-N`` mark reads the counters and closes a segment of its
        own. False: a ``token-N`` mark only counts the token and keeps its time; the tokens
        marked between two rows of the window (its other marks, sampler ticks) make one
        ``decode`` segment whose ``tokens`` says how many. Its end, at the last token's time, is
        placed on the counters by interpolating in time between the readings around it, so the
        energy of the whole window and of the spans between readings stays measured while a
        token mark costs about a microsecond (``greenprof serve`` measures its requests this way;
        :meth:`token_marker` gives the cheapest such mark).
    cpu_view:
        True (the default): the window reads the machine's CPU times (/proc/stat) at its start
        and end, for the share of the machine's busy time other processes used during it
        (``other_cpu_share``, and a warning above 10 %). False: it reads them only where a
        machine-wide counter (RAPL) needs them for its share; with process-scope counters only
        (the CPU estimate) the window then has no ``other_cpu_share``. ``greenprof serve``'s
        per-request windows use False: two /proc reads per request are a large part of a small
        model's request.
    """

    def __init__(self, collectors: "str | Sequence" = "auto", sample_hz: float = 10.0,
                 idle_s: float = 0.0, clock: Callable[[], float] = time.perf_counter,
                 split: bool = False, token_segments: bool = True, cpu_view: bool = True,
                 **discover_kwargs) -> None:
        if not (isinstance(sample_hz, (int, float)) and not isinstance(sample_hz, bool)
                and math.isfinite(sample_hz) and sample_hz >= 0):
            raise UsageError(f"sample_hz must be a number >= 0 (got {sample_hz!r})")
        if not (isinstance(idle_s, (int, float)) and not isinstance(idle_s, bool)
                and math.isfinite(idle_s) and idle_s >= 0):
            raise UsageError(f"idle_s must be a number of seconds >= 0 (got {idle_s!r})")
        if not (collectors == "auto" or isinstance(collectors, str)
                or isinstance(collectors, (list, tuple))):
            raise UsageError(f"collectors must be \"auto\", a comma-separated string or a list of domain "
                             f"names (got {collectors!r})")
        if isinstance(collectors, (list, tuple)):
            for c in collectors:
                if not (isinstance(c, str) or (isinstance(getattr(c, "domain", None), str)
                                               and callable(getattr(c, "read_j", None)))):
                    raise UsageError(f"collectors lists domain names such as \"cpu-package-0\" (see "
                                     f"`greenprof sensors`) or collector objects with a domain and "
                                     f"read_j(); got {c!r}")
        if not callable(clock):
            raise UsageError(f"clock must be a function returning seconds, such as time.perf_counter "
                             f"(got {clock!r}); pass the other settings by name: Meter(split=True, ...)")
        unknown = sorted(set(discover_kwargs) - {"powercap_root", "nvml", "env"})
        if unknown:
            raise UsageError(f"Meter() got unknown argument(s) {', '.join(unknown)}; it takes collectors, "
                             "sample_hz, idle_s, clock, split, token_segments, cpu_view, and for finding "
                             "sensors powercap_root, nvml, env")
        self._spec = collectors
        self.sample_hz = float(sample_hz)
        self.idle_s = float(idle_s)
        self.split = bool(split)
        self.token_segments = bool(token_segments)
        self.cpu_view = bool(cpu_view)
        self._row_tokens: dict[int, int] = {}  # row index -> tokens it closes (merged decode rows)
        self._tok: tuple[float, int] = (0.0, 0)  # (time of the last token mark, tokens marked)
        self._tok_done = 0  # tokens already in a decode row
        self._clock = clock
        self._discover_kwargs = discover_kwargs
        self._hub: _Hub | None = None
        self._state = "new"
        self._rows: list[tuple[float, str | None, list[float], list[float], int]] = []
        self._acc: list[float] = []
        self._pending: list[tuple[list[float], list[float]]] = []  # marks awaiting their share
        self._warnings: list[str] = []
        self._raised: set[str] = set()  # warnings already raised as GreenprofWarning
        self._t0 = 0.0
        self._first_point = 0
        self._tid = threading.get_ident()
        self._parent: Meter | None = None
        self._ctx_token: contextvars.Token | None = None
        self._overlaps = 0
        #: a suspended window (a tracked generator between items) is weighed by no thread
        self._suspended = False
        #: the most other split windows that ran on this window's thread at once (asyncio tasks):
        #: their energy was shared equally, not by the CPU each used
        self._thread_shared = 0
        #: counters lost while this window was open, or before it started: (reason, when)
        self._lost_seen: dict[int, tuple[str, float]] = {}
        self._uncertain0: list[int] = []
        self._idle_power_w: dict[str, float] = {}
        self._idle_window_s = 0.0
        self._idle_samples: list[tuple[float, list[float]]] = []
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
        if self._state == "running":
            self.stop(status=status)
        return False  # never swallow the user's exception

    @property
    def domains(self) -> list[str]:
        return list(self._hub.domains) if self._hub is not None else []

    def _open_hub(self) -> _Hub:
        key = _hub_key(self._spec, self._clock, self._discover_kwargs)
        with _HUBS_LOCK:
            hub = _HUBS.get(key)
            if hub is not None and not hub.closed:
                if hub.refs == 0 and hub.lost:  # a lingering hub with a dead sensor: rediscover
                    del _HUBS[key]
                    hub.closed = True
                    threading.Thread(target=hub.close, daemon=True).start()
                else:
                    hub.refs += 1
                    return hub
            from greenprof.collectors import check_overlaps, select

            spec = self._spec
            collectors = select(spec if isinstance(spec, str) else list(spec), **self._discover_kwargs)
            if not collectors:
                raise UsageError("no energy collector selected: see `greenprof sensors` for what this machine has")
            overlap = check_overlaps(collectors)
            if overlap:
                for c in collectors:
                    try:
                        c.close()
                    except Exception:
                        pass
                raise UsageError(overlap)
            hub = _Hub(key, collectors, self._clock)
            hub.refs = 1
            _HUBS[key] = hub
            return hub

    def _release_hub(self, hub: _Hub) -> None:
        with _HUBS_LOCK:
            hub.refs -= 1
            if hub.refs > 0:
                return
            hub.idle_gen += 1
            gen = hub.idle_gen
            linger = HUB_LINGER_S if _HUBS.get(hub.key) is hub and not hub.lost else 0.0
            if linger <= 0 and _HUBS.get(hub.key) is hub:
                del _HUBS[hub.key]
            hub.pause_sampler()  # under the lock: a window reopening the hub starts a new one after
        if linger <= 0:
            hub.close()
            return

        def close_if_still_idle() -> None:
            with _HUBS_LOCK:
                if hub.refs > 0 or hub.idle_gen != gen or hub.closed:
                    return
                if _HUBS.get(hub.key) is hub:
                    del _HUBS[hub.key]
                hub.closed = True
            hub.close()

        timer = threading.Timer(linger, close_if_still_idle)
        timer.daemon = True
        timer.name = "greenprof-hub-linger"
        timer.start()

    def start(self, *, _cut: "tuple[Meter, str] | None" = None) -> "Meter":
        """Open the window. ``_cut=(window, label)`` (greenprof.metrics' renewed node window):
        that running window on the same hub is marked ``label`` at this window's very first
        reading, so one ends where the other begins, with no joule between them or in both."""
        if self._state != "new":
            raise UsageError("a Meter measures one window: create a new Meter for the next one")
        hub = self._open_hub()
        self._hub = hub
        self._tid = threading.get_ident()
        try:
            self._check_sampling_rate(hub)
            if self.idle_s > 0:
                self._take_idle_baseline(hub)
            parent = _CURRENT.get()
            # the window current in this context, on whichever collectors: one on other
            # collectors is skipped over when this hub splits (see _open_parent)
            self._parent = parent if (parent is not None and parent._state == "running") else None
            self._acc = [0.0] * len(hub.collectors)
            with hub.lock:
                self._state = "running"
                if _cut is not None and (_cut[0]._hub is not hub or _cut[0]._state != "running"):
                    raise UsageError("a cut needs a running window on the same collectors")
                hub.add(self, _cut)
                # after the window's first read: a stale start read is not this window's doubt
                self._uncertain0 = [int(getattr(c, "uncertain_count", 0) or 0) for c in hub.collectors]
                self._t0 = self._rows[0][0]
                self._first_point = self._rows[0][4]
                hub.ensure_sampler()
            self._ctx_token = _CURRENT.set(self)
        except BaseException:
            if self._state == "running":
                with hub.lock:
                    if self in hub.windows:
                        hub.windows.remove(self)
            self._state = "stopped"
            self._release_hub(hub)
            raise
        return self

    def mark(self, label: str) -> None:
        """Close the current segment: read every counter and the clock, give every open window
        its part, append one row. Nothing else."""
        if self._state != "running":
            raise UsageError("mark() works between start() and stop(): use it inside "
                             "`with greenprof.Meter() as meter:`" if self._state == "new" else
                             "mark() after the window stopped: the measurement is closed; start a new Meter")
        if type(label) is not str or not label.strip() or label in ("start", "end"):
            raise UsageError(f"mark() takes a non-empty text label other than 'start'/'end' (got {label!r})")
        hub = self._hub
        if not self.token_segments and TOKEN_LABEL.match(label):
            # no reading, no lock: the token is counted, and its time kept for the boundary of
            # the decode segment that the next row of this window closes (see _flush_tokens)
            self._tok = (hub.clock(), self._tok[1] + 1)
            return
        with hub.lock:
            # Read the counters, but leave sharing the energy to the hub's next read (the
            # sampler's tick, a window's start or stop): this row's attributed part is then this
            # window's share of that whole interval, applied up to this mark (see _settle). A
            # mark per generated token costs a few microseconds, not a share computation.
            t = hub.clock()
            vals = hub._read_vals(hub.readers)
            acc = [0.0] * len(vals)
            if self._tok[1] > self._tok_done:
                self._flush_tokens(t, self._tok)  # this thread marked them: all before t
            self._pending.append((vals, acc))
            self._rows.append((t, label, vals, acc, hub.point_base + len(hub.points) - 1))

    def token_marker(self) -> Callable[[str], None]:
        """The cheapest callable that marks one generated token (``mark("token-N")``): with
        ``token_segments=False`` it only counts the token and keeps its time (no label check, no
        reading, no lock); otherwise it is :meth:`mark`. Take it once the window is running."""
        if self.token_segments or self._state != "running":
            return self.mark
        clock = self._hub.clock

        def token(label: str) -> None:  # noqa: ARG001 - every call is one token
            if self._state != "running":
                self.mark(label)  # raises the usage error mark() gives
            self._tok = (clock(), self._tok[1] + 1)

        return token

    def _flush_tokens(self, t_row: float, tok: tuple[float, int]) -> None:
        """Before a row at ``t_row`` is appended (hub lock held): the tokens marked since the
        last flush become one ``decode`` row at the last token's time. Its counters are not
        read there; _build interpolates them in time between the rows around it (the readings
        just before the first of those tokens and at ``t_row``, a sampler tick or the next mark,
        which at the end of a generation comes microseconds after the last token)."""
        t, n = tok  # the count as it stood at t_row: later tokens wait for the next flush
        if n > self._tok_done and t <= t_row and self._rows:
            self._row_tokens[len(self._rows)] = n - self._tok_done
            self._rows.append((t, "decode", None, None, self._rows[-1][4]))
            self._tok_done = n

    def _settle(self, frac: float, last: list[float]) -> None:
        """Fill the attributed running totals of the rows marked since the hub's last read
        (``last``: the counters then): this window's total then, plus ``frac`` (its share of
        the interval now closing) of each counter's advance up to the mark. Hub lock held."""
        base = self._acc
        for vals, acc in self._pending:
            for i, b in enumerate(base):
                d = vals[i] - last[i]
                acc[i] = b + d * frac if d == d else b
        self._pending.clear()

    def _row(self, t: float, label: str | None, vals: list[float], point_idx: int) -> None:
        """Append a row read by the hub at ``t`` (hub lock held)."""
        if self._tok[1] > self._tok_done:
            self._flush_tokens(t, self._hub.tok_at_t.get(self, (t, self._tok_done)))
        self._rows.append((t, label, vals, self._acc[:], point_idx))

    def _warn(self, msg: str) -> None:
        if msg not in self._warnings:
            self._warnings.append(msg)

    def _open_parent(self) -> "Meter | None":
        """The nearest ancestor still open on the same collectors (a closed parent hands its
        children to its own; one on other collectors is not part of this hub's split)."""
        p = self._parent
        while p is not None and (p._state != "running" or p._hub is not self._hub):
            p = p._parent
        return p

    def _switch(self, running: bool) -> None:
        """The window's code stops running (``running=False``: a tracked generator yields, and
        its thread's CPU time from here is not its own) or runs again, on this thread (a
        generator may be resumed on another one, as a thread pool streams it). The energy so far
        is split first, as things stood."""
        hub = self._hub
        if self._state != "running" or hub is None:
            return
        with hub.lock:
            if len(hub.windows) > 1:
                hub.read()
            if running:
                tid = threading.get_ident()
                if tid != self._tid:
                    hub._clock_thread(tid)
                    self._tid = tid
            self._suspended = not running

    def stop(self, status: str = "completed") -> Measurement:
        if self._state == "stopped" and self._measurement is not None:
            return self._measurement
        if self._state != "running":
            raise UsageError("the meter was never started: use `with Meter() as meter:` or meter.start()")
        hub = self._hub
        try:
            with hub.lock:
                hub.remove(self)
                self._state = "stopped"
                samples = self._window_samples(hub)
                points = self._window_points(hub, history=hub.has_machine)
                lost = {hub.domains[i]: why for i, (why, t) in self._lost_seen.items()}
                lost_t = {hub.domains[i]: t for i, (why, t) in self._lost_seen.items()}
                sampler_error = hub.sampler_error
        finally:
            self._state = "stopped"
            if self._ctx_token is not None:
                try:
                    _CURRENT.reset(self._ctx_token)
                except ValueError:  # stopped in another context (a generator resumed elsewhere)
                    pass
                self._ctx_token = None
                # this window (stopped in another context), or one stopped out of order (a newer
                # one last) that the reset gave back: the current window is the nearest that runs
                cur = _CURRENT.get()
                live = cur
                while live is not None and live._state != "running":
                    live = live._parent
                if live is not cur:
                    _CURRENT.set(live)
            uncertain = {}
            for i, c in enumerate(hub.collectors):
                n = int(getattr(c, "uncertain_count", 0) or 0)
                if n > self._uncertain0[i] if i < len(self._uncertain0) else False:
                    uncertain[hub.domains[i]] = (getattr(c, "uncertain_reason", None)
                                                 or "a reading may be wrong (the collector flagged it)")
            self._release_hub(hub)
        if sampler_error:
            self._warn(sampler_error)
        self._measurement = self._build(status, hub, samples, points, lost, lost_t, uncertain)
        return self._measurement

    @property
    def measurement(self) -> Measurement:
        if self._measurement is None:
            raise UsageError("no measurement yet: it is ready when the `with Meter()` block ends")
        return self._measurement

    # -- helpers -----------------------------------------------------------------------------
    def _window_samples(self, hub: _Hub) -> list[tuple[float, list[float]]]:
        t0, t1 = self._t0, self._rows[-1][0]
        samples = hub.samples  # in time order
        lo = bisect.bisect_left(samples, t0, key=_sample_t)
        out = samples[lo:bisect.bisect_right(samples, t1, lo=lo, key=_sample_t)]
        if out and lo > 0:
            out.insert(0, samples[lo - 1])  # the interval that straddles the start
        return out

    def _window_points(self, hub: _Hub, history: bool = True) -> dict[int, _SharePoint]:
        """Every share point of the window (and the one after it), and with ``history`` the
        earlier ones that widen the spans of short intervals at the start (only a machine-wide
        counter's CPU-time share needs them): back through intervals in which some window was
        open, never across one in which the hub lingered idle or took an idle baseline (a gap
        of any length, in which this process may have worked, or slept, outside any window)."""
        first = min(r[4] for r in self._rows)
        last = max(r[4] for r in self._rows) + 1
        out = {}
        for i in range(max(hub.point_base, first), last + 1):
            k = i - hub.point_base
            if 0 <= k < len(hub.points):
                out[i] = hub.points[k]
        if not history:
            return out
        t_from = self._t0 - SHARE_HISTORY_S
        i = first - 1
        while (i >= hub.point_base and hub.points[i + 1 - hub.point_base].covered
               and (i == first - 1 or hub.points[i - hub.point_base].t >= t_from)):
            out[i] = hub.points[i - hub.point_base]
            i -= 1
        return out

    @staticmethod
    def _stalls(rows: list, hub: _Hub, energy: dict[str, float], lost: dict,
                uncertain: dict) -> dict[str, float]:
        """Measured counters that moved in the window but stood still, across its rows (every
        reading of it: marks, and the sampler ticks, which add a row to each open window), for
        at least STALL_S and STILL_COUNTER_UPDATES of their update periods: {domain: longest
        still seconds}. A counter that stops mid-run (a driver or firmware fault, a zone going
        away while a read keeps returning its last value) read less than the time it covered,
        with no flag."""
        out: dict[str, float] = {}
        for i, d in enumerate(hub.domains):
            res = hub.resolutions.get(d)
            if (not res or hub.methods.get(d) != "measured" or d in lost or d in uncertain
                    or not energy.get(d, 0.0) > 0):
                continue
            need = max(STALL_S, STILL_COUNTER_UPDATES * res)
            longest, start = 0.0, None
            for (ta, _la, va, _aa, _pa), (tb, _lb, vb, _ab, _pb) in zip(rows, rows[1:]):
                a, b = va[i], vb[i]
                if a != a or b != b or b != a:  # moved, or a lost reading: no stall runs through it
                    start = None
                    continue
                start = ta if start is None else start
                longest = max(longest, tb - start)
            if longest >= need:
                out[d] = longest
        return out

    @staticmethod
    def _cpu_shares(points: dict[int, _SharePoint], lo_idx: int) -> tuple[dict[int, float | None], dict[int, float]]:
        """This process's share of the machine's busy CPU time for every interval (ending at
        point k > lo_idx), each over a span widened until the machine was busy at least
        SHARE_MIN_BUSY_S. Returns ({k: share}, {k: busy seconds of the span used})."""
        idxs = sorted(i for i, pt in points.items() if pt.cpu is not None)
        shares: dict[int, float | None] = {}
        spans: dict[int, float] = {}
        if len(idxs) < 2:
            return shares, spans
        busy = [points[i].cpu.machine_busy_s for i in idxs]  # cumulative, non-decreasing
        proc = [points[i].proc_s for i in idxs]
        last = len(idxs) - 1
        for n in range(1, len(idxs)):
            if idxs[n] <= lo_idx:
                continue
            a, b = n - 1, n
            if busy[b] - busy[a] < SHARE_MIN_BUSY_S:
                # widen backwards first (history), then forwards, to the nearest points that give
                # SHARE_MIN_BUSY_S of busy time (binary searches over the cumulative counts)
                a = max(0, bisect.bisect_right(busy, busy[b] - SHARE_MIN_BUSY_S) - 1)
                if busy[b] - busy[a] < SHARE_MIN_BUSY_S:
                    b = min(last, bisect.bisect_left(busy, busy[a] + SHARE_MIN_BUSY_S))
            span_busy = busy[b] - busy[a]
            mine = proc[b] - proc[a]
            # busy time is counted in ticks, this process's time in ns: when the ticks undercount
            # (a short span with this process alone), the share is 1, never above
            shares[idxs[n]] = (1.0 if span_busy <= 0 and mine <= 0 else
                               min(1.0, mine / max(span_busy, mine)) if mine > 0 else 0.0)
            spans[idxs[n]] = span_busy
        return shares, spans

    @staticmethod
    def _other_share_around(points: dict[int, _SharePoint], cpu_share: dict[int, float | None],
                            cpu_span: dict[int, float], rows: list) -> tuple[float | None, float | None]:
        """Other processes' share for a window too short for /proc's ticks: 1 minus this
        process's share of each interval in it (over the span widened around that interval, as
        the attribution charged it), weighted by the interval's time inside the window. Returns
        (share, the least busy time of the spans used), or (None, None) when no interval has one."""
        t0, t1 = rows[0][0], rows[-1][0]
        lo, hi = rows[0][4], rows[-1][4] + 1
        total = weight = 0.0
        span = math.inf
        for k in sorted(cpu_share):
            v = cpu_share[k]
            if v is None or not (lo < k <= hi) or k - 1 not in points or k not in points:
                continue
            # the interval's time inside the window (a zero-length window: each interval counts once)
            w = min(points[k].t, t1) - max(points[k - 1].t, t0) if t1 > t0 else 1.0
            if w <= 0:
                continue
            total += v * w
            weight += w
            span = min(span, cpu_span.get(k, math.inf))
        if weight <= 0:
            return None, None
        return max(0.0, min(1.0, 1.0 - total / weight)), span

    def _check_sampling_rate(self, hub: _Hub) -> None:
        for c in hub.collectors:
            need = getattr(c, "max_read_interval_s", None)
            if need is None or getattr(c, "watched", False):
                continue
            rate = max(self.sample_hz, hub.sample_hz)
            if rate <= 0:
                what = "integrate its power" if getattr(c, "integrates_power", False) else "track counter wraps"
                msg = (f"{c.domain}: the sampler is off, so greenprof cannot {what} between marks "
                       f"more than {need:.3g} s apart; use sample_hz >= {1 / need:.2g}")
            elif 1.0 / rate > need:
                msg = (f"{c.domain}: a sampler period of {1 / rate:.3g} s could miss a counter "
                       f"wrap (reads needed every {need:.3g} s); use sample_hz >= {1 / need:.2g}")
            else:
                continue
            self._warn(msg)
            self._raised.add(msg)
            warnings.warn(msg, GreenprofWarning, stacklevel=4)

    def _take_idle_baseline(self, hub: _Hub) -> None:
        hz = max(self.sample_hz, 10.0)
        n = max(3, int(round(self.idle_s * hz)))
        step = self.idle_s / n
        busy_windows = len(hub.windows)
        window: list[tuple[float, list[float]]] = []

        def take() -> None:
            with hub.lock:
                t = hub.clock()
                window.append((t, hub._read_vals(hub.pollers)))

        take()
        t_next = window[0][0]
        for _ in range(n):
            t_next += step
            time.sleep(max(0.0, t_next - hub.clock()))
            take()
        for i, d in enumerate(hub.domains):
            powers = []
            for (ta, va), (tb, vb) in zip(window, window[1:]):
                if tb > ta and not (math.isnan(va[i]) or math.isnan(vb[i])) and i not in hub.lost:
                    powers.append((vb[i] - va[i]) / (tb - ta))
            if powers:
                import statistics  # here, not at import: it costs ~10 ms of a first start

                self._idle_power_w[d] = statistics.median(powers)
        self._idle_window_s = window[-1][0] - window[0][0]
        self._idle_samples = window
        if busy_windows or len(hub.windows):
            self._warn(f"the idle baseline was taken while {max(busy_windows, len(hub.windows))} other "
                       "measurement window(s) were open in this process: it may not be idle")

    # -- result ----------------------------------------------------------------------------
    @staticmethod
    def _interpolate_token_rows(rows: list, nd: int) -> list:
        """The rows with each ``decode`` row's counters and attributed totals interpolated in
        time between the rows before and after it (those were read)."""
        out = list(rows)
        for k, (t, label, vals, acc, point) in enumerate(rows):
            if vals is not None:
                continue
            ta, _, va, aa, _ = out[k - 1]
            tb, _, vb, ab, _ = rows[k + 1]
            f = (t - ta) / (tb - ta) if tb > ta else 1.0
            out[k] = (t, label, [va[i] + f * (vb[i] - va[i]) for i in range(nd)],
                      [aa[i] + f * (ab[i] - aa[i]) for i in range(nd)], point)
        return out

    def _build(self, status: str, hub: _Hub, hub_samples, points: dict[int, _SharePoint],
               lost: dict[str, str], lost_t: dict[str, float], uncertain: dict[str, str]) -> Measurement:
        doms = hub.domains
        nd = len(doms)
        rows = self._rows
        if self._row_tokens:
            rows = self._interpolate_token_rows(rows, nd)
        t0 = rows[0][0]
        idle = dict(self._idle_power_w)

        first_point = rows[0][4]
        machine = [hub.scopes[i] == "machine" for i in range(nd)]
        process = [hub.scopes[i] == "process" for i in range(nd)]  # counts this process only: share 1
        # the CPU-time apportioning is for machine-wide counters only
        cpu_share, cpu_span = self._cpu_shares(points, first_point) if hub.has_machine else ({}, {})

        # this process's share of each domain for the interval that ends at point k; None:
        # it could not be checked there (no /proc/stat, no NVML per-process figure)
        def p_of(k: int, i: int) -> float | None:
            if process[i]:
                return 1.0
            if machine[i]:
                return cpu_share.get(k)
            pt = points.get(k)
            return pt.p[i] if pt is not None else None

        # walk the rows: attributed energy between consecutive rows uses the share of the
        # interval they lie in (the one that ends at the next share point); where the share
        # is unknown the energy is charged whole, and how much of it that was is kept
        attributed_cum = [0.0] * nd
        unchecked_j = [0.0] * nd
        att_at: list[list[float]] = [attributed_cum[:]]
        for (ta, _la, _va, acc_a, pa), (tb, lb, _vb, acc_b, pb) in zip(rows, rows[1:]):
            k = pa + 1  # the share point that closes the interval holding (ta, tb]
            for i in range(nd):
                e = acc_b[i] - acc_a[i]
                p = p_of(k, i)
                if p is None:
                    unchecked_j[i] += e
                    p = 1.0
                attributed_cum[i] += e * p
            att_at.append(attributed_cum[:])

        marks = [(k, r) for k, r in enumerate(rows) if r[1] is not None]
        segments: list[Segment] = []
        row_tokens = self._row_tokens
        for (ka, (ta, _la, va, _aa, _pa)), (kb, (tb, lb, vb, _ab, _pb)) in zip(marks, marks[1:]):
            dur = tb - ta
            segments.append(Segment(
                lb, ta - t0, tb - t0,
                {doms[i]: vb[i] - va[i] for i in range(nd)},
                {d: w * dur for d, w in idle.items()},
                {doms[i]: att_at[kb][i] - att_at[ka][i] for i in range(nd)},
                row_tokens.get(kb),
            ))
        if len(segments) > 1 and segments[-1].label == "end" and segments[-1].duration_s == 0:
            segments.pop()
        first, last = rows[0][2], rows[-1][2]
        energy = {doms[i]: last[i] - first[i] for i in range(nd)}
        attributed = {doms[i]: att_at[-1][i] for i in range(nd)}

        # CPU-time view of the whole window (this process vs the machine)
        pt_first, pt_last = points.get(rows[0][4]), points.get(rows[-1][4])
        proc_s = busy_s = other = None
        other_around_s = None  # set when the share comes from the widened spans, not the window
        if pt_first is not None and pt_last is not None and pt_first.cpu is not None and pt_last.cpu is not None:
            ticks_s = pt_last.cpu.machine_busy_s - pt_first.cpu.machine_busy_s
            # this process's time from the nanosecond clock where both points have it: /proc's
            # count is in 10 ms ticks, and reads 0 for a request of a few milliseconds
            proc_s = pt_last.proc_s - pt_first.proc_s
            if proc_s != proc_s:
                proc_s = pt_last.cpu.process_s - pt_first.cpu.process_s
            # the machine was busy at least as long as this process: /proc/stat's ticks read 0
            # for a window of a few milliseconds, where the nanosecond clock has the process's
            busy_s = max(ticks_s, proc_s)
            if ticks_s >= SHARE_MIN_BUSY_S:
                # ticks undercount beside the nanosecond clock: this process's part is at most all
                other = 1.0 - proc_s / busy_s
            else:
                # too few ticks in the window to divide: the share the attribution used, over
                # the spans widened around the window's intervals, weighted by their time in it
                other, other_around_s = self._other_share_around(points, cpu_share, cpu_span, rows)
        share_notes: dict[str, str] = {}
        spans = [cpu_span[k] for k in cpu_span if first_point < k <= rows[-1][4]]
        if hub.has_machine and spans and min(spans) < SHARE_MIN_BUSY_S:
            for i in range(nd):
                if machine[i]:
                    share_notes[doms[i]] = (f"CPU share over a span with only {min(spans):.2g} s of busy CPU "
                                            "time (10 ms ticks): coarse")
        for k in sorted(points):
            if rows[0][4] < k <= rows[-1][4] + 1:
                for i, why in points[k].notes.items():
                    if why:
                        share_notes.setdefault(doms[i], why)
        for i in range(nd):
            # a device counter charged whole where its share could not be checked: that part
            # may be other processes' energy, so the domain is uncertain, never just "attributed"
            total = attributed_cum[i]
            if unchecked_j[i] > 0 and total > 0 and unchecked_j[i] >= UNCHECKED_SHARE_FLAG * total \
                    and doms[i] not in uncertain and doms[i] not in lost:
                note = share_notes.get(doms[i]) or "its share could not be checked"
                if machine[i] and not note.startswith("not shared-checked"):
                    note = "not shared-checked: " + (hub.cpu_reader.why_not or "no /proc/stat CPU times")
                uncertain[doms[i]] = (f"{unchecked_j[i] / total:.0%} of its energy was charged whole, as if "
                                      f"no other process used the device ({note})")
        scopes = dict(hub.scope_of)
        if other is not None and other > OTHER_LOAD_WARN:
            machine_doms = [d for d, s in scopes.items() if s == "machine"]
            if machine_doms:
                charged = math.fsum(attributed[d] for d in machine_doms)
                seen = math.fsum(energy[d] for d in machine_doms)
                part = f"{charged / seen:.0%}" if seen > 0 else f"{1 - other:.0%}"
                why = (f"their energy on {', '.join(machine_doms)} was apportioned by CPU time: this run "
                       f"is charged {part} of what the counters saw")
            elif any(s == "process" for s in scopes.values()):
                why = "the estimate counts only this process, but speed figures may be slowed by them"
            else:
                why = "speed figures may be slowed by them"
            if other_around_s is None:
                self._warn(f"other processes used {other:.0%} of the machine's busy CPU time during this "
                           f"window ({busy_s:.3g} s busy, {proc_s:.3g} s of it this process): {why}")
            else:
                self._warn(f"other processes used {other:.0%} of the machine's busy CPU time around this "
                           f"window (over {other_around_s:.3g} s of busy CPU time: the window's own "
                           f"{busy_s:.3g} s is too few 10 ms ticks to divide): {why}")
        if self._thread_shared:
            n = self._thread_shared
            self._warn(f"this window ran on one thread with up to {n} other split window{'s' if n != 1 else ''} "
                       "at once (asyncio tasks): a thread's CPU time is not known per task, so their energy "
                       "was split equally among them, not by the work each did")
        # a measured counter that did not move in the window has not resolved it (RAPL updates
        # about every millisecond, NVML's energy every ~100 ms): 0 J then is not a measurement
        dur = rows[-1][0] - t0
        if dur > 0:
            for d, e in energy.items():
                res = hub.resolutions.get(d)
                if e == 0 and res and hub.methods.get(d) == "measured" and d not in lost and d not in uncertain:
                    if dur < STILL_COUNTER_UPDATES * res:
                        uncertain[d] = (f"its counter did not update during this {dur * 1e3:.3g} ms window (it "
                                        f"updates about every {res * 1e3:.3g} ms): the 0 J it reads is below what "
                                        "it resolves; measure a longer window")
                    else:  # long enough that it should have moved many times: it may not count here
                        uncertain[d] = (f"its counter did not move in this {dur:.3g} s window although it updates "
                                        f"about every {res * 1e3:.3g} ms: it may not count on this machine (some "
                                        "platforms expose a DRAM or GPU counter that stays still); 0 J is not a "
                                        "measurement: leave the domain out with --collectors / collectors=")
        for d, still_s in self._stalls(rows, hub, energy, lost, uncertain).items():
            uncertain[d] = (f"its counter stood still for {still_s:.3g} s of this {dur:.3g} s window although it "
                            f"updates about every {hub.resolutions[d] * 1e3:.3g} ms and moved in the rest: a "
                            "counter that stalls undercounts (the energy of that time is missing)")
        for d, why in uncertain.items():
            self._warn(f"{d} uncertain: {why}")
        for d, why in lost.items():  # also a domain lost before this window registered
            if not any(w.startswith(f"{d} lost") for w in self._warnings):
                self._warn(f"{d} lost ({why}); its energy until then is kept and marked partial")

        samples: list[PowerSample] = []
        idle_w = self._idle_samples
        for series in (idle_w, hub_samples):
            for (ta, va), (tb, vb) in zip(series, series[1:]):
                if tb <= ta:
                    continue
                mid = 0.5 * (ta + tb) - t0
                for i in range(nd):
                    if doms[i] in lost_t and tb > lost_t[doms[i]]:
                        continue  # no power is known after the loss (not zero: unknown)
                    samples.append(PowerSample(mid, doms[i], (vb[i] - va[i]) / (tb - ta)))
        samples.sort(key=lambda s: s.t_s)
        return Measurement(
            duration_s=rows[-1][0] - t0,
            energy_j=energy,
            method=dict(hub.methods),
            segments=segments,
            idle_power_w=idle,
            lost=lost,
            samples=samples,
            status=status,
            idle_window_s=self._idle_window_s,
            sample_hz=max(self.sample_hz, 0.0),
            resolution_s=dict(hub.resolutions),
            sources=dict(hub.sources),
            warnings=list(self._warnings),
            start_clock_s=t0,
            attributed_energy_j=attributed,
            scope=scopes,
            uncertain=uncertain,
            share_notes=share_notes,
            process_cpu_s=proc_s,
            machine_busy_cpu_s=busy_s,
            other_cpu_share=other,
            concurrent_windows=self._overlaps,
            split=self.split,
        )
