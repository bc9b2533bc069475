"""CPU energy estimate where no sensor exists: this process's CPU time x power per busy thread.

    energy_j = cpu_time_s(this process, all its threads) x w_per_busy_thread

where ``w_per_busy_thread`` depends on where we run:

* **bare metal**: ``tdp_w / threads_per_package``. The TDP comes from CodeCarbon's CPU table
  (``codecarbon/data/hardware/cpu_power.csv``), read from CodeCarbon's installed package data at
  run time: the table is not copied here, and the codecarbon package itself is never imported
  (its ``__init__`` pulls in pandas and friends). An unknown CPU gets CodeCarbon's own documented
  default of 4 W per thread (``DEFAULT_POWER_PER_CORE`` in codecarbon/core/cpu.py). The lookup's
  answer is cached per CPU model string in ``~/.cache/greenprof/cpu-tdp.json`` (keyed by the
  table file and CodeCarbon's version), so only the first process on a machine reads the table.
* **a VM**: Cloud Carbon Footprint's published max watts per vCPU for the CPU's
  microarchitecture (:data:`CCF_W_PER_VCPU`). A VM's /proc/cpuinfo ``siblings`` is its own vCPU
  count, so the host package's TDP over it would charge a 2-vCPU VM half of a 96-thread host's
  TDP per busy vCPU: 25-50x too much. An unknown microarchitecture gets CCF's average for the
  cloud provider (from DMI) or, failing that, :data:`CCF_OVERALL_AVERAGE`.

Virtualisation is read from the ``hypervisor`` CPU flag, DMI (``/sys/class/dmi/id``) and
``/sys/hypervisor/type``; ``GREENPROF_VIRT=vm|bare-metal`` overrides it. The paths are module
constants (:data:`CPUINFO_PATH`, :data:`DMI_DIR`, :data:`HYPERVISOR_TYPE_PATH`) and parameters
of :func:`power_model`, so tests point them at fakes. ``GREENPROF_CPU_TDP_W`` overrides the TDP
(then ``tdp / threads`` on either platform). The basis line says which case applied.

CPU time is read with ``time.process_time()`` (CLOCK_PROCESS_CPUTIME_ID: nanosecond resolution,
one syscall) rather than ``psutil.Process().cpu_times()``, which on Linux is parsed from
/proc/self/stat in 10 ms clock ticks and so cannot resolve a 5 ms token. psutil is still used to
count threads when /proc/cpuinfo does not say.

Always ``estimated``: this counts only the energy of the CPU time this process used, at a
per-busy-thread figure. It knows nothing of idle power, other processes, turbo, or memory.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from greenprof.errors import ConfigError

from .base import CounterCollector, Discovery, SensorStatus

#: CodeCarbon's fallback for an unknown CPU model (W per thread), codecarbon/core/cpu.py.
DEFAULT_W_PER_THREAD = 4.0
DOMAIN = "cpu-estimate"

#: Where the OS describes the CPU and the machine. Module-level so tests can point them at fakes.
CPUINFO_PATH = "/proc/cpuinfo"
DMI_DIR = "/sys/class/dmi/id"
HYPERVISOR_TYPE_PATH = "/sys/hypervisor/type"

#: Where the TDP lookup's answers are cached, per CPU model string and CodeCarbon table (None:
#: ``$XDG_CACHE_HOME/greenprof/cpu-tdp.json``, ``~/.cache/greenprof/cpu-tdp.json`` when unset).
#: Module-level so tests can point it elsewhere.
TDP_CACHE_PATH: str | None = None
_TDP_CACHE_FORMAT = 1
_TDP_CACHE_MAX_ENTRIES = 32

#: ``GREENPROF_VIRT``: force the platform when detection is wrong.
VIRT_ENV = "GREENPROF_VIRT"
VM, BARE_METAL = "vm", "bare-metal"

# -- Cloud Carbon Footprint's per-vCPU power model ---------------------------------------------
# Facts from Cloud Carbon Footprint (CCF), github.com/cloud-carbon-footprint/cloud-carbon-footprint:
# watts per vCPU at 0% (min) and 100% (max) CPU utilisation by microarchitecture, derived by CCF
# from SPECpower_ssj2008 results. Coefficients as of 2022/2023 (CCF's MIN/MAX_WATTS_BY_COMPUTE_
# PROCESSOR in packages/{aws,gcp,azure}/src/domain/*FootprintEstimationConstants.ts, last changed
# 2022-06 .. 2023-05 and unchanged on trunk in 2024; methodology: microsite/docs/HowItWorks/
# Methodology.md). CCF has no figures for Ice Lake or later Intel, EPYC 4th Gen or later, or
# Graviton3+; those fall back to the averages below.
#: microarchitecture -> (min W per vCPU, max W per vCPU)
CCF_W_PER_VCPU: dict[str, tuple[float, float]] = {
    "Sandy Bridge": (2.17, 8.58),
    "Ivy Bridge": (3.04, 8.25),
    "Haswell": (1.00, 4.74),
    "Broadwell": (0.71, 3.69),
    "Skylake": (0.65, 4.26),
    "Cascade Lake": (0.64, 3.97),
    "Coffee Lake": (1.14, 5.42),
    "AMD EPYC 1st Gen (Naples)": (0.82, 2.55),
    "AMD EPYC 2nd Gen (Rome)": (0.47, 1.69),
    "AMD EPYC 3rd Gen (Milan)": (0.45, 2.02),
    # CCF has no measured Graviton figures and applies AMD EPYC 2nd Gen's, its lowest (Methodology,
    # "Note on AWS Graviton 2 Processor").
    "AWS Graviton (Arm Cortex-A72)": (0.47, 1.69),
    "AWS Graviton2 / Arm Neoverse N1": (0.47, 1.69),
}
#: CCF's figure across the microarchitectures each provider uses, for an unknown one (Methodology,
#: "Appendix I: Energy Coefficients", 2022/2023; CCF's code constants differ slightly for GCP,
#: 0.68/4.11, and Azure, 0.74/3.54): provider -> (label, min W per vCPU, max W per vCPU).
CCF_PROVIDER_AVERAGE: dict[str, tuple[str, float, float]] = {
    "aws": ("CCF's AWS average", 0.74, 3.5),
    "gcp": ("CCF's GCP median", 0.71, 4.26),
    "azure": ("CCF's Azure average", 0.78, 3.76),
}
#: greenprof's documented default for a VM whose microarchitecture and provider are both unknown:
#: the mean of CCF's three provider figures above, (min, max) W per vCPU.
CCF_OVERALL_AVERAGE: tuple[float, float] = (0.74, 3.84)
_CCF = "Cloud Carbon Footprint coefficients 2022/2023"


@dataclass(frozen=True)
class CpuPowerModel:
    cpu_model: str
    tdp_w: float | None  # the package TDP (table or override); None when unknown. In a VM
    #                      it is the host's and only named in the basis (unless overridden)
    threads: int  # threads per package as this OS sees them (a VM's own vCPUs)
    w_per_thread: float  # watts per busy thread (per busy vCPU in a VM)
    basis: str  # one line: bare metal or VM, the source and the figure
    platform: str = BARE_METAL  # "vm" | "bare-metal"
    microarchitecture: str | None = None  # looked up in a VM only

    @property
    def virtualised(self) -> bool:
        return self.platform == VM


@dataclass(frozen=True)
class Platform:
    kind: str  # "vm" | "bare-metal"
    evidence: str  # one phrase: what told us
    provider: str | None = None  # "aws" | "gcp" | "azure" when DMI says so

    @property
    def virtualised(self) -> bool:
        return self.kind == VM


# -- /proc/cpuinfo --------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _cpuinfo(cpuinfo_path: str) -> Mapping[str, str]:
    """The first processor's block of /proc/cpuinfo (every CPU repeats it), parsed once."""
    info: dict[str, str] = {}
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, sep, value = line.partition(":")
                if sep:
                    info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_model_name(cpuinfo_path: str | None = None) -> str:
    """The CPU model string as the OS reports it ("" when unknown)."""
    info = _cpuinfo(cpuinfo_path or CPUINFO_PATH)
    for key in ("model name", "Model", "cpu model"):
        if info.get(key):
            return info[key]
    import platform

    return platform.processor() or ""


