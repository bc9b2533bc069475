"""An NVML shim: the handful of pynvml functions greenprof calls, on simulated GPUs.

It mirrors pynvml where greenprof can see the difference: the same function names and
signatures, the same return types (``str`` names and UUIDs, ``int`` mW/mJ, a ``[current,
pending]`` MIG list, a ctypes array of the real ``pynvml.c_nvmlFieldValue_t`` from
``nvmlDeviceGetFieldValues``) and real ``pynvml.NVMLError`` instances (``NVMLError(code)``
returns the ``NVMLError_*`` subclass). Like NVML, init/shutdown are reference counted and device
calls outside an init raise ``NVMLError_Uninitialized``.

Time is simulated: ``advance(dt_s)`` moves the shim's clock and each GPU's energy counter by
``power_mw x dt``. Faults: an error at init, an error on one call for one GPU (``errors``, any
function), GPU lost after N device calls or from a given clock time, a function this pynvml
lacks (``missing``).

Processes: ``set_busy(i, {pid: sm_pct, ...})`` makes GPU i busy with those processes and
``set_idle(i)`` idles it. While the clock advances the driver records per-process utilisation
samples every ``sample_period_s`` (NVML's 1/6 s to 1 s) for each process with non-zero
utilisation; ``nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp)`` returns, like NVML,
one ``c_nvmlProcessUtilizationSample_t`` per process (its newest sample newer than
``lastSeenTimeStamp``, timestamps in CPU µs) or raises NOT_FOUND when there is none.
``nvmlDeviceGetComputeRunningProcesses`` lists the processes holding a context (``holders``,
by default the busy ones) as pynvml's friendly objects.

    shim = NvmlShim([FakeGpu(name="Tesla V100"), FakeGpu(energy_counter=False)])
    d = nvml.discover(shim)
    shim.set_busy(0, {os.getpid(): 60, 4242: 20})
    shim.advance(0.5)
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import pynvml

#: NVML stamps samples with the CPU time in µs; the shim's clock 0 is this instant.
EPOCH_US = 1_700_000_000_000_000
#: NVML's "no instance" id in c_nvmlProcessInfo_t (no MIG)
_NO_INSTANCE = 0xFFFFFFFF


@dataclass
class FakeGpu:
    """One simulated GPU. Change ``power_mw`` between ``advance`` calls to shape the load."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-1111-2222-3333-444444444444"
    energy_counter: bool = True  # Volta+: nvmlDeviceGetTotalEnergyConsumption works
    power_instant: bool = True  # NVML_FI_DEV_POWER_INSTANT answers in nvmlDeviceGetFieldValues
    power_usage: bool = True  # nvmlDeviceGetPowerUsage works
    power_mw: int = 300_000
    #: What nvmlDeviceGetPowerUsage reports, when it should differ from the instant power
    #: (on Ampere+ it is a 1 s average); None: same as ``power_mw``.
    power_usage_mw: int | None = None
    mig: int | None = 0  # current MIG mode (0/1); None: GetMigMode is NOT_SUPPORTED (pre-Ampere)
    energy_mj: float = 123_456_789.0  # counts from driver load, not from zero
    #: function name -> NVML error code raised by that call on this GPU
    errors: dict[str, int] = field(default_factory=dict)
    #: error code for the POWER_INSTANT entry of a GetFieldValues result (per-field failure)
    field_error: int | None = None
    #: GPU_IS_LOST once this many calls taking this GPU's handle were made
    lost_after_calls: int | None = None
    lost_at_s: float | None = None  # GPU_IS_LOST once the shim clock reaches this time
    calls: int = 0  # device calls made so far
    #: pid -> SM utilisation % while the clock advances; empty: the GPU is idle
    busy: dict[int, int] = field(default_factory=dict)
    #: pid -> memory-controller utilisation %; a pid not listed reads 0
    busy_mem: dict[int, int] = field(default_factory=dict)
    #: pids holding a compute context (nvmlDeviceGetComputeRunningProcesses); None: ``busy``'s
    holders: set[int] | None = None
    #: how often the driver records per-process utilisation samples
    sample_period_s: float = 1 / 6
    #: recorded samples: (timeStamp µs, pid, smUtil, memUtil), oldest first
    samples: list[tuple[int, int, int, int]] = field(default_factory=list)


