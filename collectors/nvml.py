"""NVIDIA GPU energy through NVML (the ``nvidia-ml-py`` package, ``import pynvml``).

Two ways to count a GPU's joules, chosen per GPU at discovery:

* Volta and newer: ``nvmlDeviceGetTotalEnergyConsumption``, a 64-bit millijoule counter since
  the driver loaded (:class:`NvmlEnergyCollector`). It updates every ~20-100 ms, so a single
  token's GPU energy cannot be read directly: per-token GPU figures come from the decode window
  divided by its tokens (``resolution_s`` tells the meter so).
* Older GPUs, or where the counter is not supported: power samples integrated by the trapezoid
  rule (:class:`NvmlPowerCollector`). The instantaneous field ``NVML_FI_DEV_POWER_INSTANT``
  (``nvmlDeviceGetFieldValues``) is used when the driver offers it, else
  ``nvmlDeviceGetPowerUsage``, which on Ampere and newer is a 1 s moving average.

NVML is loaded lazily: importing this module neither imports ``pynvml`` nor calls ``nvmlInit``.
:func:`discover` is the one seam: it takes any module-like object with the handful of pynvml
functions and constants used here, so tests drive it with a shim (``tests/nvml_shim.py``).

One :func:`discover` call is one ``nvmlInit``; the collectors it opens share that session and
the last one closed calls ``nvmlShutdown`` once (NVML reference-counts init/shutdown pairs).

``CUDA_VISIBLE_DEVICES`` is respected: only the GPUs it lists are opened. Integers are taken as
NVML indices (true when ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, the order NVML uses); ``GPU-<uuid>``
prefixes are matched by UUID. GPUs in MIG mode are refused: NVML reports energy per physical
GPU, so it cannot be attributed to one MIG instance.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from greenprof.errors import (
    GpuLost,
    GreenprofError,
    MigUnsupported,
    NvmlDriverNotLoaded,
    NvmlLibraryNotFound,
    NvmlNoPermission,
    NvmlNotSupported,
    SensorError,
    SensorLost,
    SensorUnavailable,
)

from .base import CounterCollector, Discovery, Method, PowerIntegrator, SensorStatus

SOURCE = "nvml"

# NVML return codes (nvmlReturn_t). They are part of NVML's C ABI and never change; they are
# spelled out here so that error mapping needs no pynvml import (tests check they match pynvml).
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18

NVML_DEVICE_MIG_ENABLE = 1

# nvmlValueType_t -> the member of c_nvmlValue_t that holds a field value.
_VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")

#: The clock used for power samples; a module-level seam so tests can drive it.
_clock: Callable[[], float] = time.perf_counter


# ---------------------------------------------------------------------------------------------
# Errors


def nvml_error_code(err: BaseException) -> int | None:
    """The ``nvmlReturn_t`` code of a pynvml ``NVMLError`` (its ``value``), None otherwise."""
    value = getattr(err, "value", None)
    return value if isinstance(value, int) else None


def map_nvml_error(err: BaseException, what: str) -> GreenprofError:
    """Turn a pynvml ``NVMLError`` raised while doing ``what`` into one of our typed errors.

    ``what`` names the query, e.g. ``"gpu-0 energy counter"``. Every message is one line that
    says what is wrong and what to do.
    """
    code = nvml_error_code(err)
    if code == NVML_ERROR_LIBRARY_NOT_FOUND:
        return NvmlLibraryNotFound(
            "libnvidia-ml.so not found: install the NVIDIA driver (in a container, run it with "
            "the NVIDIA runtime, e.g. --gpus all) to measure GPU energy")
    if code == NVML_ERROR_DRIVER_NOT_LOADED:
        return NvmlDriverNotLoaded(
            "the NVIDIA kernel driver is not loaded: load it (modprobe nvidia) and check that "
            "`nvidia-smi` works to measure GPU energy")
    if code == NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return NvmlDriverNotLoaded(
            "the NVML library and the NVIDIA kernel driver versions differ (driver updated "
            "without a reboot): reboot or reload the nvidia module")
    if code == NVML_ERROR_NOT_SUPPORTED:
        return NvmlNotSupported(
            f"{what}: not supported by this GPU or driver (energy counter needs Volta or newer; "
            "power readings need a GPU that reports board power)")
    if code == NVML_ERROR_FUNCTION_NOT_FOUND:
        return NvmlNotSupported(
            f"{what}: this driver's NVML lacks the function: update the NVIDIA driver")
    if code == NVML_ERROR_NO_PERMISSION:
        return NvmlNoPermission(
            f"{what}: NVML refused the query for this user: run with access to /dev/nvidia* "
            "(some containers and VMs hide GPU power; ask the admin to expose it)")
    if code in (NVML_ERROR_GPU_IS_LOST, NVML_ERROR_RESET_REQUIRED):
        return GpuLost(
            f"{what}: the GPU is lost (fell off the bus or needs a reset): check `nvidia-smi` "
            "and `dmesg` for Xid errors; GPU figures from this run are incomplete")
    return SensorUnavailable(f"{what}: NVML error: {err} (code {code}); check `nvidia-smi`")


def _lost(err: BaseException, what: str) -> SensorLost:
    """A mid-run failure: GPU lost stays GpuLost, anything else becomes SensorLost."""
    mapped = map_nvml_error(err, what)
    if isinstance(mapped, SensorLost):
        return mapped
    return SensorLost(f"{what} failed mid-run: {mapped}")


# ---------------------------------------------------------------------------------------------
# Session: one nvmlInit shared by the collectors of one discover() call


class NvmlSession:
    """One ``nvmlInit``; calls ``nvmlShutdown`` once when the last holder releases it."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self._refs = 0
        self._lock = threading.Lock()
        self._shut = False

    def acquire(self) -> None:
        with self._lock:
            if self._shut:
                raise SensorLost("NVML session already shut down: run discover() again")
            self._refs += 1

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            if self._refs > 0 or self._shut:
                return
            self._shut = True
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # closing must never raise
            pass


