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

Importing this module touches no file.
"""

from __future__ import annotations

import errno
import os
import re
from collections import deque
from dataclasses import dataclass

from greenprof.errors import SensorLost, SensorPermissionError, SensorUnavailable

from .base import CounterCollector, Discovery, SensorStatus, WrapTracker

__all__ = ["ENV_ROOT", "DEFAULT_ROOT", "RaplCollector", "discover"]

ENV_ROOT = "GREENPROF_POWERCAP_ROOT"
DEFAULT_ROOT = "/sys/class/powercap"
SOURCE = "rapl"

#: Used when a zone advertises no power constraint at all (watts). Generous for any socket today.
FALLBACK_MAX_POWER_W = 500.0
#: RAPL counters update about every millisecond.
RESOLUTION_S = 0.001

# Test seams: tests monkeypatch these to simulate EACCES (root ignores chmod) or a vanished
# sensor. Looked up at call time on purpose.
_open = os.open
_pread = os.pread

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

    ``energy_uj`` is opened once and read with ``os.pread`` (no open/close per read); wraps are
    corrected by :class:`~greenprof.collectors.base.WrapTracker` against
    ``max_energy_range_uj``. Raises :class:`SensorPermissionError` / :class:`SensorUnavailable`
    from the constructor when the zone cannot be used; :meth:`read_j` raises
    :class:`SensorLost` when a zone that worked stops working.
    """

    source = SOURCE
    method = "measured"
    resolution_s = RESOLUTION_S

    def __init__(self, zone_dir: str | os.PathLike[str], domain: str) -> None:
        self.domain = domain
        self.zone_dir = os.fspath(zone_dir)
        self.path = os.path.join(self.zone_dir, "energy_uj")
        self._fd = -1

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
        # WrapTracker tells a wrap from a stale racing read only if consecutive reads are less
        # than half the range apart, hence the factor 2.
        self.max_read_interval_s: float | None = range_uj / 1e6 / self.max_power_w / 2
        self._tracker = WrapTracker(first, range_uj)

    def read_j(self) -> float:
        # Hot path (called per generated token): one pread, one int(), one tracker update.
        try:
            raw = int(_pread(self._fd, 32, 0))
        except (OSError, ValueError) as exc:
            raise self._lost(exc) from None
        if raw < 0 or raw > self.range_uj:
            raise self._lost(f"read {raw}, outside 0..{self.range_uj}")
        return self._tracker.update(raw) / 1e6

    def _lost(self, why: object) -> SensorLost:
        if self._fd < 0:
            return SensorLost(f"RAPL {self.domain}: {self.path} was read after close()")
        if isinstance(why, ValueError):
            why = "the counter held no integer"
        elif isinstance(why, OSError):
            why = why.strerror or why
        return SensorLost(f"RAPL {self.domain}: reading {self.path} failed mid-run ({why})")

    @property
    def wraps(self) -> int:
        """How many counter wraps were corrected since open."""
        return self._tracker.wraps

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
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


def discover(root: str | os.PathLike[str] | None = None) -> Discovery:
    """Every RAPL zone under ``root`` (else ``$GREENPROF_POWERCAP_ROOT``, else
    ``/sys/class/powercap``): a status per zone and an open collector per usable zone.

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
    return found