class FakeHandle:
    """Opaque like pynvml's ``c_nvmlDevice_t``; only the shim looks inside."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<FakeHandle {self.index}>"


class NvmlShim:
    """Module-like stand-in for ``pynvml`` (pass it as ``discover(nvml=shim)``, or put it in
    ``sys.modules["pynvml"]``)."""

    NVMLError = pynvml.NVMLError

    def __init__(self, gpus: list[FakeGpu] | None = None, *, init_error: int | None = None,
                 count_error: int | None = None, missing: Iterable[str] = ()) -> None:
        #: pynvml functions this module lacks (an older nvidia-ml-py): AttributeError
        self.missing = frozenset(missing)
        self.gpus: list[FakeGpu] = list(gpus) if gpus is not None else [FakeGpu()]
        self.init_error = init_error
        self.count_error = count_error
        self.clock_s = 0.0
        self.init_calls = 0
        self.shutdown_calls = 0
        self._refcount = 0
        self.calls: list[tuple[str, Any]] = []  # (function, gpu index or None)

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("nvml") and name in object.__getattribute__(self, "missing"):
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    def __getattr__(self, name: str) -> Any:
        # NVML_* constants, so the shim reads like the module it replaces
        if name.startswith("NVML_"):
            return getattr(pynvml, name)
        raise AttributeError(name)

    # --- simulation controls -----------------------------------------------------------------

    def advance(self, dt_s: float) -> None:
        """Move the clock; every GPU's counter grows by its current power x dt (mW x s = mJ),
        and each busy GPU records a sample per busy process at every sampling tick crossed."""
        t0, self.clock_s = self.clock_s, self.clock_s + dt_s
        for g in self.gpus:
            g.energy_mj += g.power_mw * dt_s
            p = g.sample_period_s
            first, last = math.floor(t0 / p + 1e-9) + 1, math.floor(self.clock_s / p + 1e-9)
            for k in range(first, last + 1):
                ts = EPOCH_US + round(k * p * 1e6)
                for pid, sm in g.busy.items():
                    mem = g.busy_mem.get(pid, 0)
                    if sm or mem:  # NVML keeps samples of processes that used the GPU
                        g.samples.append((ts, pid, sm, mem))
            del g.samples[:-1000]  # the driver's buffer is bounded

    def set_busy(self, index: int, sm: dict[int, int],
                 mem: dict[int, int] | None = None) -> None:
        """GPU ``index`` is busy with these processes (pid -> SM %, and memory %) from now."""
        self.gpus[index].busy = dict(sm)
        self.gpus[index].busy_mem = dict(mem or {})

    def set_idle(self, index: int) -> None:
        """No process uses GPU ``index`` from now."""
        self.set_busy(index, {})

    @property
    def initialized(self) -> bool:
        return self._refcount > 0

    def called(self, name: str) -> int:
        return sum(1 for n, _ in self.calls if n == name)

    # --- internals ----------------------------------------------------------------------------

    @staticmethod
    def _raise(code: int) -> None:
        raise pynvml.NVMLError(code)

    def _require_init(self) -> None:
        if self._refcount <= 0:
            self._raise(pynvml.NVML_ERROR_UNINITIALIZED)

    def _device(self, fn: str, handle: Any) -> FakeGpu:
        self._require_init()
        if not isinstance(handle, FakeHandle) or not 0 <= handle.index < len(self.gpus):
            self._raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        g = self.gpus[handle.index]
        self.calls.append((fn, handle.index))
        g.calls += 1
        if g.lost_after_calls is not None and g.calls > g.lost_after_calls:
            self._raise(pynvml.NVML_ERROR_GPU_IS_LOST)
        if g.lost_at_s is not None and self.clock_s >= g.lost_at_s:
            self._raise(pynvml.NVML_ERROR_GPU_IS_LOST)
        if fn in g.errors:
            self._raise(g.errors[fn])
        return g

    # --- the pynvml API -----------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls.append(("nvmlInit", None))
        self.init_calls += 1
        if self.init_error is not None:
            self._raise(self.init_error)
        self._refcount += 1

    def nvmlShutdown(self) -> None:
        self.calls.append(("nvmlShutdown", None))
        self.shutdown_calls += 1
        self._require_init()
        self._refcount -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._require_init()
        self.calls.append(("nvmlDeviceGetCount", None))
        if self.count_error is not None:
            self._raise(self.count_error)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._require_init()
        self.calls.append(("nvmlDeviceGetHandleByIndex", index))
        if not 0 <= index < len(self.gpus):
            self._raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        err = self.gpus[index].errors.get("nvmlDeviceGetHandleByIndex")
        if err is not None:
            self._raise(err)
        return FakeHandle(index)

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._device("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        return self._device("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetMigMode(self, device: FakeHandle) -> list[int]:
        g = self._device("nvmlDeviceGetMigMode", device)
        if g.mig is None:
            self._raise(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [int(g.mig), int(g.mig)]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        g = self._device("nvmlDeviceGetTotalEnergyConsumption", handle)
        if not g.energy_counter:
            self._raise(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(g.energy_mj)

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        g = self._device("nvmlDeviceGetPowerUsage", handle)
        if not g.power_usage:
            self._raise(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(g.power_mw if g.power_usage_mw is None else g.power_usage_mw)

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, fieldIds: list[Any]) -> Any:
        g = self._device("nvmlDeviceGetFieldValues", handle)
        values = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
        for i, field_id in enumerate(fieldIds):
            try:
                (values[i].fieldId, values[i].scopeId) = field_id
            except TypeError:
                values[i].fieldId = field_id
            v = values[i]
            v.timestamp = int(self.clock_s * 1e6)
            if v.fieldId == pynvml.NVML_FI_DEV_POWER_INSTANT and g.power_instant:
                if g.field_error is not None:
                    v.nvmlReturn = g.field_error
                    continue
                v.nvmlReturn = pynvml.NVML_SUCCESS
                v.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                v.value.uiVal = ctypes.c_uint(int(g.power_mw)).value
            else:
                # NVML answers an unknown or unsupported field in its own entry, not the call
                v.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values

    def nvmlDeviceGetProcessUtilization(self, handle: FakeHandle, timeStamp: int) -> list[Any]:
        g = self._device("nvmlDeviceGetProcessUtilization", handle)
        newest: dict[int, tuple[int, int, int, int]] = {}
        for sample in g.samples:
            if sample[0] > timeStamp:
                newest[sample[1]] = sample  # one per process: its newest
        if not newest:
            self._raise(pynvml.NVML_ERROR_NOT_FOUND)
        out = (pynvml.c_nvmlProcessUtilizationSample_t * len(newest))()
        for o, (ts, pid, sm, mem) in zip(out, sorted(newest.values())):
            o.pid, o.timeStamp, o.smUtil, o.memUtil, o.encUtil, o.decUtil = pid, ts, sm, mem, 0, 0
        return out[0:len(newest)]  # pynvml returns a list slice of the ctypes array

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[Any]:
        g = self._device("nvmlDeviceGetComputeRunningProcesses", handle)
        pids = g.holders if g.holders is not None else set(g.busy)
        return [pynvml.nvmlStructToFriendlyObject(pynvml.c_nvmlProcessInfo_t(
                    pid=pid, usedGpuMemory=512 << 20, gpuInstanceId=_NO_INSTANCE,
                    computeInstanceId=_NO_INSTANCE))
                for pid in sorted(pids)]