@dataclass(frozen=True)
class GpuInfo:
    """What identifies one GPU: its NVML index and handle, name, UUID and CUDA ordinal."""

    index: int
    handle: Any
    name: str
    uuid: str
    cuda_ordinal: int | None = None  # position in CUDA_VISIBLE_DEVICES when that is set

    @property
    def domain(self) -> str:
        return f"gpu-{self.index}"

    def describe(self) -> str:
        s = f"{self.name} {self.uuid}"
        if self.cuda_ordinal is not None and self.cuda_ordinal != self.index:
            s += f" (CUDA device {self.cuda_ordinal})"
        return s


class _NvmlCollectorBase:
    """Shared by both NVML collectors: identity, the session reference, idempotent close."""

    source: str = SOURCE
    method: Method = "measured"

    def __init__(self, session: NvmlSession, gpu: GpuInfo) -> None:
        self._session = session
        self._nvml = session.nvml
        self._gpu = gpu
        self._handle = gpu.handle
        self.domain = gpu.domain
        self._closed = False
        self._close_lock = threading.Lock()
        session.acquire()  # after the opening reads succeeded: a failed open holds nothing

    @property
    def gpu(self) -> GpuInfo:
        return self._gpu

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._session.release()

    def _check_open(self) -> None:
        if self._closed:
            raise SensorLost(f"{self.domain}: collector is closed")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.domain} ({self.method})>"


# ---------------------------------------------------------------------------------------------
# Volta+: the total energy counter


