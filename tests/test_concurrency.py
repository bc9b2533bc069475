"""Concurrent windows share one meter: each joule is charged once.

The CPU-time estimate is the collector here (the only one this VM has): its counter is this
process's CPU time, so the energy of the process over a span is known independently of how it
is split, and an outer Meter around everything is the reference.
"""

import asyncio
import math
import os
import subprocess
import sys
import threading
import time

import pytest

from greenprof.collectors.base import CounterCollector
from greenprof.meter import Meter


def burn_cpu(seconds):
    """Busy for ``seconds`` of this thread's CPU time (not wall time: threads share the GIL)."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        x += 1
    return x


@pytest.fixture
def estimate_only(monkeypatch, tmp_path):
    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", str(tmp_path / "no-powercap"))
    monkeypatch.delenv("GREENPROF_REPLAY", raising=False)
    monkeypatch.setenv("GREENPROF_CPU_TDP_W", "40")


def test_split_windows_in_threads_add_up_to_the_outer_meter(estimate_only):
    results = {}

    def worker(k):
        with Meter(collectors="cpu-estimate", sample_hz=10, split=True) as w:
            burn_cpu(0.15 + 0.05 * k)  # unequal work, so an equal split would be wrong
        results[k] = w.measurement

    with Meter(collectors="cpu-estimate", sample_hz=10) as outer:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    total = outer.measurement.attributed_energy_j["cpu-estimate"]
    parts = [results[k].attributed_energy_j["cpu-estimate"] for k in range(8)]
    assert math.fsum(parts) == pytest.approx(total, rel=0.02)
    # each window's gross is the whole process over its span: summing gross double counts
    gross = math.fsum(results[k].energy_j["cpu-estimate"] for k in range(8))
    assert gross > 1.5 * total
    # the split follows each thread's CPU time: the heaviest worker got the most
    assert parts[7] > parts[0] * 1.5
    assert all(results[k].concurrent_windows >= 1 for k in range(8))


def test_split_windows_in_asyncio_tasks_add_up_to_the_outer_meter(estimate_only):
    results = []

    async def request(k):
        with Meter(collectors="cpu-estimate", sample_hz=10, split=True) as w:
            for _ in range(10 + k):  # enough work that the event loop's own set-up is noise
                burn_cpu(0.03)
                await asyncio.sleep(0)
        results.append(w.measurement)

    async def main():
        await asyncio.gather(*(request(k) for k in range(8)))

    with Meter(collectors="cpu-estimate", sample_hz=10) as outer:
        asyncio.run(main())
    total = outer.measurement.attributed_energy_j["cpu-estimate"]
    parts = [m.attributed_energy_j["cpu-estimate"] for m in results]
    assert len(parts) == 8
    assert math.fsum(parts) == pytest.approx(total, rel=0.02)
    assert math.fsum(m.energy_j["cpu-estimate"] for m in results) > 2 * total


def test_nested_meter_sees_its_parent_and_windows_never_exceed_the_process(estimate_only):
    with Meter(collectors="cpu-estimate", sample_hz=0) as outer:
        burn_cpu(0.05)
        with Meter(collectors="cpu-estimate", sample_hz=0) as inner:
            burn_cpu(0.1)
        burn_cpu(0.05)
    o, i = outer.measurement, inner.measurement
    assert i.attributed_energy_j["cpu-estimate"] == pytest.approx(i.energy_j["cpu-estimate"], rel=1e-9)
    assert i.attributed_energy_j["cpu-estimate"] < o.attributed_energy_j["cpu-estimate"]


class MachineCounter(CounterCollector):
    """A machine-wide counter (like a RAPL package) running at a fixed power."""

    source = "test"
    method = "measured"
    domain = "cpu-package-0"
    scope = "machine"

    def __init__(self, power_w=30.0):
        self.power_w = power_w
        self.t0 = time.monotonic()

    def read_j(self):
        return (time.monotonic() - self.t0) * self.power_w


def _proc_ticks(pid="self"):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def _machine_busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return v[0] + v[1] + v[2] + v[5] + v[6]


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc")
def test_a_burner_beside_the_run_is_not_charged_to_it():
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it get going
        col = MachineCounter()
        busy0, mine0, theirs0 = _machine_busy_ticks(), _proc_ticks(), _proc_ticks(burner.pid)
        with Meter(collectors=[col], sample_hz=10) as meter:
            burn_cpu(1.0)
        busy1, mine1, theirs1 = _machine_busy_ticks(), _proc_ticks(), _proc_ticks(burner.pid)
    finally:
        burner.kill()
        burner.wait()
    m = meter.measurement
    gross = m.energy_j["cpu-package-0"]
    attributed = m.attributed_energy_j["cpu-package-0"]
    independent_share = (mine1 - mine0) / (busy1 - busy0)
    assert gross == pytest.approx(30.0 * m.duration_s, rel=0.01)
    # the burner used a core all along: this process was charged about half, not all
    assert m.share["cpu-package-0"] == pytest.approx(independent_share, abs=0.12)
    assert 0.0 < attributed / gross < 0.8
    assert theirs1 - theirs0 > 0  # the burner did run beside it
    assert m.other_cpu_share is not None and m.other_cpu_share > 0.2
    assert any("other processes used" in w for w in m.warnings)
    print(f"gross {gross:.2f} J, attributed {attributed:.2f} J, share {m.share['cpu-package-0']:.3f}, "
          f"independent /proc share {independent_share:.3f}, other {m.other_cpu_share:.3f}")


def test_eight_track_blocks_in_threads_and_tasks_add_up_to_one_outer_meter(estimate_only, tmp_path):
    """The issue's case: concurrent track() blocks used to sum to 1.5x the process's energy."""
    import greenprof

    from greenprof.store import open_store

    db = f"sqlite:///{tmp_path / 'c.db'}"
    open_store(db).close()  # created and migrated once, as a server's store would be
    with greenprof.track(model="warm-up", db=db, collectors="cpu-estimate"):
        pass  # first use in the process: imports and tables, as a server that has served before
    trackers = []

    def worker(k):
        with greenprof.track(model="w", db=db, collectors="cpu-estimate") as t:
            burn_cpu(0.8 + 0.05 * k)
            t.add_tokens(10)
        trackers.append(t)

    with Meter(collectors="cpu-estimate", sample_hz=10) as outer:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(trackers) == 8
    total = outer.measurement.attributed_energy_j["cpu-estimate"]
    assert math.fsum(t.energy_j for t in trackers) == pytest.approx(total, rel=0.02)
    assert math.fsum(t.gross_energy_j for t in trackers) > 1.5 * total  # gross would double count
    assert all(t.j_per_token == pytest.approx(t.energy_j / 10) for t in trackers)

    async_trackers = []

    async def request(k):
        with greenprof.track(model="a", db=db, collectors="cpu-estimate") as t:
            for _ in range(10 + k):
                burn_cpu(0.03)
                await asyncio.sleep(0)
        async_trackers.append(t)

    async def main():
        await asyncio.gather(*(request(k) for k in range(8)))

    with Meter(collectors="cpu-estimate", sample_hz=10) as outer2:
        asyncio.run(main())
    total2 = outer2.measurement.attributed_energy_j["cpu-estimate"]
    assert math.fsum(t.energy_j for t in async_trackers) == pytest.approx(total2, rel=0.02)

    # the stored runs carry the same charged energy, and `runs` shows J/token for add_tokens()
    with open_store(db) as store:
        runs = {r.id: r for r in store.list_runs(limit=None)}
    for t in trackers:
        r = runs[t.run_id]
        assert r.domains["cpu-estimate"].attributed_energy_j == pytest.approx(t.energy_j, rel=1e-9)
        assert r.new_tokens == 10


def test_importing_the_tracking_module_keeps_greenprof_track_callable():
    import greenprof
    import greenprof.tracking  # noqa: F401

    assert callable(greenprof.track) and greenprof.track.__name__ == "track"


def test_a_process_reader_keeps_the_counters_and_tells_idle_from_window_energy():
    """A server holds the reader open; energy while no window is open is idle, never charged."""
    from greenprof.meter import ProcessReader

    col = MachineCounter(power_w=20.0)
    with ProcessReader(collectors=[col], sample_hz=20) as reader:
        time.sleep(0.2)  # idle
        with Meter(collectors=[col], sample_hz=20, split=True) as w:
            time.sleep(0.2)
        time.sleep(0.1)  # idle again
        snap = reader.read()
    total = snap["energy_j"]["cpu-package-0"]
    idle = snap["idle_energy_j"]["cpu-package-0"]
    window = w.measurement.energy_j["cpu-package-0"]
    assert total == pytest.approx(20.0 * snap["t_s"], rel=0.02)
    assert idle + window == pytest.approx(total, rel=1e-6)  # every joule is idle or in the window
    assert idle == pytest.approx(20.0 * 0.3, rel=0.25)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc")
def test_measure_beside_a_burner_charges_its_share_of_the_package_and_says_so(tmp_path):
    """`greenprof measure` on a (fake) RAPL package at 30 W with a CPU burner beside it: the
    stored run keeps the gross joules and charges this process its CPU-time share."""
    import json
    import sqlite3

    from powercap_fake import CounterWriter, build

    pc = build(tmp_path / "pc", sockets=1, dram=False)
    db = tmp_path / "m.db"
    env = {k: v for k, v in os.environ.items() if k != "GREENPROF_REPLAY"}
    env["GREENPROF_POWERCAP_ROOT"] = str(pc.root)
    with CounterWriter(pc.zone("intel-rapl:0"), 30.0):
        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.3)
            r = subprocess.run([sys.executable, "-m", "greenprof.cli", "measure", "tiny", "--runs", "2",
                                "--warmup", "1", "--new-tokens", "400", "--prompt-tokens", "16", "--json",
                                "--db", str(db)], env=env, capture_output=True, text=True, timeout=300)
        finally:
            burner.kill()
            burner.wait()
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for run in doc["runs"]:
        assert run["domains"] == ["cpu-package-0"] and run["basis"] == "attributed"
        gross = run["gross_energy_j_by_domain"]["cpu-package-0"]
        assert gross == pytest.approx(30.0 * run["duration_s"], rel=0.1)
        assert run["energy_j"] < 0.9 * gross  # the burner's share is not charged to the model
        assert run["share"]["cpu-package-0"] == pytest.approx(run["energy_j"] / gross, rel=1e-6)
        assert run["other_cpu_share"] > 0.1
        assert any("other processes used" in w for w in run["warnings"])
        # the warning quotes the share the run was charged, not 1 - the window's other-load
        assert f"is charged {run['share']['cpu-package-0']:.0%} of what" in " ".join(run["warnings"])
    assert "other processes used" in r.stderr
    with sqlite3.connect(db) as c:
        rows = c.execute("select energy_j, attributed_energy_j, share, scope from run_domains").fetchall()
        load = c.execute("select other_cpu_share from runs").fetchall()
    assert all(a < g and s < 0.9 and scope == "machine" for g, a, s, scope in rows)
    assert all(o > 0.1 for (o,) in load)


def test_back_to_back_windows_reuse_the_counters_then_they_close(monkeypatch):
    """A measure's runs follow each other within milliseconds: they share one open reader (and
    RAPL's watcher process) instead of starting them again; it closes once nobody uses it."""
    from greenprof import meter as M

    monkeypatch.setattr(M, "HUB_LINGER_S", 0.3)
    col = MachineCounter()
    with Meter(collectors=[col], sample_hz=20) as a:
        time.sleep(0.05)
    hub = a._hub
    assert not any(t.name == "greenprof-sampler" for t in threading.enumerate())  # stopped at once
    with Meter(collectors=[col], sample_hz=20) as b:
        time.sleep(0.05)
    assert b._hub is hub and not hub.closed
    assert b.measurement.energy_j["cpu-package-0"] == pytest.approx(30.0 * b.measurement.duration_s, rel=0.02)
    time.sleep(0.8)
    assert hub.closed and M._HUBS.get(hub.key) is None


