import math

import pytest

from greenprof.collectors.replay import (PowerTrace, ReplayCounterCollector, ReplayPowerCollector,
                                         TraceError, collectors_from_trace, discover, load_trace)


class FakeClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def write(tmp_path, text, name="trace.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_exact_integral_of_piecewise_linear_trace():
    tr = PowerTrace("gpu", [0, 1, 3], [10, 30, 30])
    # 0..1: ramp 10->30 = 20 J; 1..3: 30 W = 60 J; after end: held at 30 W
    assert tr.energy_j(1) == pytest.approx(20)
    assert tr.energy_j(3) == pytest.approx(80)
    assert tr.energy_j(4) == pytest.approx(110)
    assert tr.energy_j(0.5) == pytest.approx(10 * 0.5 + 0.5 * 20 * 0.25)  # 5 + 2.5
    assert tr.power_w(0.5) == pytest.approx(20)


def test_looping_trace():
    tr = PowerTrace("cpu", [0, 1, 2], [0, 10, 0], loop=True)
    assert tr.energy_j(2) == pytest.approx(10)
    assert tr.energy_j(5) == pytest.approx(25)
    assert tr.power_w(3) == pytest.approx(10)


def test_load_trace_and_counter_collector(tmp_path):
    p = write(tmp_path, "t_s,domain,power_w\n0,a,10\n2,a,10\n0,b,5\n1,b,15\n")
    traces = load_trace(p)
    assert set(traces) == {"a", "b"}
    clock = FakeClock()
    cols = collectors_from_trace(p, clock=clock)
    assert {c.domain for c in cols} == {"replay:a", "replay:b"}
    assert all(c.method == "replayed" for c in cols)
    clock.t += 1.0
    by = {c.domain: c.read_j() for c in cols}
    assert by["replay:a"] == pytest.approx(10)
    assert by["replay:b"] == pytest.approx(10)


def test_quantised_counter_updates_in_steps():
    clock = FakeClock(0.0)
    c = ReplayCounterCollector(PowerTrace("g", [0, 1], [100, 100]), clock=clock, quantum_s=0.1)
    clock.t = 0.05
    assert c.read_j() == 0
    clock.t = 0.25
    assert c.read_j() == pytest.approx(20)
    assert c.resolution_s == 0.1


def test_power_collector_integrates_polls():
    clock = FakeClock(0.0)
    c = ReplayPowerCollector(PowerTrace("g", [0, 10], [0, 100]), clock=clock)
    for k in range(1, 11):
        clock.t = float(k)
        c.poll()
    # linear power: trapezoid is exact, 0.5 * 100 W * 10 s
    assert c.read_j() == pytest.approx(500)
    clock.t = 10.5  # extrapolates the last power, no new poll
    assert c.read_j() == pytest.approx(550)


@pytest.mark.parametrize("text, msg", [
    ("time,domain,power\n0,a,1\n", "header"),
    ("t_s,domain,power_w\n0,a,abc\n", ":2: t_s and power_w must be numbers"),
    ("t_s,domain,power_w\n1,a,5\n", "must start at t_s=0"),
    ("t_s,domain,power_w\n0,a,5\n0,a,5\n", "increase strictly"),
    ("t_s,domain,power_w\n0,a,-5\n", ">= 0"),
    ("t_s,domain,power_w\n", "no samples"),
    ("t_s,domain,power_w\n0,,5\n", "empty domain"),
])
def test_bad_traces_are_named(tmp_path, text, msg):
    with pytest.raises(TraceError, match=msg):
        load_trace(write(tmp_path, text))


def test_missing_trace_file(tmp_path):
    with pytest.raises(TraceError, match="cannot read replay trace"):
        load_trace(tmp_path / "nope.csv")


def test_discover_lists_replay_without_choosing_it(tmp_path):
    (s,) = discover(env={}).statuses
    assert not s.available and "GREENPROF_REPLAY" in s.why_not
    p = write(tmp_path, "t_s,domain,power_w\n0,gpu,50\n1,gpu,50\n")
    d = discover(env={"GREENPROF_REPLAY": str(p)})
    assert [s.domain for s in d.statuses] == ["replay:gpu"]
    assert d.statuses[0].available and not d.statuses[0].in_default_set
    assert d.default_set() == []


def test_shipped_demo_trace_loads():
    from importlib.resources import files

    p = files("greenprof.data") / "traces" / "llm-decode-demo.csv"
    traces = load_trace(str(p))
    assert traces and all(math.isfinite(t.energy_j(1.0)) for t in traces.values())