class NvmlEnergyCollector(_NvmlCollectorBase, CounterCollector):
    """``nvmlDeviceGetTotalEnergyConsumption`` (mJ since driver load), as joules since open.

    The counter is 64-bit and never wraps in practice, so any gap between reads is fine; it
    updates every ~20-100 ms (``resolution_s``), so per-token figures must come from windows.
    """

    integrates_power = False
    max_read_interval_s: float | None = None
    #: The counter updates every ~20-100 ms.
    resolution_s: float | None = 0.1

    def __init__(self, session: NvmlSession, gpu: GpuInfo) -> None:
        try:
            self._origin_mj = int(session.nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle))
        except session.nvml.NVMLError as e:
            raise map_nvml_error(e, f"{gpu.domain} energy counter") from e
        self.detail = (f"{gpu.describe()}; total energy counter "
                       "(nvmlDeviceGetTotalEnergyConsumption, mJ, updates every ~20-100 ms)")
        super().__init__(session, gpu)

    def read_j(self) -> float:
        self._check_open()
        try:
            mj = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except self._nvml.NVMLError as e:
            raise _lost(e, f"{self.domain} energy counter") from e
        if mj < self._origin_mj:
            # The counter counts from driver load: going back means the GPU or driver was reset.
            raise GpuLost(f"{self.domain} energy counter went backwards (GPU or driver reset "
                          "mid-run): GPU figures from this run are incomplete")
        return (mj - self._origin_mj) / 1000.0


# ---------------------------------------------------------------------------------------------
# Pre-Volta or no counter: integrated power


def _field_value(fv: Any) -> float:
    """The number held by a ``c_nvmlFieldValue_t``, read from the member its valueType names."""
    vt = int(fv.valueType)
    member = _VALUE_MEMBERS[vt] if 0 <= vt < len(_VALUE_MEMBERS) else "uiVal"
    return float(getattr(fv.value, member))


class NvmlPowerCollector(_NvmlCollectorBase):
    """Power samples integrated by the trapezoid rule, for GPUs without an energy counter.

    ``poll`` (the meter's sampler, at least every ``max_read_interval_s``) reads power and
    integrates; ``read_j`` extrapolates from the last sample without touching the device.
    Power comes from ``NVML_FI_DEV_POWER_INSTANT`` when the driver supports that field, else
    ``nvmlDeviceGetPowerUsage`` (a 1 s moving average on Ampere and newer). ``detail`` says which.
    """

    integrates_power = True
    #: The sampler must poll at least this often for the trapezoid to follow the load.
    max_read_interval_s: float | None = 0.5

    def __init__(self, session: NvmlSession, gpu: GpuInfo) -> None:
        nvml = session.nvml
        field_id = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        self._field_id: int | None = None
        first_w: float | None = None
        if field_id is not None:
            try:
                fv = nvml.nvmlDeviceGetFieldValues(gpu.handle, [field_id])[0]
            except nvml.NVMLError as e:
                if nvml_error_code(e) in (NVML_ERROR_GPU_IS_LOST, NVML_ERROR_RESET_REQUIRED):
                    raise map_nvml_error(e, f"{gpu.domain} power reading") from e
                fv = None  # field API missing or refused: fall back to PowerUsage
            if fv is not None and int(fv.nvmlReturn) == NVML_SUCCESS:
                self._field_id = field_id
                first_w = _field_value(fv) / 1000.0
        if first_w is None:
            try:
                first_w = nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0
            except nvml.NVMLError as e:
                raise map_nvml_error(e, f"{gpu.domain} power reading") from e
        if self._field_id is not None:
            how = "NVML_FI_DEV_POWER_INSTANT (instantaneous)"
            # Limited only by the sampler period.
            self.resolution_s: float | None = None
        else:
            how = "nvmlDeviceGetPowerUsage (a 1 s average on Ampere and newer)"
            # A 1 s moving average smears anything shorter than about a second.
            self.resolution_s = 1.0
        self.power_reading = how
        self.detail = (f"{gpu.describe()}; no energy counter: power from {how}, "
                       "trapezoid-integrated at the sampler period")
        self._integrator = PowerIntegrator()
        self._integrator.add(_clock(), first_w)  # origin: energy counts from open
        self._lost_error: SensorLost | None = None
        super().__init__(session, gpu)

    def _read_power_w(self) -> float:
        nvml = self._nvml
        try:
            if self._field_id is not None:
                fv = nvml.nvmlDeviceGetFieldValues(self._handle, [self._field_id])[0]
                ret = int(fv.nvmlReturn)
                if ret != NVML_SUCCESS:
                    raise nvml.NVMLError(ret)  # per-field failure, same meaning as a call's
                return _field_value(fv) / 1000.0
            return nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
        except nvml.NVMLError as e:
            raise _lost(e, f"{self.domain} power reading") from e

    def poll(self) -> float:
        self._check_open()
        if self._lost_error is not None:
            raise self._lost_error
        try:
            p_w = self._read_power_w()
        except SensorLost as e:
            self._lost_error = e  # read_j must not keep extrapolating a dead GPU
            raise
        return self._integrator.add(_clock(), p_w)

    def read_j(self) -> float:
        self._check_open()
        if self._lost_error is not None:
            raise self._lost_error
        return self._integrator.value_at(_clock())


