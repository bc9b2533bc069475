"""greenprof.track: generators and async generators, a failing tokens=, concurrent first opens of
a SQLite file, a store that cannot be used, mark() mistakes, attributed and gross figures."""

import asyncio
import inspect
import json
import sqlite3
import threading
import time
import warnings
from types import SimpleNamespace

import pytest

import greenprof
from greenprof.errors import UsageError
from greenprof.meter import GreenprofWarning


def rows(db, sql, *params):
    with sqlite3.connect(db) as c:
        return c.execute(sql, params).fetchall()


def burn(seconds):
    """Busy CPU for a while: the CPU estimate (the collector on a machine without sensors) sees it."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def run_row(db, run_id):
    (row,) = rows(db, "select status, new_tokens, duration_s, error, warnings from runs where id = ?", run_id)
    return SimpleNamespace(status=row[0], new_tokens=row[1], duration_s=row[2], error=row[3],
                           warnings=json.loads(row[4]) if row[4] else [])


# -- 1. generators, async generators, coroutines ------------------------------------------------
def test_generator_is_measured_over_its_whole_iteration(tmp_path):
    db = str(tmp_path / "t.db")

    @greenprof.track(model="stream", tokens=lambda chunk: 1, db=db)
    def stream(n):
        for i in range(n):
            burn(0.04)
            yield i
        return "done"

    assert inspect.isgeneratorfunction(stream)  # frameworks that check it still see a generator
    assert stream.__name__ == "stream"
    gen = stream(5)
    assert not (tmp_path / "t.db").exists()  # the run opens at the first next(), not at the call
    assert list(gen) == [0, 1, 2, 3, 4]
    t = stream.greenprof_track.last
    assert t.tokens == 5 and t.run_id is not None
    assert t.measurement.duration_s >= 0.2  # the work after each yield, not the generator's creation
    assert t.energy_j > 0 and t.j_per_token == pytest.approx(t.energy_j / 5)
    r = run_row(db, t.run_id)
    assert r.status == "completed" and r.new_tokens == 5 and r.duration_s >= 0.2

    # the return value comes through yield from
    def outer():
        return (yield from stream(2))

    got = []
    g = outer()
    with pytest.raises(StopIteration) as stop:
        while True:
            got.append(next(g))
    assert got == [0, 1] and stop.value.value == "done"


def test_generator_run_opens_at_first_next_and_early_close_is_completed(tmp_path):
    db = str(tmp_path / "t.db")

    @greenprof.track(model="stream", tokens=lambda chunk: len(chunk), db=db)
    def stream():
        for i in range(10):
            burn(0.02)
            yield "ab"

    gen = stream()
    assert stream.greenprof_track.last is None  # nothing measured or stored before next()
    assert next(gen) == "ab"
    t = stream.greenprof_track.last
    assert run_row(db, t.run_id).status == "running"
    assert next(gen) == "ab"
    gen.close()  # the consumer stops early (a `break` out of a for loop does the same)
    r = run_row(db, t.run_id)
    assert r.status == "completed" and r.new_tokens == 4 and r.error is None
    assert t.tokens == 4 and t.measurement.status == "completed"


def test_generator_that_raises_is_failed_and_the_error_propagates(tmp_path):
    db = str(tmp_path / "t.db")

    @greenprof.track(model="stream", tokens=lambda chunk: 1, db=db)
    def stream():
        yield 1
        yield 2
        raise KeyError("model fell over")

    got = []
    with pytest.raises(KeyError, match="model fell over"):
        for x in stream():
            got.append(x)
    assert got == [1, 2]
    r = run_row(db, stream.greenprof_track.last.run_id)
    assert r.status == "failed" and "KeyError" in r.error and r.new_tokens == 2


def test_generator_send_and_throw_pass_through(tmp_path):
    db = str(tmp_path / "t.db")

    @greenprof.track(model="echo", db=db)
    def echo():
        x = yield "ready"
        while x != "stop":
            try:
                x = yield f"echo:{x}"
            except ValueError as e:
                x = yield f"caught:{e}"
        return "bye"

    g = echo()
    assert next(g) == "ready"
    assert g.send("a") == "echo:a"
    assert g.throw(ValueError("v")) == "caught:v"
    assert g.send("b") == "echo:b"
    with pytest.raises(StopIteration) as stop:
        g.send("stop")
    assert stop.value.value == "bye"
    assert run_row(db, echo.greenprof_track.last.run_id).status == "completed"

    g = echo()
    next(g)
    with pytest.raises(OSError, match="not handled"):  # a thrown exception the generator lets through
        g.throw(OSError("not handled"))
    r = run_row(db, echo.greenprof_track.last.run_id)
    assert r.status == "failed" and "OSError" in r.error


def test_async_generator_and_coroutine_are_measured_whole(tmp_path):
    db = str(tmp_path / "t.db")

    @greenprof.track(model="astream", tokens=lambda chunk: 1, db=db)
    async def astream(n):
        for i in range(n):
            await asyncio.sleep(0)
            burn(0.04)
            yield i

    @greenprof.track(model="echo", db=db)
    async def aecho():
        x = yield "ready"
        while x != "stop":
            try:
                x = yield f"echo:{x}"
            except ValueError as e:
                x = yield f"caught:{e}"

    @greenprof.track(model="coro", tokens=lambda out: len(out), db=db)
    async def answer():
        await asyncio.sleep(0.01)
        burn(0.1)
        return [1, 2, 3]

    assert inspect.isasyncgenfunction(astream) and inspect.iscoroutinefunction(answer)
    assert answer.greenprof_track is not None and astream.greenprof_track is not None

    async def main():
        got = [x async for x in astream(4)]
        full = astream.greenprof_track.last
        ag = astream(10)
        first = [await ag.__anext__(), await ag.__anext__()]
        await ag.aclose()  # the consumer stops early
        early = astream.greenprof_track.last
        e = aecho()
        echoed = [await e.__anext__(), await e.asend("a"), await e.athrow(ValueError("v")),
                  await e.asend("b")]
        with pytest.raises(StopAsyncIteration):
            await e.asend("stop")
        return got, full, first, early, echoed, await answer()

    got, full, first, early, echoed, out = asyncio.run(main())
    assert got == [0, 1, 2, 3] and first == [0, 1] and out == [1, 2, 3]
    assert echoed == ["ready", "echo:a", "caught:v", "echo:b"]
    assert full.tokens == 4 and full.measurement.duration_s >= 0.16
    r = run_row(db, full.run_id)
    assert r.status == "completed" and r.new_tokens == 4 and r.duration_s >= 0.16
    r = run_row(db, early.run_id)
    assert r.status == "completed" and r.new_tokens == 2
    assert run_row(db, aecho.greenprof_track.last.run_id).status == "completed"
    c = answer.greenprof_track.last
    assert c.tokens == 3 and c.measurement.duration_s >= 0.1
    assert run_row(db, c.run_id).status == "completed"


def test_async_generator_that_raises_is_failed(tmp_path):
    db = str(tmp_path / "t.db")

    @greenprof.track(model="astream", tokens=lambda chunk: 1, db=db)
    async def astream():
        yield 1
        raise RuntimeError("decode step failed")

    async def main():
        return [x async for x in astream()]

    with pytest.raises(RuntimeError, match="decode step failed"):
        asyncio.run(main())
    r = run_row(db, astream.greenprof_track.last.run_id)
    assert r.status == "failed" and "decode step failed" in r.error and r.new_tokens == 1


# -- 2. a failing tokens= never fails the call -------------------------------------------------
@pytest.mark.parametrize("tokens, why", [
    (lambda out: 1 / 0, "ZeroDivisionError"),
    (lambda out: "12", "'12'"),
    (lambda out: -5, "-5"),
    (lambda out: 3.0, "3.0"),
    (lambda out: 12.0, "12.0"),  # floats are refused, even whole ones
    (lambda out: True, "True"),
    (lambda out: None, "None"),
], ids=["raises", "str", "negative", "float", "whole-float", "bool", "none"])
def test_failing_tokens_callback_keeps_the_result(tmp_path, tokens, why):
    db = str(tmp_path / "t.db")
    result = object()

    @greenprof.track(model="m", tokens=tokens, db=db)
    def infer():
        burn(0.01)
        return result

    with pytest.warns(GreenprofWarning, match="tokens=") as rec:
        assert infer() is result
    msgs = [str(w.message) for w in rec if issubclass(w.category, GreenprofWarning)]
    assert len(msgs) == 1 and why in msgs[0] and "\n" not in msgs[0]
    t = infer.greenprof_track.last
    assert t.tokens is None and t.j_per_token is None and t.energy_j > 0
    assert msgs[0] in t.warnings
    r = run_row(db, t.run_id)
    assert r.status == "completed" and r.new_tokens is None and r.error is None
    assert any("tokens=" in w and why in w for w in r.warnings)


def test_tokens_accepts_integer_types_and_sums_over_a_generator(tmp_path):
    np = pytest.importorskip("numpy")
    db = str(tmp_path / "t.db")

    @greenprof.track(model="m", tokens=lambda out: np.int64(len(out)), db=db)
    def infer():
        return [1, 2, 3]

    assert infer() == [1, 2, 3] and infer.greenprof_track.last.tokens == 3

    @greenprof.track(model="s", tokens=lambda chunk: chunk["n"], db=db)
    def stream():
        yield {"n": 2}
        yield {"n": 3}
        yield {"n": "oops"}
        yield {"n": 4}

    with pytest.warns(GreenprofWarning, match="'oops'"):
        got = list(stream())
    assert [c["n"] for c in got] == [2, 3, "oops", 4]  # every chunk still comes through
    t = stream.greenprof_track.last
    assert t.tokens is None
    r = run_row(db, t.run_id)
    assert r.status == "completed" and r.new_tokens is None

    with greenprof.track(model="b", db=db) as b:
        b.add_tokens(np.int32(2))
        with pytest.raises(UsageError):
            b.add_tokens(2.0)
    assert b.tokens == 2


# -- 3. several threads opening a fresh SQLite file --------------------------------------------
def test_fresh_sqlite_file_locked_while_switching_to_wal(tmp_path):
    """Switching a fresh file to WAL meets "database is locked" at once (no busy_timeout wait)
    when another connection holds its write lock: what concurrent first opens do to each other."""
    db = tmp_path / "fresh.db"
    db.touch()
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always", GreenprofWarning)
            with greenprof.track(model="m", db=str(db)) as t:
                t.add_tokens(1)
    finally:
        release.join()
        other.close()
    # the store waited for the lock instead of giving up (a busy machine may still warn of load)
    assert not [w for w in rec if "not stored" in str(w.message) or "database" in str(w.message)], \
        [str(w.message) for w in rec]
    assert t.run_id is not None and run_row(db, t.run_id).status == "completed"
    assert rows(db, "pragma journal_mode") == [("wal",)]


def test_many_threads_tracking_into_a_fresh_sqlite_file(tmp_path):
    db = str(tmp_path / "fresh.db")
    n_threads, blocks = 8, 3
    barrier = threading.Barrier(n_threads)
    trackers, errors = [], []

    def worker(i):
        try:
            barrier.wait(timeout=60)
            for j in range(blocks):
                with greenprof.track(model=f"w{i}", db=db, sample_hz=0) as t:
                    burn(0.002)
                    t.mark("prefill")
                    t.add_tokens(j + 1)
                trackers.append(t)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=300)
    assert not errors, errors
    assert not [w for w in rec if "not stored" in str(w.message)], [str(w.message) for w in rec]
    assert len(trackers) == n_threads * blocks and all(t.run_id is not None for t in trackers)
    got = rows(db, "select status, count(*), sum(new_tokens) from runs group by status")
    assert got == [("completed", n_threads * blocks, n_threads * sum(range(1, blocks + 1)))]
    assert rows(db, "pragma integrity_check") == [("ok",)]


# -- 4. a store that cannot be used keeps the figures on the tracker ---------------------------
def test_unusable_store_warns_once_and_keeps_the_figures(tmp_path):
    db = str(tmp_path / "no" / "such" / "dir" / "t.db")

    @greenprof.track(model="m", tokens=lambda out: len(out), db=db)
    def infer():
        burn(0.02)
        return "abc"

    with pytest.warns(GreenprofWarning) as rec:
        assert infer() == "abc"
    msgs = [str(w.message) for w in rec if issubclass(w.category, GreenprofWarning)]
    assert len(msgs) == 1 and "\n" not in msgs[0]
    assert "does not exist" in msgs[0] and "kept on the tracker only" in msgs[0]
    t = infer.greenprof_track.last
    assert t.run_id is None and t.tokens == 3
    assert t.energy_j > 0 and t.j_per_token == pytest.approx(t.energy_j / 3) and t.co2e_g > 0
    assert t.measurement.status == "completed"
    assert not (tmp_path / "no").exists()


def test_store_locked_past_the_timeout(tmp_path, monkeypatch):
    import greenprof.store.engine as store_engine
    from greenprof.store import open_store

    db = tmp_path / "t.db"
    open_store(db).close()  # a good greenprof database...
    monkeypatch.setattr(store_engine, "BUSY_TIMEOUT_S", 0.3)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # ...that another process keeps locked
    try:
        with pytest.warns(GreenprofWarning, match="locked") as rec:
            with greenprof.track(model="m", db=str(db)) as t:
                burn(0.01)
                t.add_tokens(2)
        assert len([w for w in rec if issubclass(w.category, GreenprofWarning)]) == 1
        assert t.run_id is None and t.energy_j > 0 and t.j_per_token is not None

        # locked only while the block runs: the run started, but it cannot be saved
        holder.execute("COMMIT")
        with pytest.warns(GreenprofWarning, match="cannot save run") as rec:
            with greenprof.track(model="m", db=str(db)) as t2:
                assert t2.run_id is not None
                holder.execute("BEGIN IMMEDIATE")
                t2.add_tokens(1)
        assert len([w for w in rec if issubclass(w.category, GreenprofWarning)]) == 1
        assert t2.run_id is None and t2.energy_j > 0 and t2.tokens == 1
    finally:
        holder.close()


def test_exception_and_unusable_store_the_user_error_wins(tmp_path):
    db = str(tmp_path / "missing" / "t.db")
    with pytest.warns(GreenprofWarning, match="kept on the tracker only"):
        with pytest.raises(KeyError, match="boom"):
            with greenprof.track(model="m", db=db) as t:
                raise KeyError("boom")
    assert t.measurement.status == "failed" and t.run_id is None


# -- 5. mark() mistakes are raised at the call ---------------------------------------------------
def test_mark_usage_errors_at_the_call(tmp_path):
    db = str(tmp_path / "t.db")
    t = greenprof.track(model="m", db=db)
    with pytest.raises(UsageError, match="inside a running"):
        t.mark("prefill")
    with t:
        for bad in (123, None, b"prefill", "", "   ", "start", "end"):
            with pytest.raises(UsageError, match="label"):
                t.mark(bad)
        t.mark("prefill")
        t.add_tokens(1)
    r = run_row(db, t.run_id)
    assert r.status == "completed" and r.error is None
    labels = [x[0] for x in rows(db, "select label from segments where run_id = ? order by idx", t.run_id)]
    assert labels[0] == "prefill" and all(isinstance(x, str) for x in labels)
    with pytest.raises(UsageError, match="inside a running"):
        t.mark("after")


# -- 6. attributed and gross figures -----------------------------------------------------------
def test_energy_is_the_attributed_share_and_gross_is_beside_it():
    with greenprof.track(model="m", store=False, region="FRA", pue=1.5, price_kwh=0.2) as t:
        burn(0.02)
        t.add_tokens(4)
    assert t.run_id is None
    assert 0 < t.energy_j <= t.gross_energy_j * (1 + 1e-9)
    # a window that shared the process with others: attributed 2 J of the 8 J the counter saw
    from greenprof.meter import Segment

    gross, charged = {"cpu-package-0": 6.0, "dram-0": 2.0}, {"cpu-package-0": 1.5, "dram-0": 0.5}
    t.measurement = SimpleNamespace(energy_j=gross, attributed_energy_j=charged,
                                    segments=[Segment("end", 0.0, 1.0, gross, {}, charged)],
                                    total_energy_j=8.0, warnings=[], status="completed")
    assert t.energy_j == pytest.approx(2.0) and t.gross_energy_j == pytest.approx(8.0)
    assert t.j_per_token == pytest.approx(0.5)
    assert t.co2e_g == pytest.approx(2.0 / 3.6e6 * t.grid.intensity_g_per_kwh * 1.5)
    assert t.cost_usd == pytest.approx(2.0 / 3.6e6 * 0.2 * 1.5)


# -- 7. collectors= chooses the domains ----------------------------------------------------------
def test_collectors_choose_the_domains(tmp_path, monkeypatch):
    from powercap_fake import build

    pc = build(tmp_path / "pc", sockets=1, dram=True)
    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", str(pc.root))
    db = str(tmp_path / "t.db")
    with greenprof.track(model="m", db=db, collectors=["cpu-package-0"]) as t:
        burn(0.01)
    assert list(t.measurement.energy_j) == ["cpu-package-0"]
    assert rows(db, "select domain from run_domains where run_id = ?", t.run_id) == [("cpu-package-0",)]


def test_the_tracker_says_what_its_figures_are(tmp_path, monkeypatch):
    """method, basis, partial, uncertain on the tracker: a counter that never moved in the call
    is uncertain with its reason (0 J there is not a measurement), and the CPU estimate is not."""
    from powercap_fake import build

    pc = build(tmp_path / "pc", sockets=1, dram=False)  # no writer: the counter stands still
    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", str(pc.root))
    with greenprof.track(model="m", store=False, collectors=["cpu-package-0"]) as t:
        burn(0.02)
    assert (t.method, t.basis, t.partial) == ("measured", "attributed", False)
    assert t.energy_j == 0 and list(t.uncertain) == ["cpu-package-0"]
    # "did not update during this window" when the window is short, "did not move ... may not
    # count" over 20 or more update periods: either way not a measured 0 J
    assert "its counter did not" in t.uncertain["cpu-package-0"] and "0 J" in t.uncertain["cpu-package-0"]
    assert any("cpu-package-0 uncertain" in w for w in t.warnings)
    with greenprof.track(model="m", store=False, collectors="cpu-estimate") as e:
        burn(0.02)
    assert (e.method, e.partial, e.uncertain) == ("estimated", False, {}) and e.energy_j > 0


# -- one definition of J per token, everywhere -----------------------------------------------------
def test_tokens_counted_by_track_reach_runs_show_compare_and_export(tmp_path):
    import json
    import subprocess
    import sys

    db = str(tmp_path / "t.db")
    with greenprof.track(model="m", db=db) as t:
        burn(0.05)
        t.add_tokens(10)

    @greenprof.track(model="m", db=db, tokens=lambda out: len(out))
    def answer():
        burn(0.05)
        return [1] * 12

    answer()
    u = answer.greenprof_track.last

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "greenprof.cli", *args, "--db", db],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    runs = {r["id"]: r for r in json.loads(cli("runs", "--json"))["runs"]}
    for tracker, n in ((t, 10), (u, 12)):
        row = runs[tracker.run_id]
        assert row["decode_tokens"] == n
        assert row["j_per_token"] == pytest.approx(tracker.j_per_token, rel=1e-9)
        assert row["energy_j"] == pytest.approx(tracker.energy_j, rel=1e-9)
        assert row["co2e_g_per_1k_tokens"] is not None and row["usd_per_m_tokens"] is not None
        assert row["phases_marked"] is False  # a block without marks: its whole energy is decode
        assert (row["method"], row["basis"], row["partial"], row["uncertain"]) == (
            tracker.method, tracker.basis, tracker.partial, tracker.uncertain)
    shown = json.loads(cli("show", str(t.run_id), "--json"))["summary"]
    assert shown["j_per_token"] == pytest.approx(t.j_per_token, rel=1e-9)
    cmp = json.loads(cli("compare", str(t.run_id), str(u.run_id), "--json"))
    assert cmp["ratios_b_over_a"]["j_per_token"] == pytest.approx(u.j_per_token / t.j_per_token, rel=1e-9)
    assert cmp["ratios_b_over_a"]["energy_j"] == pytest.approx(u.energy_j / t.energy_j, rel=1e-9)
    csv_text = cli("export", "--format", "csv")
    assert "j_per_token" in csv_text.splitlines()[0] and csv_text.count("\n") == 3


# -- generators consumed in turn, the decorator's bare form, checks at the call -------------------
def _interleave(a, b):
    for _ in zip(a, b):
        pass


def test_two_tracked_generators_consumed_in_turn_split_the_energy_not_double_count_it():
    """A generator runs in its consumer's context: while one tracked generator is suspended, the
    other's window must not open as its child (each would then be charged the whole process)."""
    from greenprof.meter import _CURRENT, Meter

    def stream(n):
        for i in range(n):
            burn(0.03)
            yield i

    a = greenprof.track(model="a", store=False)(stream)
    b = greenprof.track(model="b", store=False)(stream)
    with Meter(collectors="cpu-estimate") as ref:  # the process over both, gross
        _interleave(a(6), b(6))
    ta, tb = a.greenprof_track.last, b.greenprof_track.last
    total = ref.measurement.energy_j["cpu-estimate"]
    assert ta.energy_j > 0 and tb.energy_j > 0
    assert ta.energy_j + tb.energy_j <= total * (1 + 1e-9), (ta.energy_j, tb.energy_j, total)
    assert _CURRENT.get() is None  # the consumer's context is left as it was