class CountingCounter(CounterCollector):
    """A counter that advances by exactly 1 J at every read: a joule lost or counted twice
    between two windows shows as a whole number."""

    source = "test"
    method = "measured"
    domain = "ticks"
    scope = "process"

    def __init__(self):
        self.n = 0.0

    def read_j(self):
        self.n += 1.0
        return self.n


def test_a_renewed_node_window_counts_every_joule_once():
    """NodeMeter renews its window at every scrape: the new window starts at the very reading
    where the old one is cut, so the totals are the counter's advance, exactly (a cut read apart
    from the new window's start lost what came between: up to a third of a request's energy at
    four scrapes a second)."""
    from greenprof.metrics import NodeMeter

    counter = CountingCounter()
    node = NodeMeter([counter], sample_hz=0, min_roll_s=0.0).start()
    first = node._meter._rows[0][2][0]  # the first window's start reading
    try:
        for i in range(50):
            if i % 5 == 0:
                node.request_started()
                node.request_finished()
            node.renew(force=True)
        now = node._meter._rows[0][2][0]  # the open window's start = the last cut
        t = node.totals()
        assert t.gross_j["ticks"] == now - first
        assert 0 < t.idle_gross_j["ticks"] < t.gross_j["ticks"]  # the idle spans are part of it
    finally:
        node.close()


