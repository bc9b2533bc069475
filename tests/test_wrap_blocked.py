"""RAPL wrap tracking while this interpreter is blocked.

A fake powercap tree whose package counter is moved by a separate writer process at 30 W with a
20 J range (max power 30 W: a wrap every 0.67 s). The test process is then blocked by a C call
that keeps the GIL (``ctypes.PyDLL``), so no Python thread of ours (the meter's sampler) can
read the counter for 2 s, three laps. The watcher process (collectors/rapl_watch.py) must keep
the count right; without it (``GREENPROF_RAPL_WATCH=0``) the read must be flagged uncertain.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import greenprof
from greenprof.collectors import rapl, rapl_watch

try:  # tests/ is on sys.path (rootdir-less "prepend" import mode)
    from powercap_fake import CounterWriter, FakePowercap, wait_until
except ImportError:  # pragma: no cover - tests/ became a package
    from tests.powercap_fake import CounterWriter, FakePowercap, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux powercap")

POWER_W = 30.0
RANGE_UJ = 20_000_000  # 20 J
MAX_POWER_UW = 30_000_000  # so the collector's lap is 20 J / 30 W = 0.67 s
LAP_S = RANGE_UJ / MAX_POWER_UW
BLOCK_S = 2.0  # three laps


def hold_the_gil(seconds: float) -> None:
    """Block this interpreter: libc sleep() through PyDLL, which does not release the GIL."""
    ctypes.PyDLL(None).sleep(int(seconds))


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped in a container counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """One package zone moved by a writer process; GREENPROF_POWERCAP_ROOT points at it."""
    pc = FakePowercap(tmp_path / "pc")
    zone = pc.add_zone("intel-rapl:0", "package-0", energy_uj=0, max_energy_range_uj=RANGE_UJ,
                       max_power_uw=MAX_POWER_UW)
    monkeypatch.setenv(rapl.ENV_ROOT, str(pc.root))
    monkeypatch.delenv(rapl.ENV_WATCH, raising=False)
    with CounterWriter(zone, POWER_W) as writer:
        yield pc, writer


@pytest.fixture
def closing():
    found = []
    yield found.append
    for d in found:
        d.close()


def package(closing, **kw) -> rapl.RaplCollector:
    d = rapl.discover(**kw)
    closing(d)
    return d.collectors["cpu-package-0"]


def test_the_block_really_stops_python_threads():
    """The premise: during hold_the_gil no other Python thread runs (so no sampler read)."""
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.005)

    th = threading.Thread(target=count, daemon=True)
    th.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    hold_the_gil(1)
    t1 = time.monotonic()
    stop.set()
    th.join()
    assert t1 - t0 >= 0.99
    assert not [t for t in ticks if t0 + 0.05 < t < t1 - 0.05]


# ---------------------------------------------------------------------------- with the watcher


def test_meter_counts_every_joule_through_a_blocked_interpreter(tree):
    _, writer = tree
    with greenprof.Meter(collectors=["cpu-package-0"], sample_hz=10) as meter:
        hold_the_gil(BLOCK_S)
    m = meter.measurement
    assert m.duration_s >= BLOCK_S
    truth = writer.true_j(0.0, m.duration_s)  # ~60 J; a lost wrap is -20 J, none counted ~0 J
    assert m.energy_j["cpu-package-0"] == pytest.approx(truth, rel=0.1)
    assert not getattr(m, "uncertain", {})


def test_collector_read_after_a_block_is_exact_and_not_flagged(tree, closing):
    _, writer = tree
    c = package(closing)
    assert c.scope == "machine"
    assert c.watched  # before the first read: the watcher starts with it
    t0 = time.monotonic()
    e0 = c.read_j()
    hold_the_gil(BLOCK_S)
    e1 = c.read_j()
    t1 = time.monotonic()
    assert e1 - e0 == pytest.approx(writer.true_j(t0, t1), rel=0.1)
    assert c.wraps >= 2
    assert (c.uncertain_count, c.uncertain_reason) == (0, None)
    assert c.watched


def test_watcher_starved_while_we_read_is_reanchored_on_our_reads(tree, closing):
    _, writer = tree
    c = package(closing)
    t0 = time.monotonic()
    e0 = c.read_j()
    pid = c._watch._proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        end = time.monotonic() + 3 * LAP_S
        while time.monotonic() < end:  # our own reads keep tracking while it is stopped
            c.read_j()
            time.sleep(0.05)
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(0.3)  # its next records count a lap it did not see: we know better
    e1 = c.read_j()
    t1 = time.monotonic()
    assert e1 - e0 == pytest.approx(writer.true_j(t0, t1), rel=0.1)
    assert c.uncertain_count == 0


def test_watcher_and_interpreter_both_stopped_is_flagged(tree, closing):
    c = package(closing)
    c.read_j()
    pid = c._watch._proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        hold_the_gil(BLOCK_S)
        c.read_j()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert c.uncertain_count == 1
    m = re.fullmatch(r"cpu-package-0: (\d+\.\d+) s without a counter read \(wrap every 0\.67 s "
                     r"at 30 W max\): a wrap may have been missed; the watcher's last read "
                     r"was (\d+\.\d+) s old", c.uncertain_reason)
    assert m and float(m.group(1)) >= BLOCK_S - 0.05 and float(m.group(2)) >= BLOCK_S - 0.05
    time.sleep(0.3)
    c.read_j()  # the watcher's own late read is re-anchored on ours: not flagged twice
    assert c.uncertain_count == 1


def test_dead_watcher_falls_back_to_our_own_reads(tree, closing):
    _, writer = tree
    c = package(closing)
    t0 = time.monotonic()
    e0 = c.read_j()
    proc = c._watch._proc
    proc.kill()
    proc.wait()
    assert not c.watched
    end = time.monotonic() + 3 * LAP_S
    while time.monotonic() < end:  # the sampler's job again
        c.read_j()
        time.sleep(0.05)
    e1 = c.read_j()
    t1 = time.monotonic()
    assert e1 - e0 == pytest.approx(writer.true_j(t0, t1), rel=0.1)
    assert c.uncertain_count == 0
    hold_the_gil(BLOCK_S)  # now nobody reads for three laps: flagged
    c.read_j()
    assert c.uncertain_count == 1 and "without a counter read" in c.uncertain_reason


def test_two_threads_reading_at_once_stay_monotonic_and_exact(tree, closing):
    """The caller's marks and the sampler read the same collector concurrently, across wraps."""
    _, writer = tree
    c = package(closing)
    t0 = time.monotonic()
    e0 = c.read_j()
    end = t0 + 3 * LAP_S
    seen: dict[str, list[float]] = {"a": [], "b": []}

    def reader(name: str) -> None:
        while time.monotonic() < end:
            seen[name].append(c.read_j())

    threads = [threading.Thread(target=reader, args=(n,)) for n in seen]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    e1 = c.read_j()
    t1 = time.monotonic()
    for values in seen.values():
        assert len(values) > 100
        assert all(b >= a for a, b in zip(values, values[1:]))
    assert e1 - e0 == pytest.approx(writer.true_j(t0, t1), rel=0.1)
    assert c.wraps >= 2 and c.uncertain_count == 0


