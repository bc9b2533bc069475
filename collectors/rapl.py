"""Linux powercap (RAPL) energy counters.

The kernel exposes each RAPL domain as a powercap *zone*: a directory named
``<control-type>:<id>[:<sub-id>]`` (ids in hex, so ``intel-rapl:a`` is zone 10) holding

* ``name``: ``package-N``, ``dram``, ``core``, ``uncore``, ``psys``, ...
* ``energy_uj``: a cumulative counter in microjoules that wraps at ``max_energy_range_uj``;
* ``constraint_*_max_power_uw`` / ``constraint_*_power_limit_uw``: used here only to bound how
  fast the counter can move, hence how often it must be read to keep wrap tracking correct.

``/sys/class/powercap`` lists every zone flat as a symlink into
``/sys/devices/virtual/powercap/intel-rapl/...`` where subzones are nested in their package;
the scan below follows both layouts and dedupes by real path and by zone id.
AMD CPUs use the same ``intel-rapl`` naming. ``intel-rapl-mmio`` zones duplicate the MSR
``package-N`` zones on recent Intel client parts and are skipped when both exist.

What is summed by default: every ``package-N`` and every ``dram`` zone. Never ``psys`` (it covers
the whole platform, packages included) and never ``core``/``uncore`` (already inside their
package); those are still opened so the user can select them explicitly.

``energy_uj`` is root-only since Linux 5.10 (CVE-2020-8694, "Platypus"); that case turns into an
unavailable status naming the file and the fix, never an exception.

Wraps: a counter must be read at least once per lap (``range / max power``) for a wrap to be
seen, also while this interpreter is busy (a C call holding the GIL stops the meter's sampler
thread). So the collectors of one :func:`discover` share a small watcher process
(:mod:`greenprof.collectors.rapl_watch`), started at their first read and stopped when the last
of them closes, that reads every zone at a tenth of its lap and publishes its last raw value,
cumulative value and read time in shared memory. ``read_j`` stays one ``pread`` of our own file
descriptor, resolved against the watcher's latest record. When there is no usable record
(``GREENPROF_RAPL_WATCH=0``, the watcher could not start, died or was starved for a lap) the
collector tracks wraps in-process and, when a read comes more than a lap after the last one it
trusts, counts it in ``uncertain_count`` with a one-line ``uncertain_reason``: flagged, never
filled in silently.

Importing this module touches no file and starts nothing.
"""

from __future__ import annotations

import dataclasses
import errno
import mmap
import os
import re
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass

from greenprof.errors import SensorLost, SensorPermissionError, SensorUnavailable

from . import rapl_watch
from .base import CounterCollector, Discovery, SensorStatus, WrapTracker

__all__ = ["ENV_ROOT", "DEFAULT_ROOT", "ENV_WATCH", "RaplCollector", "discover"]

ENV_ROOT = "GREENPROF_POWERCAP_ROOT"
DEFAULT_ROOT = "/sys/class/powercap"
#: ``GREENPROF_RAPL_WATCH=0`` (or false/no/off): no watcher process; wraps are tracked by reads
#: in this process only (the meter's sampler), and reads that may have missed one are flagged.
ENV_WATCH = "GREENPROF_RAPL_WATCH"
SOURCE = "rapl"

#: Used when a zone advertises no power constraint at all (watts). Generous for any socket today.
FALLBACK_MAX_POWER_W = 500.0
#: RAPL counters update about every millisecond.
RESOLUTION_S = 0.001

# Test seams: tests monkeypatch these to simulate EACCES (root ignores chmod) or a vanished
# sensor. Looked up at call time on purpose.
_open = os.open
_pread = os.pread
_now_ns = time.monotonic_ns  # CLOCK_MONOTONIC: the watcher process reads the same clock

_O_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)

# "intel-rapl:0", "intel-rapl:0:1", "intel-rapl-mmio:0", "intel-rapl:a" (ids are hex).
_ZONE_RE = re.compile(r"^([a-z][a-z0-9-]*rapl[a-z0-9-]*)((?::[0-9a-f]+)+)$", re.IGNORECASE)
# Control-type directories ("intel-rapl", "intel-rapl-mmio") that hold nested zones.
_CONTROL_RE = re.compile(r"^[a-z][a-z0-9-]*rapl[a-z0-9-]*$", re.IGNORECASE)
_CONSTRAINT_RE = re.compile(r"^constraint_\d+_(max_power|power_limit)_uw$")
_MMIO_PREFIX = "intel-rapl-mmio"
_MAX_SCAN_DEPTH = 4  # control type / package / subzone, with room to spare