# ---------------------------------------------------------------------------------------------
# CUDA_VISIBLE_DEVICES


def parse_cuda_visible_devices(value: str, count: int,
                               uuid_of: Callable[[int], str]) -> list[int]:
    """NVML indices of the GPUs ``CUDA_VISIBLE_DEVICES=value`` selects, in CUDA ordinal order.

    Like CUDA, parsing stops at the first entry that names no GPU ("-1", an index out of range,
    an unknown or ambiguous UUID prefix, a MIG instance), so "" and "-1" hide every GPU.
    ``uuid_of(i)`` is only called when a ``GPU-`` entry needs it.
    """
    selected: list[int] = []
    uuids: list[str] | None = None
    for raw in value.split(","):
        tok = raw.strip()
        if not tok:
            break
        if tok.isdigit():
            idx = int(tok)
            if idx >= count:
                break
        elif tok.upper().startswith("GPU-"):
            if uuids is None:
                uuids = [uuid_of(i).lower() for i in range(count)]
            matches = [i for i, u in enumerate(uuids) if u.startswith(tok.lower())]
            if len(matches) != 1:
                break
            idx = matches[0]
        else:
            break
        if idx not in selected:
            selected.append(idx)
    return selected


# ---------------------------------------------------------------------------------------------
# Discovery


