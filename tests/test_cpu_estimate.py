import time

import pytest

from greenprof.collectors import cpu_estimate as ce
from greenprof.errors import ConfigError


@pytest.fixture()
def table():
    path = ce.codecarbon_cpu_table()
    assert path is not None and path.name == "cpu_power.csv", "CodeCarbon's CPU table must be installed"
    return path


@pytest.mark.parametrize("raw, name, tdp", [
    ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "Intel Xeon Gold 6248", 150.0),
    ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763", 280.0),
    ("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "Intel Core i7-8700", 65.0),
])
def test_tdp_lookup_reads_codecarbon_table(table, raw, name, tdp):
    assert ce.lookup_tdp(raw, table) == (name, tdp)


def test_family_name_without_model_number_is_not_matched(table):
    # "AMD EPYC" (what many VMs report) must not be matched to some arbitrary EPYC
    assert ce.lookup_tdp("AMD EPYC", table) is None


def test_codecarbon_is_not_imported(table):
    import subprocess
    import sys

    code = ("import sys; from greenprof.collectors import cpu_estimate as c; c.power_model(); "
            "print('codecarbon' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_cpu_uses_documented_default(monkeypatch):
    monkeypatch.setattr(ce, "cpu_model_name", lambda: "Imaginary CPU 9000")
    pm = ce.power_model(env={})
    assert pm.w_per_thread == ce.DEFAULT_W_PER_THREAD == 4.0
    assert pm.tdp_w is None
    assert "Imaginary CPU 9000" in pm.basis and "GREENPROF_CPU_TDP_W" in pm.basis


def test_known_cpu_splits_tdp_over_threads(monkeypatch):
    monkeypatch.setattr(ce, "cpu_model_name", lambda: "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz")
    monkeypatch.setattr(ce, "threads_per_package", lambda: 40)
    pm = ce.power_model(env={})
    assert pm.tdp_w == 150.0 and pm.threads == 40
    assert pm.w_per_thread == pytest.approx(150.0 / 40)


def test_tdp_override(monkeypatch):
    monkeypatch.setattr(ce, "threads_per_package", lambda: 8)
    pm = ce.power_model(env={"GREENPROF_CPU_TDP_W": "64"})
    assert pm.w_per_thread == pytest.approx(8.0)
    assert "GREENPROF_CPU_TDP_W" in pm.basis


@pytest.mark.parametrize("bad", ["abc", "-5", "0", "nan"])
def test_bad_override_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="GREENPROF_CPU_TDP_W"):
        ce.power_model(env={"GREENPROF_CPU_TDP_W": bad})


def test_counter_follows_process_cpu_time():
    pm = ce.CpuPowerModel("x", 100.0, 4, 25.0, "test")
    c = ce.CpuEstimateCollector(pm)
    t0 = time.process_time()
    end = time.perf_counter() + 0.2
    x = 0
    while time.perf_counter() < end:
        x += 1
    cpu_s = time.process_time() - t0
    e = c.read_j()
    assert c.method == "estimated"
    # the collector's origin was taken just before t0, so its reading is at least cpu_s x 25 W
    assert e == pytest.approx(cpu_s * 25.0, rel=0.05)
    assert e > 0


def test_sleeping_costs_nothing():
    pm = ce.CpuPowerModel("x", 100.0, 4, 25.0, "test")
    c = ce.CpuEstimateCollector(pm)
    before = c.read_j()
    time.sleep(0.1)
    assert c.read_j() - before < 25.0 * 0.02  # < 20 ms of CPU while asleep


def test_discover_reports_estimated_with_basis():
    d = ce.discover(env={})
    (s,) = d.statuses
    assert s.available and s.method == "estimated" and s.domain == "cpu-estimate"
    assert "W/thread" in s.detail
    assert d.collectors["cpu-estimate"].read_j() >= 0
