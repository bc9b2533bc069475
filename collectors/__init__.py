"""Energy sources, one file each: RAPL (powercap), NVML, the CPU-time estimate, replayed traces.

Every source module has ``discover(...) -> Discovery``; this module merges them and picks the
default set. Nothing here touches hardware at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .base import Collector, Discovery, SensorStatus

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
            # "replay:cpu" falls back to the replay source's line ("replay:*": a trace that cannot be read)
            return (reasons.get(name) or reasons.get(name.rsplit("-", 1)[0])
                    or (reasons.get(name.split(":", 1)[0] + ":*") if ":" in name else None) or "unknown domain")

        detail = "; ".join(f"{n}: {why(n)}" for n in missing)
        known = ", ".join(sorted(by_domain)) or "none"
        raise UsageError(f"cannot use {detail} (available here: {known}; see `greenprof sensors`)")
    chosen = [by_domain[n] for n in names]
    found.close(keep=chosen)
    return chosen + objects


def check_overlaps(collectors: "Iterable[Collector]") -> str | None:
    """A one-line complaint when a set would count the same joules twice, else None."""
    domains = {c.domain for c in collectors}
    if "psys" in domains:
        inside = sorted(d for d in domains if d.startswith(("cpu-package-", "cpu-core-", "uncore-", "dram-")))
        if inside:  # the platform domain: the SoC and what hangs off it, memory included
            return (f"psys (the whole platform) already includes {', '.join(inside)}: choose psys or the "
                    "other RAPL domains, not both")
    for d in domains:
        if d.startswith(("cpu-core-", "uncore-")):
            n = d.rsplit("-", 1)[-1]
            if f"cpu-package-{n}" in domains:
                return f"{d} is part of cpu-package-{n}: choose one, not both"
    has_rapl_cpu = any(d.startswith(_MEASURED_CPU_PREFIXES) for d in domains)
    if has_rapl_cpu and "cpu-estimate" in domains:
        return "cpu-estimate would count the CPU a second time beside RAPL: choose one"
    return None


# -------------------------------------------------------------------------------------------
# Which domains a run on a device is charged

#: The CPU-side domains of the default set: RAPL packages and DRAM, psys, or the estimate.
_CPU_DOMAIN_PREFIXES = ("cpu-package-", "dram-", "psys")
_CPU_ESTIMATE = "cpu-estimate"

#: Device spellings accepted besides "cpu", "cuda" and "cuda:N": onnxruntime provider names.
_DEVICE_ALIASES = {
    "cpuexecutionprovider": "cpu",
    "cudaexecutionprovider": "cuda",
    "tensorrtexecutionprovider": "cuda",  # runs on the CUDA device_id it is given
}


def _is_cpu_domain(domain: str) -> bool:
    return domain.startswith(_CPU_DOMAIN_PREFIXES) or domain == _CPU_ESTIMATE


def _parse_device(device: str, device_id: int = 0) -> tuple[str, int]:
    """("cpu" | "cuda", device_id) from "cpu", "cuda", "cuda:1" or an onnxruntime provider name."""
    from greenprof.errors import UsageError

    text = str(device).strip()
    kind, sep, suffix = text.partition(":")
    kind = _DEVICE_ALIASES.get(kind.lower(), kind.lower())
    if kind not in ("cpu", "cuda"):
        raise UsageError(f"device {device!r}: greenprof picks domains for 'cpu' and 'cuda' runs; "
                         "for another device choose collectors explicitly (collectors=[...] / "
                         "--collectors)")
    if sep:
        if kind != "cuda" or not suffix.strip().isdigit():
            raise UsageError(f"device {device!r}: write 'cpu', 'cuda' or 'cuda:<device_id>', "
                             "e.g. 'cuda:0'")
        n = int(suffix)
        if device_id not in (0, n):
            raise UsageError(f"device {device!r} and device_id={device_id} disagree: give one")
        device_id = n
    return kind, device_id


def gpu_domain_for_cuda_device(device_id: int, env: Mapping[str, str] | None = None, *,
                               nvml=None) -> str:
    """The domain discovery gives the GPU that CUDA ``device_id`` names (onnxruntime's CUDA
    ``device_id`` indexes the GPUs ``CUDA_VISIBLE_DEVICES`` in ``env``, default ``os.environ``,
    exposes): ``CUDA_VISIBLE_DEVICES=1`` makes device 0 ``"gpu-1"``. UUID entries are matched by
    UUID, like discovery. ``nvml``: a pynvml-like module (tests pass a shim).

    Raises :class:`~greenprof.errors.UsageError` with one actionable line when it cannot be
    mapped (no such device, all GPUs hidden, NVML unavailable, ambiguous device order).
    """
    from .nvml import cuda_device_domain

    return cuda_device_domain(device_id, nvml=nvml, env=env)


def domains_for_device(device: str, statuses: "Iterable[SensorStatus]",
                       gpu_domain: str | None = None) -> list[str]:
    """The domains a run on ``device`` is charged, from discovery's statuses, in their order.

    ``"cpu"``: the CPU-side domains of the default set (RAPL ``cpu-package-*`` and ``dram-*``;
    ``psys`` only if the default set holds it; else ``cpu-estimate``) and never a GPU, so a GPU
    host running a CPU model is not charged its idle GPUs. ``"cuda"``: ``gpu_domain`` (the run's
    own GPU, from :func:`gpu_domain_for_cuda_device`) plus those CPU domains, the host CPU that
    drives it; other GPUs are not charged.

    Raises :class:`~greenprof.errors.SensorUnavailable` when the run's GPU (or any CPU source)
    cannot be measured, :class:`~greenprof.errors.UsageError` for a device it does not know.
    """
    from greenprof.errors import SensorUnavailable, UsageError

    kind, _ = _parse_device(device)
    statuses = list(statuses)
    cpu = [s.domain for s in statuses
           if s.available and s.in_default_set and _is_cpu_domain(s.domain)]
    if not cpu:
        raise SensorUnavailable("no CPU energy source is available (neither RAPL nor the CPU "
                                "estimate): see `greenprof sensors`")
    wanted = set(cpu)
    if kind == "cuda":
        if gpu_domain is None:
            raise UsageError("a CUDA run needs its GPU's domain: map its device_id with "
                             "gpu_domain_for_cuda_device()")
        gpu = [s for s in statuses if s.domain == gpu_domain]
        if not gpu or not gpu[0].available:
            if gpu:
                why = gpu[0].why_not
            else:  # the source-wide line: "gpu": NVML not found, no GPU, ...
                why = next((s.why_not for s in statuses if s.domain == "gpu"),
                           "discovery found no such GPU")
            raise SensorUnavailable(
                f"the CUDA run's GPU {gpu_domain} cannot be measured: {why} (to measure only "
                "the CPU, choose collectors explicitly: collectors=[...] / --collectors)")
        wanted.add(gpu_domain)
    return list(dict.fromkeys(s.domain for s in statuses if s.domain in wanted and s.available))


def select_for_device(device: str = "cpu", device_id: int = 0,
                      **discover_kwargs) -> "list[Collector]":
    """Open the collectors a run on ``device`` is charged (:func:`domains_for_device`) and
    close the rest: the collectors spec for a measurement when the user gave none.

    ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:<id>"`` or an onnxruntime provider name;
    ``device_id``: the CUDA device id (onnxruntime's ``device_id``). ``discover_kwargs`` go to
    :func:`discover_all` (``powercap_root``, ``nvml``, ``env``). The GPU is mapped with
    ``os.environ``'s ``CUDA_VISIBLE_DEVICES``, the one NVML discovery reads, and before
    discovery opens anything, so a mapping error leaves nothing open.
    """
    kind, device_id = _parse_device(device, device_id)
    gpu_domain = None
    if kind == "cuda":
        gpu_domain = gpu_domain_for_cuda_device(device_id, nvml=discover_kwargs.get("nvml"))
    found = discover_all(**discover_kwargs)
    try:
        names = domains_for_device(kind, found.statuses, gpu_domain)
    except BaseException:
        found.close()
        raise
    chosen = [found.collectors[n] for n in names if n in found.collectors]
    found.close(keep=chosen)
    return chosen