def test_two_tracked_async_generators_consumed_in_turn_split_the_energy():
    from greenprof.meter import _CURRENT, Meter

    async def stream(n):
        for i in range(n):
            burn(0.03)
            yield i

    a = greenprof.track(model="a", store=False)(stream)
    b = greenprof.track(model="b", store=False)(stream)

    async def consume():
        x, y = a(5), b(5)
        for _ in range(5):
            await x.__anext__()
            await y.__anext__()
        for g in (x, y):
            with pytest.raises(StopAsyncIteration):
                await g.__anext__()
        return _CURRENT.get()

    with Meter(collectors="cpu-estimate") as ref:
        left = asyncio.run(consume())
    ta, tb = a.greenprof_track.last, b.greenprof_track.last
    assert left is ref  # the task's context (a copy of this one) is left as it was
    assert 0 < ta.energy_j + tb.energy_j <= ref.measurement.energy_j["cpu-estimate"] * (1 + 1e-9)


def test_a_window_inside_a_tracked_generator_still_nests_in_its_run():
    def stream():
        with greenprof.track(model="inner", store=False) as inner:
            burn(0.03)
            yield 1
            burn(0.03)
        yield inner

    outer = greenprof.track(model="outer", store=False)(stream)
    inner = list(outer())[1]
    # the inner block is the outer run's child: charged out of it, never beyond it
    assert 0 < inner.energy_j <= outer.greenprof_track.last.energy_j * (1 + 1e-9)