# ---------------------------------------------------------------------------- without it


def test_without_the_watcher_a_blocked_interpreter_is_flagged(tree, monkeypatch):
    monkeypatch.setenv(rapl.ENV_WATCH, "0")
    d = rapl.discover()
    c = d.collectors["cpu-package-0"]
    d.close(keep=[c])  # the meter closes it
    assert not c.watched and c.watch_note == "no watcher process (GREENPROF_RAPL_WATCH=0)"
    with greenprof.Meter(collectors=[c], sample_hz=10) as meter:
        hold_the_gil(BLOCK_S)
    assert c.uncertain_count >= 1
    m = re.fullmatch(r"cpu-package-0: (\d+\.\d\d) s without a counter read \(wrap every 0\.67 s "
                     r"at 30 W max\): a wrap may have been missed; no watcher process "
                     r"\(GREENPROF_RAPL_WATCH=0\)", c.uncertain_reason)
    assert m and float(m.group(1)) >= BLOCK_S - 0.05
    uncertain = getattr(meter.measurement, "uncertain", None)
    if uncertain is not None:  # the lead's meter carries the flag into the measurement
        assert "cpu-package-0" in uncertain


def test_watch_parameter_and_env_switch(tree, closing, monkeypatch):
    assert package(closing, watch=False).watched is False
    monkeypatch.setenv(rapl.ENV_WATCH, "off")
    d = rapl.discover()
    closing(d)
    assert "(by this process only (GREENPROF_RAPL_WATCH=0))" in d.statuses[0].detail
    assert package(closing, watch=True).watched is True
    monkeypatch.setenv(rapl.ENV_WATCH, "1")
    d = rapl.discover()
    closing(d)
    assert d.collectors["cpu-package-0"].watched
    assert re.search(r"\(by a watcher process every 66\.7 ms\)$", d.statuses[0].detail)


