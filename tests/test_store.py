"""The run store against real SQLite files (and a throwaway PostgreSQL server when one is installed).

Nothing is mocked: measurements come from the real Meter over replayed traces, several real
processes write into one file, a real process is killed with SIGKILL, and old databases are
built by the real Alembic migrations.
"""

from __future__ import annotations

import inspect
import math
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from greenprof import hostinfo  # noqa: E402
from greenprof.collectors.replay import PowerTrace, ReplayCounterCollector  # noqa: E402
from greenprof.errors import UsageError  # noqa: E402
from greenprof.meter import Measurement, Meter, PowerSample, Segment  # noqa: E402
from greenprof.store import (  # noqa: E402
    BadStoreUrl,
    NotAGreenprofDatabase,
    RunNotFound,
    SchemaTooNew,
    StoreError,
    StoreNotWritable,
    open_store,
)
from greenprof.store import schema as S  # noqa: E402
from greenprof.store.db import STALE_NOTE  # noqa: E402
from greenprof.store.migrate import alembic_config, known_revisions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# -- helpers ------------------------------------------------------------------------------------
def synthetic_measurement(n_samples: int = 2000, n_tokens: int = 8, seed: int = 0) -> Measurement:
    """A plausible two-domain measurement built directly (fast; for volume and concurrency)."""
    doms = ("cpu-package-0", "gpu-0")
    segs, t = [], 0.0
    for i in range(n_tokens + 1):
        label = "prefill" if i == 0 else f"token-{i}"
        d = 0.05 if i == 0 else 0.01
        e = {dom: (10.0 + k + seed % 7) * d for k, dom in enumerate(doms)}
        segs.append(Segment(label, t, t + d, e, {dom: 2.0 * d for dom in doms}))
        t += d
    per_dom = n_samples // len(doms)
    samples = [PowerSample(t * j / per_dom, dom, 10.0 + k + (j % 13) * 0.5 + seed)
               for j in range(per_dom) for k, dom in enumerate(doms)]
    energy = {dom: sum(s.energy_j[dom] for s in segs) for dom in doms}
    return Measurement(duration_s=t, energy_j=energy, method={d: "replayed" for d in doms}, segments=segs,
                       idle_power_w={d: 2.0 for d in doms}, lost={}, samples=samples, sample_hz=10.0,
                       sources={d: "replay" for d in doms})


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def real_measurement(tokens: int = 8, token_segments: bool = True) -> Measurement:
    """A Meter measurement over two replayed domains, with an idle baseline and a lost domain."""
    gpu = ReplayCounterCollector(PowerTrace("gpu-0", [0.0, 0.5, 1.0, 60.0], [60.0, 250.0, 90.0, 90.0]))
    cpu = ReplayCounterCollector(PowerTrace("cpu-package-0", [0.0, 60.0], [35.0, 45.0]))

    class Flaky(ReplayCounterCollector):
        calls = 0

        def read_j(self) -> float:
            Flaky.calls += 1
            if Flaky.calls > 6:
                from greenprof.errors import SensorLost

                raise SensorLost("gpu-1 fell off the bus")
            return super().read_j()

    lost = Flaky(PowerTrace("gpu-1", [0.0, 60.0], [80.0, 80.0]))
    with Meter(collectors=[gpu, cpu, lost], sample_hz=100, idle_s=0.05, token_segments=token_segments) as meter:
        busy(0.02)
        meter.mark("prefill")
        for i in range(1, tokens + 1):
            busy(0.005)
            meter.mark(f"token-{i}")
    return meter.measurement