def test_tokens_counted_after_the_prefill_mark_are_charged_the_work_after_it():
    with greenprof.track(model="m", store=False, collectors="cpu-estimate") as t:
        burn(0.03)
        t.mark("prefill")
        burn(0.06)
        t.add_tokens(20)
    f = t.figures
    assert [s.label for s in t.measurement.segments][:2] == ["prefill", "decode"]
    assert f.phase_energy_j["decode"] > f.phase_energy_j["prefill"] > 0
    assert t.j_per_token == pytest.approx(f.phase_energy_j["decode"] / 20) and t.j_per_token > 0


def test_add_tokens_outside_the_running_block_is_refused():
    t = greenprof.track(model="m", store=False)
    with pytest.raises(UsageError, match="inside a running"):
        t.add_tokens(1)
    with t:
        t.add_tokens(2)
    with pytest.raises(UsageError, match="has ended"):
        t.add_tokens(10)
    assert t.tokens == 2


def test_the_decorator_without_parentheses(tmp_path):
    db = str(tmp_path / "t.db")

    @greenprof.track
    def f(x):
        burn(0.01)
        return x * 2

    @greenprof.track
    def g(n):
        yield from range(n)

    assert f(21) == 42 and list(g(3)) == [0, 1, 2]
    assert f.greenprof_track.last.energy_j > 0 and g.greenprof_track.last.measurement is not None
    assert f.greenprof_track.last.model is None and inspect.isgeneratorfunction(g)