_WHY_PSYS = ("covers the whole platform including cpu-package-*: never summed with them; "
             "select it explicitly")
_FIX_MODULE = "try `sudo modprobe intel_rapl_common`"


def _permission_message(path: str) -> str:
    return (f"cannot read {path} (root-only since Linux 5.10, CVE-2020-8694): "
            f"run `sudo chmod o+r {path}`, or add a udev rule / `chgrp power` + `chmod g+r` "
            "(see README 'Giving greenprof access to RAPL')")


def _watch_enabled(watch: bool | None) -> bool:
    if watch is not None:
        return bool(watch)
    return os.environ.get(ENV_WATCH, "").strip().lower() not in ("0", "false", "no", "off")


def _secs(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _is_permission(exc: OSError) -> bool:
    return isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM)


def _read_attr(path: str) -> str:
    """The stripped text of a small sysfs attribute; OSError propagates."""
    with open(path, "rb") as f:
        return f.read(4096).decode("ascii", "replace").strip()


def _parse_uint(text: str | bytes, path: str) -> int:
    """A non-negative integer, or SensorUnavailable naming the file and what was wrong."""
    stripped = text.strip()
    if not stripped:
        raise SensorUnavailable(f"{path} is empty")
    try:
        value = int(stripped)
    except ValueError:
        shown = stripped.decode("ascii", "replace") if isinstance(stripped, bytes) else stripped
        raise SensorUnavailable(f"{path} holds {shown[:40]!r}, not an integer") from None
    if value < 0:
        raise SensorUnavailable(f"{path} holds a negative value ({value})")
    return value


def _max_power_w(zone_dir: str) -> float:
    """Upper bound on the zone's power, used to bound the read interval.

    Max of any ``constraint_*_max_power_uw`` > 0; else twice the largest
    ``constraint_*_power_limit_uw`` (limits can be exceeded briefly); else 500 W.
    Unreadable or malformed constraint files are ignored (dram zones often return ENODATA).
    """
    max_power = 0
    limit = 0
    try:
        entries = os.listdir(zone_dir)
    except OSError:
        entries = []
    for entry in entries:
        m = _CONSTRAINT_RE.match(entry)
        if m is None:
            continue
        try:
            value = int(_read_attr(os.path.join(zone_dir, entry)))
        except (OSError, ValueError):
            continue
        if m.group(1) == "max_power":
            max_power = max(max_power, value)
        else:
            limit = max(limit, value)
    if max_power > 0:
        return max_power / 1e6
    if limit > 0:
        return 2 * limit / 1e6
    return FALLBACK_MAX_POWER_W


