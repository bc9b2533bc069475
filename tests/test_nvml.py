"""NVML collector, driven through the NVML shim (tests/nvml_shim.py): no GPU needed."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys

import pynvml
import pytest

from greenprof import collectors
from greenprof.collectors import nvml
from greenprof.collectors.base import Collector, SensorStatus
from greenprof.errors import (
    GpuLost,
    MigUnsupported,
    NvmlDriverNotLoaded,
    NvmlLibraryNotFound,
    NvmlNoPermission,
    NvmlNotSupported,
    SensorLost,
    SensorPermissionError,
    SensorUnavailable,
    UsageError,
)

try:  # tests/ run as rootdir-relative modules or, with a tests/__init__.py, as a package
    from nvml_shim import FakeGpu, NvmlShim
    from powercap_fake import build as build_powercap
except ImportError:  # pragma: no cover
    from tests.nvml_shim import FakeGpu, NvmlShim
    from tests.powercap_fake import build as build_powercap

UUID_A = "GPU-aaaa0000-0000-0000-0000-000000000000"
UUID_B = "GPU-bbbb1111-1111-1111-1111-111111111111"
UUID_C = "GPU-abcd2222-2222-2222-2222-222222222222"


@pytest.fixture(autouse=True)
def _no_cuda_env(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


@pytest.fixture
def shim_clock(monkeypatch):
    """Make the collector's clock the shim's simulated clock."""

    def use(shim: NvmlShim) -> NvmlShim:
        monkeypatch.setattr(nvml, "_clock", lambda: shim.clock_s)
        return shim

    return use


def status(d, domain: str) -> SensorStatus:
    (s,) = [s for s in d.statuses if s.domain == domain]
    return s


def three_gpus() -> list[FakeGpu]:
    return [FakeGpu(name="NVIDIA A100-SXM4-40GB", uuid=UUID_A),
            FakeGpu(name="NVIDIA A100-SXM4-40GB", uuid=UUID_B),
            FakeGpu(name="NVIDIA A100-SXM4-40GB", uuid=UUID_C)]


# --- constants and error mapping ------------------------------------------------------------


def test_nvml_codes_match_pynvml():
    for name in ("NVML_SUCCESS", "NVML_ERROR_UNINITIALIZED", "NVML_ERROR_INVALID_ARGUMENT",
                 "NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_NO_PERMISSION", "NVML_ERROR_NOT_FOUND",
                 "NVML_ERROR_DRIVER_NOT_LOADED", "NVML_ERROR_LIBRARY_NOT_FOUND",
                 "NVML_ERROR_FUNCTION_NOT_FOUND", "NVML_ERROR_GPU_IS_LOST",
                 "NVML_ERROR_RESET_REQUIRED", "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
                 "NVML_DEVICE_MIG_ENABLE"):
        assert getattr(nvml, name) == getattr(pynvml, name), name


@pytest.mark.parametrize("code, cls", [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, NvmlLibraryNotFound),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, NvmlDriverNotLoaded),
    (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, NvmlDriverNotLoaded),
    (pynvml.NVML_ERROR_NOT_SUPPORTED, NvmlNotSupported),
    (pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, NvmlNotSupported),
    (pynvml.NVML_ERROR_NO_PERMISSION, NvmlNoPermission),
    (pynvml.NVML_ERROR_GPU_IS_LOST, GpuLost),
    (pynvml.NVML_ERROR_UNKNOWN, SensorUnavailable),
])
def test_map_nvml_error(code, cls):
    err = pynvml.NVMLError(code)
    assert type(err) is not pynvml.NVMLError  # pynvml hands back the NVMLError_* subclass
    mapped = nvml.map_nvml_error(err, "gpu-3 energy counter")
    assert type(mapped) is cls
    msg = str(mapped)
    assert "\n" not in msg and msg
    if code not in (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
                    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH):
        assert msg.startswith("gpu-3 energy counter: ")


def test_gpu_lost_is_a_sensor_lost():
    assert isinstance(nvml.map_nvml_error(pynvml.NVMLError_GpuIsLost(), "x"), SensorLost)
    assert isinstance(nvml.map_nvml_error(pynvml.NVMLError_NoPermission(), "x"),
                      SensorPermissionError)


# --- Volta+: the energy counter -------------------------------------------------------------


def test_counter_gpu_energy_in_joules_from_mj_deltas():
    g = FakeGpu(name="Tesla V100-SXM2-16GB", uuid=UUID_A, power_mw=250_000)
    shim = NvmlShim([g])
    d = nvml.discover(shim)

    st = status(d, "gpu-0")
    assert st.available and st.in_default_set and st.method == "measured"
    assert st.source == "nvml" and not st.why_not
    assert "Tesla V100-SXM2-16GB" in st.detail and UUID_A in st.detail
    assert "nvmlDeviceGetTotalEnergyConsumption" in st.detail and "20-100 ms" in st.detail

    c = d.collectors["gpu-0"]
    assert isinstance(c, nvml.NvmlEnergyCollector) and isinstance(c, Collector)
    assert d.default_set() == [c]
    assert (c.source, c.method, c.domain) == ("nvml", "measured", "gpu-0")
    assert c.integrates_power is False and c.resolution_s == 0.1
    assert c.max_read_interval_s is None

    assert c.read_j() == 0.0  # relative to the counter at open, not to driver load
    shim.advance(2.0)  # 250 W x 2 s
    assert c.read_j() == pytest.approx(500.0)
    g.power_mw = 100_000
    shim.advance(0.5)  # + 100 W x 0.5 s
    assert c.poll() == pytest.approx(550.0)
    g.energy_mj += 1  # one more mJ is a thousandth of a joule
    assert c.read_j() == pytest.approx(550.001)
    d.close()


# --- pre-Volta: integrated power --------------------------------------------------------------


def test_pre_volta_power_integrated_by_trapezoid(shim_clock):
    g = FakeGpu(name="Tesla P100-PCIE-16GB", uuid=UUID_A, energy_counter=False, mig=None,
                power_mw=100_000, power_usage_mw=777_000)
    shim = shim_clock(NvmlShim([g]))
    d = nvml.discover(shim)  # first sample at t=0: 100 W
    c = d.collectors["gpu-0"]
    assert isinstance(c, nvml.NvmlPowerCollector)
    assert c.integrates_power is True and c.max_read_interval_s == 0.5
    assert (c.source, c.method) == ("nvml", "measured")
    st = status(d, "gpu-0")
    assert st.available and "NVML_FI_DEV_POWER_INSTANT" in st.detail
    assert "Tesla P100-PCIE-16GB" in st.detail and UUID_A in st.detail

    g.power_mw = 200_000
    shim.advance(0.1)
    assert c.poll() == pytest.approx(0.5 * (100 + 200) * 0.1)  # 15 J
    g.power_mw = 300_000
    shim.advance(0.2)
    assert c.poll() == pytest.approx(15 + 0.5 * (200 + 300) * 0.2)  # 65 J
    assert c.read_j() == pytest.approx(65.0)

    # read_j between polls extrapolates the last power and never touches NVML
    calls_before = len(shim.calls)
    shim.advance(0.1)
    assert c.read_j() == pytest.approx(65 + 300 * 0.1)
    assert len(shim.calls) == calls_before
    # the instant field was read, never the 1 s average
    assert shim.called("nvmlDeviceGetFieldValues") == 3
    assert shim.called("nvmlDeviceGetPowerUsage") == 0
    d.close()


@pytest.mark.parametrize("fault", [
    {"power_instant": False},  # field answered NOT_SUPPORTED in its entry
    {"errors": {"nvmlDeviceGetFieldValues": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND}},
    {"field_error": pynvml.NVML_ERROR_NO_PERMISSION},
])
def test_power_usage_fallback_when_the_instant_field_fails(shim_clock, fault):
    g = FakeGpu(energy_counter=False, power_mw=999_000, power_usage_mw=150_000, **fault)
    shim = shim_clock(NvmlShim([g]))
    d = nvml.discover(shim)
    c = d.collectors["gpu-0"]
    assert "nvmlDeviceGetPowerUsage" in status(d, "gpu-0").detail
    assert "1 s average" in c.detail and c.resolution_s == 1.0
    n_fields = shim.called("nvmlDeviceGetFieldValues")
    shim.advance(0.2)
    assert c.poll() == pytest.approx(150 * 0.2)  # the PowerUsage value, not the 999 W field
    assert shim.called("nvmlDeviceGetFieldValues") == n_fields  # the field is not retried
    assert shim.called("nvmlDeviceGetPowerUsage") == 2
    d.close()


# --- typed errors before a run ----------------------------------------------------------------


@pytest.mark.parametrize("code, cls, words", [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, NvmlLibraryNotFound,
     ["libnvidia-ml.so not found", "install the NVIDIA driver"]),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, NvmlDriverNotLoaded,
     ["driver is not loaded", "nvidia-smi"]),
])
def test_nvml_unavailable_at_init(code, cls, words):
    shim = NvmlShim([FakeGpu()], init_error=code)
    d = nvml.discover(shim)
    assert d.statuses == [SensorStatus(
        source="nvml", domain="gpu", method="measured", available=False, in_default_set=False,
        why_not=str(d.errors["gpu"]))]
    assert type(d.errors["gpu"]) is cls
    for w in words:
        assert w in d.statuses[0].why_not
    assert d.collectors == {}
    assert shim.shutdown_calls == 0  # init failed: nothing to shut down


def test_pynvml_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    d = nvml.discover()
    (st,) = d.statuses
    assert st.domain == "gpu" and not st.available
    assert "pip install nvidia-ml-py" in st.why_not


def test_neither_energy_nor_power_supported():
    shim = NvmlShim([FakeGpu(name="Quadro K600", energy_counter=False, power_instant=False,
                             power_usage=False, mig=None)])
    d = nvml.discover(shim)
    st = status(d, "gpu-0")
    assert not st.available and not st.in_default_set
    assert isinstance(d.errors["gpu-0"], NvmlNotSupported)
    assert "gpu-0 (Quadro K600) reports neither an energy counter nor power" in st.why_not
    assert d.collectors == {}
    assert shim.shutdown_calls == 1 and not shim.initialized  # nothing kept NVML open


def test_energy_counter_not_supported_is_not_an_error_when_power_works():
    shim = NvmlShim([FakeGpu(errors={
        "nvmlDeviceGetTotalEnergyConsumption": pynvml.NVML_ERROR_NOT_SUPPORTED})])
    d = nvml.discover(shim)
    assert isinstance(d.collectors["gpu-0"], nvml.NvmlPowerCollector)
    assert d.errors == {}
    d.close()


@pytest.mark.parametrize("gpu_kwargs, query", [
    ({"errors": {"nvmlDeviceGetTotalEnergyConsumption": pynvml.NVML_ERROR_NO_PERMISSION}},
     "gpu-0 energy counter"),
    ({"energy_counter": False, "power_instant": False,
      "errors": {"nvmlDeviceGetPowerUsage": pynvml.NVML_ERROR_NO_PERMISSION}},
     "gpu-0 power reading"),
])
def test_no_permission(gpu_kwargs, query):
    shim = NvmlShim([FakeGpu(**gpu_kwargs)])
    d = nvml.discover(shim)
    st = status(d, "gpu-0")
    err = d.errors["gpu-0"]
    assert isinstance(err, NvmlNoPermission) and isinstance(err, SensorPermissionError)
    assert not st.available and st.why_not.startswith(query + ": NVML refused the query")
    assert "/dev/nvidia" in st.why_not
    assert shim.shutdown_calls == 1


def test_gpu_lost_at_discovery_leaves_the_other_gpus():
    gpus = three_gpus()
    gpus[1].errors["nvmlDeviceGetHandleByIndex"] = pynvml.NVML_ERROR_GPU_IS_LOST
    shim = NvmlShim(gpus)
    d = nvml.discover(shim)
    assert sorted(d.collectors) == ["gpu-0", "gpu-2"]
    assert isinstance(d.errors["gpu-1"], GpuLost)
    assert "gpu-1: the GPU is lost" in status(d, "gpu-1").why_not
    assert [s.domain for s in d.statuses] == ["gpu-0", "gpu-1", "gpu-2"]
    d.close()
    assert shim.shutdown_calls == 1


def test_device_count_failure():
    shim = NvmlShim([FakeGpu()], count_error=pynvml.NVML_ERROR_NO_PERMISSION)
    d = nvml.discover(shim)
    assert isinstance(d.errors["gpu"], NvmlNoPermission)
    assert shim.shutdown_calls == 1


def test_no_gpu():
    shim = NvmlShim([])
    d = nvml.discover(shim)
    (st,) = d.statuses
    assert st.domain == "gpu" and "NVML found no GPU" in st.why_not
    assert shim.shutdown_calls == 1


# --- mid-run failures ---------------------------------------------------------------------------


def test_gpu_lost_during_a_run_energy_counter():
    g = FakeGpu()
    shim = NvmlShim([g])
    d = nvml.discover(shim)
    c = d.collectors["gpu-0"]
    shim.advance(1.0)
    assert c.read_j() == pytest.approx(300.0)
    g.lost_at_s = 1.5
    shim.advance(1.0)
    with pytest.raises(GpuLost, match="gpu-0 energy counter: the GPU is lost") as ei:
        c.read_j()
    assert isinstance(ei.value, SensorLost)
    with pytest.raises(GpuLost):
        c.poll()
    d.close()
    assert shim.shutdown_calls == 1


def test_gpu_lost_after_n_calls_power(shim_clock):
    g = FakeGpu(energy_counter=False, power_instant=False)
    shim = shim_clock(NvmlShim([g]))
    d = nvml.discover(shim)
    c = d.collectors["gpu-0"]
    g.lost_after_calls = g.calls + 1  # one more reading works, then the GPU falls off the bus
    shim.advance(0.1)
    assert c.poll() == pytest.approx(30.0)
    shim.advance(0.1)
    with pytest.raises(GpuLost, match="gpu-0 power reading"):
        c.poll()
    # read_j no longer extrapolates a dead GPU
    with pytest.raises(GpuLost):
        c.read_j()


def test_power_instant_field_lost_mid_run(shim_clock):
    g = FakeGpu(energy_counter=False)
    shim = shim_clock(NvmlShim([g]))
    c = nvml.discover(shim).collectors["gpu-0"]
    g.field_error = pynvml.NVML_ERROR_GPU_IS_LOST  # per-field failure in the returned struct
    with pytest.raises(GpuLost, match="gpu-0"):
        c.poll()


def test_other_nvml_error_mid_run_is_sensor_lost():
    g = FakeGpu()
    shim = NvmlShim([g])
    c = nvml.discover(shim).collectors["gpu-0"]
    g.errors["nvmlDeviceGetTotalEnergyConsumption"] = pynvml.NVML_ERROR_UNKNOWN
    with pytest.raises(SensorLost, match="gpu-0 energy counter") as ei:
        c.read_j()
    assert not isinstance(ei.value, GpuLost)


def test_energy_counter_reset_mid_run_is_gpu_lost():
    g = FakeGpu()
    shim = NvmlShim([g])
    c = nvml.discover(shim).collectors["gpu-0"]
    g.energy_mj = 10.0  # driver reloaded: counts from zero again
    with pytest.raises(GpuLost, match="went backwards"):
        c.read_j()


# --- CUDA_VISIBLE_DEVICES ------------------------------------------------------------------------


def test_cuda_visible_devices_indices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    shim = NvmlShim(three_gpus())
    d = nvml.discover(shim)
    assert sorted(d.collectors) == ["gpu-0", "gpu-2"]
    hidden = status(d, "gpu-1")
    assert not hidden.available and "hidden by CUDA_VISIBLE_DEVICES='2,0'" in hidden.why_not
    assert "(CUDA device 0)" in status(d, "gpu-2").detail  # CUDA ordinal differs from index
    assert "(CUDA device 1)" in status(d, "gpu-0").detail
    # the hidden GPU was never queried
    assert all(idx != 1 for _, idx in shim.calls)
    d.close()


def test_cuda_visible_devices_uuid_prefix(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
    d = nvml.discover(NvmlShim(three_gpus()))
    assert list(d.collectors) == ["gpu-1"]
    assert UUID_B in status(d, "gpu-1").detail
    assert "CUDA device" in status(d, "gpu-1").detail  # CUDA ordinal 0 != NVML index 1
    d.close()


@pytest.mark.parametrize("value", ["", "-1", "GPU-ffff"])
def test_cuda_visible_devices_hides_all(monkeypatch, value):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    shim = NvmlShim(three_gpus())
    d = nvml.discover(shim)
    (st,) = d.statuses
    assert st.domain == "gpu" and not st.available
    assert f"CUDA_VISIBLE_DEVICES={value!r} hides all GPUs" in st.why_not
    assert d.collectors == {}
    assert shim.shutdown_calls == 1


@pytest.mark.parametrize("value, expected", [
    ("0,1,2", [0, 1, 2]),
    ("1, 0", [1, 0]),
    ("0,-1,2", [0]),  # CUDA stops at the first invalid entry
    ("0,7,1", [0]),  # out of range
    ("1,1", [1]),
    ("GPU-a", []),  # ambiguous prefix (GPU-aaaa..., GPU-abcd...)
    ("GPU-AB,0", [2, 0]),
    ("MIG-abcd/1/2", []),
    ("", []),
])
def test_parse_cuda_visible_devices(value, expected):
    uuids = [UUID_A, UUID_B, UUID_C]
    assert nvml.parse_cuda_visible_devices(value, 3, uuids.__getitem__) == expected


# --- MIG -------------------------------------------------------------------------------------------


def test_mig_refused_and_pre_ampere_fine():
    shim = NvmlShim([FakeGpu(name="NVIDIA A100-SXM4-80GB", uuid=UUID_A, mig=1),
                     FakeGpu(name="Tesla V100", uuid=UUID_B, mig=None),  # NOT_SUPPORTED
                     FakeGpu(name="NVIDIA A100-SXM4-80GB", uuid=UUID_C, mig=0)])
    d = nvml.discover(shim)
    st = status(d, "gpu-0")
    assert not st.available and not st.in_default_set
    assert st.why_not == (
        "gpu-0 is in MIG mode: NVML reports energy per physical GPU, not per MIG instance; "
        "greenprof refuses to attribute it (disable MIG or measure the whole GPU)")
    assert isinstance(d.errors["gpu-0"], MigUnsupported)
    assert UUID_A in st.detail
    assert sorted(d.collectors) == ["gpu-1", "gpu-2"]
    assert shim.called("nvmlDeviceGetTotalEnergyConsumption") == 2  # never read on gpu-0
    d.close()


# --- import has no side effects -------------------------------------------------------------


def test_import_does_not_import_pynvml():
    code = ("import sys, greenprof.collectors.nvml; "
            "assert 'pynvml' not in sys.modules, 'pynvml imported at module import'; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_calls_nothing_and_discover_imports_pynvml_lazily(monkeypatch):
    shim = NvmlShim([FakeGpu()])
    monkeypatch.setitem(sys.modules, "pynvml", shim)
    monkeypatch.delitem(sys.modules, "greenprof.collectors.nvml")
    fresh = importlib.import_module("greenprof.collectors.nvml")
    assert fresh is not nvml
    assert shim.calls == [] and shim.init_calls == 0  # importing called nothing
    d = fresh.discover()  # no argument: `import pynvml` now, which is the shim
    assert shim.init_calls == 1 and "gpu-0" in d.collectors
    d.close()
    assert shim.shutdown_calls == 1


# --- reference-counted shutdown -------------------------------------------------------------


def test_shutdown_once_after_all_collectors_close():
    shim = NvmlShim([FakeGpu(uuid=UUID_A), FakeGpu(uuid=UUID_B, energy_counter=False)])
    d = nvml.discover(shim)
    c0, c1 = d.collectors["gpu-0"], d.collectors["gpu-1"]
    assert shim.init_calls == 1 and shim.shutdown_calls == 0 and shim.initialized
    c0.close()
    c0.close()  # idempotent
    assert shim.shutdown_calls == 0
    with pytest.raises(SensorLost, match="closed"):
        c0.read_j()
    assert c1.poll() >= 0.0  # the other collector still reads
    c1.close()
    assert shim.shutdown_calls == 1 and not shim.initialized
    d.close()  # closing everything again changes nothing
    assert shim.shutdown_calls == 1


def test_each_discover_is_its_own_session():
    shim = NvmlShim([FakeGpu()])
    d1, d2 = nvml.discover(shim), nvml.discover(shim)
    assert shim.init_calls == 2
    d1.close()
    assert d2.collectors["gpu-0"].read_j() == 0.0  # NVML still initialised for d2
    d2.close()
    assert shim.shutdown_calls == 2 and not shim.initialized


# --- the real pynvml on this machine --------------------------------------------------------


def test_real_pynvml_without_a_gpu_reports_unavailable():
    d = nvml.discover()  # the real pynvml
    if d.collectors:
        d.close()
        pytest.skip("a real NVIDIA GPU is present")
    assert d.statuses, "discover() must say why there is no GPU"
    for st in d.statuses:
        assert not st.available and not st.in_default_set
        assert st.source == "nvml" and st.why_not and "\n" not in st.why_not
    assert all(isinstance(e, (SensorUnavailable, SensorLost)) for e in d.errors.values())


# --- this process's share of a GPU -------------------------------------------------------------

ME = os.getpid()
OTHER, THIRD = ME + 1000, ME + 2000  # any PIDs but ours


@pytest.fixture
def host_pids(monkeypatch):
    """Run as if in the host's PID namespace, where NVML's PIDs are ours, wherever tests run."""
    monkeypatch.setattr(nvml, "_in_child_pid_namespace", lambda: False)


def test_gpu_scope_and_uncertainty_fields():
    shim = NvmlShim([FakeGpu(uuid=UUID_A), FakeGpu(uuid=UUID_B, energy_counter=False)])
    d = nvml.discover(shim)
    assert len(d.collectors) == 2
    for c in d.collectors.values():
        assert c.scope == "gpu"  # the counter sees the whole GPU, not this process
        assert c.uncertain_count == 0 and c.uncertain_reason is None
    d.close()


def test_shim_process_utilisation_like_pynvml():
    shim = NvmlShim([FakeGpu()])
    shim.nvmlInit()
    h = shim.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotFound):  # no sample yet
        shim.nvmlDeviceGetProcessUtilization(h, 0)
    shim.set_busy(0, {ME: 60, OTHER: 20}, mem={ME: 5})
    shim.advance(0.5)  # three sampling ticks at 1/6 s
    samples = shim.nvmlDeviceGetProcessUtilization(h, 0)
    assert isinstance(samples, list)
    assert all(type(s) is pynvml.c_nvmlProcessUtilizationSample_t for s in samples)
    assert {(s.pid, s.smUtil, s.memUtil) for s in samples} == {(ME, 60, 5), (OTHER, 20, 0)}
    newest = max(s.timeStamp for s in samples)  # one per process: its newest, in CPU µs
    with pytest.raises(pynvml.NVMLError_NotFound):
        shim.nvmlDeviceGetProcessUtilization(h, newest)
    assert [p.pid for p in shim.nvmlDeviceGetComputeRunningProcesses(h)] == sorted([ME, OTHER])
    shim.nvmlShutdown()


def test_process_share_busy_and_idle_gpu(shim_clock, host_pids):
    shim = shim_clock(NvmlShim([FakeGpu(uuid=UUID_A), FakeGpu(uuid=UUID_B)]))
    d = nvml.discover(shim)
    busy, idle = d.collectors["gpu-0"], d.collectors["gpu-1"]
    shim.set_busy(0, {ME: 60, OTHER: 20})
    shim.set_idle(1)
    shim.advance(0.5)

    share, why = busy.process_share()
    assert share == pytest.approx(0.75)
    assert why.startswith("NVML per-process SM utilisation: this process 60 of 80")
    assert "\n" not in why
    # no sample yet: NVML may just not have refreshed (every 1/6-1 s), so not idle yet; but this
    # process holds no context on that GPU (a CPU model on a GPU host): none of its energy
    share, why = idle.process_share()
    assert share == 0.0 and why.startswith("no NVML per-process sample yet")
    assert why.endswith("; this process holds no context on the GPU")
    shim.advance(1.5)  # 1.5 NVML periods of silence (1 s until the period is known): idle
    assert idle.process_share() == (0.0, "idle: no process used the GPU; this process holds no context on the GPU")
    assert nvml.IDLE_REASON == "idle: no process used the GPU"
    shim.gpus[1].holders = {ME}  # idle, but this process holds it (a loaded CUDA model): all of it
    shim.advance(1.5)
    assert idle.process_share() == (1.0, "idle: no process used the GPU; only this process holds the GPU")
    shim.gpus[1].holders = {ME, OTHER}  # idle and held by two: who should pay is not known
    shim.advance(1.5)
    share, why = idle.process_share()
    assert share is None and why == "idle: no process used the GPU; 1 other process holds the GPU too"
    shim.gpus[1].holders = None
    assert busy.process_share()[0] == pytest.approx(0.75)  # the same load all along

    # only samples newer than the previous call count (lastSeenTimeStamp is kept)
    shim.set_busy(0, {ME: 10, OTHER: 90})
    shim.advance(0.5)
    assert busy.process_share()[0] == pytest.approx(0.10)
    # this process not on the GPU at all: share 0
    shim.set_busy(0, {OTHER: 50, THIRD: 50})
    shim.advance(0.5)
    share, why = busy.process_share()
    assert share == 0.0 and "2 other processes" in why
    d.close()


def test_process_share_skips_samples_from_before_open(shim_clock, host_pids):
    shim = shim_clock(NvmlShim([FakeGpu()]))
    shim.set_busy(0, {OTHER: 100})
    shim.advance(1.0)  # another process's work, before greenprof opened the GPU
    c = nvml.discover(shim).collectors["gpu-0"]
    shim.set_busy(0, {ME: 40})
    shim.advance(0.5)
    assert c.process_share()[0] == 1.0
    c.close()


def test_process_share_at_the_sampler_rate_carries_between_nvml_samples(shim_clock, host_pids):
    shim = shim_clock(NvmlShim([FakeGpu()]))  # NVML refreshes every 1/6 s
    c = nvml.discover(shim).collectors["gpu-0"]
    shim.set_busy(0, {ME: 30, OTHER: 10})
    got = []
    for _ in range(20):  # the meter's sampler: every 0.1 s for 2 s
        shim.advance(0.1)
        got.append(c.process_share())
    # at 0.1 s NVML has not sampled yet (first tick at 1/6 s): unknown, not idle
    assert got[0][0] is None and got[0][1].startswith("not shared-checked: no NVML")
    assert all(share == pytest.approx(0.75) for share, _ in got[1:]), got
    assert any(why.startswith("carried: no new NVML sample") for _, why in got)
    shim.set_idle(0)
    after = []
    for _ in range(4):
        shim.advance(0.1)
        after.append(c.process_share())
    # carried for at most 1.5 NVML periods (learned: 1/6 s), then idle
    assert after[0][0] == pytest.approx(0.75)
    assert after[-1] == (0.0, nvml.IDLE_REASON + "; this process holds no context on the GPU")
    c.close()


def test_process_share_memory_only_traffic(shim_clock, host_pids):
    shim = shim_clock(NvmlShim([FakeGpu()]))
    c = nvml.discover(shim).collectors["gpu-0"]
    shim.set_busy(0, {ME: 0, OTHER: 0}, mem={ME: 30, OTHER: 10})  # copies, no kernels
    shim.advance(0.5)
    share, why = c.process_share()
    assert share == pytest.approx(0.75) and "memory utilisation" in why
    c.close()


def test_process_share_in_a_pid_namespace(shim_clock, monkeypatch):
    monkeypatch.setattr(nvml, "_in_child_pid_namespace", lambda: True)
    shim = shim_clock(NvmlShim([FakeGpu()]))
    c = nvml.discover(shim).collectors["gpu-0"]
    shim.set_busy(0, {OTHER: 50})  # our own host PID, which we cannot recognise
    shim.advance(0.5)
    share, why = c.process_share()
    assert share is None
    assert why.startswith("not shared-checked: NVML reports host PIDs") and "--pid=host" in why
    c.close()


NOT_CHECKED_UNSUPPORTED = ("not shared-checked: NVML reports no per-process utilization on "
                           "this GPU/driver (")


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_NOT_SUPPORTED,
                                  pynvml.NVML_ERROR_NO_PERMISSION,
                                  pynvml.NVML_ERROR_FUNCTION_NOT_FOUND])
def test_process_share_not_supported(code, host_pids):
    g = FakeGpu(errors={"nvmlDeviceGetProcessUtilization": code}, holders={ME, OTHER})
    shim = NvmlShim([g])
    c = nvml.discover(shim).collectors["gpu-0"]
    share, why = c.process_share()
    assert share is None
    assert why.startswith(NOT_CHECKED_UNSUPPORTED + "nvmlDeviceGetProcessUtilization: ")
    assert why.endswith("; 1 other process holds the GPU") and "\n" not in why
    asked = shim.called("nvmlDeviceGetProcessUtilization")
    c.process_share()
    assert shim.called("nvmlDeviceGetProcessUtilization") == asked  # not asked again

    g.holders = {ME}  # who holds the GPU is the next best evidence
    assert c.process_share() == (1.0, "only this process holds the GPU")
    g.holders = {OTHER}  # held by another process only: this one has no part in it
    assert c.process_share() == (0.0, "this process holds no context on the GPU (1 other process holds it)")
    g.holders = set()
    assert c.process_share() == (0.0, nvml.IDLE_REASON + " (no process holds it)")
    g.errors["nvmlDeviceGetComputeRunningProcesses"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    share, why = c.process_share()
    assert share is None and why.startswith(NOT_CHECKED_UNSUPPORTED) and why.endswith(")")
    c.close()


def test_process_share_with_a_pynvml_that_lacks_the_functions(host_pids):
    shim = NvmlShim([FakeGpu(holders={ME})], missing=["nvmlDeviceGetProcessUtilization"])
    c = nvml.discover(shim).collectors["gpu-0"]
    assert c.process_share() == (1.0, nvml.ONLY_THIS_PROCESS)
    c.close()
    shim = NvmlShim([FakeGpu(holders={ME})], missing=["nvmlDeviceGetProcessUtilization",
                                                       "nvmlDeviceGetComputeRunningProcesses"])
    c = nvml.discover(shim).collectors["gpu-0"]
    assert c.process_share() == (None, NOT_CHECKED_UNSUPPORTED
                                 + "this pynvml has no nvmlDeviceGetProcessUtilization)")
    c.close()


def test_process_share_never_raises(shim_clock, host_pids, monkeypatch):
    g = FakeGpu()
    shim = shim_clock(NvmlShim([g]))
    c = nvml.discover(shim).collectors["gpu-0"]
    g.lost_at_s = 1.0
    shim.advance(1.0)
    share, why = c.process_share()
    assert share is None
    assert why.startswith("not shared-checked: gpu-0 per-process utilisation: the GPU is lost")

    def broken(handle, ts):
        raise RuntimeError("driver\nexploded")

    monkeypatch.setattr(shim, "nvmlDeviceGetProcessUtilization", broken, raising=False)
    assert c.process_share() == (
        None, "not shared-checked: gpu-0 per-process utilisation: RuntimeError: driver exploded")
    c.close()
    assert c.process_share() == (None, "not shared-checked: gpu-0 collector is closed")


def test_power_gap_bridged_by_holding_the_last_power_and_counted(shim_clock):
    g = FakeGpu(energy_counter=False, power_mw=100_000)
    shim = shim_clock(NvmlShim([g]))
    c = nvml.discover(shim).collectors["gpu-0"]
    shim.advance(2.0)  # a long gap before anyone read the counter: no figure depends on it
    g.power_mw = 300_000
    assert c.poll() == pytest.approx(200.0)  # 100 W held for 2 s, then the step to 300 W
    assert c.uncertain_count == 0 and c.uncertain_reason is None
    assert c.read_j() == pytest.approx(200.0)
    shim.advance(0.1)
    assert c.poll() == pytest.approx(230.0)
    assert c.uncertain_count == 0

    shim.advance(0.5)
    assert c.read_j() == pytest.approx(380.0)  # extrapolated: 300 W for 0.5 s
    shim.advance(0.5)  # the sampler stalled for 1 s (> max_read_interval_s = 0.5)
    g.power_mw = 100_000
    assert c.poll() == pytest.approx(530.0)  # consistent with what read_j said in the gap
    assert c.uncertain_count == 1
    assert c.uncertain_reason == (
        "gpu-0: 1.00 s between power samples (more than 0.5 s): the integration bridged the "
        "gap assuming the last power (300.0 W) held")
    c.close()


# --- which domains a run on a device is charged -------------------------------------------------

CPU_ENV = {"GREENPROF_CPU_TDP_W": "65"}  # the CPU estimate without CodeCarbon's table


def rapl_root(tmp_path, **kw) -> str:
    return str(build_powercap(tmp_path / "powercap", **kw).root)


def domains(chosen) -> list[str]:
    return [c.domain for c in chosen]


def close_all(chosen) -> None:
    for c in chosen:
        c.close()


def test_cpu_run_on_a_two_gpu_host_charges_no_gpu(tmp_path):
    shim = NvmlShim([FakeGpu(uuid=UUID_A), FakeGpu(uuid=UUID_B)])
    root = rapl_root(tmp_path, sockets=1, dram=True)
    auto = collectors.select("auto", powercap_root=root, nvml=shim, env=CPU_ENV)
    assert domains(auto) == ["cpu-package-0", "dram-0", "gpu-0", "gpu-1"]
    close_all(auto)

    chosen = collectors.select_for_device("cpu", powercap_root=root, nvml=shim, env=CPU_ENV)
    assert domains(chosen) == ["cpu-package-0", "dram-0"]
    assert not shim.initialized  # the GPU collectors were closed: NVML shut down
    close_all(chosen)


@pytest.mark.parametrize("powercap, expected", [
    ({}, ["cpu-estimate"]),  # no RAPL
    ({"sockets": 0, "dram": False, "psys": True}, ["cpu-estimate"]),  # psys only: not default
    ({"sockets": 2, "dram": True, "psys": True}, ["cpu-package-0", "dram-0", "cpu-package-1",
                                                  "dram-1"]),
])
def test_cpu_run_charges_the_default_sets_cpu_domains(tmp_path, powercap, expected):
    root = rapl_root(tmp_path, **powercap) if powercap else str(tmp_path / "none")
    shim = NvmlShim([FakeGpu(uuid=UUID_A), FakeGpu(uuid=UUID_B)])
    chosen = collectors.select_for_device("cpu", powercap_root=root, nvml=shim, env=CPU_ENV)
    assert domains(chosen) == expected
    close_all(chosen)


def test_cuda_run_charges_its_own_gpu_and_the_host_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    shim = NvmlShim([FakeGpu(uuid=UUID_A), FakeGpu(uuid=UUID_B)])
    assert collectors.gpu_domain_for_cuda_device(0, nvml=shim) == "gpu-1"
    root = rapl_root(tmp_path, sockets=1, dram=True)
    chosen = collectors.select_for_device("cuda", 0, powercap_root=root, nvml=shim, env=CPU_ENV)
    assert domains(chosen) == ["cpu-package-0", "dram-0", "gpu-1"]
    gpu = chosen[-1]
    assert gpu.gpu.uuid == UUID_B and gpu.gpu.cuda_ordinal == 0
    close_all(chosen)
    assert not shim.initialized and shim.init_calls == shim.shutdown_calls


@pytest.mark.parametrize("device, device_id, expected", [
    ("cuda", 1, "gpu-1"),
    ("cuda:1", 0, "gpu-1"),
    ("CUDAExecutionProvider", 0, "gpu-0"),
])
def test_cuda_run_charges_only_its_gpu(tmp_path, device, device_id, expected):
    shim = NvmlShim([FakeGpu(uuid=UUID_A), FakeGpu(uuid=UUID_B)])
    chosen = collectors.select_for_device(device, device_id, powercap_root=str(tmp_path / "x"),
                                          nvml=shim, env=CPU_ENV)
    assert domains(chosen) == [expected, "cpu-estimate"]
    close_all(chosen)


@pytest.mark.parametrize("cvd, expected", [
    (None, ["gpu-0", "gpu-1", "gpu-2"]),
    ("2,0", ["gpu-2", "gpu-0"]),
    ("GPU-bbbb,GPU-abcd", ["gpu-1", "gpu-2"]),
    ("1,-1,2", ["gpu-1"]),  # CUDA stops at the first invalid entry
])
def test_gpu_domain_for_cuda_device_names_what_discovery_names(monkeypatch, cvd, expected):
    env = {} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd}
    shim = NvmlShim(three_gpus())
    got = [collectors.gpu_domain_for_cuda_device(k, env, nvml=shim) for k in range(len(expected))]
    assert got == expected
    with pytest.raises(UsageError, match=f"CUDA device {len(expected)} does not exist"):
        collectors.gpu_domain_for_cuda_device(len(expected), env, nvml=shim)
    assert shim.init_calls == shim.shutdown_calls and not shim.initialized

    if cvd is not None:  # discovery reads os.environ
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cvd)
    d = nvml.discover(shim)
    by_ordinal = {c.gpu.index if c.gpu.cuda_ordinal is None else c.gpu.cuda_ordinal: c.domain
                  for c in d.collectors.values()}
    assert [by_ordinal[k] for k in range(len(expected))] == expected
    d.close()


@pytest.mark.parametrize("device_id, env, gpus, words", [
    (0, {"CUDA_VISIBLE_DEVICES": "-1"}, None, "CUDA_VISIBLE_DEVICES='-1' hides all GPUs"),
    (3, {}, None, "NVML sees 3 GPUs (device_id 0-2); check `nvidia-smi -L`"),
    (1, {"CUDA_VISIBLE_DEVICES": "2"}, None, "exposes 1 GPU (device_id 0-0)"),
    (-1, {}, None, "device_id must be a whole number >= 0"),
    (0, {}, [FakeGpu(name="NVIDIA GeForce RTX 4090", uuid=UUID_A),
             FakeGpu(name="NVIDIA T400", uuid=UUID_B)], "set CUDA_DEVICE_ORDER=PCI_BUS_ID"),
    (0, {"CUDA_VISIBLE_DEVICES": "1,0"}, [FakeGpu(name="NVIDIA GeForce RTX 4090", uuid=UUID_A),
                                          FakeGpu(name="NVIDIA T400", uuid=UUID_B)],
     "CUDA numbers them fastest first"),
])
def test_gpu_domain_for_cuda_device_refuses_with_one_line(device_id, env, gpus, words):
    shim = NvmlShim(gpus if gpus is not None else three_gpus())
    with pytest.raises(UsageError) as ei:
        collectors.gpu_domain_for_cuda_device(device_id, env, nvml=shim)
    assert words in str(ei.value) and "\n" not in str(ei.value)
    assert shim.init_calls == shim.shutdown_calls


def test_mixed_gpus_map_when_the_order_is_unambiguous():
    gpus = [FakeGpu(name="NVIDIA GeForce RTX 4090", uuid=UUID_A),
            FakeGpu(name="NVIDIA T400", uuid=UUID_B)]
    pci = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert collectors.gpu_domain_for_cuda_device(1, pci, nvml=NvmlShim(gpus)) == "gpu-1"
    by_uuid = {"CUDA_VISIBLE_DEVICES": "GPU-bbbb,GPU-aaaa"}
    assert collectors.gpu_domain_for_cuda_device(0, by_uuid, nvml=NvmlShim(gpus)) == "gpu-1"


def test_gpu_domain_for_cuda_device_without_nvml():
    shim = NvmlShim([FakeGpu()], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(UsageError, match="cannot tell which GPU CUDA device 0 is: the NVIDIA "
                                         "kernel driver is not loaded"):
        collectors.gpu_domain_for_cuda_device(0, nvml=shim)


def test_cuda_run_whose_gpu_cannot_be_measured(tmp_path):
    shim = NvmlShim([FakeGpu(uuid=UUID_A, mig=1), FakeGpu(uuid=UUID_B)])
    with pytest.raises(SensorUnavailable, match="the CUDA run's GPU gpu-0 cannot be measured: "
                                                "gpu-0 is in MIG mode") as ei:
        collectors.select_for_device("cuda", 0, powercap_root=str(tmp_path / "x"), nvml=shim,
                                     env=CPU_ENV)
    assert "--collectors" in str(ei.value)
    assert not shim.initialized  # gpu-1's collector, opened by discovery, was closed


def test_select_for_device_mapping_error_opens_nothing(tmp_path):
    shim = NvmlShim([FakeGpu(uuid=UUID_A), FakeGpu(uuid=UUID_B)])
    with pytest.raises(UsageError, match="CUDA device 5 does not exist"):
        collectors.select_for_device("cuda", 5, powercap_root=str(tmp_path / "x"), nvml=shim,
                                     env=CPU_ENV)
    assert shim.init_calls == 1 and shim.shutdown_calls == 1  # only the mapping's own session


@pytest.mark.parametrize("device, device_id, words", [
    ("rocm", 0, "greenprof picks domains for 'cpu' and 'cuda' runs"),
    ("cuda:x", 0, "write 'cpu', 'cuda' or 'cuda:<device_id>'"),
    ("cpu:0", 0, "write 'cpu', 'cuda' or 'cuda:<device_id>'"),
    ("cuda:1", 2, "disagree"),
])
def test_select_for_device_refuses_unknown_devices(device, device_id, words):
    with pytest.raises(UsageError, match=re.escape(words)):
        collectors.select_for_device(device, device_id, nvml=NvmlShim([FakeGpu()]))


def test_domains_for_device_from_statuses():
    def st(domain, source="rapl", available=True, default=True, why=""):
        return SensorStatus(source, domain, "measured", available, default, why_not=why)

    statuses = [st("cpu-package-0"), st("cpu-core-0", default=False), st("dram-0"),
                st("psys", default=False), st("gpu-0", "nvml"), st("gpu-1", "nvml"),
                st("cpu-estimate", "cpu-estimate", default=False)]
    assert collectors.domains_for_device("cpu", statuses) == ["cpu-package-0", "dram-0"]
    assert collectors.domains_for_device("cuda", statuses, "gpu-1") == [
        "cpu-package-0", "dram-0", "gpu-1"]
    with pytest.raises(UsageError, match="gpu_domain_for_cuda_device"):
        collectors.domains_for_device("cuda", statuses)
    no_nvml = [st("cpu-estimate", "cpu-estimate"),
               st("gpu", "nvml", available=False, default=False, why="NVML found no GPU")]
    with pytest.raises(SensorUnavailable, match="gpu-0 cannot be measured: NVML found no GPU"):
        collectors.domains_for_device("cuda", no_nvml, "gpu-0")


def test_missing_nvml_library_is_reported_without_importing_pynvml():
    """Where libnvidia-ml.so.1 cannot be loaded, discover() says what nvmlInit would say, without
    importing pynvml (a Meter's first start pays for every import)."""
    code = ("import sys, json; from greenprof.collectors import nvml; d = nvml.discover(); "
            "fast = ('pynvml' in sys.modules, [s.why_not for s in d.statuses], type(d.errors['gpu']).__name__); "
            "import pynvml; slow = nvml.discover(pynvml); "
            "print(json.dumps([fast, [[s.why_not for s in slow.statuses], type(slow.errors['gpu']).__name__]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0 and "KeyError" in out.stderr:
        pytest.skip("NVML loads on this machine")
    assert out.returncode == 0, out.stderr
    (imported, why_fast, cls_fast), (why_slow, cls_slow) = json.loads(out.stdout)
    if not why_fast or "libnvidia-ml.so" not in why_fast[0]:
        pytest.skip("NVML's library is present on this machine")
    assert imported is False
    assert (why_fast, cls_fast) == (why_slow, cls_slow) == (why_fast, "NvmlLibraryNotFound")