def threads_per_package(cpuinfo_path: str | None = None) -> int:
    """Hardware threads sharing one package's TDP, as this OS sees them.

    /proc/cpuinfo's ``siblings`` is threads per physical package; in a VM it is the VM's view.
    """
    try:
        n = int(_cpuinfo(cpuinfo_path or CPUINFO_PATH).get("siblings", ""))
        if n > 0:
            return n
    except ValueError:
        pass
    import psutil

    return psutil.cpu_count(logical=True) or 1


# -- virtualisation -------------------------------------------------------------------------------
#: DMI strings (lower case) that only a virtual machine reports.
_VIRTUAL_DMI = ("qemu", "kvm", "vmware", "xen", "innotek", "virtualbox", "parallels", "bhyve",
                "bochs", "openstack", "virtual machine", "google compute engine", "hvm domu",
                "amazon ec2", "droplet", "cloud hypervisor", "firecracker")
#: Azure's fixed chassis asset tag, which tells an Azure VM from a local Hyper-V one.
_AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"


def _read_small(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(256).strip()
    except OSError:  # absent, or root-only
        return ""


@lru_cache(maxsize=8)
def _sniff_platform(cpuinfo_path: str, dmi_dir: str, hypervisor_path: str) -> Platform:
    flags = _cpuinfo(cpuinfo_path).get("flags", "").split()
    dmi = {k: _read_small(os.path.join(dmi_dir, k))
           for k in ("sys_vendor", "product_name", "board_vendor", "bios_vendor", "bios_version",
                     "chassis_asset_tag")}
    hyp = _read_small(hypervisor_path)
    vendor = dmi["sys_vendor"] or dmi["board_vendor"]
    shown = " ".join(dict.fromkeys(v for v in (vendor, dmi["product_name"]) if v))
    text = " ".join(v for k, v in dmi.items() if k != "chassis_asset_tag").lower()

    provider = None
    if "amazon" in text:
        provider = "aws"
    elif "google" in text:
        provider = "gcp"
    elif dmi["chassis_asset_tag"] == _AZURE_ASSET_TAG:
        provider = "azure"

    evidence = []
    if "hypervisor" in flags:
        evidence.append("hypervisor flag")
    metal = dmi["product_name"].lower().endswith(".metal")  # EC2 bare-metal instances
    if not metal and any(s in text for s in _VIRTUAL_DMI):
        evidence.append(f"DMI: {shown or text}")
    if hyp:
        evidence.append(f"/sys/hypervisor: {hyp}")
    if evidence:
        return Platform(VM, "; ".join(evidence), provider)
    why = "no hypervisor flag"
    why += f"; DMI: {shown}" if shown else ", no virtual DMI"
    return Platform(BARE_METAL, why, provider)


def detect_platform(env: Mapping[str, str] | None = None, *, cpuinfo_path: str | None = None,
                    dmi_dir: str | None = None, hypervisor_path: str | None = None) -> Platform:
    """VM or bare metal, with the evidence: ``GREENPROF_VIRT`` if set, else the hypervisor CPU
    flag, DMI and /sys/hypervisor. Cached per set of paths."""
    env = os.environ if env is None else env
    sniffed = _sniff_platform(cpuinfo_path or CPUINFO_PATH, dmi_dir or DMI_DIR,
                              hypervisor_path or HYPERVISOR_TYPE_PATH)
    forced = (env.get(VIRT_ENV) or "").strip().lower().replace("_", "-")
    if not forced:
        return sniffed
    if forced in ("vm", "virtual"):
        return Platform(VM, f"{VIRT_ENV}={VM}", sniffed.provider)
    if forced in ("bare-metal", "baremetal", "metal"):
        return Platform(BARE_METAL, f"{VIRT_ENV}={BARE_METAL}", sniffed.provider)
    raise ConfigError(
        f"{VIRT_ENV}={env.get(VIRT_ENV)!r} is not 'vm' or 'bare-metal': set it to one of those "
        "to override greenprof's virtualisation detection, or unset it"
    )


# -- microarchitecture ----------------------------------------------------------------------------
_XEON_SCALABLE = {"1": "Skylake", "2": "Cascade Lake", "3": "Ice Lake", "4": "Sapphire Rapids",
                  "5": "Emerald Rapids"}
_XEON_E5_E7 = {None: "Sandy Bridge", "2": "Ivy Bridge", "3": "Haswell", "4": "Broadwell"}
_EPYC_GEN = {"1": "AMD EPYC 1st Gen (Naples)", "2": "AMD EPYC 2nd Gen (Rome)",
             "3": "AMD EPYC 3rd Gen (Milan)"}
#: Names in QEMU/KVM CPU models ("Intel Xeon Processor (Cascadelake)", "AMD EPYC-Milan Processor"),
#: matched with spaces and hyphens removed.
_CODENAMES = (("cascadelake", "Cascade Lake"), ("cooperlake", "Cooper Lake"),
              ("icelake", "Ice Lake"), ("sapphirerapids", "Sapphire Rapids"),
              ("emeraldrapids", "Emerald Rapids"), ("graniterapids", "Granite Rapids"),
              ("skylake", "Skylake"), ("broadwell", "Broadwell"), ("haswell", "Haswell"),
              ("ivybridge", "Ivy Bridge"), ("sandybridge", "Sandy Bridge"),
              ("epycnaples", _EPYC_GEN["1"]), ("epycrome", _EPYC_GEN["2"]),
              ("epycmilan", _EPYC_GEN["3"]), ("epycgenoa", "AMD EPYC 4th Gen (Genoa)"),
              ("epycturin", "AMD EPYC 5th Gen (Turin)"), ("neoversen1", "AWS Graviton2 / Arm Neoverse N1"))
#: Arm "CPU part" (implementer 0x41) -> microarchitecture.
_ARM_PARTS = {"0xd08": "AWS Graviton (Arm Cortex-A72)", "0xd0c": "AWS Graviton2 / Arm Neoverse N1",
              "0xd40": "AWS Graviton3 / Arm Neoverse V1", "0xd4f": "AWS Graviton4 / Arm Neoverse V2"}
#: Client chips: CPUID must not turn these into a server microarchitecture.
_CLIENT = re.compile(r"\b(core\s+i[3579]|core\s+ultra|ryzen|threadripper|athlon|celeron|pentium)\b")


def _by_name(model: str) -> str | None:
    name = _normalise(model)
    m = re.search(r"\b(?:platinum|gold|silver|bronze)\s+\d(\d)\d\d(hl?\b)?", name)
    if m and m.group(1) == "3" and m.group(2):
        return "Cooper Lake"  # 3rd gen with an H/HL suffix, e.g. Platinum 8380H
    if m and m.group(1) in _XEON_SCALABLE:
        return _XEON_SCALABLE[m.group(1)]
    m = re.search(r"\be[57]-\d{4}\w*(?:\s+v(\d))?", name)
    if m and m.group(1) in _XEON_E5_E7:
        return _XEON_E5_E7[m.group(1)]
    if re.search(r"\be-2[12]\d\d\b", name) or re.search(r"\bi[3579]-[89]\d{3}(?![uyg])", name):
        return "Coffee Lake"  # Xeon E-21xx/22xx, Core 8th/9th gen desktop and H
    m = re.search(r"\bepyc\s+7\w\w([123])", name)
    if m:
        return _EPYC_GEN[m.group(1)]
    if re.search(r"\bepyc\s+[89]\w\w4", name):
        return "AMD EPYC 4th Gen (Genoa)"
    if re.search(r"\bepyc\s+9\w\w5", name):
        return "AMD EPYC 5th Gen (Turin)"
    squashed = re.sub(r"[\s\-_]", "", name)
    for key, arch in _CODENAMES:
        if key in squashed:
            return arch
    return None


def _by_cpuid(info: Mapping[str, str]) -> str | None:
    try:
        family, model = int(info.get("cpu family", "")), int(info.get("model", ""))
        stepping = int(info.get("stepping", "0") or 0)
    except ValueError:
        return None
    vendor = info.get("vendor_id", "")
    if vendor == "GenuineIntel" and family == 6:
        if model == 85:
            return "Skylake" if stepping <= 4 else "Cascade Lake" if stepping <= 7 else "Cooper Lake"
        return {45: "Sandy Bridge", 62: "Ivy Bridge", 63: "Haswell", 79: "Broadwell",
                86: "Broadwell", 106: "Ice Lake", 108: "Ice Lake", 143: "Sapphire Rapids",
                207: "Emerald Rapids", 173: "Granite Rapids"}.get(model)
    if vendor == "AuthenticAMD":
        if family == 23:
            return {1: _EPYC_GEN["1"], 49: _EPYC_GEN["2"]}.get(model)
        if family == 25:
            if model == 1:
                return _EPYC_GEN["3"]
            if model == 17 or 160 <= model <= 175:
                return "AMD EPYC 4th Gen (Genoa)"
        if family == 26 and model < 32:
            return "AMD EPYC 5th Gen (Turin)"
    return None


def microarchitecture(cpu_model: str, cpuinfo_path: str | None = None) -> tuple[str | None, str]:
    """(microarchitecture or None, how it was found) from the model string, then the Arm CPU
    part, then x86 CPUID family/model/stepping (GCP's "Intel(R) Xeon(R) CPU @ 2.20GHz" names
    no model)."""
    arch = _by_name(cpu_model)
    if arch:
        return arch, "model name"
    info = _cpuinfo(cpuinfo_path or CPUINFO_PATH)
    if info.get("CPU implementer", "").lower() == "0x41":
        part = info.get("CPU part", "").lower()
        if part in _ARM_PARTS:
            return _ARM_PARTS[part], f"Arm CPU part {part}"
    if not _CLIENT.search(_normalise(cpu_model)):
        arch = _by_cpuid(info)
        if arch:
            return arch, (f"CPUID family {info.get('cpu family')} model {info.get('model')} "
                          f"stepping {info.get('stepping')}")
    return None, ""


# -- CodeCarbon's TDP table ----------------------------------------------------------------------
@lru_cache(maxsize=1)
def codecarbon_cpu_table() -> Path | None:
    """Path of CodeCarbon's installed CPU TDP table, found without importing codecarbon (once):
    beside the package that ``find_spec`` locates (cheap), else through its distribution's file
    list (importing importlib.metadata costs ~20 ms)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("codecarbon")
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        p = Path(loc) / "data" / "hardware" / "cpu_power.csv"
        if p.is_file():
            return p
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
    import csv  # only when the table is read (a cached lookup never reads it)

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


# -- the cached lookup ------------------------------------------------------------------------------
# Reading and normalising CodeCarbon's ~4,900-row table takes ~100 ms, paid by the first Meter of
# every process; the answer depends only on the CPU model string and the table, so it is kept in
# a small JSON file keyed by both (the table's path, size, mtime and CodeCarbon's version): a new
# CodeCarbon or another CPU is a new key, never a stale answer.
def tdp_cache_path() -> Path:
    """The TDP lookup cache file (see :data:`TDP_CACHE_PATH`)."""
    if TDP_CACHE_PATH:
        return Path(TDP_CACHE_PATH)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "greenprof" / "cpu-tdp.json"


def _codecarbon_version(table: Path) -> str | None:
    """CodeCarbon's version from its ``codecarbon-X.Y.Z.dist-info`` folder beside the package
    that holds ``table`` (without importing codecarbon or importlib.metadata)."""
    try:
        pkg = table.parents[2]  # <site>/codecarbon/data/hardware/cpu_power.csv
        prefix = f"{pkg.name}-"
        with os.scandir(pkg.parent) as entries:
            for e in entries:
                if e.name.startswith(prefix) and e.name.endswith(".dist-info"):
                    return e.name[len(prefix):-len(".dist-info")]
    except (IndexError, OSError):
        pass
    return None


def _tdp_cache_key(cpu_model: str, table: Path) -> str | None:
    try:
        st = table.stat()
    except OSError:
        return None
    return json.dumps({"cpu_model": cpu_model, "table": str(table), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                       "codecarbon": _codecarbon_version(table)}, sort_keys=True)


def _read_tdp_cache(path: Path) -> dict[str, object]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != _TDP_CACHE_FORMAT or not isinstance(doc.get("entries"), dict):
        return {}
    return doc["entries"]


def _write_tdp_cache(path: Path, entries: dict[str, object]) -> None:
    """Written to a temp file in the same folder and renamed over the old one: a concurrent
    reader sees the old file or the new one, never half of one. A cache that cannot be written
    (read-only home) is simply not kept."""
    keep = dict(list(entries.items())[-_TDP_CACHE_MAX_ENTRIES:])
    body = json.dumps({"format": _TDP_CACHE_FORMAT, "entries": keep}, indent=1, sort_keys=True) + "\n"
    # (not the tempfile module: importing it costs more than this whole cache saves on a hit)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, body.encode("utf-8"))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _valid_hit(value: object) -> bool:
    if not isinstance(value, dict) or "match" not in value:
        return False
    m = value["match"]
    return m is None or (isinstance(m, list) and len(m) == 2 and isinstance(m[0], str)
                         and isinstance(m[1], (int, float)) and m[1] > 0)


@lru_cache(maxsize=16)
def _cached_lookup(cpu_model: str, table: Path, cache_path: Path) -> tuple[str, float] | None:
    key = _tdp_cache_key(cpu_model, table)
    if key is None:
        return lookup_tdp(cpu_model, table)
    entries = _read_tdp_cache(cache_path)
    hit = entries.get(key)
    if _valid_hit(hit):
        m = hit["match"]  # type: ignore[index]
        return (m[0], float(m[1])) if m else None
    result = lookup_tdp(cpu_model, table)
    entries.pop(key, None)
    entries[key] = {"match": [result[0], result[1]] if result else None}
    _write_tdp_cache(cache_path, entries)
    return result


def cached_lookup_tdp(cpu_model: str, table: Path) -> tuple[str, float] | None:
    """:func:`lookup_tdp`, answered from the cache file when it already holds this CPU model
    string for this table (see :func:`tdp_cache_path`), else looked up and added to it."""
    return _cached_lookup(cpu_model, table, tdp_cache_path())


# -- the model ------------------------------------------------------------------------------------
def _tdp_override(env: Mapping[str, str]) -> float | None:
    override = env.get("GREENPROF_CPU_TDP_W")
    if override in (None, ""):
        return None
    try:
        tdp = float(override)
    except ValueError:
        tdp = -1.0
    if not tdp > 0:
        raise ConfigError(
            f"GREENPROF_CPU_TDP_W={override!r} is not a positive number of watts: "
            "set it to your CPU's TDP, e.g. GREENPROF_CPU_TDP_W=65, or unset it"
        )
    return tdp


def power_model(env: Mapping[str, str] | None = None, *, cpuinfo_path: str | None = None,
                dmi_dir: str | None = None, hypervisor_path: str | None = None) -> CpuPowerModel:
    env = os.environ if env is None else env
    cpuinfo_path = cpuinfo_path or CPUINFO_PATH
    model = cpu_model_name(cpuinfo_path)
    threads = threads_per_package(cpuinfo_path)
    plat = detect_platform(env, cpuinfo_path=cpuinfo_path, dmi_dir=dmi_dir,
                           hypervisor_path=hypervisor_path)
    where = "VM" if plat.virtualised else "bare metal"
    head = f"{where} ({plat.evidence})"
    unit = "vCPUs" if plat.virtualised else "threads"

    tdp = _tdp_override(env)
    if tdp is not None:
        return CpuPowerModel(model, tdp, threads, tdp / threads,
                             f"{head}: TDP {tdp:g} W from GREENPROF_CPU_TDP_W / {threads} {unit}",
                             plat.kind)
    table = codecarbon_cpu_table()
    hit = cached_lookup_tdp(model, table) if table else None

    if plat.virtualised:
        arch, how = microarchitecture(model, cpuinfo_path)
        host = f", not the host's {hit[1]:g} W TDP / {threads} vCPUs" if hit else ""
        if arch in CCF_W_PER_VCPU:
            lo, hi = CCF_W_PER_VCPU[arch]
            named = f"{arch} (by {how})" if how != "model name" else arch
            basis = (f"{head}: {named}, {hi:g} W per busy vCPU ({_CCF}, SPECpower-derived, "
                     f"min {lo:g} W){host}")
            return CpuPowerModel(model, hit[1] if hit else None, threads, hi, basis, plat.kind, arch)
        if plat.provider in CCF_PROVIDER_AVERAGE:
            label, lo, hi = CCF_PROVIDER_AVERAGE[plat.provider]
        else:
            lo, hi = CCF_OVERALL_AVERAGE
            label = "greenprof's default (mean of CCF's AWS, GCP and Azure averages)"
        what = arch if arch else f"CPU {model or 'unknown'!r}"
        basis = (f"{head}: {what} has no figure in {_CCF}: {label}, {hi:g} W per busy vCPU "
                 f"(min {lo:g} W){host}")
        return CpuPowerModel(model, hit[1] if hit else None, threads, hi, basis, plat.kind, arch)

    if hit:
        name, tdp = hit
        return CpuPowerModel(model, tdp, threads, tdp / threads,
                             f"{head}: TDP {tdp:g} W ({name!r} in CodeCarbon's CPU table) / "
                             f"{threads} threads", plat.kind)
    src = "CodeCarbon's CPU table" if table else "CodeCarbon's CPU table (codecarbon not installed)"
    return CpuPowerModel(
        model, None, threads, DEFAULT_W_PER_THREAD,
        f"{head}: CPU {model or 'unknown'!r} not in {src}: default {DEFAULT_W_PER_THREAD:g} W per "
        "busy thread (CodeCarbon's default); set GREENPROF_CPU_TDP_W to your TDP for a better estimate",
        plat.kind,
    )


class CpuEstimateCollector(CounterCollector):
    """Cumulative estimated joules of this process's CPU time."""

    source = "cpu-estimate"
    method = "estimated"
    domain = DOMAIN
    #: Counts this process's CPU time only, not the machine's.
    scope = "process"
    resolution_s = None

    def __init__(self, model: CpuPowerModel, clock=time.process_time) -> None:
        self.model = model
        self._w = model.w_per_thread
        self._clock = clock
        self._t0 = clock()

    def read_j(self) -> float:
        return (self._clock() - self._t0) * self._w


#: The machine-wide estimate's domain (``greenprof exporter`` on a machine without RAPL).
MACHINE_DOMAIN = "cpu-estimate-machine"


class MachineCpuEstimateCollector(CounterCollector):
    """Cumulative estimated joules of the whole machine's busy CPU time (every process, from
    /proc/stat's tick counters: 10 ms resolution), at the same power per busy thread as
    :class:`CpuEstimateCollector`. For ``greenprof exporter``: a node exporter's own CPU time says
    nothing of the machine, whose inference runs in other processes."""

    source = "cpu-estimate"
    method = "estimated"
    domain = MACHINE_DOMAIN
    scope = "machine"
    resolution_s = 0.01

    def __init__(self, model: CpuPowerModel, reader=None) -> None:
        from greenprof.cpushare import CpuTimesReader

        self.model = model
        self._w = model.w_per_thread
        self._reader = reader if reader is not None else CpuTimesReader()
        first = self._reader.read()
        if first is None:
            raise ConfigError(f"the machine-wide CPU estimate needs /proc/stat: {self._reader.why_not}")
        self._t0 = first.machine_busy_s
        self._last = 0.0

    def read_j(self) -> float:
        t = self._reader.read()
        if t is None:
            from greenprof.errors import SensorLost

            raise SensorLost(self._reader.why_not or "/proc/stat could not be read")
        self._last = max(self._last, (t.machine_busy_s - self._t0) * self._w)  # never backwards
        return self._last

    def close(self) -> None:
        close = getattr(self._reader, "close", None)
        if close is not None:
            close()


def machine_estimate(env: Mapping[str, str] | None = None) -> MachineCpuEstimateCollector:
    """The machine-wide CPU estimate (see :class:`MachineCpuEstimateCollector`)."""
    return MachineCpuEstimateCollector(power_model(env))


def discover(env: Mapping[str, str] | None = None) -> Discovery:
    pm = power_model(env)
    status = SensorStatus(
        source="cpu-estimate", domain=DOMAIN, method="estimated", available=True,
        in_default_set=True, detail=f"this process's CPU time x {pm.w_per_thread:.3g} W/thread; {pm.basis}",
        power_w_per_busy_thread=pm.w_per_thread, basis=pm.basis,
    )
    return Discovery([status], {DOMAIN: CpuEstimateCollector(pm)})