# ---------------------------------------------------------------------------- its lifetime


def test_started_by_the_first_read_and_stopped_by_the_last_close(tmp_path):
    pc = FakePowercap(tmp_path)
    pc.add_zone("intel-rapl:0", "package-0", max_energy_range_uj=RANGE_UJ,
                max_power_uw=MAX_POWER_UW)
    pc.add_zone("intel-rapl:0:0", "dram", max_energy_range_uj=RANGE_UJ, power_limit_uw=5_000_000)
    d = rapl.discover(pc.root, watch=True)
    pkg, dram = d.collectors["cpu-package-0"], d.collectors["dram-0"]
    watch = pkg._watch
    assert watch is dram._watch and watch._proc is None  # discovering starts nothing
    pkg.read_j()
    proc = watch._proc
    assert proc is not None and proc.poll() is None
    assert dram.read_j() == 0.0 and dram._watch._proc is proc  # one watcher for both
    # it publishes: its record's time moves on
    t_seed = rapl_watch.read_record(watch._buf, 0)[2]
    assert wait_until(lambda: rapl_watch.read_record(watch._buf, 0)[2] > t_seed)
    dram.close()
    time.sleep(0.1)
    assert proc.poll() is None
    pkg.close()
    assert proc.poll() is not None  # close() waited for it
    assert not pkg.watched
    d.close()