@pytest.mark.parametrize("bad", [dict(model=123), dict(model=print), dict(model=""), dict(params="135M"),
                                 dict(params=-3), dict(params=1.5), dict(precision=16),
                                 dict(precision="a-very-long-precision")])
def test_run_facts_are_checked_at_the_call(bad):
    name = next(iter(bad))
    with pytest.raises(UsageError, match=f"{name}="):
        greenprof.track(**bad)


def test_the_measurements_own_warnings_are_raised_as_greenprof_warnings(tmp_path, monkeypatch):
    from powercap_fake import build

    pc = build(tmp_path / "pc", sockets=1, dram=False)  # no writer: the counter stands still
    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", str(pc.root))
    with pytest.warns(GreenprofWarning, match="cpu-package-0 uncertain"):
        with greenprof.track(model="m", store=False, collectors=["cpu-package-0"]):
            burn(0.02)


def test_a_reference_meter_around_some_blocks_changes_nobodys_part():
    """A plain Meter is transparent to the split: a block under it (main thread) and a block
    in a new thread (whose context has no Meter) still split the process's energy between them,
    instead of each being charged all of it."""
    from greenprof.meter import Meter

    got = {}

    def worker():
        with greenprof.track(model="worker", store=False, collectors="cpu-estimate") as t:
            burn(0.3)
        got["worker"] = t

    with Meter(collectors="cpu-estimate") as ref:  # the same collectors: one hub, one split
        th = threading.Thread(target=worker)
        th.start()
        with greenprof.track(model="main", store=False, collectors="cpu-estimate") as t:
            burn(0.3)
        th.join()
    total = ref.measurement.energy_j["cpu-estimate"]
    both = t.energy_j + got["worker"].energy_j
    assert t.energy_j > 0 and got["worker"].energy_j > 0
    assert both <= total * (1 + 1e-9), (t.energy_j, got["worker"].energy_j, total)
    # the blocks together did nearly all of the work the reference saw
    assert both >= 0.5 * total