def round_trip(url: str) -> None:
    """Save a real measurement and read every figure back exactly."""
    m = real_measurement(tokens=8)
    assert "gpu-1" in m.lost and m.samples
    with open_store(url) as store:
        run_id = store.start_run(model_name="SmolLM-135M", model_shape="SmolLM-135M", param_count=134_515_008,
                                 precision="fp32", provider="CPUExecutionProvider", threads=2,
                                 prompt_tokens=16, new_tokens=8, region="FRA", intensity_g_per_kwh=56.0,
                                 intensity_source="codecarbon", intensity_year=2023, pue=1.0,
                                 price_usd_per_kwh=0.2, extra={"note": "round trip"})
        assert store.get_run(run_id).status == "running"
        store.finish_run(run_id, m)
        r = store.get_run(run_id)
        assert r.status == "completed" and r.error is None
        assert r.started_at.tzinfo is not None and r.ended_at is not None and r.ended_at >= r.started_at
        assert r.model_name == "SmolLM-135M" and r.param_count == 134_515_008 and r.extra == {"note": "round trip"}
        assert r.pid == os.getpid() and r.host == hostinfo.host()
        assert r.hardware == hostinfo.hardware() and r.hardware_fingerprint == hostinfo.fingerprint(r.hardware)
        assert r.software and r.software["greenprof"]
        assert r.duration_s == m.duration_s and r.sample_hz == 100 and r.idle_window_s == m.idle_window_s
        assert r.warnings == m.warnings and any("gpu-1" in w for w in r.warnings)
        # domains: gross, idle, dynamic, method, source; the lost one with its reason
        assert set(r.domains) == {"gpu-0", "cpu-package-0", "gpu-1"}
        for d in ("gpu-0", "cpu-package-0"):
            rec = r.domains[d]
            assert rec.energy_j == m.energy_j[d]
            assert rec.idle_power_w == m.idle_power_w[d]
            assert rec.dynamic_energy_j == pytest.approx(m.dynamic_energy_j[d], rel=1e-12)
            assert rec.method == "replayed" and rec.source == m.sources[d] and rec.lost_reason is None
        # the lost domain keeps what it measured before the loss (here: lost during the idle
        # baseline, so nothing inside the window), marked partial by its reason
        assert r.domains["gpu-1"].energy_j == m.energy_j["gpu-1"]
        assert "fell off the bus" in (r.domains["gpu-1"].lost_reason or "")
        # gross and attributed side by side (replayed traces count as this process's: share 1)
        for d in ("gpu-0", "cpu-package-0"):
            rec = r.domains[d]
            assert rec.attributed_energy_j == pytest.approx(m.attributed_energy_j[d], rel=1e-12)
            assert rec.share == pytest.approx(1.0) and rec.scope == "process"
        assert r.process_cpu_s == m.process_cpu_s and r.other_cpu_share == m.other_cpu_share
        # segments, exactly
        assert [s.label for s in r.segments] == [s.label for s in m.segments]
        for got, want in zip(r.segments, m.segments):
            assert got.start_s == want.start_s and got.duration_s == pytest.approx(want.duration_s, abs=1e-12)
            assert got.energy_j == want.energy_j
            for d, v in want.dynamic_energy_j.items():
                if d in m.idle_power_w:
                    assert got.dynamic_energy_j[d] == pytest.approx(v, rel=1e-12, abs=1e-12)
                else:  # no idle baseline for it (lost during the baseline): no dynamic energy
                    assert got.dynamic_energy_j[d] is None
        assert [s.kind for s in r.segments][:2] == ["prefill", "decode"]
        # phase summaries: prefill carries the prompt tokens, each token-N one token
        assert r.phases["prefill"].tokens == 16 and r.phases["decode"].tokens == 8
        assert r.phases["decode"].segments == 8
        for d in ("gpu-0", "cpu-package-0"):
            decode_j = sum(s.energy_j[d] for s in m.segments if s.label.startswith("token-"))
            assert r.phases["decode"].energy_j[d] == pytest.approx(decode_j, rel=1e-12)
            assert r.phases["prefill"].energy_j[d] == m.segments[0].energy_j[d]
        # samples, exactly, and the SQL-side timeline
        stored = store.samples(run_id)
        assert sorted((s.t_s, s.domain, s.power_w) for s in stored) == \
            sorted((s.t_s, s.domain, s.power_w) for s in m.samples)
        line = store.power_timeline(run_id, max_points=5)
        # the lost domain has samples only from before its loss (here the idle baseline)
        assert {"gpu-0", "cpu-package-0"} <= set(line) <= {"gpu-0", "cpu-package-0", "gpu-1"}
        assert all(s.t_s < 0 for s in stored if s.domain == "gpu-1")
        assert all(len(tl.t_s) <= 5 for tl in line.values())
        assert sum(sum(tl.samples) for tl in line.values()) == len(m.samples)
        # list_runs sees the same thing
        (listed,) = [x for x in store.list_runs() if x.id == run_id]
        assert listed.energy_j == r.energy_j and listed.phases.keys() == r.phases.keys()
        assert store.integrity_check() == "ok"
        # a run is finished once
        with pytest.raises(UsageError, match="already completed"):
            store.finish_run(run_id, m)
        store.delete_run(run_id)  # cascades
        with pytest.raises(RunNotFound):
            store.get_run(run_id)
        assert store.count_samples(run_id) == 0


