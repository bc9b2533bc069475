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

A GPU counter sees the whole device (``scope = "gpu"``), not this process.
:meth:`~_NvmlCollectorBase.process_share` says which share of the GPU's work was this
process's, from NVML's per-process utilisation samples (``nvmlDeviceGetProcessUtilization``).
:func:`cuda_device_domain` maps a CUDA ``device_id`` (an index into the GPUs
``CUDA_VISIBLE_DEVICES`` exposes) to the domain discovery gives that GPU.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

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
    UsageError,
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
NVML_ERROR_NOT_FOUND = 6
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


def gpu_domain(index: int) -> str:
    """The domain of the GPU with this NVML index: ``gpu-<index>``."""
    return f"gpu-{index}"


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
        return gpu_domain(self.index)

    def describe(self) -> str:
        s = f"{self.name} {self.uuid}"
        if self.cuda_ordinal is not None and self.cuda_ordinal != self.index:
            s += f" (CUDA device {self.cuda_ordinal})"
        return s


# ---------------------------------------------------------------------------------------------
# This process's share of a GPU

#: The ``process_share`` reason when no process used the GPU in the period.
IDLE_REASON = "idle: no process used the GPU"
#: The start of every ``process_share`` reason where the share could not be checked.
NOT_CHECKED = "not shared-checked"
#: The reason when per-process utilisation is unavailable but only this process holds the GPU.
ONLY_THIS_PROCESS = "only this process holds the GPU"

#: NVML refreshes per-process utilisation every 1/6 s to 1 s depending on the product (NVML
#: reference, nvmlDeviceGetProcessUtilization / nvmlDeviceGetUtilizationRates). Until two
#: batches of samples have shown the period, the slowest is assumed.
_DEFAULT_SAMPLE_PERIOD_S = 1.0
_MIN_SAMPLE_PERIOD_S = 1.0 / 6.0
#: A call that finds no new sample carries the last share for this many sample periods
#: (the sampler calls every ~0.1 s, faster than NVML refreshes); after that the GPU is idle.
_CARRY_PERIODS = 1.5

#: Codes that mean "this GPU/driver/user gets no per-process utilisation", for good.
_SHARE_UNSUPPORTED = (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NO_PERMISSION,
                      NVML_ERROR_FUNCTION_NOT_FOUND)

#: The inode of the host's (initial) PID namespace: PROC_PID_INIT_INO in the kernel.
_PROC_PID_INIT_INO = 0xEFFFFFFC