def test_never_outlives_its_parent_and_never_prints(tmp_path):
    """The parent is SIGKILLed while a forked child still holds the watcher's pipe open: the
    watcher notices its parent is gone (getppid) and exits."""
    pc = FakePowercap(tmp_path)
    pc.add_zone("intel-rapl:0", "package-0", max_energy_range_uj=RANGE_UJ,
                max_power_uw=MAX_POWER_UW)
    code = (
        "import os, sys, time\n"
        "from greenprof.collectors import rapl\n"
        "c = rapl.discover(sys.argv[1]).collectors['cpu-package-0']\n"
        "c.read_j()\n"
        "kid = os.fork()\n"
        "if kid == 0:\n"
        "    time.sleep(30)\n"
        "    os._exit(0)\n"
        "print(c._watch._proc.pid, kid, flush=True)\n"
        "time.sleep(30)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != rapl.ENV_WATCH}
    parent = subprocess.Popen([sys.executable, "-c", code, str(pc.root)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    kid = 0
    try:
        watcher, kid = map(int, parent.stdout.readline().split())
        assert alive(watcher)
        parent.kill()
        parent.wait()
        assert wait_until(lambda: not alive(watcher), timeout_s=5.0)
    finally:
        if kid:
            try:
                os.kill(kid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        parent.kill()
        parent.wait()
    assert parent.stdout.read() == "" and parent.stderr.read() == ""
    parent.stdout.close()
    parent.stderr.close()


def test_a_torn_or_half_written_record_is_never_used():
    import mmap

    buf = mmap.mmap(-1, rapl_watch.SLOT)
    seq = rapl_watch.write_record(buf, 0, 0, 5, 20_000_005, 123, 0, 0)
    assert rapl_watch.read_record(buf, 0) == (5, 20_000_005, 123, 0, 0)
    rapl_watch.RECORD.pack_into(buf, 0, seq, 6, 20_000_005, 123, 0, 0, 0,
                                rapl_watch.RECORD.unpack_from(buf, 0)[7])  # raw from a newer write
    assert rapl_watch.read_record(buf, 0) is None
    rapl_watch.write_record(buf, 0, seq, 7, 20_000_007, 124, 0, 0)
    assert rapl_watch.read_record(buf, 0) == (7, 20_000_007, 124, 0, 0)
    buf[0:8] = (seq + 3).to_bytes(8, "little")  # odd: a write in progress
    assert rapl_watch.read_record(buf, 0) is None
    assert rapl_watch.read_record(mmap.mmap(-1, rapl_watch.SLOT), 0) is None  # never written


def test_poll_period_is_a_tenth_of_the_shortest_lap():
    assert rapl_watch.poll_period_s([LAP_S, 10.0]) == pytest.approx(LAP_S / 10)
    assert rapl_watch.poll_period_s([1000.0]) == 0.5
    assert rapl_watch.poll_period_s([0.001]) == 0.002


# ---------------------------------------------------------------------------- `greenprof measure`


# `greenprof measure tiny`, with the generate call followed by a GIL hold inside the meter's
# window (a stand-in for a slow first onnxruntime run: on a fast machine tiny's first run takes
# milliseconds, too short to miss a wrap).
_MEASURE_WITH_A_BLOCK = """
import ctypes, sys
import greenprof.models.runner as runner
real = runner.generate
def generate(*args, **kwargs):
    out = real(*args, **kwargs)
    if kwargs.get("meter") is not None:
        ctypes.PyDLL(None).sleep(%d)
    return out
runner.generate = generate
from greenprof.cli import main
sys.argv[0] = "greenprof"
main()
""" % int(BLOCK_S)


def measure_blocked(db) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", _MEASURE_WITH_A_BLOCK, "measure", "tiny", "--warmup", "0",
         "--runs", "1", "--new-tokens", "4", "--json", "--db", f"sqlite:///{db}"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    (run,) = json.loads(r.stdout)["runs"]
    return run


def test_measure_stores_the_package_energy_of_a_blocked_run(tree, tmp_path):
    _, writer = tree
    db = tmp_path / "x.db"
    run = measure_blocked(db)
    assert run["duration_s"] >= BLOCK_S
    with sqlite3.connect(db) as conn:
        ((stored,),) = conn.execute(
            "select energy_j from run_domains where domain = 'cpu-package-0'").fetchall()
    truth = writer.true_j(0.0, run["duration_s"])  # ~60 J: 0 J or a lost 20 J range fails
    assert stored == pytest.approx(truth, rel=0.1)
    # what the counter saw (gross) is printed too; energy_j may be this process's share of it
    printed = run.get("gross_energy_j_by_domain") or run["energy_j"]
    printed = printed["cpu-package-0"] if isinstance(printed, dict) else printed
    assert printed == pytest.approx(stored)
    assert not run.get("uncertain")


def test_measure_without_the_watcher_flags_the_run(tree, tmp_path, monkeypatch):
    monkeypatch.setenv(rapl.ENV_WATCH, "0")
    run = measure_blocked(tmp_path / "x.db")
    why = run["uncertain"]["cpu-package-0"]
    m = re.match(r"cpu-package-0: (\d+\.\d+) s without a counter read \(wrap every 0\.67 s", why)
    assert m and float(m.group(1)) >= BLOCK_S - 0.05