def table_rows(db: Path) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every row of every table (columns, sorted rows), read with the stdlib driver."""
    conn = sqlite3.connect(db)
    try:
        out = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"):
            cur = conn.execute(f'SELECT * FROM "{name}"')
            cols = [c[0] for c in cur.description]
            out[name] = (cols, sorted(cur.fetchall(), key=repr))
        return out
    finally:
        conn.close()


# -- round trip, schema ---------------------------------------------------------------------------
def test_round_trip_of_a_real_measurement(tmp_path):
    round_trip(f"sqlite:///{tmp_path / 'runs.db'}")


def test_models_match_migrations_and_head_is_schema_revision(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_current_head() == S.SCHEMA_REVISION
    with open_store(tmp_path / "a.db") as store, store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": S.VERSION_TABLE})
        assert compare_metadata(ctx, S.metadata) == []
        assert store.revision == S.SCHEMA_REVISION
        pragmas = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in
                   ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")}
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "synchronous": 1, "busy_timeout": 30000}


def test_no_create_all_in_production_code():
    for path in (ROOT / "greenprof" / "store").rglob("*.py"):
        assert "create_all" not in path.read_text(), f"{path}: the schema is created by migrations only"


def test_url_resolution_env_default_and_plain_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GREENPROF_DB", raising=False)
    with open_store() as store:
        assert store.path == tmp_path / "greenprof.db"
    monkeypatch.setenv("GREENPROF_DB", str(tmp_path / "env.db"))
    with open_store() as store:
        assert store.path == tmp_path / "env.db"
    with open_store("sub.db") as store:  # a plain path wins over the environment, made absolute
        assert store.path == tmp_path / "sub.db"
    with open_store(":memory:") as store:
        rid = store.start_run(kind="track")
        store.finish_run(rid, synthetic_measurement(100))
        assert store.get_run(rid).status == "completed"


def test_start_run_rejects_unknown_fields_and_kinds(tmp_path):
    with open_store(tmp_path / "a.db") as store:
        with pytest.raises(UsageError, match="unknown run field.*modle_name"):
            store.start_run(modle_name="x")
        with pytest.raises(UsageError, match="run kind"):
            store.start_run(kind="benchmark")
        with pytest.raises(RunNotFound):
            store.finish_run(12345, synthetic_measurement(10))
        rid = store.start_run()
        store.finish_run(rid, None, status="failed", error="model file not found")
        r = store.get_run(rid)
        assert (r.status, r.error, r.domains) == ("failed", "model file not found", {})


def test_run_ids_are_never_reused(tmp_path):
    with open_store(tmp_path / "a.db") as store:
        a = store.start_run()
        store.delete_run(a)
        assert store.start_run() == a + 1


def test_tokens_mapping_and_nonfinite_values(tmp_path):
    m = synthetic_measurement(20, n_tokens=3)
    m.samples.append(PowerSample(0.5, "gpu-0", float("nan")))
    with open_store(tmp_path / "a.db") as store:
        rid = store.start_run(prompt_tokens=7)
        store.finish_run(rid, m, tokens={"prefill": 9, 2: 4})
        r = store.get_run(rid)
        assert [s.tokens for s in r.segments] == [9, 1, 4, 1]
        assert r.phases["decode"].tokens == 6
        assert any(math.isnan(s.power_w) for s in store.samples(rid, "gpu-0"))


def test_power_timeline_downsamples_a_large_run_in_sql(tmp_path):
    n = 200_000
    with open_store(tmp_path / "a.db") as store:
        rid = store.start_run()
        store.add_samples(rid, [PowerSample(i * 0.01 - 1.0, "gpu-0", 100.0 + (i % 100)) for i in range(n)])
        t0 = time.perf_counter()
        line = store.power_timeline(rid, max_points=500)["gpu-0"]
        elapsed = time.perf_counter() - t0
        assert len(line.t_s) == 500 and sum(line.samples) == n
        assert line.t_s == sorted(line.t_s)
        assert line.t_s[0] == pytest.approx(-1.0 + 0.01 * 399 / 2)  # negative times (idle window) kept
        assert all(lo <= p <= hi for lo, p, hi in zip(line.min_w, line.power_w, line.max_w))
        assert line.power_w[10] == pytest.approx(149.5)  # 400 samples per bucket, a whole period of 100
        assert elapsed < 5.0


# -- concurrency ----------------------------------------------------------------------------------
def _writer(url: str, wid: int, runs: int, samples: int, barrier, results) -> None:
    try:
        barrier.wait(timeout=60)  # all open at once: the first-open migration races too
        store = open_store(url)
        ids = []
        for i in range(runs):
            rid = store.start_run(model_name=f"writer-{wid}", extra={"i": i})
            store.finish_run(rid, synthetic_measurement(samples, seed=wid))
            ids.append(rid)
        store.close()
        results.put(("ok", wid, ids))
    except BaseException:
        results.put(("error", wid, traceback.format_exc()))


def test_concurrent_writers_lose_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    procs_n, runs, samples = 4, 20, 2000
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(procs_n), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, w, runs, samples, barrier, results)) for w in range(procs_n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [o for o in outcomes if o[0] != "ok"]
    assert not errors, errors[0][2]
    assert all(p.exitcode == 0 for p in procs)
    ids = sorted(i for o in outcomes for i in o[2])
    assert ids == list(range(1, procs_n * runs + 1))
    with open_store(url) as store:
        listed = store.list_runs(limit=None)
        assert len(listed) == procs_n * runs and {r.status for r in listed} == {"completed"}
        assert store.count_samples() == procs_n * runs * samples
        for r in listed:
            assert store.count_samples(r.id) == samples
            assert len(r.domains) == 2 and r.phases["decode"].segments == 8
        assert store.integrity_check() == "ok"


# -- migrations ------------------------------------------------------------------------------------
# Raw SQL valid at each released revision, inserted into a database built at that revision and
# then upgraded to head. A new revision must add its own seed (the test below checks it does).
SEED: dict[str, list[str]] = {
    "0001": [
        "INSERT INTO runs (id, batch_id, kind, status, started_at, ended_at, pid, host, hardware, "
        "hardware_fingerprint, software, model_name, precision, provider, threads, prompt_tokens, "
        "new_tokens, region, intensity_g_per_kwh, intensity_source, intensity_year, pue, duration_s, "
        "sample_hz, idle_window_s, extra) VALUES (7, 'b-1', 'measure', 'completed', '2025-01-02 03:04:05.000000', "
        "'2025-01-02 03:04:09.500000', 4242, 'old-host', '{\"cpu_model\": \"Old CPU\", \"gpus\": []}', "
        "'0123456789abcdef', '{\"greenprof\": \"0.1.0\"}', 'SmolLM-135M', 'int8', 'CPUExecutionProvider', 4, "
        "32, 64, 'FRA', 56.0, 'codecarbon', 2023, 1.2, 4.5, 10.0, 1.0, '{\"tag\": \"old\"}')",
        "INSERT INTO runs (id, kind, status, started_at, error) VALUES (8, 'track', 'failed', "
        "'2025-01-03 00:00:00.000000', 'boom')",
        "INSERT INTO run_domains VALUES (7, 'cpu-package-0', 'measured', 'rapl', 123.5, 10.0, 78.5, 0.001, NULL)",
        "INSERT INTO run_domains VALUES (7, 'gpu-0', NULL, 'nvml', NULL, NULL, NULL, NULL, 'GPU fell off the bus')",
        "INSERT INTO segments VALUES (7, 0, 'prefill', 'prefill', 0.0, 0.5, 32)",
        "INSERT INTO segments VALUES (7, 1, 'token-1', 'decode', 0.5, 0.06, 1)",
        "INSERT INTO segment_energy VALUES (7, 0, 'cpu-package-0', 20.0, 15.0)",
        "INSERT INTO segment_energy VALUES (7, 1, 'cpu-package-0', 3.0, 2.4)",
        "INSERT INTO samples VALUES (7, -0.5, 'cpu-package-0', 10.0)",
        "INSERT INTO samples VALUES (7, 0.05, 'cpu-package-0', 41.0)",
        "INSERT INTO samples VALUES (7, 0.15, 'cpu-package-0', 43.5)",
    ],
    "0002": [
        "INSERT INTO runs (id, batch_id, kind, status, started_at, ended_at, model_name, precision, "
        "prompt_tokens, new_tokens, batch_size, extra) VALUES (7, 'b-2', 'measure', 'completed', "
        "'2026-11-23 03:04:05.000000', '2026-11-23 03:04:09.500000', 'SmolLM-135M', 'int8', 32, 64, 8, "
        "'{\"tag\": \"old\"}')",
        "INSERT INTO runs (id, kind, status, started_at, error) VALUES (8, 'track', 'failed', "
        "'2026-11-23 00:00:00.000000', 'boom')",
        "INSERT INTO run_domains VALUES (7, 'cpu-package-0', 'measured', 'rapl', 123.5, 10.0, 78.5, 0.001, NULL)",
        "INSERT INTO run_domains VALUES (7, 'gpu-0', NULL, 'nvml', NULL, NULL, NULL, NULL, 'GPU fell off the bus')",
        "INSERT INTO segments VALUES (7, 0, 'prefill', 'prefill', 0.0, 0.5, 32)",
        "INSERT INTO segments VALUES (7, 1, 'token-1', 'decode', 0.5, 0.06, 1)",
        "INSERT INTO segment_energy VALUES (7, 0, 'cpu-package-0', 20.0, 15.0)",
        "INSERT INTO segment_energy VALUES (7, 1, 'cpu-package-0', 3.0, 2.4)",
        "INSERT INTO samples VALUES (7, -0.5, 'cpu-package-0', 10.0)",
        "INSERT INTO samples VALUES (7, 0.05, 'cpu-package-0', 41.0)",
        "INSERT INTO samples VALUES (7, 0.15, 'cpu-package-0', 43.5)",
    ],
    "0003": [
        "INSERT INTO runs (id, batch_id, kind, status, started_at, ended_at, model_name, precision, "
        "prompt_tokens, new_tokens, batch_size, extra, collectors, process_cpu_s, machine_busy_cpu_s, "
        "other_cpu_share, concurrent_windows) VALUES (7, 'b-3', 'measure', 'completed', "
        "'2026-12-02 03:04:05.000000', '2026-12-02 03:04:09.500000', 'SmolLM-135M', 'int8', 32, 64, 8, "
        "'{\"tag\": \"old\"}', 'cpu', 4.1, 8.3, 0.5060240963855422, 0)",
        "INSERT INTO runs (id, kind, status, started_at, error) VALUES (8, 'serve', 'failed', "
        "'2026-12-02 00:00:00.000000', 'boom')",
        "INSERT INTO run_domains VALUES (7, 'cpu-package-0', 'measured', 'rapl', 123.5, 10.0, 78.5, 0.001, NULL, "
        "61.0, 0.4939, 'machine', 'a wrap may have been missed', NULL)",
        "INSERT INTO run_domains VALUES (7, 'gpu-0', NULL, 'nvml', NULL, NULL, NULL, NULL, 'GPU fell off the bus', "
        "NULL, NULL, 'gpu', NULL, 'not shared-checked')",
        "INSERT INTO segments VALUES (7, 0, 'prefill', 'prefill', 0.0, 0.5, 32)",
        "INSERT INTO segments VALUES (7, 1, 'token-1', 'decode', 0.5, 0.06, 1)",
        "INSERT INTO segment_energy VALUES (7, 0, 'cpu-package-0', 20.0, 15.0, 10.0)",
        "INSERT INTO segment_energy VALUES (7, 1, 'cpu-package-0', 3.0, 2.4, 1.5)",
        "INSERT INTO samples VALUES (7, -0.5, 'cpu-package-0', 10.0)",
        "INSERT INTO samples VALUES (7, 0.05, 'cpu-package-0', 41.0)",
        "INSERT INTO samples VALUES (7, 0.15, 'cpu-package-0', 43.5)",
    ],
}
# 0004: the same rows; the failed run (8) is a track block that ran inside run 7
SEED["0004"] = [r.replace("'b-3'", "'b-4'") for r in SEED["0003"]]
SEED["0004"][1] = ("INSERT INTO runs (id, kind, status, started_at, error, parent_run_id) VALUES (8, 'track', "
                   "'failed', '2026-12-03 00:00:00.000000', 'boom', 7)")


def released_revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]  # oldest first


def test_every_revision_has_seed_rows():
    assert set(SEED) == known_revisions(), "add SEED rows for every new migration revision"


@pytest.mark.parametrize("revision", released_revisions())
def test_old_database_migrates_to_head_and_keeps_every_row(tmp_path, revision):
    from alembic import command

    db = tmp_path / f"at-{revision}.db"
    command.upgrade(alembic_config(f"sqlite:///{db}"), revision)
    conn = sqlite3.connect(db)
    with conn:
        for sql in SEED[revision]:
            conn.execute(sql)
    conn.close()
    before = table_rows(db)
    with open_store(db) as store:
        assert store.revision == S.SCHEMA_REVISION
        old = store.get_run(7)
        assert old.status == "completed" and old.model_name == "SmolLM-135M" and old.extra == {"tag": "old"}
        assert old.domains["cpu-package-0"].energy_j == 123.5
        assert old.domains["gpu-0"].lost_reason == "GPU fell off the bus"
        assert old.phases["prefill"].tokens == 32 and old.phases["decode"].energy_j == {"cpu-package-0": 3.0}
        assert len(store.samples(7)) == 3
        # 0002 added runs.batch_size: 0001 measure runs were one sequence at a time
        assert old.batch_size == (1 if revision == "0001" else 8)
        assert store.get_run(8).batch_size is None  # a track run does not know its batch
        # 0003: runs stored before it have no attributed figures (never invented)
        if revision < "0003":
            assert old.domains["cpu-package-0"].attributed_energy_j is None
            assert old.phases["decode"].attributed_energy_j == {"cpu-package-0": None}
        else:
            assert old.domains["cpu-package-0"].attributed_energy_j == 61.0
            assert old.phases["decode"].attributed_energy_j == {"cpu-package-0": 1.5}
            assert old.other_cpu_share == pytest.approx(0.506, abs=1e-3) and old.collectors == "cpu"
        # 0004: the run a nested one ran inside; unknown (NULL) for runs stored before it
        assert store.get_run(8).parent_run_id == (7 if revision >= "0004" else None)
        new = store.start_run()  # and the migrated database takes new runs
        assert new == 9
        store.delete_run(new)
    after = table_rows(db)
    for table, (cols, rows) in before.items():
        if table == S.VERSION_TABLE:
            continue
        assert table in after, f"migration dropped table {table}"
        new_cols, new_rows = after[table]
        keep = [new_cols.index(c) for c in cols if c in new_cols]
        projected = sorted((tuple(r[i] for i in keep) for r in new_rows), key=repr)
        assert projected == sorted((tuple(r[cols.index(new_cols[i])] for i in keep) for r in rows), key=repr), table


def test_0003_names_setup_and_teardown_segments_of_old_runs(tmp_path):
    from alembic import command

    db = tmp_path / "at-0002.db"
    command.upgrade(alembic_config(f"sqlite:///{db}"), "0002")
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO runs (id, kind, status, started_at) VALUES (1, 'measure', 'completed', "
                     "'2026-11-23 00:00:00.000000')")
        conn.execute("INSERT INTO runs (id, kind, status, started_at) VALUES (2, 'track', 'completed', "
                     "'2026-11-23 00:00:00.000000')")
        for idx, label, kind in [(0, "setup", "other"), (1, "prefill", "prefill"), (2, "token-1", "decode"),
                                 (3, "end", "other")]:
            conn.execute(f"INSERT INTO segments VALUES (1, {idx}, '{label}', '{kind}', {idx}.0, 1.0, NULL)")
        conn.execute("INSERT INTO segments VALUES (2, 0, 'end', 'other', 0.0, 1.0, NULL)")
    conn.close()
    with open_store(db) as store:
        assert [s.kind for s in store.get_run(1).segments] == ["setup", "prefill", "decode", "teardown"]
        assert [s.kind for s in store.get_run(2).segments] == ["other"]  # no phase marks: unphased


def test_database_from_a_newer_greenprof_is_refused_untouched(tmp_path):
    db = tmp_path / "new.db"
    with open_store(db) as store:
        store.start_run()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(f"UPDATE {S.VERSION_TABLE} SET version_num = '9999'")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(SchemaTooNew) as err:
        open_store(db)
    msg = str(err.value)
    assert "written by a newer greenprof (schema 9999); upgrade greenprof" in msg and "\n" not in msg
    assert db.read_bytes() == before


# -- bad targets: typed error, one line, nothing touched --------------------------------------------
@pytest.mark.parametrize("url", ["postgresql://user@host:notaport/db", "nosuchdb://x/y", "://nothing",
                                 "sqlite+nosuchdriver:///x.db", "   "])
def test_malformed_url(tmp_path, monkeypatch, url):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadStoreUrl) as err:
        open_store(url)
    msg = str(err.value)
    assert "\n" not in msg and "--db" in msg and err.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_malformed_env_url_names_the_variable(monkeypatch):
    monkeypatch.setenv("GREENPROF_DB", "nosuchdb://x")
    with pytest.raises(BadStoreUrl, match="^GREENPROF_DB must be a SQLAlchemy URL like sqlite:///path.db"):
        open_store()


def _open_as_nobody(path: str, results) -> None:
    try:
        if os.geteuid() == 0:  # root writes anywhere: drop to nobody to meet a real EACCES
            os.setgid(65534)
            os.setuid(65534)
        open_store(path)
        results.put(("opened", ""))
    except BaseException as e:
        results.put((type(e).__name__, str(e)))


def test_unwritable_directory(tmp_path):
    locked = Path(tempfile.mkdtemp(prefix="greenprof-ro-"))  # under /tmp: reachable by nobody
    try:
        locked.chmod(0o555)
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        p = ctx.Process(target=_open_as_nobody, args=(str(locked / "runs.db"), results))
        p.start()
        kind, msg = results.get(timeout=60)
        p.join(timeout=30)
        assert kind == StoreNotWritable.__name__, msg
        assert "cannot write in" in msg and str(locked) in msg and "\n" not in msg
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)
        shutil.rmtree(locked)
    with pytest.raises(StoreNotWritable, match="does not exist"):
        open_store(tmp_path / "no" / "such" / "dir" / "runs.db")


def test_file_that_is_not_a_database_is_left_untouched(tmp_path):
    notes = tmp_path / "notes.db"
    notes.write_bytes(b"these are my notes, not a database\n" * 200)
    before = notes.read_bytes()
    with pytest.raises(NotAGreenprofDatabase) as err:
        open_store(notes)
    assert str(err.value) == f"{notes} is not a greenprof database (not SQLite); point --db at a new or a greenprof .db file"
    assert notes.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]
    # a SQLite database of some other application is refused too, byte for byte untouched
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    with conn:
        conn.execute("CREATE TABLE people (name TEXT)")
        conn.execute("INSERT INTO people VALUES ('ada')")
    conn.close()
    before = other.read_bytes()
    with pytest.raises(NotAGreenprofDatabase, match="it has tables people"):
        open_store(other)
    assert other.read_bytes() == before
    with pytest.raises(NotAGreenprofDatabase, match="is a directory"):
        open_store(tmp_path)
    assert isinstance(err.value, StoreError) and isinstance(err.value, UsageError)


# -- kill -9 ----------------------------------------------------------------------------------------
def test_kill_9_mid_run_leaves_an_interrupted_run_and_a_sound_database(tmp_path):
    db = tmp_path / "killed.db"
    script = tmp_path / "victim.py"
    script.write_text(textwrap.dedent("""
        import sys
        from greenprof.meter import Measurement, PowerSample, Segment
        from greenprof.store import open_store
        """) + inspect.getsource(synthetic_measurement) + textwrap.dedent("""
        store = open_store(sys.argv[1])
        victim = store.start_run(model_name="victim")
        print(victim, flush=True)
        m = synthetic_measurement(20000)
        while True:  # keep the writer busy so the kill lands mid-transaction
            rid = store.start_run(model_name="filler")
            store.finish_run(rid, m)
        """))
    proc = subprocess.Popen([sys.executable, str(script), str(db)], stdout=subprocess.PIPE, text=True)
    try:
        victim = int(proc.stdout.readline())
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with open_store(db) as store:
        assert store.get_run(victim).status == "running"
        stale = store.mark_stale_runs()
        assert victim in stale
        r = store.get_run(victim)
        assert r.status == "interrupted" and STALE_NOTE in r.error and str(proc.pid) in r.error
        assert store.mark_stale_runs() == []  # reported once
        runs = store.list_runs(limit=None)
        assert not [x for x in runs if x.status == "running"]
        done = [x for x in runs if x.status == "completed"]
        assert done, "the victim wrote no complete run in 1 s"
        for x in done:  # completed is set last: a completed run has all of its rows
            assert store.count_samples(x.id) == 20000 and len(x.domains) == 2
        assert store.integrity_check() == "ok"


def test_running_run_of_a_live_process_is_left_alone(tmp_path):
    with open_store(tmp_path / "a.db") as store:
        mine = store.start_run()
        other_host = store.start_run(host="some-other-host", pid=1)
        assert store.mark_stale_runs() == []
        assert store.get_run(mine).status == store.get_run(other_host).status == "running"


# -- import cost ----------------------------------------------------------------------------------
def test_importing_the_store_package_does_not_import_sqlalchemy():
    code = "import sys, greenprof, greenprof.store; print('sqlalchemy' in sys.modules, 'alembic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- PostgreSQL -------------------------------------------------------------------------------------
def test_postgresql_round_trip(postgres_url):
    round_trip(postgres_url)
    with open_store(postgres_url) as store:  # reopening at head is a no-op
        assert store.revision == S.SCHEMA_REVISION
        rid = store.start_run()
        m = synthetic_measurement(12_000)
        store.finish_run(rid, m)
        assert store.count_samples(rid) == 12_000
        line = store.power_timeline(rid, max_points=100)
        assert all(len(tl.t_s) == 100 for tl in line.values())
        assert sum(sum(tl.samples) for tl in line.values()) == 12_000


def test_postgresql_plain_scheme_and_newer_schema(postgres_url):
    from sqlalchemy import create_engine, text

    plain = postgres_url.replace("postgresql+psycopg2://", "postgres://").replace("postgresql+psycopg://", "postgres://")
    with open_store(plain) as store:
        with store.engine.begin() as conn:
            conn.execute(text(f"UPDATE {S.VERSION_TABLE} SET version_num = '9999'"))
    try:
        with pytest.raises(SchemaTooNew, match="newer greenprof"):
            open_store(postgres_url)
    finally:
        engine = create_engine(postgres_url)
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {S.VERSION_TABLE} SET version_num = '{S.SCHEMA_REVISION}'"))
        engine.dispose()


# -- whole finished runs in one transaction (greenprof serve's path) ---------------------------------
def record_runs_round_trip(url: str) -> None:
    """A batch of finished runs, stored whole: ids in order, every status, a decode segment
    that holds several tokens, read back as the per-token path is."""
    merged = real_measurement(tokens=6, token_segments=False)
    m = real_measurement(tokens=6)
    fields = dict(kind="serve", model_name="tiny", prompt_tokens=5, new_tokens=6, batch_size=1,
                  extra={"serve": {"request_id": "r"}})
    with open_store(url) as store:
        before = {r.id for r in store.list_runs(limit=None)}
        ids = store.record_runs([(fields, merged, "completed", None),
                                 ({**fields, "model_name": "other", "precision": "fp32"}, m, "interrupted",
                                  "client went away"),
                                 (fields, None, "failed", "no measurement")])
        assert len(ids) == 3 and len(set(ids)) == 3 and not set(ids) & before
        a, b, c = (store.get_run(i) for i in ids)
        assert (a.status, a.model_name, a.kind) == ("completed", "tiny", "serve")
        assert (b.status, b.model_name, b.precision, b.error) == ("interrupted", "other", "fp32", "client went away")
        assert (c.status, c.error, c.domains) == ("failed", "no measurement", {})
        assert a.ended_at is not None and a.extra == {"serve": {"request_id": "r"}}
        assert a.energy_j.keys() == b.energy_j.keys() and a.energy_j["gpu-0"] > 0 and a.energy_j["cpu-package-0"] > 0
        # merged: the tokens are in decode segments that say how many they hold
        decode = [s for s in a.segments if s.kind == "decode"]
        assert decode and {s.label for s in decode} == {"decode"} and sum(s.tokens for s in decode) == 6
        assert a.phases["decode"].tokens == b.phases["decode"].tokens == 6
        assert a.phases["prefill"].tokens == 5
        assert [s.label for s in b.segments] == [s.label for s in m.segments]  # per token, as given
        for d in merged.energy_j:
            assert a.energy_j[d] == merged.energy_j[d]
            assert a.phases["decode"].energy_j[d] == pytest.approx(
                math.fsum(s.energy_j[d] for s in merged.segments if s.label == "decode"), rel=1e-12)
        assert store.count_samples(ids[0]) == len(merged.samples)
        # one transaction: a bad item stores none of the batch
        with pytest.raises(UsageError, match="completed, failed or interrupted"):
            store.record_runs([(fields, merged, "completed", None), (fields, None, "running", None)])
        assert {r.id for r in store.list_runs(limit=None)} == before | set(ids)


def test_record_runs_stores_a_batch_whole(tmp_path):
    record_runs_round_trip(f"sqlite:///{tmp_path / 'runs.db'}")


def test_postgresql_record_runs(postgres_url):
    record_runs_round_trip(postgres_url)


def test_record_runs_ids_are_the_batch_rows_under_concurrent_writers(tmp_path):
    """SQLite's record_runs inserts a batch in one executemany and takes the newest ids: with
    three stores (three connections) writing batches at once, every id returned must be the row of
    the run it was returned for; a deleted newest id is never handed out again."""
    import threading

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    m = real_measurement(tokens=2, token_segments=False)
    got: dict[str, int] = {}
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with open_store(url) as store:
                for b in range(15):
                    batch = [(dict(kind="serve", model_name=name, extra={"serve": {"request_id": f"{name}-{b}-{k}"}}),
                              m if k % 2 else None, "completed" if k % 2 else "failed", None) for k in range(7)]
                    for k, rid in enumerate(store.record_runs(batch)):
                        got[f"{name}-{b}-{k}"] = rid
        except BaseException as e:  # reported below
            errors.append(e)

    with open_store(url):
        pass  # create the schema once, before the writers race
    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b", "c")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(got) == len(set(got.values())) == 3 * 15 * 7
    with open_store(url) as store:
        for request_id, rid in got.items():
            run = store.get_run(rid)
            assert run.extra == {"serve": {"request_id": request_id}}
            assert run.status == ("completed" if int(request_id.rsplit("-", 1)[1]) % 2 else "failed")
        newest = max(got.values())
        store.delete_run(newest)
        (after,) = store.record_runs([(dict(kind="serve", extra=None), None, "failed", None)])
        assert after > newest and store.get_run(after).extra is None


def test_shared_store_is_reused_and_reopened_when_the_file_is_replaced(tmp_path):
    """track()'s store: one per database in the process, opened again when its file is gone."""
    from greenprof.store import shared_store

    db = tmp_path / "shared.db"
    a = shared_store(db)
    assert shared_store(f"sqlite:///{db}") is a  # the same database, however it is named
    rid = a.start_run(model_name="one")
    a.finish_run(rid, None, status="failed")
    db.unlink()
    for extra in ("-wal", "-shm"):
        (tmp_path / f"shared.db{extra}").unlink(missing_ok=True)
    b = shared_store(db)
    assert b is not a and db.exists()  # a fresh, migrated file, not the deleted one's connections
    assert b.list_runs(limit=None) == []
    b.finish_run(b.start_run(model_name="two"), None, status="failed")
    with open_store(db, readonly=True) as store:
        assert [r.model_name for r in store.list_runs(limit=None)] == ["two"]