def _in_child_pid_namespace() -> bool:
    """True when this process runs in a PID namespace of its own (a container without
    ``--pid=host``): NVML reports host PIDs, which ``os.getpid()`` then matches none of."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino != _PROC_PID_INIT_INO
    except OSError:  # not Linux, or /proc hidden: assume the PIDs match
        return False


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _ShareTracker:
    """This process's share of one GPU's work, from ``nvmlDeviceGetProcessUtilization``.

    Keeps NVML's ``lastSeenTimeStamp`` (µs, the newest sample already counted) between calls so
    each call counts only new samples. NVML refreshes the samples every 1/6-1 s, slower than the
    sampler asks; a call that finds no new sample carries the last share (reason "carried: ...")
    for 1.5 sample periods (the period is learned from the samples' timestamps, 1 s until then),
    and only then calls the GPU idle; before any sample it says "not shared-checked: no NVML
    per-process sample yet" for as long. One caller at a time (the meter's sampler).
    """

    def __init__(self, nvml: Any, handle: Any, domain: str) -> None:
        self._nvml = nvml
        self._handle = handle
        self._domain = domain
        self._last_seen_us = 0
        self._unsupported: str | None = None  # why NVML has no per-process utilisation here
        self._last: tuple[float | None, str] | None = None  # the result of the last new samples
        self._last_new_at: float | None = None  # _clock() when new samples last arrived
        self._first_call_at: float | None = None
        self._last_batch_us: int | None = None
        self._period_s = _DEFAULT_SAMPLE_PERIOD_S
        self._pidns: bool | None = None
        self._prime()

    def _prime(self) -> None:
        """Skip the samples NVML holds from before open: the first share counts from here."""
        try:
            samples = self._query(0)
        except Exception:  # opening a collector must not fail over its share
            return
        if samples:
            self._last_seen_us = max(int(s.timeStamp) for s in samples)

    def _query(self, last_seen_us: int) -> list[Any] | None:
        """New samples ([] when NVML has none), or None when NVML cannot give any here."""
        if self._unsupported is not None:
            return None
        fn = getattr(self._nvml, "nvmlDeviceGetProcessUtilization", None)
        if fn is None:
            self._unsupported = "this pynvml has no nvmlDeviceGetProcessUtilization"
            return None
        try:
            return list(fn(self._handle, last_seen_us))
        except self._nvml.NVMLError as e:
            code = nvml_error_code(e)
            # NOT_FOUND: no sample newer than lastSeenTimeStamp (NVML reference). pynvml raises
            # NVMLError(SUCCESS) when the sizing call found nothing to size.
            if code in (NVML_ERROR_NOT_FOUND, NVML_SUCCESS):
                return []
            if code in _SHARE_UNSUPPORTED:
                self._unsupported = f"nvmlDeviceGetProcessUtilization: {_one_line(e)}"
                return None
            raise

    def _pid_hidden(self) -> bool:
        if self._pidns is None:
            self._pidns = _in_child_pid_namespace()
        return self._pidns

    def share(self, now: float) -> tuple[float | None, str]:
        if self._first_call_at is None:
            self._first_call_at = now
        try:
            samples = self._query(self._last_seen_us)
        except self._nvml.NVMLError as e:
            mapped = map_nvml_error(e, f"{self._domain} per-process utilisation")
            return None, _one_line(f"{NOT_CHECKED}: {mapped}")
        if samples is None:
            return self._without_utilisation()
        new = [s for s in samples if int(s.timeStamp) > self._last_seen_us]
        if not new:
            return self._no_new_sample(now)
        newest = max(int(s.timeStamp) for s in new)
        if self._last_batch_us is not None:
            # batches come a whole number of NVML periods apart: the smallest gap is the period
            gap_s = (newest - self._last_batch_us) / 1e6
            if _MIN_SAMPLE_PERIOD_S * 0.9 <= gap_s < self._period_s:
                self._period_s = gap_s
        self._last_seen_us = self._last_batch_us = newest
        self._last_new_at = now
        result = self._from_samples(new)
        self._last = None if result[1].startswith(IDLE_REASON) else result  # idle: nothing to carry
        return result

    def _from_samples(self, new: list[Any]) -> tuple[float | None, str]:
        pid = os.getpid()
        what = "SM"
        total = sum(int(s.smUtil) for s in new)
        if total <= 0:  # only memory traffic (copies): weigh by memory-controller activity
            what = "memory"
            total = sum(int(s.memUtil) for s in new)
        if total <= 0:
            return self._by_holders(IDLE_REASON, "")
        util = (lambda s: int(s.smUtil)) if what == "SM" else (lambda s: int(s.memUtil))
        pids = {int(s.pid) for s in new if util(s) > 0}
        mine = sum(util(s) for s in new if int(s.pid) == pid)
        if pid not in {int(s.pid) for s in new} and self._pid_hidden():
            return None, (f"{NOT_CHECKED}: NVML reports host PIDs and this process runs in a PID "
                          "namespace of its own (a container): run it with --pid=host so its "
                          "GPU samples can be told apart")
        others = len(pids - {pid})
        return mine / total, (f"NVML per-process {what} utilisation: this process {mine} of "
                              f"{total} (% summed over {len(new)} samples; {others} other "
                              f"process{'es' if others != 1 else ''})")

    def _no_new_sample(self, now: float) -> tuple[float | None, str]:
        """No sample since the last call: NVML has not refreshed yet, or the GPU is idle. Only
        a silence of 1.5 NVML periods (since the last sample, else the first call) is idle."""
        since = self._last_new_at if self._last_new_at is not None else self._first_call_at
        age = now - since if since is not None else 0.0
        if age < _CARRY_PERIODS * self._period_s:
            if self._last is not None:
                share, why = self._last
                if share is None:
                    return self._last
                return share, _one_line(
                    f"carried: no new NVML sample for {age:.2f} s (NVML refreshes every "
                    f"~{self._period_s:.2f} s); {why}")
            if self._last_new_at is None:
                return self._by_holders("no NVML per-process sample yet (NVML refreshes them every 1/6-1 s)",
                                        f"{NOT_CHECKED}: ")
        self._last = None
        return self._by_holders(IDLE_REASON, "")

    def _by_holders(self, what: str, unknown: str) -> tuple[float | None, str]:
        """No utilisation sample says who used the GPU (it was idle, or NVML has not sampled
        yet): who holds a compute context on it decides where that is clear. A process that
        holds none has no part in the GPU's energy (a CPU model on a GPU host); the only holder
        has all of it. Otherwise the share stays unknown: (None, ``unknown`` + ``what`` + why)."""
        pids = self._holders()
        if pids is None:
            return None, f"{unknown}{what}"
        pid = os.getpid()
        if pids == {pid}:
            return 1.0, f"{what}; {ONLY_THIS_PROCESS}"
        if pid in pids:
            others = len(pids) - 1
            return None, (f"{unknown}{what}; {others} other process{'es hold' if others != 1 else ' holds'} "
                          "the GPU too")
        if self._pid_hidden():
            return None, (f"{unknown}{what}; this process runs in a PID namespace of its own, so NVML's "
                          "host PIDs cannot be matched to it")
        return 0.0, f"{what}; this process holds no context on the GPU"

    def _without_utilisation(self) -> tuple[float | None, str]:
        """No per-process utilisation here: who holds the GPU is the next best evidence."""
        why = (f"{NOT_CHECKED}: NVML reports no per-process utilization on this GPU/driver "
               f"({self._unsupported})")
        pids = self._holders()
        if pids is None:
            return None, why
        pid = os.getpid()
        if pids == {pid}:
            return 1.0, ONLY_THIS_PROCESS
        others = len(pids - {pid})
        verb = "processes hold" if others != 1 else "process holds"
        if pid in pids:
            return None, f"{why}; {others} other {verb} the GPU"
        if self._pid_hidden():
            return None, (f"{why}; this process runs in a PID namespace of its own, so NVML's "
                          "host PIDs cannot be matched to it")
        if not pids:
            return 0.0, f"{IDLE_REASON} (no process holds it)"
        return 0.0, f"this process holds no context on the GPU ({others} other {verb} it)"

    def _holders(self) -> set[int] | None:
        """PIDs holding a compute context on the GPU, None when NVML cannot say."""
        fn = getattr(self._nvml, "nvmlDeviceGetComputeRunningProcesses", None)
        if fn is None:
            return None
        try:
            return {int(p.pid) for p in fn(self._handle)}
        except self._nvml.NVMLError:
            return None


class _NvmlCollectorBase:
    """Shared by both NVML collectors: identity, the session reference, idempotent close,
    and this process's share of the GPU."""

    source: str = SOURCE
    method: Method = "measured"
    #: The counter sees the whole GPU, every process on it: ``process_share`` says this one's.
    scope: str = "gpu"
    #: Sampling gaps the figures bridged by assumption (power collector: a gap longer than
    #: ``max_read_interval_s`` between power samples), and the latest one's one-line reason.
    uncertain_count: int = 0
    uncertain_reason: str | None = None

    def __init__(self, session: NvmlSession, gpu: GpuInfo) -> None:
        self._session = session
        self._nvml = session.nvml
        self._gpu = gpu
        self._handle = gpu.handle
        self.domain = gpu.domain
        self.uncertain_count = 0
        self.uncertain_reason = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._share = _ShareTracker(session.nvml, gpu.handle, gpu.domain)
        session.acquire()  # after the opening reads succeeded: a failed open holds nothing

    @property
    def gpu(self) -> GpuInfo:
        return self._gpu

    def process_share(self) -> tuple[float | None, str]:
        """This process's (``os.getpid()``) share of the GPU's work since the previous call,
        with a one-line reason. Never raises.

        * ``(share, "NVML per-process SM utilisation: ...")``: this pid's ``smUtil`` over every
          pid's, summed over NVML's samples newer than the last call's (``memUtil`` when no SM
          was busy, only copies);
        * ``(share, "carried: ...")``: NVML has no new sample yet (it refreshes every 1/6-1 s,
          the sampler asks every ~0.1 s): the last share, for up to 1.5 NVML periods;
        * ``(None, IDLE_REASON)``: no process used the GPU in the period (no NVML sample for
          1.5 NVML periods);
        * ``(1.0, ONLY_THIS_PROCESS)``: no per-process utilisation here, but
          ``nvmlDeviceGetComputeRunningProcesses`` lists only this pid;
        * ``(None, "not shared-checked: ...")``: NVML reports no per-process utilisation on this
          GPU/driver (NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND or no such pynvml
          function), no NVML sample has come yet, this process's PID is hidden by a PID
          namespace, or the query failed.
        """
        if self._closed:
            return None, f"{NOT_CHECKED}: {self.domain} collector is closed"
        try:
            return self._share.share(_clock())
        except Exception as e:  # the sampler thread must never die here
            return None, _one_line(f"{NOT_CHECKED}: {self.domain} per-process utilisation: "
                                   f"{type(e).__name__}: {e}")

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
        self._last_sample: tuple[float, float] = (_clock(), first_w)
        self._integrator.add(*self._last_sample)  # origin: energy counts from open
        self._lost_error: SensorLost | None = None
        self._read = False  # set by the first read_j: from then on a gap changes a figure
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
        """Sample power and integrate. A gap longer than ``max_read_interval_s`` since the last
        sample is bridged by holding the last power (what ``read_j`` already reported during
        the gap, so no joule moves across a window boundary read in it) and, once the counter
        has been read, counted in ``uncertain_count`` with ``uncertain_reason``."""
        self._check_open()
        if self._lost_error is not None:
            raise self._lost_error
        try:
            p_w = self._read_power_w()
        except SensorLost as e:
            self._lost_error = e  # read_j must not keep extrapolating a dead GPU
            raise
        t = _clock()
        t0, p0 = self._last_sample
        gap_s = t - t0
        limit = self.max_read_interval_s
        if limit is not None and gap_s > limit:
            self._integrator.add(t, p0)  # hold p0 over the gap, then step to p_w at t
            if self._read:
                self.uncertain_count += 1
                self.uncertain_reason = (
                    f"{self.domain}: {gap_s:.2f} s between power samples (more than "
                    f"{limit:g} s): the integration bridged the gap assuming the last power "
                    f"({p0:.1f} W) held")
        self._last_sample = (t, p_w)
        return self._integrator.add(t, p_w)

    def read_j(self) -> float:
        self._check_open()
        if self._lost_error is not None:
            raise self._lost_error
        self._read = True
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


def cuda_device_domain(device_id: int, *, nvml: Any = None,
                       env: Mapping[str, str] | None = None) -> str:
    """The domain discovery gives the GPU a CUDA ``device_id`` names (``"gpu-<NVML index>"``).

    CUDA (and onnxruntime's CUDA ``device_id``) numbers the GPUs ``CUDA_VISIBLE_DEVICES``
    exposes, in its order; this reads ``env`` (default ``os.environ``) with the same parser
    discovery uses, so ``CUDA_VISIBLE_DEVICES=1`` makes device 0 ``gpu-1`` and UUID entries are
    matched by UUID. Integers mean NVML (PCI bus) indices, which is what CUDA means too unless
    ``CUDA_DEVICE_ORDER`` is left at FASTEST_FIRST on a host of different GPUs: that case is
    refused rather than guessed. ``nvml`` is a pynvml-like module (tests pass a shim); one
    ``nvmlInit``/``nvmlShutdown`` pair per call.

    Raises :class:`~greenprof.errors.UsageError` with one actionable line when the device
    cannot be mapped (no such device, all GPUs hidden, NVML unavailable, ambiguous order).
    """
    env = os.environ if env is None else env
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise UsageError(f"CUDA device_id must be a whole number >= 0, got {device_id!r}")
    cant = f"cannot tell which GPU CUDA device {device_id} is"
    if nvml is None:
        try:
            import pynvml as nvml  # lazy, like discover()
        except ImportError:
            raise UsageError(f"{cant}: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
                             ) from None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        raise UsageError(f"{cant}: {map_nvml_error(e, 'NVML initialisation')}") from e
    try:
        return _cuda_device_domain(nvml, device_id, env, cant)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # closing must never raise
            pass


def _cuda_device_domain(nvml: Any, device_id: int, env: Mapping[str, str],
                        cant: str) -> str:
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError as e:
        raise UsageError(f"{cant}: {map_nvml_error(e, 'NVML device count')}") from e

    def query(fn: str, i: int) -> str:
        try:
            return str(getattr(nvml, fn)(nvml.nvmlDeviceGetHandleByIndex(i)))
        except nvml.NVMLError:
            return ""  # an unreadable GPU matches no UUID and names no model

    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        visible = list(range(count))
    else:
        visible = parse_cuda_visible_devices(cvd, count, lambda i: query("nvmlDeviceGetUUID", i))
    if device_id >= len(visible):
        if cvd is None:
            raise UsageError(
                f"CUDA device {device_id} does not exist: NVML sees {count} GPU"
                f"{'s' if count != 1 else ''}{f' (device_id 0-{count - 1})' if count else ''}; "
                "check `nvidia-smi -L`")
        if not visible:
            raise UsageError(
                f"CUDA device {device_id} does not exist: CUDA_VISIBLE_DEVICES={cvd!r} hides "
                "all GPUs; unset it or list the GPU to use")
        raise UsageError(
            f"CUDA device {device_id} does not exist: CUDA_VISIBLE_DEVICES={cvd!r} exposes "
            f"{len(visible)} GPU{'s' if len(visible) != 1 else ''} (device_id "
            f"0-{len(visible) - 1})")
    by_number = cvd is None or any(tok.strip().isdigit() for tok in cvd.split(","))
    order = env.get("CUDA_DEVICE_ORDER", "").strip().upper() or "FASTEST_FIRST"
    if by_number and order != "PCI_BUS_ID" and count > 1:
        names = {n for n in (query("nvmlDeviceGetName", i) for i in range(count)) if n}
        if len(names) > 1:
            raise UsageError(
                f"{cant} on this host of different GPUs ({', '.join(sorted(names))}): CUDA "
                f"numbers them fastest first (CUDA_DEVICE_ORDER={order}), NVML by PCI bus; set "
                "CUDA_DEVICE_ORDER=PCI_BUS_ID or select GPUs by UUID in CUDA_VISIBLE_DEVICES")
    return gpu_domain(visible[device_id])


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


class _LibraryNotFound(Exception):
    value = NVML_ERROR_LIBRARY_NOT_FOUND


def _nvml_library_missing() -> bool:
    """True when pynvml's ``nvmlInit`` could only fail with NVML_ERROR_LIBRARY_NOT_FOUND: outside
    Windows it loads ``libnvidia-ml.so.1`` by that name and nothing else, so the same ``dlopen``
    answers without importing pynvml and its ctypes helpers. False when pynvml is already
    imported (or stood in for) or installed nowhere (its import then says so)."""
    import sys

    if sys.platform.startswith("win") or "pynvml" in sys.modules:
        return False
    import importlib.util

    if importlib.util.find_spec("pynvml") is None:
        return False
    import ctypes

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return True
    return False


def discover(nvml: Any = None) -> NvmlDiscovery:
    """Find the NVIDIA GPUs this process may use and open a collector for each usable one.

    ``nvml`` is a module-like object with the pynvml functions and constants used here; by
    default ``pynvml`` is imported now (never at module import). Never raises for a missing
    library, driver or GPU: every problem becomes an unavailable status with a one-line reason.
    """
    d = NvmlDiscovery()
    if nvml is None:
        if _nvml_library_missing():
            # what nvmlInit would say, without importing pynvml (~10 ms of a Meter's first start)
            d.unavailable("gpu", map_nvml_error(_LibraryNotFound(), "NVML initialisation"))
            return d
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
                handle_errors[i] = map_nvml_error(e, gpu_domain(i))
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
            d.unavailable(gpu_domain(i), SensorUnavailable(
                f"gpu-{i} is hidden by CUDA_VISIBLE_DEVICES={cvd!r}: add it there to "
                "measure it"))


def _open_gpu(nvml: Any, session: NvmlSession, d: NvmlDiscovery, index: int,
              handle: Callable[[int], Any], cuda_ordinal: int | None) -> None:
    domain = gpu_domain(index)
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