class RaplCollector(CounterCollector):
    """Cumulative joules of one powercap zone since it was opened.

    ``energy_uj`` is opened once and read with ``os.pread`` (no open/close per read). Wraps are
    resolved against the shared watcher process's latest record when one is fresh (see the
    module docstring), else by :class:`~greenprof.collectors.base.WrapTracker` against
    ``max_energy_range_uj``. Raises :class:`SensorPermissionError` / :class:`SensorUnavailable`
    from the constructor when the zone cannot be used; :meth:`read_j` raises
    :class:`SensorLost` when a zone that worked stops working.

    What the meter reads besides ``read_j``:

    * ``scope = "machine"``: the counter sees the whole package (or DRAM, or platform), not
      this process;
    * ``uncertain_count`` / ``uncertain_reason``: how many reads may have missed a wrap (or may
      otherwise be wrong), and the latest reason, one line with numbers;
    * ``watched``: a live watcher process covers this zone, so wraps do not depend on the
      sampler's rate (``max_read_interval_s`` then only matters if the watcher dies);
    * ``wrap_s``: the shortest time the counter can take to go round (range / max power).
    """

    source = SOURCE
    method = "measured"
    scope = "machine"
    resolution_s = RESOLUTION_S

    def __init__(self, zone_dir: str | os.PathLike[str], domain: str) -> None:
        self.domain = domain
        self.zone_dir = os.fspath(zone_dir)
        self.path = os.path.join(self.zone_dir, "energy_uj")
        self._fd = -1
        self._watch: _RaplWatch | None = None
        self._slot = -1
        #: Why no watcher covers this zone, when none does (one line); None otherwise.
        self.watch_note: str | None = "no watcher process (not opened by discover())"

        try:
            fd = _open(self.path, _O_FLAGS)
        except FileNotFoundError:
            raise SensorUnavailable(f"no energy counter: {self.path} does not exist") from None
        except OSError as exc:
            if _is_permission(exc):
                raise SensorPermissionError(_permission_message(self.path)) from None
            raise SensorUnavailable(f"cannot open {self.path}: {exc.strerror or exc}") from None
        self._fd = fd
        try:
            try:
                t_first = _now_ns()
                first = _parse_uint(_pread(fd, 32, 0), self.path)
            except OSError as exc:
                if _is_permission(exc):
                    raise SensorPermissionError(_permission_message(self.path)) from None
                raise SensorUnavailable(f"cannot read {self.path}: {exc.strerror or exc}") from None

            range_path = os.path.join(self.zone_dir, "max_energy_range_uj")
            try:
                range_text = _read_attr(range_path)
            except FileNotFoundError:
                raise SensorUnavailable(
                    f"{range_path} is missing: wraps could not be corrected") from None
            except OSError as exc:
                raise SensorUnavailable(
                    f"cannot read {range_path}: {exc.strerror or exc}") from None
            range_uj = _parse_uint(range_text, range_path)
            if range_uj == 0:
                raise SensorUnavailable(f"{range_path} is 0: wraps could not be corrected")
            if first > range_uj:
                raise SensorUnavailable(
                    f"{self.path} reads {first}, above max_energy_range_uj {range_uj}")
        except BaseException:
            self.close()
            raise

        self.range_uj = range_uj
        self.max_power_w = _max_power_w(self.zone_dir)
        self.wrap_s = range_uj / 1e6 / self.max_power_w
        self._wrap_ns = int(self.wrap_s * 1e9)
        # WrapTracker tells a wrap from a stale racing read only if consecutive reads are less
        # than half the range apart, hence the factor 2.
        self.max_read_interval_s: float | None = self.wrap_s / 2
        self._tracker = WrapTracker(first, range_uj, wrap_time=self._wrap_ns, t=t_first)
        self._shift = 0  # whole ranges between the watcher's cumulative values and ours
        self._watch_missed = 0  # the watcher's count of its own late reads, as last seen
        self.uncertain_count = 0
        self.uncertain_reason: str | None = None

    # -- reading -------------------------------------------------------------------------------
    def read_j(self) -> float:
        # Hot path (called per generated token): one record copy from shared memory, one
        # pread, one int(), a little integer arithmetic.
        w = self._watch
        if w is None:
            t = _now_ns()
            return self._read_tracked(self._read_raw(), t, None)
        rec = w.record(self._slot)  # loaded before our pread: the watcher's read came first
        t = _now_ns()
        raw = self._read_raw()
        if rec is not None and t - rec[2] < self._wrap_ns:
            return self._resolve(rec, raw, t)
        # Too old: we may have lost the GIL between loading it and reading; once more.
        rec = w.record(self._slot)
        t = _now_ns()
        raw = self._read_raw()
        if rec is not None and t - rec[2] < self._wrap_ns:
            return self._resolve(rec, raw, t)
        return self._read_tracked(raw, t, rec)

    def _read_raw(self) -> int:
        try:
            raw = int(_pread(self._fd, 32, 0))
        except (OSError, ValueError) as exc:
            raise self._lost(exc) from None
        if raw < 0 or raw > self.range_uj:
            raise self._lost(f"read {raw}, outside 0..{self.range_uj}")
        return raw

    def _resolve(self, rec: tuple[int, int, int, int, int], raw: int, t: int) -> float:
        """Our read, taken less than a lap after the watcher's latest: exact, however long ago
        our own previous read was."""
        tracker = self._tracker
        if rec[3] != self._watch_missed:
            self._after_watcher_gap(rec)
        if tracker.last_t >= rec[2]:  # our own last read is the more recent one: count from it
            return tracker.update(raw, t) / 1e6
        unwrapped = rec[1] + (raw - rec[0]) % self.range_uj + self._shift
        tracker.sync(raw, unwrapped, t)
        return (unwrapped - tracker.origin) / 1e6

    def _advance(self, a: int, b: int, dt: int) -> int:
        """Counter advance from a read of ``a`` to a read of ``b`` taken ``dt`` ns later
        (negative: earlier), the two less than a lap apart."""
        if dt < 0:
            return -self._advance(b, a, -dt)
        d = (b - a) % self.range_uj
        if dt <= self._wrap_ns // 2 and d > self.range_uj // 2:
            d -= self.range_uj  # racing reads: b is in fact a hair older
        return d

    def _after_watcher_gap(self, rec: tuple[int, int, int, int, int]) -> None:
        """The watcher itself went more than a lap without a read (starved, stopped): its
        cumulative values may lack whole ranges from now on. Re-anchor them on our own reads
        when one of ours is within a lap of its latest; else flag."""
        self._watch_missed = rec[3]
        prev_raw, prev_unwrapped, t_prev = self._tracker.committed
        rec_raw, rec_cum, rec_t = rec[0], rec[1], rec[2]
        if t_prev is not None and abs(rec_t - t_prev) <= self._wrap_ns:
            own = prev_unwrapped + self._advance(prev_raw, rec_raw, rec_t - t_prev)
            self._shift = own - rec_cum  # a whole number of ranges
            return
        self._flag(f"{self.domain}: the RAPL watcher went {_secs(rec[4] / 1e9)} s without a "
                   f"counter read ({self._lap()}): a wrap may have been missed")
        behind = prev_unwrapped - (rec_cum + self._shift) - self.range_uj // 2
        if behind > 0:  # never step back behind a committed read
            self._shift += -(-behind // self.range_uj) * self.range_uj

    def _read_tracked(self, raw: int, t: int, rec) -> float:
        """In-process wrap tracking (no usable watcher record); flags a read that came more
        than a lap after the last one the tracker trusts."""
        tracker = self._tracker
        n = tracker.uncertain
        value = tracker.update(raw, t)
        if tracker.uncertain != n:
            gap = (tracker.last_gap or 0) / 1e9
            if rec is not None:
                why = f"; the watcher's last read was {_secs((t - rec[2]) / 1e9)} s old"
            elif self.watch_note:
                why = f"; {self.watch_note}"
            else:
                why = ""
            self._flag(f"{self.domain}: {_secs(gap)} s without a counter read "
                       f"({self._lap()}): a wrap may have been missed{why}")
        return value / 1e6

    def _seed(self) -> tuple[int, int, int] | None:
        """A fresh read for the watcher to start from: ``(raw, unwrapped, t)``."""
        if self._fd < 0:
            return None
        t = _now_ns()
        try:
            raw = self._read_raw()
        except SensorLost:
            return None  # our own next read says so
        self._read_tracked(raw, t, None)
        return self._tracker.committed  # type: ignore[return-value]

    def _lap(self) -> str:
        return f"wrap every {_secs(self.wrap_s)} s at {self.max_power_w:.3g} W max"

    def _flag(self, reason: str) -> None:
        self.uncertain_count += 1
        self.uncertain_reason = reason

    def _lost(self, why: object) -> SensorLost:
        if self._fd < 0:
            return SensorLost(f"RAPL {self.domain}: {self.path} was read after close()")
        if isinstance(why, ValueError):
            why = "the counter held no integer"
        elif isinstance(why, OSError):
            why = why.strerror or why
        return SensorLost(f"RAPL {self.domain}: reading {self.path} failed mid-run ({why})")

    @property
    def watched(self) -> bool:
        """True while a watcher process covers this zone (or will, from the first read)."""
        w = self._watch
        return w is not None and w.covers(self._slot, self._wrap_ns)

    @property
    def wraps(self) -> int:
        """How many counter wraps were corrected since open."""
        return self._tracker.wraps

    def close(self) -> None:
        w, self._watch = self._watch, None
        if w is not None:
            w.release(self._slot)
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class _RaplWatch:
    """One watcher process for the collectors of one :func:`discover`, shared by them: started
    at the first read of any of them (so discovering alone starts nothing), stopped when the
    last one closes, and never outliving this process (its stdin is our pipe; it also checks
    its parent id)."""

    def __init__(self, collectors: list[RaplCollector]) -> None:
        self._members = list(collectors)
        self._live = set(range(len(self._members)))
        self._cache: list[tuple[int, tuple[int, int, int, int, int]] | None] = [None] * len(
            self._members)
        self._lock = threading.Lock()
        self._buf: mmap.mmap | None = None
        self._proc: subprocess.Popen | None = None
        self._stop = None  # weakref.finalize stopping the process
        self.state = "pending"  # running | failed | stopped
        self.period_s = rapl_watch.poll_period_s([c.wrap_s for c in self._members])
        for slot, c in enumerate(self._members):
            c._watch, c._slot, c.watch_note = self, slot, None

    def record(self, slot: int) -> tuple[int, int, int, int, int] | None:
        """The zone's latest record, ``(raw, cum, t_ns, missed, gap_ns)``, or None."""
        buf = self._buf
        if buf is None:
            if self.state != "pending":
                return None
            self._start()
            buf = self._buf
            if buf is None:
                return None
        # The watcher writes a few times a second, marks come every few ms: most reads find
        # the sequence number unchanged and reuse the record they already validated.
        cached = self._cache[slot]
        if cached is not None and cached[0] == rapl_watch.read_seq(buf, slot):
            return cached[1]
        got = rapl_watch.read_record_seq(buf, slot)
        if got is None:
            return None
        self._cache[slot] = got
        return got[1]

    def covers(self, slot: int, wrap_ns: int) -> bool:
        if self.state == "pending":
            return True
        buf, proc = self._buf, self._proc
        if self.state != "running" or buf is None or proc is None or proc.poll() is not None:
            return False
        rec = rapl_watch.read_record(buf, slot)
        return rec is not None and _now_ns() - rec[2] < wrap_ns

    def _start(self) -> None:
        with self._lock:
            if self.state != "pending":
                return
            try:
                self._spawn()
                self.state = "running"
            except Exception as exc:  # no watcher: in-process tracking, flagged when it can't vouch
                self.state = "failed"
                note = f"no watcher process (it could not start: {type(exc).__name__}: {exc})"
                for c in self._members:
                    c.watch_note = note

    def _spawn(self) -> None:
        script = getattr(rapl_watch, "__file__", None)
        if not sys.executable or not script or not os.path.isfile(script):
            raise OSError("no Python executable or watcher script to run")
        size = rapl_watch.SLOT * len(self._members)
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("greenprof-rapl-watch")  # anonymous, close-on-exec
        else:  # pragma: no cover - Linux has memfd_create
            import tempfile

            with tempfile.TemporaryFile() as f:
                fd = os.dup(f.fileno())
        try:
            os.ftruncate(fd, size)
            buf = mmap.mmap(fd, size)
            args: list[str] = []
            for slot, c in enumerate(self._members):
                seed = c._seed() if slot in self._live else None
                if seed is not None:  # an unseeded slot fails its checksum: the watcher skips it
                    rapl_watch.write_record(buf, slot, 0, seed[0], seed[1], seed[2], 0, 0)
                args += [c.path, str(c.range_uj), str(c._wrap_ns)]
            proc = subprocess.Popen(
                [sys.executable, "-S", "-I", script, str(fd), repr(self.period_s),
                 str(os.getpid()), *args],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(fd,), cwd="/")
        finally:
            os.close(fd)
        self._buf, self._proc = buf, proc
        self._stop = weakref.finalize(self, _stop_watcher, proc, os.getpid())

    def release(self, slot: int) -> None:
        with self._lock:
            self._live.discard(slot)
            if self._live:
                return
            self.state = "stopped"
            self._buf = None  # not closed: a racing reader still holding it must not fault
            stop = self._stop
        if stop is not None:
            stop()


def _stop_watcher(proc: subprocess.Popen, owner_pid: int) -> None:
    if os.getpid() != owner_pid:  # a forked child: the watcher is its parent's to stop
        return
    try:
        if proc.stdin is not None:
            proc.stdin.close()  # end of file: the watcher exits at once
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except Exception:
        pass


# --------------------------------------------------------------------------------------------
# Discovery


@dataclass
class _Zone:
    prefix: str  # "intel-rapl" or "intel-rapl-mmio"
    ids: tuple[int, ...]  # (0,) for intel-rapl:0, (0, 2) for intel-rapl:0:2
    path: str  # as found (may be a symlink)
    dirname: str  # "intel-rapl:0:2"
    name: str | None = None  # content of the name file, None when unreadable
    name_error: str = ""

    @property
    def key(self) -> tuple[str, tuple[int, ...]]:
        return (self.prefix, self.ids)

    @property
    def is_mmio(self) -> bool:
        return self.prefix.lower() == _MMIO_PREFIX


def _scan(root: str) -> list[_Zone]:
    """Every zone under ``root``, flat or nested, once each (by real path and by zone id)."""
    seen_real: set[str] = set()
    zones: dict[tuple[str, tuple[int, ...]], _Zone] = {}
    queue: deque[tuple[str, int]] = deque([(root, 0)])
    while queue:
        directory, depth = queue.popleft()
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        for entry in entries:
            zone_match = _ZONE_RE.match(entry)
            if zone_match is None and _CONTROL_RE.match(entry) is None:
                continue  # "subsystem", "power", "device" ... (some are loops back to root)
            path = os.path.join(directory, entry)
            if not os.path.isdir(path):
                continue
            real = os.path.realpath(path)
            if real in seen_real:
                continue
            seen_real.add(real)
            if zone_match is not None:
                ids = tuple(int(part, 16) for part in zone_match.group(2)[1:].split(":"))
                key = (zone_match.group(1), ids)
                if key not in zones:  # a copy of a zone already seen at another path
                    zones[key] = _Zone(zone_match.group(1), ids, path, entry)
            if depth < _MAX_SCAN_DEPTH:
                queue.append((path, depth + 1))
    # MSR zones first, then mmio; by numeric id (so intel-rapl:a sorts after intel-rapl:9).
    return sorted(zones.values(), key=lambda z: (z.is_mmio, z.prefix, z.ids))


def _read_names(zones: list[_Zone]) -> None:
    for zone in zones:
        path = os.path.join(zone.path, "name")
        try:
            name = _read_attr(path)
        except FileNotFoundError:
            zone.name_error = f"{path} is missing"
            continue
        except OSError as exc:
            zone.name_error = f"cannot read {path}: {exc.strerror or exc}"
            continue
        if not name:
            zone.name_error = f"{path} is empty"
        else:
            zone.name = name


@dataclass
class _Plan:
    """How one zone is reported: its domain and, when available, whether it is summed."""

    zone: _Zone
    domain: str
    in_default_set: bool
    why_not: str = ""  # for available zones outside the default set
    error: str = ""  # set when the zone cannot be used at all, before opening it
    notes: list[str] | None = None


def _package_suffix(zone: _Zone | None, fallback_ids: tuple[int, ...]) -> str:
    """"0" for package-0 (also "0-die-1" for package-0-die-1); else the zone's own id."""
    if zone is not None and zone.name and zone.name.startswith("package-"):
        return zone.name[len("package-"):]
    return "-".join(str(i) for i in fallback_ids)


def _plan(zones: list[_Zone]) -> list[_Plan]:
    by_key = {z.key: z for z in zones}
    psys_total = sum(1 for z in zones if z.name == "psys" and not z.is_mmio)
    psys_seen = 0
    plans: list[_Plan] = []
    for zone in zones:
        parent = by_key.get((zone.prefix, zone.ids[:-1])) if len(zone.ids) > 1 else None
        n = _package_suffix(parent, zone.ids[:-1] if parent is not None else zone.ids)
        name = zone.name
        if name is None:
            plans.append(_Plan(zone, f"rapl-{zone.dirname}", False, error=zone.name_error))
            continue
        if name.startswith("package-"):
            plans.append(_Plan(zone, f"cpu-{name}", True))
        elif name == "dram":
            plans.append(_Plan(zone, f"dram-{n}", True))
        elif name in ("core", "uncore"):
            domain = f"cpu-core-{n}" if name == "core" else f"uncore-{n}"
            if parent is not None and parent.name and parent.name.startswith("package-"):
                owner = f"cpu-{parent.name}"
            else:
                owner = f"cpu-package-{n}"
            plans.append(_Plan(zone, domain, False,
                               why_not=f"sub-zone of {owner}: already counted in it"))
        elif name == "psys":
            if zone.is_mmio or psys_total <= 1:
                domain = "psys"
            else:
                domain = f"psys-{psys_seen}"
                psys_seen += 1
            plans.append(_Plan(zone, domain, False, why_not=_WHY_PSYS))
        else:
            domain = f"rapl-{name}" if parent is None else f"rapl-{name}-{n}"
            plans.append(_Plan(zone, domain, False,
                               why_not=f"unknown RAPL zone {name!r}: not in the default set; "
                                       "select it explicitly"))

    # intel-rapl-mmio:N duplicates the MSR zone of the same name: keep the MSR one.
    msr_by_domain = {p.domain: p for p in plans if not p.zone.is_mmio and not p.error}
    kept: list[_Plan] = []
    for plan in plans:
        twin = msr_by_domain.get(plan.domain) if plan.zone.is_mmio else None
        if twin is not None:
            twin.notes = (twin.notes or []) + [
                f"duplicate {plan.zone.dirname} ({plan.zone.name}) skipped"]
            continue
        kept.append(plan)

    # Two zones must never share a domain (that would hide one of them).
    used: set[str] = set()
    for plan in kept:
        if plan.domain in used:
            plan.domain = f"{plan.domain}@{plan.zone.dirname}"
        used.add(plan.domain)
    return kept


def _root_from(root: str | os.PathLike[str] | None) -> str:
    if root is not None:
        return os.fspath(root)
    return os.environ.get(ENV_ROOT) or DEFAULT_ROOT


def _missing(why_not: str) -> Discovery:
    return Discovery([SensorStatus(source=SOURCE, domain="cpu-package", method="measured",
                                   available=False, in_default_set=False, why_not=why_not)])


def discover(root: str | os.PathLike[str] | None = None, *, watch: bool | None = None) -> Discovery:
    """Every RAPL zone under ``root`` (else ``$GREENPROF_POWERCAP_ROOT``, else
    ``/sys/class/powercap``): a status per zone and an open collector per usable zone.

    ``watch``: share one watcher process among the collectors (started at their first read);
    default: yes unless ``GREENPROF_RAPL_WATCH=0``.

    Never raises for a missing, unreadable or malformed tree: those become statuses.
    """
    root_path = _root_from(root)
    if not os.path.isdir(root_path):
        return _missing(f"no powercap tree at {root_path} (not Linux, a VM, or the intel_rapl "
                        f"module is not loaded: {_FIX_MODULE})")
    zones = _scan(root_path)
    if not zones:
        return _missing(f"no RAPL zones under {root_path} (a VM, or the intel_rapl module is "
                        f"not loaded: {_FIX_MODULE})")
    _read_names(zones)

    found = Discovery()
    for plan in _plan(zones):
        zone = plan.zone
        detail = f"{zone.path} ({zone.name or '?'})"
        if plan.notes:
            detail += "; " + "; ".join(plan.notes)
        if plan.error:
            found.statuses.append(SensorStatus(SOURCE, plan.domain, "measured", False, False,
                                               detail=detail, why_not=plan.error))
            continue
        try:
            collector = RaplCollector(zone.path, plan.domain)
        except SensorUnavailable as exc:  # SensorPermissionError included
            found.statuses.append(SensorStatus(SOURCE, plan.domain, "measured", False, False,
                                               detail=detail, why_not=str(exc)))
            continue
        except Exception as exc:  # never crash discovery on one odd zone
            found.statuses.append(SensorStatus(
                SOURCE, plan.domain, "measured", False, False, detail=detail,
                why_not=f"unexpected error opening {zone.path}: {type(exc).__name__}: {exc}"))
            continue
        detail += (f"; wraps every {collector.range_uj / 1e6:.0f} J, read at least every "
                   f"{collector.max_read_interval_s:.3g} s")
        found.statuses.append(SensorStatus(SOURCE, plan.domain, "measured", True,
                                           plan.in_default_set, detail=detail,
                                           why_not=plan.why_not))
        found.collectors[plan.domain] = collector
    collectors = list(found.collectors.values())
    if not collectors:
        return found
    if _watch_enabled(watch):
        period = _RaplWatch(collectors).period_s  # type: ignore[arg-type]
        how = f"by a watcher process every {period * 1e3:.3g} ms"
    else:
        how = f"by this process only ({ENV_WATCH}=0)"
        for c in collectors:
            c.watch_note = f"no watcher process ({ENV_WATCH}=0)"  # type: ignore[attr-defined]
    found.statuses = [dataclasses.replace(s, detail=f"{s.detail} ({how})")
                      if s.available and s.domain in found.collectors else s
                      for s in found.statuses]
    return found