def test_the_exporter_on_a_machine_without_sensors_counts_every_process(tmp_path, monkeypatch):
    """A node exporter's own CPU time says nothing of the machine: without RAPL it exports the
    machine-wide estimate, which sees another process's busy CPU time."""
    import resource
    import subprocess
    import sys

    from greenprof.errors import UsageError
    from greenprof.exporter import _node_collectors

    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", str(tmp_path / "no-powercap"))
    (col,) = _node_collectors("auto")
    try:
        assert (col.domain, col.method, col.scope) == ("cpu-estimate-machine", "estimated", "machine")
        before = col.read_j()
        child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", "import time\nt=time.process_time()\n"
                        "while time.process_time()-t<0.5: pass"], check=True)
        child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        after = col.read_j()
        child_s = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
        # every process's busy time: the child's 0.5 s at least (10 ms ticks), at the W per thread
        assert after - before >= (child_s - 0.05) * col.model.w_per_thread > 0
    finally:
        col.close()
    with pytest.raises(UsageError, match="cpu-estimate-machine"):
        _node_collectors(["cpu-estimate"])


def test_the_exporter_beside_gpus_on_a_machine_without_rapl_still_counts_every_process(monkeypatch):
    """A cloud GPU VM: auto finds the GPUs and only the per-process CPU estimate for the CPU; the
    exporter must export the machine-wide estimate beside the GPUs, not its own CPU time."""
    import greenprof.collectors as gc
    from greenprof.collectors.cpu_estimate import CpuEstimateCollector, power_model
    from greenprof.exporter import _node_collectors

    closed = []

    class Gpu:
        domain, method, scope = "gpu-0", "measured", "gpu"

        def close(self):
            closed.append(self.domain)

    own = CpuEstimateCollector(power_model())
    monkeypatch.setattr(gc, "select", lambda spec="auto", **kw: [Gpu(), own])
    chosen = _node_collectors("auto")
    try:
        assert [c.domain for c in chosen] == ["gpu-0", "cpu-estimate-machine"]
        assert chosen[1].scope == "machine" and not closed
    finally:
        for c in chosen:
            c.close()