class NvmlDiscovery(Discovery):
    """A :class:`Discovery` that also keeps the typed error behind each unavailable domain,
    so a caller that asked for NVML explicitly can raise it (``errors[domain]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: dict[str, GreenprofError] = {}

    def unavailable(self, domain: str, err: GreenprofError, detail: str = "") -> None:
        self.statuses.append(SensorStatus(
            source=SOURCE, domain=domain, method="measured", available=False,
            in_default_set=False, detail=detail, why_not=str(err)))
        self.errors[domain] = err


def discover(nvml: Any = None) -> NvmlDiscovery:
    """Find the NVIDIA GPUs this process may use and open a collector for each usable one.

    ``nvml`` is a module-like object with the pynvml functions and constants used here; by
    default ``pynvml`` is imported now (never at module import). Never raises for a missing
    library, driver or GPU: every problem becomes an unavailable status with a one-line reason.
    """
    d = NvmlDiscovery()
    if nvml is None:
        try:
            import pynvml as nvml  # lazy: importing this module must stay free of pynvml
        except ImportError:
            d.unavailable("gpu", SensorUnavailable(
                "nvidia-ml-py is not installed: pip install nvidia-ml-py to measure NVIDIA GPU "
                "energy"))
            return d
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        d.unavailable("gpu", map_nvml_error(e, "NVML initialisation"))
        return d

    session = NvmlSession(nvml)
    session.acquire()  # discover's own reference: released at the end, shutting down if unused
    try:
        _discover_gpus(nvml, session, d)
    finally:
        session.release()
    return d


def _discover_gpus(nvml: Any, session: NvmlSession, d: NvmlDiscovery) -> None:
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError as e:
        d.unavailable("gpu", map_nvml_error(e, "NVML device count"))
        return
    if count == 0:
        d.unavailable("gpu", SensorUnavailable(
            "NVML found no GPU: check `nvidia-smi` (in a container, pass --gpus)"))
        return

    handles: dict[int, Any] = {}
    handle_errors: dict[int, GreenprofError] = {}

    def handle(i: int) -> Any:
        if i not in handles and i not in handle_errors:
            try:
                handles[i] = nvml.nvmlDeviceGetHandleByIndex(i)
            except nvml.NVMLError as e:
                handle_errors[i] = map_nvml_error(e, f"gpu-{i}")
        if i in handle_errors:
            raise handle_errors[i]
        return handles[i]

    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    ordinal: dict[int, int | None]
    if cvd is None:
        ordinal = {i: None for i in range(count)}
    else:
        def uuid_of(i: int) -> str:
            try:
                return str(nvml.nvmlDeviceGetUUID(handle(i)))
            except (nvml.NVMLError, GreenprofError):
                return ""  # an unreadable GPU matches no UUID prefix
        visible = parse_cuda_visible_devices(cvd, count, uuid_of)
        if not visible:
            d.unavailable("gpu", SensorUnavailable(
                f"CUDA_VISIBLE_DEVICES={cvd!r} hides all GPUs: unset it or list the GPU "
                "indices or UUIDs to measure"))
            return
        ordinal = {i: k for k, i in enumerate(visible)}

    for i in range(count):  # statuses in NVML index order
        if i in ordinal:
            _open_gpu(nvml, session, d, i, handle, ordinal[i])
        else:
            d.unavailable(f"gpu-{i}", SensorUnavailable(
                f"gpu-{i} is hidden by CUDA_VISIBLE_DEVICES={cvd!r}: add it there to "
                "measure it"))


def _open_gpu(nvml: Any, session: NvmlSession, d: NvmlDiscovery, index: int,
              handle: Callable[[int], Any], cuda_ordinal: int | None) -> None:
    domain = f"gpu-{index}"
    try:
        h = handle(index)
        name = str(nvml.nvmlDeviceGetName(h))
        uuid = str(nvml.nvmlDeviceGetUUID(h))
    except GreenprofError as e:
        d.unavailable(domain, e)
        return
    except nvml.NVMLError as e:
        d.unavailable(domain, map_nvml_error(e, domain))
        return
    gpu = GpuInfo(index=index, handle=h, name=name, uuid=uuid, cuda_ordinal=cuda_ordinal)

    # MIG: NOT_SUPPORTED (pre-Ampere) or a driver without the call means no MIG.
    try:
        mig_current = int(nvml.nvmlDeviceGetMigMode(h)[0])
    except nvml.NVMLError as e:
        code = nvml_error_code(e)
        if code not in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND,
                        NVML_ERROR_INVALID_ARGUMENT):
            d.unavailable(domain, map_nvml_error(e, f"{domain} MIG mode"), gpu.describe())
            return
        mig_current = 0
    if mig_current == NVML_DEVICE_MIG_ENABLE:
        d.unavailable(domain, MigUnsupported(
            f"{domain} is in MIG mode: NVML reports energy per physical GPU, not per MIG "
            "instance; greenprof refuses to attribute it (disable MIG or measure the whole GPU)"),
            gpu.describe())
        return

    collector: NvmlEnergyCollector | NvmlPowerCollector
    try:
        collector = NvmlEnergyCollector(session, gpu)
    except NvmlNotSupported:
        try:
            collector = NvmlPowerCollector(session, gpu)
        except NvmlNotSupported:
            d.unavailable(domain, NvmlNotSupported(
                f"{domain} ({name}) reports neither an energy counter nor power through NVML: "
                "GPU energy cannot be measured on it (check `nvidia-smi -q -d POWER`)"),
                gpu.describe())
            return
        except SensorError as e:
            d.unavailable(domain, e, gpu.describe())
            return
    except SensorError as e:
        d.unavailable(domain, e, gpu.describe())
        return
    d.statuses.append(SensorStatus(
        source=SOURCE, domain=domain, method="measured", available=True, in_default_set=True,
        detail=collector.detail))
    d.collectors[domain] = collector