def test_a_split_window_under_a_plain_meter_splits_with_its_split_ancestors_other_children():
    """track A > Meter M > track B beside track C (a thread under A): B and C split A's part."""
    from greenprof.meter import Meter

    with greenprof.track(model="a", store=False) as a:
        got = {}
        import contextvars

        ctx = contextvars.copy_context()  # the thread starts under A, as an executor task would

        def c_block():
            with greenprof.track(model="c", store=False) as c:
                burn(0.2)
            got["c"] = c

        th = threading.Thread(target=ctx.run, args=(c_block,))
        th.start()
        with Meter(collectors="cpu-estimate") as m:
            with greenprof.track(model="b", store=False) as b:
                burn(0.2)
        th.join()
    c = got["c"]
    assert b.energy_j > 0 and c.energy_j > 0
    assert b.energy_j + c.energy_j <= a.energy_j * (1 + 1e-9), (b.energy_j, c.energy_j, a.energy_j)
    assert b.energy_j <= m.measurement.attributed_energy_j["cpu-estimate"] * (1 + 1e-9)


def test_tokens_after_the_prefill_mark_are_stored_on_the_decode(tmp_path):
    db = str(tmp_path / "t.db")
    with greenprof.track(model="m", db=db, collectors="cpu-estimate") as t:
        burn(0.03)
        t.mark("prefill")
        burn(0.06)
        t.add_tokens(20)
    assert t.tokens == 20
    (n,) = rows(db, "select tokens from segments where run_id = ? and label = 'decode'", t.run_id)[0]
    assert n == 20
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "greenprof.cli", "runs", "--json", "--db", db],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)["runs"]
    assert row["decode_tokens"] == 20 and row["new_tokens"] == 20
    assert row["j_per_token"] == pytest.approx(t.j_per_token, rel=1e-9)


