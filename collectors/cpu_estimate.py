"""CPU energy estimate where no sensor exists: this process's CPU time x power per busy thread.

    energy_j = cpu_time_s(this process, all its threads) x tdp_w / threads_per_package

The TDP comes from CodeCarbon's CPU table (``codecarbon/data/hardware/cpu_power.csv``), read
from CodeCarbon's installed package data at run time: the table is not copied here, and the
codecarbon package itself is never imported (its ``__init__`` pulls in pandas and friends).
``GREENPROF_CPU_TDP_W`` overrides the TDP. An unknown CPU gets CodeCarbon's own documented
default of 4 W per thread (``DEFAULT_POWER_PER_CORE`` in codecarbon/core/cpu.py), and the reason
line says so.

CPU time is read with ``time.process_time()`` (CLOCK_PROCESS_CPUTIME_ID: nanosecond resolution,
one syscall) rather than ``psutil.Process().cpu_times()``, which on Linux is parsed from
/proc/self/stat in 10 ms clock ticks and so cannot resolve a 5 ms token. psutil is still used to
count threads when /proc/cpuinfo does not say.

Always ``estimated``: this counts only the energy of the CPU time this process used, at an
average per-thread share of the package TDP. It knows nothing of idle power, other processes,
turbo, or memory.
"""

from __future__ import annotations

import csv
import os
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from greenprof.errors import ConfigError

from .base import CounterCollector, Discovery, SensorStatus

#: CodeCarbon's fallback for an unknown CPU model (W per thread), codecarbon/core/cpu.py.
DEFAULT_W_PER_THREAD = 4.0
DOMAIN = "cpu-estimate"


@dataclass(frozen=True)
class CpuPowerModel:
    cpu_model: str
    tdp_w: float | None  # None when unknown
    threads: int
    w_per_thread: float
    basis: str  # one line: where the figure comes from


def cpu_model_name(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The CPU model string as the OS reports it ("" when unknown)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    import platform

    return platform.processor() or ""


def threads_per_package(cpuinfo_path: str = "/proc/cpuinfo") -> int:
    """Hardware threads sharing one package's TDP, as this OS sees them.

    /proc/cpuinfo's ``siblings`` is threads per physical package; in a VM it is the VM's view.
    """
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "siblings":
                    n = int(value.strip())
                    if n > 0:
                        return n
    except (OSError, ValueError):
        pass
    import psutil

    return psutil.cpu_count(logical=True) or 1


def codecarbon_cpu_table() -> Path | None:
    """Path of CodeCarbon's installed CPU TDP table, found without importing codecarbon."""
    from importlib import metadata

    try:
        dist = metadata.distribution("codecarbon")
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == "cpu_power.csv" and "hardware" in f.parts:
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                return p
    return None


def _normalise(name: str) -> str:
    name = name.replace("(R)", "").replace("(TM)", "").replace("(tm)", "")
    name = re.sub(r"\s+@\s*[\d.]+\s*GHz", "", name, flags=re.I)
    name = re.sub(r"\b(CPU|Processor)\b", "", name, flags=re.I)
    name = re.sub(r"\b\d+-Core\b", "", name, flags=re.I)
    return " ".join(name.lower().split())


@lru_cache(maxsize=4)
def _table_rows(table: Path) -> tuple[tuple[str, str, frozenset[str], float], ...]:
    """CodeCarbon's table, parsed and normalised once per process: (name, norm, tokens, TDP)."""
    rows = []
    with open(table, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                name, tdp = row["Name"], float(row["TDP"])
            except (KeyError, TypeError, ValueError):
                continue
            norm = _normalise(name)
            rows.append((name, norm, frozenset(norm.split()), tdp))
    return tuple(rows)


@lru_cache(maxsize=16)
def lookup_tdp(cpu_model: str, table: Path) -> tuple[str, float] | None:
    """Match a CPU model string against CodeCarbon's table.

    Exact match on the normalised name first; then the longest table name whose tokens all
    appear in the model string (e.g. "Intel Xeon Gold 6248" inside "Intel(R) Xeon(R) Gold 6248
    CPU @ 2.50GHz"). Returns (table name, TDP W) or None.
    """
    want = _normalise(cpu_model)
    if not want:
        return None
    want_tokens = set(want.split())
    best: tuple[int, str, float] | None = None
    for name, norm, tokens, tdp in _table_rows(table):
        if norm == want:
            return name, tdp
        # a model number must be among the tokens, so "AMD EPYC" never matches "AMD EPYC 7763"
        if len(tokens) >= 2 and any(any(ch.isdigit() for ch in t) for t in tokens):
            if tokens <= want_tokens and (best is None or len(norm) > best[0]):
                best = (len(norm), name, tdp)
    return (best[1], best[2]) if best else None


def power_model(env: dict[str, str] | None = None) -> CpuPowerModel:
    env = os.environ if env is None else env
    model = cpu_model_name()
    threads = threads_per_package()
    override = env.get("GREENPROF_CPU_TDP_W")
    if override not in (None, ""):
        try:
            tdp = float(override)
        except ValueError:
            tdp = -1.0
        if not tdp > 0:
            raise ConfigError(
                f"GREENPROF_CPU_TDP_W={override!r} is not a positive number of watts: "
                "set it to your CPU's TDP, e.g. GREENPROF_CPU_TDP_W=65, or unset it"
            )
        return CpuPowerModel(model, tdp, threads, tdp / threads,
                             f"TDP {tdp:g} W from GREENPROF_CPU_TDP_W / {threads} threads")
    table = codecarbon_cpu_table()
    hit = lookup_tdp(model, table) if table else None
    if hit:
        name, tdp = hit
        return CpuPowerModel(model, tdp, threads, tdp / threads,
                             f"TDP {tdp:g} W ({name!r} in CodeCarbon's CPU table) / {threads} threads")
    where = "CodeCarbon's CPU table" if table else "CodeCarbon's CPU table (codecarbon not installed)"
    return CpuPowerModel(
        model, None, threads, DEFAULT_W_PER_THREAD,
        f"CPU {model or 'unknown'!r} not in {where}: default {DEFAULT_W_PER_THREAD:g} W per busy "
        "thread (CodeCarbon's default); set GREENPROF_CPU_TDP_W to your TDP for a better estimate",
    )


class CpuEstimateCollector(CounterCollector):
    """Cumulative estimated joules of this process's CPU time."""

    source = "cpu-estimate"
    method = "estimated"
    domain = DOMAIN
    resolution_s = None

    def __init__(self, model: CpuPowerModel, clock=time.process_time) -> None:
        self.model = model
        self._w = model.w_per_thread
        self._clock = clock
        self._t0 = clock()

    def read_j(self) -> float:
        return (self._clock() - self._t0) * self._w


def discover(env: dict[str, str] | None = None) -> Discovery:
    pm = power_model(env)
    status = SensorStatus(
        source="cpu-estimate", domain=DOMAIN, method="estimated", available=True,
        in_default_set=True, detail=f"this process's CPU time x {pm.w_per_thread:.3g} W/thread; {pm.basis}",
    )
    return Discovery([status], {DOMAIN: CpuEstimateCollector(pm)})