def _spin_cpu(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


@pytest.mark.parametrize("before", ["sleep", "work"])
def test_a_short_windows_cpu_share_is_not_taken_from_before_it_opened(tmp_path, monkeypatch, before):
    """Between two windows the hub lingers with no share point, so the interval before a window
    can span seconds in which this process slept (an idle baseline) or worked outside any
    window. Widening a short window's CPU share back over it charged the window 0.09 of the
    package where its own CPU time said 0.6 (after sleeping), or 0.26 for a window that only
    slept (after working). The share comes from intervals some window was open in."""
    from powercap_fake import CounterWriter, build

    pc = build(tmp_path / "pc", sockets=1, dram=False)
    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", str(pc.root))
    with CounterWriter(pc.zone("intel-rapl:0"), 30.0):
        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.3)
            with Meter(sample_hz=10):  # opens the hub, which lingers after it
                _spin_cpu(0.05)
            if before == "sleep":
                time.sleep(1.0)
                with Meter(sample_hz=10) as m:
                    _spin_cpu(0.15)
            else:
                _spin_cpu(0.8)
                with Meter(sample_hz=10) as m:
                    time.sleep(0.2)
        finally:
            burner.kill()
            burner.wait()
    got = m.measurement
    share = got.share["cpu-package-0"]
    own = got.process_cpu_s / got.machine_busy_cpu_s if got.machine_busy_cpu_s else None
    if before == "sleep":
        assert own is not None and abs(share - min(1.0, own)) < 0.2, (share, own)
    else:
        assert share < 0.15, (share, own)