def test_token_marks_are_the_trackers_tokens(tmp_path):
    db = str(tmp_path / "t.db")
    with greenprof.track(model="m", db=db, collectors="cpu-estimate") as t:
        burn(0.02)
        t.mark("prefill")
        for i in range(5):
            burn(0.01)
            t.mark(f"token-{i + 1}")
    assert t.tokens == 5
    assert t.j_per_token == pytest.approx(t.figures.phase_energy_j["decode"] / 5) and t.j_per_token > 0
    assert run_row(db, t.run_id).new_tokens == 5


def _burn_thread(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_generator_resumed_on_another_thread_is_weighed_by_the_thread_it_runs_on():
    """A thread pool streams a sync generator (Starlette's iterate_in_threadpool): its first item
    on thread X, the rest on thread Y, while X serves another request. The stream was weighed by
    X's CPU time, so part of its energy went to the other request."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    from greenprof.meter import Meter

    @greenprof.track(model="stream", store=False, collectors="cpu-estimate")
    def stream():
        for i in range(10):
            _burn_thread(0.02)
            yield i

    @greenprof.track(model="heavy", store=False, collectors="cpu-estimate")
    def heavy():
        time.sleep(0.4)
        _burn_thread(0.3)

    x, y = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    try:
        with Meter(collectors="cpu-estimate", sample_hz=10) as ref:
            g = stream()
            ctx = contextvars.Context()
            x.submit(ctx.run, next, g).result()
            gt = stream.greenprof_track.last
            fh = x.submit(heavy)
            y.submit(ctx.run, lambda: [None for _ in g]).result()
            fh.result()
    finally:
        x.shutdown()
        y.shutdown()
    ht = heavy.greenprof_track.last
    total = ref.measurement.energy_j["cpu-estimate"]
    assert gt.energy_j + ht.energy_j <= total * (1 + 1e-9)
    # the stream used 0.2 s of CPU and the other request 0.3 s: 0.4 of their energy, not 0.2
    assert 0.3 < gt.energy_j / (gt.energy_j + ht.energy_j) < 0.5, (gt.energy_j, ht.energy_j)


def test_asyncio_tasks_split_equally_say_so():
    async def handle(per_step):
        with greenprof.track(model="a", store=False, collectors="cpu-estimate") as t:
            for _ in range(5):
                _burn_thread(per_step)
                await asyncio.sleep(0)
        return t

    async def main():
        return await asyncio.gather(handle(0.01), handle(0.03))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = asyncio.run(main())
    for t in ts:
        assert any("split equally among them" in w for w in t.warnings), t.warnings
    with greenprof.track(model="alone", store=False, collectors="cpu-estimate") as alone:
        _burn_thread(0.01)
    assert not any("split equally" in w for w in alone.warnings)


def test_a_nested_run_names_the_run_it_ran_inside(tmp_path):
    """A track block inside another was stored as a run of its own, unlinked, although its energy
    is part of the outer run's: a sum over runs counted those joules twice. It now stores the
    outer run as its parent_run_id (through a tracked generator, across a plain Meter, not
    across databases), and deleting the outer run leaves it, unlinked."""
    import subprocess
    import sys

    db, other = str(tmp_path / "t.db"), str(tmp_path / "other.db")
    with greenprof.track(model="outer", db=db) as outer:
        with greenprof.Meter(collectors="cpu-estimate", sample_hz=0):  # a plain Meter in between
            with greenprof.track(model="inner", db=db) as inner:
                burn(0.03)
        with greenprof.track(model="elsewhere", db=other) as elsewhere:
            burn(0.01)
        burn(0.01)
    with greenprof.track(model="after", db=db) as after:
        burn(0.01)

    def gen():
        with greenprof.track(model="in-gen", db=db) as t:
            yield t

    (in_gen,) = list(greenprof.track(model="gen", db=db)(gen)())
    parents = dict(rows(db, "select id, parent_run_id from runs"))
    assert parents[inner.run_id] == outer.run_id
    assert parents[outer.run_id] is None and parents[after.run_id] is None
    assert parents[in_gen.run_id] is not None and parents[in_gen.run_id] != outer.run_id
    assert dict(rows(other, "select id, parent_run_id from runs"))[elsewhere.run_id] is None
    assert inner.energy_j <= outer.energy_j * (1 + 1e-9)

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "greenprof.cli", *args, "--db", db], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    listed = {r["id"]: r for r in json.loads(cli("runs", "--json"))["runs"]}
    assert listed[inner.run_id]["parent_run_id"] == outer.run_id and listed[outer.run_id]["parent_run_id"] is None
    assert f"run {outer.run_id} (its energy includes this run's" in cli("show", str(inner.run_id))
    import csv
    import io

    flat = list(csv.DictReader(io.StringIO(cli("export", "-f", "csv"))))
    assert {r["id"]: r["parent_run_id"] for r in flat}[str(inner.run_id)] == str(outer.run_id)
    # CodeCarbon's rows are summed: a nested run's energy is in its parent's row already
    r = subprocess.run([sys.executable, "-m", "greenprof.cli", "export", "--codecarbon", "--db", db],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "2 nested runs left out of the CodeCarbon export" in r.stderr, r.stderr
    cc = list(csv.DictReader(io.StringIO(r.stdout)))
    roots = [x for x in listed.values() if x["parent_run_id"] is None]
    assert len(cc) == len(roots) == 3
    assert sum(float(x["energy_consumed"]) for x in cc) * 3.6e6 == pytest.approx(
        sum(x["energy_j"] for x in roots), rel=1e-6)
    from greenprof.store import open_store

    with open_store(db) as store:
        store.delete_run(outer.run_id)
        assert store.get_run(inner.run_id).parent_run_id is None


def test_last_is_the_call_that_last_started_or_ended():
    """`.last` was only the latest call to *start*: a recursive function's innermost call (not
    the call the user made), and, once a concurrent call ended before an older one, the older
    one still running, without figures. A call is `.last` again as it ends."""
    @greenprof.track(model="rec", store=False, collectors="cpu-estimate")
    def rec(n):
        burn(0.01)
        return rec(n - 1) + 1 if n else 0

    assert rec(3) == 3
    outer = rec.greenprof_track.last
    assert outer.energy_j is not None and outer.measurement.duration_s >= 0.04 - 1e-3  # all 4 levels

    started, release = threading.Event(), threading.Event()

    @greenprof.track(model="slow", store=False, collectors="cpu-estimate")
    def slow(wait):
        if wait:
            started.set()
            release.wait(10)
        return wait

    th = threading.Thread(target=slow, args=(True,))
    th.start()
    started.wait(10)
    slow(False)  # starts after the slow call and ends before it
    quick = slow.greenprof_track.last
    assert quick is not None and quick.energy_j is not None  # not the one still running
    release.set()
    th.join()
    assert slow.greenprof_track.last is not quick and slow.greenprof_track.last.energy_j is not None


def test_tokens_counted_as_zero_and_never_counted_are_stored_as_the_tracker_says(tmp_path):
    """add_tokens(0) was stored as unknown (null) while t.tokens said 0; a block that counted
    nothing said 0 while the store said unknown. Zero counted is 0 in both, nothing counted None."""
    db = str(tmp_path / "t.db")
    with greenprof.track(model="zero", db=db) as zero:
        burn(0.01)
        zero.add_tokens(0)
    with greenprof.track(model="none", db=db) as none:
        burn(0.01)
    stored = dict(rows(db, "select model_name, new_tokens from runs"))
    assert (zero.tokens, stored["zero"]) == (0, 0)
    assert (none.tokens, stored["none"]) == (None, None)
    assert zero.j_per_token is None and none.j_per_token is None
