"""Energy sources, one file each: RAPL (powercap), NVML, the CPU-time estimate, replayed traces.

Every source module has ``discover(...) -> Discovery``; this module merges them and picks the
default set. Nothing here touches hardware at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .base import Collector, Discovery

#: Domains that measure the CPU package; when any is available the estimate is not needed.
_MEASURED_CPU_PREFIXES = ("cpu-package-", "psys")


def discover_all(*, powercap_root: str | None = None, nvml=None, env=None) -> "Discovery":
    """Ask every source what it has. The caller must ``close()`` what it does not keep."""
    from . import cpu_estimate, nvml as nvml_mod, rapl, replay
    from .base import Discovery, SensorStatus

    found = Discovery()
    found.extend(rapl.discover(powercap_root))
    found.extend(nvml_mod.discover(nvml))
    est = cpu_estimate.discover(env)
    measured_cpu = any(
        s.available and s.in_default_set and s.domain.startswith(_MEASURED_CPU_PREFIXES)
        for s in found.statuses
    )
    if measured_cpu:
        # RAPL measures the CPU: the estimate stays available but is not summed with it.
        est.statuses = [
            SensorStatus(**{**s.__dict__, "in_default_set": False,
                            "why_not": "RAPL measures the CPU here; the estimate is not needed"})
            for s in est.statuses
        ]
    found.extend(est)
    found.extend(replay.discover(env))
    return found


def select(spec: "str | Sequence[str | Collector]" = "auto", **discover_kwargs) -> "list[Collector]":
    """Resolve a collectors spec into opened collectors.

    ``"auto"``: every measured source available here (RAPL packages + DRAM, every visible GPU),
    and the CPU-time estimate when RAPL cannot measure the CPU. A list may mix domain names
    (``"cpu-package-0"``, ``"psys"``, ``"cpu-estimate"``) and ready collector objects.
    """
    from greenprof.errors import UsageError

    if isinstance(spec, str) and spec != "auto":
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    if spec == "auto":
        found = discover_all(**discover_kwargs)
        chosen = found.default_set()
        found.close(keep=chosen)
        return chosen
    objects = [c for c in spec if not isinstance(c, str)]
    names = [c for c in spec if isinstance(c, str)]
    if not names:
        return list(objects)
    found = discover_all(**discover_kwargs)
    by_domain = found.collectors
    missing = [n for n in names if n not in by_domain]
    if missing:
        found.close()
        reasons = {s.domain: s.why_not for s in found.statuses}

        def why(name: str) -> str:
            # "gpu-0" falls back to the source-wide line ("gpu": NVML not found, ...)
            return reasons.get(name) or reasons.get(name.rsplit("-", 1)[0]) or "unknown domain"

        detail = "; ".join(f"{n}: {why(n)}" for n in missing)
        known = ", ".join(sorted(by_domain)) or "none"
        raise UsageError(f"cannot use {detail} (available here: {known}; see `greenprof sensors`)")
    chosen = [by_domain[n] for n in names]
    found.close(keep=chosen)
    return chosen + objects


def check_overlaps(collectors: "Iterable[Collector]") -> str | None:
    """A one-line complaint when a set would count the same joules twice, else None."""
    domains = {c.domain for c in collectors}
    if "psys" in domains and any(d.startswith("cpu-package-") for d in domains):
        return "psys already includes the CPU packages: choose psys or cpu-package-*, not both"
    for d in domains:
        if d.startswith(("cpu-core-", "uncore-")):
            n = d.rsplit("-", 1)[-1]
            if f"cpu-package-{n}" in domains:
                return f"{d} is part of cpu-package-{n}: choose one, not both"
    has_rapl_cpu = any(d.startswith(_MEASURED_CPU_PREFIXES) for d in domains)
    if has_rapl_cpu and "cpu-estimate" in domains:
        return "cpu-estimate would count the CPU a second time beside RAPL: choose one"
    return None