def test_a_window_nested_on_its_thread_does_not_halve_its_parents_part():
    """Split windows on one thread were weighed as asyncio tasks sharing it, so a track block
    with another nested in it weighed half its thread's CPU time beside a block in another
    thread (and both were warned of sharing a thread): the two blocks, which burn the same CPU
    time, were charged about 1:2. A nested window is in its parent's group, not beside it."""
    import warnings

    import greenprof

    def spin(s):
        t = time.thread_time()
        while time.thread_time() - t < s:
            pass

    res = {}
    go = threading.Barrier(2)

    def nested():
        go.wait()
        with greenprof.track(model="outer", store=False, collectors="cpu-estimate") as outer:
            with greenprof.track(model="inner", store=False, collectors="cpu-estimate") as inner:
                spin(0.3)
        res["nested"] = (outer, inner)

    def alone():
        go.wait()
        with greenprof.track(model="other", store=False, collectors="cpu-estimate") as other:
            spin(0.3)
        res["alone"] = other

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        threads = [threading.Thread(target=f) for f in (nested, alone)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    (outer, inner), other = res["nested"], res["alone"]
    assert 0.75 < outer.energy_j / other.energy_j < 1.33, (outer.energy_j, other.energy_j)
    assert inner.energy_j <= outer.energy_j * (1 + 1e-9)
    for t in (outer, inner, other):
        assert not any("split equally" in w for w in t.warnings), t.warnings


def test_a_server_says_when_a_counter_is_lost_and_when_it_reads_again():
    """A counter lost mid-serve was in every request's run (partial) and in the node totals, but
    the server's log said nothing: an operator saw only zeros. The node window tells its
    on_warning (serve's and exporter's stderr) once when a domain is lost and once when it reads
    again."""
    from greenprof import meter as meter_mod
    from greenprof.collectors.base import CounterCollector
    from greenprof.metrics import NodeMeter

    class Flaky(CounterCollector):
        source, method, domain, scope = "test", "measured", "cpu-package-0", "process"

        def __init__(self):
            self.j, self.failing = 0.0, False

        def read_j(self):
            self.j += 1.0
            if self.failing:
                raise OSError(5, "Input/output error")
            return self.j

    told: list[str] = []
    c = Flaky()
    node = NodeMeter([c], sample_hz=0, min_roll_s=0.0, on_warning=told.append).start()
    try:
        node.renew(force=True)
        assert told == []
        c.failing = True
        node.request_started()  # the node window is marked: the read fails
        node.request_finished()
        node.renew(force=True)
        node.renew(force=True)
        (lost,) = told
        assert lost.startswith("cpu-package-0 lost") and "Input/output error" in lost
        c.failing = False
        time.sleep(meter_mod.REVIVE_EVERY_S)
        with meter_mod.Meter(collectors=[c], sample_hz=0):  # a request starts: the counter is tried again
            pass
        node.renew(force=True)
        node.renew(force=True)
        assert len(told) == 2 and "cpu-package-0 reads again" in told[1]
    finally:
        node.close()
    assert len(told) == 2  # each said once


def test_the_node_totals_keep_a_bounded_number_of_warnings():
    """Every renewed node window's warnings were added to the totals when new: a warning that
    carries its own figure (an unchecked GPU share's percentage) grew the list for the life of a
    server."""
    from types import SimpleNamespace

    from greenprof.metrics import MAX_NODE_WARNINGS, NodeMeter

    node = NodeMeter([CountingCounter()], sample_hz=0)
    for i in range(3 * MAX_NODE_WARNINGS):
        node._account(SimpleNamespace(segments=[], method={}, scope={}, sources={}, lost={}, uncertain={},
                                      warnings=[f"gpu-0 uncertain: {i}% of its energy was charged whole"]))
    assert len(node.totals().warnings) == MAX_NODE_WARNINGS


def test_metrics_say_when_the_node_energy_is_uncertain_or_partial():
    """/metrics exported figures charged whole, or from a counter that may have missed a wrap,
    as if clean: only the stored runs said so. greenprof_energy_uncertain / _partial{domain}
    follow the last renewed node window."""
    from greenprof.collectors.base import CounterCollector
    from greenprof.metrics import NodeCollector, NodeMeter

    class Doubtful(CounterCollector):
        source, method, domain, scope = "test", "measured", "cpu-package-0", "process"
        uncertain_reason = "a wrap may have been missed"

        def __init__(self):
            self.j, self.uncertain_count = 0.0, 0

        def read_j(self):
            self.j += 1.0
            return self.j

    c = Doubtful()
    node = NodeMeter([c], sample_hz=0, min_roll_s=0.0).start()

    def gauges():
        got = {}
        for fam in NodeCollector(node, serving=True).collect():
            if fam.name in ("greenprof_energy_uncertain", "greenprof_energy_partial"):
                for smp in fam.samples:
                    got[(fam.name, smp.labels["domain"])] = smp.value
        return got

    try:
        assert gauges() == {("greenprof_energy_uncertain", "cpu-package-0"): 0.0,
                            ("greenprof_energy_partial", "cpu-package-0"): 0.0}
        c.uncertain_count += 1  # the collector doubts a reading in this window
        assert gauges()[("greenprof_energy_uncertain", "cpu-package-0")] == 1.0
        assert gauges()[("greenprof_energy_uncertain", "cpu-package-0")] == 0.0  # the next window is clean
    finally:
        node.close()
