"""Issue 10: every rough edge a skeptical newcomer hit, one test each.

Real parts throughout: the CLI's own ``main`` (in this process, or a subprocess where a signal or
a clean environment matters), real onnxruntime on the built-in ``tiny`` model, real SQLite, a real
TCP listener that never answers (for the PostgreSQL connect timeout), a real read-only bind mount
(in a private mount namespace) and a real unprivileged user for permissions. Only the hardware is
simulated (the CPU estimate; a replay trace).
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")

from greenprof.meter import Meter  # noqa: E402
from greenprof.store import open_store  # noqa: E402

TINY = ["--runs", "1", "--warmup", "0", "--new-tokens", "2", "--prompt-tokens", "2"]


# -- helpers ----------------------------------------------------------------------------------------
class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("greenprof: error:")]

    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def gp(capsys, monkeypatch):
    """Run `greenprof ARGS` through greenprof.cli.main in this process (the console script)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("GREENPROF_REPLAY", raising=False)

    def run(*args: str) -> Result:
        from greenprof.cli import main

        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return Result(code, out, err)

    return run


def cli(*args, env=None, cwd=None, timeout=300) -> Result:
    """`python -m greenprof.cli ARGS` in a subprocess (signals, a clean environment)."""
    e = {**os.environ, **(env or {})}
    if "GREENPROF_REPLAY" not in (env or {}):
        e.pop("GREENPROF_REPLAY", None)
    r = subprocess.run([sys.executable, "-m", "greenprof.cli", *map(str, args)], capture_output=True,
                       text=True, env=e, cwd=cwd, timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr
    return Result(r.returncode, r.stdout, r.stderr)


def one_error(r: Result, code: int = 2) -> str:
    assert r.code == code, (r.code, r.stderr)
    assert len(r.errors) == 1, r.stderr
    return r.errors[0]


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def estimate_measurement(tokens: int = 4):
    with Meter(collectors="cpu-estimate", sample_hz=20) as meter:
        busy(0.01)
        meter.mark("setup")
        busy(0.01)
        meter.mark("prefill")
        for i in range(1, tokens + 1):
            busy(0.003)
            meter.mark(f"token-{i}")
    return meter.measurement


def store_runs(path: Path, n: int = 2, **fields) -> list[int]:
    ids = []
    with open_store(path) as store:
        for _ in range(n):
            rid = store.start_run(model_name="tiny", precision="fp32", prompt_tokens=4, new_tokens=4,
                                  region="FRA", intensity_g_per_kwh=56.0, **fields)
            store.finish_run(rid, estimate_measurement())
            ids.append(rid)
    return ids


def tiny_folder() -> Path:
    from greenprof.models import builder

    return builder.build("tiny", "fp32")


@pytest.fixture
def export(tmp_path) -> Path:
    """A copy of the built tiny model as a user export, in a folder named my-export."""
    dst = tmp_path / "my-export"
    shutil.copytree(tiny_folder(), dst)
    (dst / "greenprof-model.json").unlink()  # a user's export carries no greenprof metadata
    return dst


# == Tracebacks and hangs ============================================================================
def test_prompt_file_that_is_not_utf8_is_one_line_exit_2(gp, tmp_path):
    bad = tmp_path / "bin.dat"
    bad.write_bytes(b"\xff\xfe\x00bad\x80\x81")
    line = one_error(gp("measure", "tiny", "--prompt-file", bad, "--db", tmp_path / "g.db"))
    assert str(bad) in line and "not UTF-8" in line and "--prompt-file" in line
    assert not (tmp_path / "g.db").exists()


def test_replay_trace_that_is_not_utf8_is_named_not_a_traceback(gp, tmp_path, monkeypatch):
    bad = tmp_path / "bin.dat"
    bad.write_bytes(b"\xff\xfe\x00bad\x80\x81")
    monkeypatch.setenv("GREENPROF_REPLAY", str(bad))
    r = gp("sensors", "--json")
    assert r.code == 0, r.stderr
    (replay,) = [s for s in r.json()["sensors"] if s["source"] == "replay"]
    assert not replay["available"] and str(bad) in replay["why_not"] and "not UTF-8" in replay["why_not"]
    # asking for it: one line, exit 2, naming the file and the encoding, before any model is built
    line = one_error(gp("measure", "tiny", "--collectors", "replay:cpu", "--db", tmp_path / "g.db", *TINY))
    assert "--collectors" in line and str(bad) in line and "UTF-8" in line
    assert not (tmp_path / "g.db").exists()


class SilentServer:
    """A TCP listener on 127.0.0.1 that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_postgres_server_that_never_answers_times_out_in_one_line(tmp_path):
    if not any(importlib_has(m) for m in ("psycopg", "psycopg2")):
        pytest.skip("no PostgreSQL driver: pip install 'psycopg[binary]'")
    srv = SilentServer()
    cache = tmp_path / "cache"
    env = {"GREENPROF_DB_CONNECT_TIMEOUT": "1", "GREENPROF_CACHE": str(cache)}
    url = f"postgresql://u@127.0.0.1:{srv.port}/x"
    try:
        for args in (["runs"], ["dashboard", "-o", tmp_path / "r.html"], ["measure", "tiny", *TINY]):
            r = cli(*args, "--db", url, env=env, timeout=90)  # a hang fails here
            line = one_error(r, code=1)
            assert "connect timeout" in line and "GREENPROF_DB_CONNECT_TIMEOUT" in line and str(srv.port) in line
        assert not cache.exists()  # measure gave up before building anything
        assert len(srv.conns) >= 3
        # a timeout set in the URL is the one the message names
        line = one_error(cli("runs", "--db", url + "?connect_timeout=1", timeout=90), code=1)
        assert "(1 s, the URL's connect_timeout)" in line
    finally:
        srv.close()
    # a bad value for the setting is itself one line
    line = one_error(cli("runs", "--db", url, env={"GREENPROF_DB_CONNECT_TIMEOUT": "soon"}))
    assert "GREENPROF_DB_CONNECT_TIMEOUT='soon'" in line


def importlib_has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# == Read-only and typo'd databases ==================================================================
READ_COMMANDS = [
    ["runs", "--json"], ["show", "1", "--json"], ["export", "--format", "csv"], ["compare", "1", "2", "--json"],
]


def _ro_mount_script(src: Path, mnt: Path, commands: list[list[str]], out: Path) -> str:
    lines = [f"mount --bind {src} {mnt} || exit 98", f"mount -o remount,bind,ro {mnt} || exit 98",
             f"touch {mnt}/probe 2>/dev/null && exit 99"]  # the mount must really be read-only
    for k, args in enumerate(commands):
        argv = " ".join(f"'{a}'" for a in args)
        lines.append(f"{sys.executable} -m greenprof.cli {argv} > {out}/{k}.out 2> {out}/{k}.err; "
                     f"echo $? > {out}/{k}.rc")
    lines.append("exit 0")
    return "\n".join(lines)


def test_reading_commands_read_a_read_only_mount(tmp_path):
    """runs, show, export, compare and dashboard read a database on a read-only file system;
    measure says the file system is read-only (not "for this user")."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("unshare/mount not available")
    src, mnt, out = tmp_path / "src", tmp_path / "mnt", tmp_path / "out"
    for d in (src, mnt, out):
        d.mkdir()
    store_runs(src / "g.db")
    db = str(mnt / "g.db")
    commands = [[*c, "--db", db] for c in READ_COMMANDS]
    commands.append(["dashboard", "--db", db, "-o", str(out / "report.html")])
    commands.append(["measure", "tiny", *TINY, "--db", db])
    commands.append(["measure", "tiny", *TINY, "--db", str(mnt / "new.db")])
    script = _ro_mount_script(src, mnt, commands, out)
    ns = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    r = subprocess.run([*ns, "sh", "-c", script], capture_output=True, text=True, timeout=600)
    if r.returncode == 99:
        pytest.fail("the bind mount was writable")
    if r.returncode != 0 or not (out / "0.rc").exists():
        pytest.skip(f"cannot make a read-only bind mount here: {r.stderr.strip()[:200]}")
    res = [Result(int((out / f"{k}.rc").read_text()), (out / f"{k}.out").read_text(),
                  (out / f"{k}.err").read_text()) for k in range(len(commands))]
    runs, show, export, compare, dashboard, measure_existing, measure_new = res
    for x in (runs, show, export, compare, dashboard):
        assert x.code == 0 and "Traceback" not in x.stderr, x.stderr
    assert [run["id"] for run in runs.json()["runs"]] == [2, 1]
    assert show.json()["summary"]["energy_j"] > 0
    assert len(list(csv.DictReader(io.StringIO(export.stdout)))) == 2
    assert compare.json()["ratios_b_over_a"]["energy_j"] is not None
    assert (out / "report.html").stat().st_size > 0
    for x in (measure_existing, measure_new):
        line = one_error(x)
        assert "read-only file system" in line and "for this user" not in line
    assert "preparing" not in measure_existing.stderr  # refused before the model
    assert sorted(p.name for p in src.iterdir()) == ["g.db"]  # nothing written beside it


def _as_nobody(fn, *args):
    """Run fn(*args) in a child that is an unprivileged user (root meets no EACCES); returns
    (kind, message) of what it raised, or ("ok", repr(result))."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()

    def child():
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            q.put(("ok", repr(fn(*args))))
        except BaseException as e:  # noqa: BLE001
            q.put((type(e).__name__, str(e)))

    p = ctx.Process(target=child)
    p.start()
    got = q.get(timeout=120)
    p.join(timeout=30)
    return got


def _read_ids(path: str):
    with open_store(path, readonly=True) as store:
        return [r.id for r in store.list_runs()]


def _open_for_writing(path: str):
    open_store(path).close()


def test_a_database_this_user_may_not_write_reads_and_says_why_not(tmp_path):
    locked = Path(tempfile.mkdtemp(prefix="greenprof-ro-"))  # under /tmp: reachable by nobody
    try:
        ids = store_runs(locked / "g.db")
        # an older schema beside it: reading it would need an upgrade it cannot write
        from alembic import command

        from greenprof.store.migrate import alembic_config

        command.upgrade(alembic_config(f"sqlite:///{locked / 'old.db'}"), "0002")
        for f in locked.iterdir():
            f.chmod(0o444)
        locked.chmod(0o555)
        before = sorted(p.name for p in locked.iterdir())
        assert _as_nobody(_read_ids, str(locked / "g.db")) == ("ok", repr(ids[::-1]))
        kind, msg = _as_nobody(_open_for_writing, str(locked / "g.db"))
        assert kind == "StoreNotWritable" and "permission denied for this user" in msg, msg
        assert "read-only file system" not in msg
        kind, msg = _as_nobody(_read_ids, str(locked / "old.db"))
        assert kind == "StoreNotWritable" and "older greenprof" in msg and "\n" not in msg, msg
        assert sorted(p.name for p in locked.iterdir()) == before
    finally:
        locked.chmod(0o755)
        shutil.rmtree(locked)


def test_reading_a_database_that_does_not_exist_creates_nothing(gp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    cases = [["runs", "--db", "typo.db"], ["runs"], ["runs", "--db", "~/x.db"], ["show", "1", "--db", "typo.db"],
             ["export", "--db", "typo.db"], ["compare", "1", "2", "--db", "typo.db"]]
    for args in cases:
        line = one_error(gp(*args))
        assert "no database at" in line and "`greenprof measure` creates one" in line, line
    assert "greenprof.db" in one_error(gp("runs"))
    assert str(tmp_path / "home" / "x.db") in one_error(gp("runs", "--db", "~/x.db"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    assert list((tmp_path / "home").iterdir()) == []
    assert "holds no runs" in one_error(gp("runs", "--db", "sqlite:///:memory:"))


def test_postgres_database_without_greenprof_tables_is_not_created_by_reading(gp, postgres_url):
    line = one_error(gp("runs", "--db", postgres_url))
    assert "no database at" in line
    from sqlalchemy import create_engine, inspect

    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert inspect(conn).get_table_names() == []
    finally:
        engine.dispose()


@pytest.mark.parametrize("db", ["sqlite:///:memory:", ":memory:", "sqlite://"])
def test_an_in_memory_database_is_refused_for_measure(gp, tmp_path, monkeypatch, db):
    monkeypatch.setenv("GREENPROF_CACHE", str(tmp_path / "cache"))
    r = gp("measure", "tiny", "--db", db, *TINY)
    assert "keeps nothing" in one_error(r)
    assert "stored runs" not in r.stderr and not (tmp_path / "cache").exists()


# == Validate before work ============================================================================
def _unreachable_postgres() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"postgresql://u@127.0.0.1:{port}/x"


BEFORE_WORK = {
    "unwritable db": (["tiny", "--db", "sqlite:////proc/greenprof-test.db"], "cannot write in /proc"),
    "unreachable db": (["tiny", "--db", "POSTGRES"], "cannot use the database"),
    "context length": (["tiny", "--new-tokens", "100000"], "context length of tiny (2048 tokens)"),
    "broken second model": (["tiny", "BAD"], "damaged"),
    "missing second model": (["tiny", "./no/such/model.onnx"], "does not exist"),
    "unknown collector": (["tiny", "--collectors", "nosuch-0"], "--collectors"),
    "name for two models": (["tiny", "smollm-135m", "--name", "x"], "--name names one model"),
}


@pytest.mark.parametrize("case", list(BEFORE_WORK), ids=list(BEFORE_WORK))
def test_everything_is_checked_before_a_model_is_built(gp, tmp_path, monkeypatch, case):
    if case == "unreachable db" and not (importlib_has("psycopg") or importlib_has("psycopg2")):
        pytest.skip("no PostgreSQL driver")
    args, msg = BEFORE_WORK[case]
    bad = tmp_path / "bad1"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"\x08\x07\x12\x04junk" * 10)
    args = [str(bad) if a == "BAD" else _unreachable_postgres() if a == "POSTGRES" else a for a in args]
    cache = tmp_path / "cache"
    monkeypatch.setenv("GREENPROF_CACHE", str(cache))
    if "--db" not in args:
        args += ["--db", str(tmp_path / "g.db")]
    r = gp("measure", *args, "--runs", "1", "--warmup", "0", "--prompt-tokens", "2")
    line = one_error(r, code=1 if case == "unreachable db" else 2)
    assert msg in line, line
    assert not cache.exists(), "a model was built before the mistake was found"
    assert "preparing" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "g.db").exists()


def test_a_later_model_failing_prints_the_completed_summary_then_the_error(gp, tmp_path, export):
    """The second model passes every check but cannot load (its weights file is gone): the first
    model's summary is printed, then the error; its runs are stored."""
    (export / "model.onnx.data").unlink()
    db = tmp_path / "g.db"
    r = gp("measure", "tiny", str(export), *TINY, "--db", db)
    line = one_error(r)
    assert "model.onnx" in line and "external weights" in line
    assert "tiny" in r.stdout and "Energy per token" in r.stdout
    assert r.stderr.strip().splitlines()[-1] == line  # the error comes last
    with sqlite3.connect(db) as c:
        assert c.execute("select model_name, status from runs").fetchall() == [("tiny", "completed")]
    r = gp("measure", "tiny", str(export), *TINY, "--db", db, "--json")
    doc = r.json()
    assert [s["model"] for s in doc["summary"]] == ["tiny"] and doc["complete"] is False
    assert "external weights" in doc["error"] and r.code == 2


def test_precision_is_refused_for_an_export_and_normalised_for_built_ins(gp, tmp_path, export):
    line = one_error(gp("measure", str(export), "--precision", "int4", "--db", tmp_path / "g.db", *TINY))
    assert "--precision applies to built-in models" in line and str(export) in line
    r = gp("measure", "tiny", "--precision", "INT8", "--db", tmp_path / "g.db", *TINY, "--json")
    assert r.code == 0, r.stderr
    assert r.json()["summary"][0]["precision"] == "int8"
    assert "preparing int8 model" in r.stderr
    with sqlite3.connect(tmp_path / "g.db") as c:
        assert c.execute("select precision from runs").fetchall() == [("int8",)]


def test_threads_beyond_the_usable_cpus_warn_and_are_stored(gp, tmp_path):
    from greenprof.measure import default_threads, usable_cpus

    too_many = usable_cpus() + 1
    db = tmp_path / "g.db"
    r = gp("measure", "tiny", "--threads", too_many, "--db", db, *TINY, "--json")
    assert r.code == 0, r.stderr
    (run,) = r.json()["runs"]
    (warning,) = [w for w in run["warnings"] if "--threads" in w]
    assert f"--threads {too_many} is more than the {usable_cpus()} CPUs" in warning
    assert warning in r.stderr
    # the default is stored as the number actually used, not left empty
    r = gp("measure", "tiny", "--db", db, *TINY)
    assert r.code == 0, r.stderr
    with sqlite3.connect(db) as c:
        rows = c.execute("select threads, warnings from runs order by id").fetchall()
    assert rows[0][0] == too_many and warning in json.loads(rows[0][1])
    assert rows[1][0] == default_threads() and "--threads" not in (rows[1][1] or "")


# == Settings and results people can see =============================================================
def test_compare_two_track_runs_has_energy_and_duration(gp, tmp_path):
    import greenprof

    db = str(tmp_path / "t.db")
    for n in (200_000, 400_000):
        with greenprof.track(model="block", db=db, collectors="cpu-estimate") as t:
            sum(range(n))
            t.add_tokens(5)
    r = gp("compare", "1", "2", "--db", db, "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    for key in ("energy_j", "gross_energy_j", "duration_s", "j_per_token", "co2e_g_per_1k_tokens"):
        assert doc["a"][key] > 0 and doc["b"][key] > 0 and doc["ratios_b_over_a"][key] > 0, key
    table = gp("compare", "1", "2", "--db", db).stdout
    energy = next(line for line in table.splitlines() if "energy J (charged)" in line)
    assert re.search(r"\d", energy) and "onnxruntime spinning" not in table  # no empty model rows


def test_spinning_and_graph_opt_show_in_runs_show_compare_and_csv(gp, tmp_path):
    db = tmp_path / "g.db"
    store_runs(db, 1, extra={"session": {"spinning": False, "graph_opt": "all", "warmup": 1}})
    store_runs(db, 1, extra={"session": {"spinning": True, "graph_opt": "basic", "warmup": 0}})
    runs = gp("runs", "--db", db).stdout
    assert "onnxruntime" in runs and "spinning on, graph-opt basic" in runs, runs
    show = gp("show", "2", "--db", db).stdout
    assert "spinning on, graph optimisation basic, 0 warm-up generations" in show
    r = gp("compare", "1", "2", "--db", db)
    spin = next(line for line in r.stdout.splitlines() if "onnxruntime spinning" in line)
    assert re.search(r"\boff\b.*\bon\b", spin), spin
    assert "different settings (spinning, graph optimisation, warm-up passes)" in r.stderr
    rows = list(csv.DictReader(io.StringIO(gp("export", "--db", db).stdout)))
    assert [(x["spinning"], x["graph_opt"]) for x in rows] == [("False", "all"), ("True", "basic")]


def test_an_interrupted_run_stores_the_tokens_it_generated(gp, tmp_path, monkeypatch):
    """Ctrl-C after the 5th of 200 tokens: the run says 5 generated (of 200 requested)."""
    import greenprof.models.runner as runner
    from greenprof.config import load_settings
    from greenprof.measure import MeasureRequest, measure_models

    real = runner.generate

    class Interrupting:
        def __init__(self, meter):
            self.meter = meter

        def mark(self, label):
            if label == "token-6":
                raise KeyboardInterrupt
            return self.meter.mark(label)

    def generate(model, meter=None, **kw):
        return real(model, meter=Interrupting(meter) if meter is not None else None, **kw)

    monkeypatch.setattr(runner, "generate", generate)
    db = tmp_path / "g.db"
    with pytest.raises(KeyboardInterrupt) as ei:
        measure_models(MeasureRequest(models=["tiny"], runs=2, warmup=0, new_tokens=200, prompt_tokens=4),
                       settings=load_settings({"db": str(db)}))
    rid = ei.value.interrupted_run_id
    with sqlite3.connect(db) as c:
        status, new, extra = c.execute(f"select status, new_tokens, extra from runs where id = {rid}").fetchone()
        n_seg = c.execute(f"select count(*) from segments where run_id = {rid} and label like 'token-%'").fetchone()
    assert (status, new, n_seg[0]) == ("interrupted", 5, 5)
    assert json.loads(extra)["requested_new_tokens"] == 200
    assert "4/5 of 200" in gp("runs", "--db", db).stdout
    assert "4 prompt, 5 new (of 200 requested)" in gp("show", str(rid), "--db", db).stdout
    s = gp("show", str(rid), "--db", db, "--json").json()["summary"]
    assert (s["new_tokens"], s["requested_new_tokens"], s["decode_tokens"]) == (5, 200, 5)


def test_intensity_with_a_region_keeps_the_region(gp, tmp_path):
    db = tmp_path / "g.db"
    r = gp("measure", "tiny", "--intensity", "30", "--region", "FRA", "--db", db, *TINY)
    assert r.code == 0, r.stderr
    assert "--intensity 30 g CO2e/kWh overrides the grid factor of France" in r.stderr
    assert "the region FRA is kept with the runs" in r.stderr
    with sqlite3.connect(db) as c:
        region, g, source = c.execute("select region, intensity_g_per_kwh, intensity_source from runs").fetchone()
    assert (region, g) == ("FRA", 30.0) and source.startswith("user (market-based factor")
    row = next(csv.DictReader(io.StringIO(gp("export", "--codecarbon", "--db", db).stdout)))
    assert row["country_iso_code"] == "FRA" and row["country_name"] == "France"


def test_the_first_call_of_a_session_is_never_measured(tmp_path, monkeypatch):
    """With --warmup 0 the session's first call (its initialisation) still happens before any
    measured run, as a 1-token call that is not stored; the setting 0 is stored."""
    import greenprof.models.runner as runner
    from greenprof.config import load_settings
    from greenprof.measure import MeasureRequest, measure_models

    real, calls = runner.generate, []

    def generate(model, meter=None, **kw):
        calls.append((meter is not None, kw["new_tokens"]))
        return real(model, meter=meter, **kw)

    monkeypatch.setattr(runner, "generate", generate)
    said: list[str] = []
    db = tmp_path / "g.db"
    doc = measure_models(MeasureRequest(models=["tiny"], runs=2, warmup=0, new_tokens=3, prompt_tokens=4),
                         settings=load_settings({"db": str(db)}), progress=said.append)
    assert calls == [(False, 1), (True, 3), (True, 3)]
    assert any("first call of the new session (1 token, not measured)" in s for s in said)
    assert [r["new_tokens"] for r in doc["runs"]] == [3, 3]
    with sqlite3.connect(db) as c:
        extras = [json.loads(e) for (e,) in c.execute("select extra from runs")]
    assert [e["session"]["warmup"] for e in extras] == [0, 0]
    # with a warm-up, that is the first call: no extra one
    calls.clear()
    measure_models(MeasureRequest(models=["tiny"], runs=1, warmup=1, new_tokens=3, prompt_tokens=4),
                   settings=load_settings({"db": str(db)}))
    assert calls == [(False, 3), (True, 3)]


def test_negative_dynamic_energy_is_shown_with_its_interval_and_a_note(capsys, monkeypatch):
    from greenprof.cli import _print_summary
    from greenprof.measure import dynamic_summary

    mean, ci, note = dynamic_summary([-0.0004, -0.0005, -0.0003])
    assert mean == pytest.approx(-0.0004) and ci[0] < mean < ci[1] < 0
    assert note.startswith("dynamic J/gen token is -0.0004 [") and "less power than the idle median" in note
    assert dynamic_summary([0.0004, 0.0005, 0.0003])[2] is None  # above idle: no note
    assert "reaches below zero" in dynamic_summary([0.0004, -0.0005, 0.0003])[2]
    monkeypatch.delenv("COLUMNS", raising=False)
    summary = {"model": "tiny", "params": 106816, "precision": "fp32", "method": "estimated",
               "basis": "attributed", "domains": ["cpu-estimate"], "tokens_per_s": 5000.0,
               "j_per_prompt_token": 1e-4, "j_per_token": 2e-4, "j_per_token_ci95": [1e-4, 3e-4],
               "j_per_request": 0.01, "co2e_g_per_1k_tokens": 1e-5, "usd_per_m_tokens": 1e-5,
               "dynamic_j_per_token": mean, "dynamic_j_per_token_ci95": ci, "notes": [f"tiny: {note}"]}
    _print_summary({"summary": [summary], "runs": [], "notes": [], "pue": 1.0, "price_usd_per_kwh": 0.1,
                    "grid": {"name": "France", "intensity_g_per_kwh": 56.0, "source": "x"}})
    out, err = capsys.readouterr()
    assert "dynamic J/gen token" in out and f"{mean:.4g} [{ci[0]:.4g}" in out.replace("\n", "")
    assert "less power than the idle median" in err


def test_sigterm_during_warm_up_does_not_claim_a_stored_run(tmp_path):
    db = tmp_path / "g.db"
    # faulthandler: a process still running after SIGTERM is aborted with every thread's stack,
    # which the failure shows; the test never waits on it without a bound
    p = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "greenprof.cli", "measure", "tiny",
                          "--runs", "1", "--warmup", "100000", "--new-tokens", "2000", "--prompt-tokens", "4",
                          "--db", str(db)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM}))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: [lines.append(x) for x in p.stderr], daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("warm-up 1/" in x for x in lines) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any("warm-up 1/" in x for x in lines), "".join(lines)
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGABRT)  # faulthandler prints where it was
            p.wait(timeout=30)
        reader.join(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = "".join(lines)
    assert p.returncode == 143 and "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("greenprof: terminated")]
    assert "during the warm-up of tiny; no run was in progress, so none is stored as interrupted" in line
    assert not db.exists() or sqlite3.connect(db).execute("select count(*) from runs").fetchone() == (0,)


def test_a_sigterm_whose_exception_is_swallowed_still_stops_the_measurement(tmp_path, monkeypatch):
    """Python runs a signal handler wherever the main thread is; in a ``__del__`` the Terminated
    it raises would be printed as "Exception ignored", with a traceback, and dropped. The measurement
    must stop anyway, and say nothing of the dropped one."""
    from greenprof.config import load_settings
    from greenprof.measure import MeasureRequest, Terminated, measure_models

    class KillsInDel:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs inside os.kill, inside __del__

    def progress(msg: str) -> None:
        if "warm-up 1/" in msg:
            KillsInDel()  # dropped at once: __del__ runs here and its exception is swallowed

    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: swallowed.append(u.exc_type))
    db = tmp_path / "g.db"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as ei:
        measure_models(MeasureRequest(models=["tiny"], runs=1, warmup=3, new_tokens=50, prompt_tokens=4),
                       settings=load_settings({"db": str(db)}), progress=progress)
    # the handler's own exception was dropped there, silently (no "Exception ignored" traceback on
    # stderr), and raised again by the next check
    assert swallowed == []
    assert ei.value.stage == "the warm-up of tiny" and ei.value.interrupted_run_id is None
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    assert sys.unraisablehook is not None and sys.unraisablehook.__name__ == "<lambda>"  # and the hook
    assert not db.exists() or sqlite3.connect(db).execute("select count(*) from runs").fetchone() == (0,)


def test_the_sensors_replay_hint_names_a_flag_that_works(gp, tmp_path, monkeypatch):
    trace = tmp_path / "trace.csv"
    trace.write_text("t_s,domain,power_w\n0,cpu,20\n1,cpu,30\n")
    monkeypatch.setenv("GREENPROF_REPLAY", str(trace))
    r = gp("sensors", "--json")
    (replay,) = [s for s in r.json()["sensors"] if s["source"] == "replay"]
    assert replay["domain"] == "replay:cpu" and "--collectors" in replay["why_not"]
    r = gp("measure", "tiny", "--collectors", "replay:cpu", "--db", tmp_path / "g.db", *TINY, "--json")
    assert r.code == 0, r.stderr
    (run,) = r.json()["runs"]
    assert run["domains"] == ["replay:cpu"] and run["method"] == "replayed"
    # in CodeCarbon's columns the replayed CPU is CPU energy: the parts add up to the total
    row = next(csv.DictReader(io.StringIO(gp("export", "--codecarbon", "--db", tmp_path / "g.db").stdout)))
    assert float(row["cpu_energy"]) == pytest.approx(float(row["energy_consumed"]), rel=1e-9)
    assert float(row["cpu_energy"]) > 0


def test_a_model_given_by_path_is_named_after_its_folder(gp, tmp_path, export):
    db = tmp_path / "g.db"
    for target in (export, export / "model.onnx"):
        r = gp("measure", str(target), "--db", db, *TINY)
        assert r.code == 0, r.stderr
    r = gp("measure", str(export / "model.onnx"), "--name", "my-model", "--db", db, *TINY)
    assert r.code == 0, r.stderr
    assert "loading the export" in r.stderr and "preparing fp32" not in r.stderr
    with sqlite3.connect(db) as c:
        assert c.execute("select model_name from runs order by id").fetchall() == [
            ("my-export",), ("my-export",), ("my-model",)]


def test_codecarbon_version_is_a_codecarbon_version(gp, tmp_path):
    from packaging.version import Version

    from greenprof.export import CODECARBON_COLUMNS, CODECARBON_VERSION_WRITTEN

    db = tmp_path / "g.db"
    store_runs(db, 1)
    text = gp("export", "--codecarbon", "--db", db).stdout
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames) == CODECARBON_COLUMNS  # no column of our own: readers stay happy
    (row,) = list(reader)
    assert Version(row["codecarbon_version"]) == Version(CODECARBON_VERSION_WRITTEN)
    assert not text.startswith("#")


# == Messages =========================================================================================
PARSE_ERRORS = [
    (["measure", "tiny", "--intensity", "abc"], "--intensity: "),
    (["show", "abc"], "RUN_ID: "),
    (["measure", "tiny", "--runs", "1.5"], "--runs: "),
    (["compare", "1"], "RUN_ID_B"),
    (["measure", "tiny", "--bogus"], "no such option: --bogus"),
]


@pytest.mark.parametrize("args, msg", PARSE_ERRORS, ids=[" ".join(a) for a, _ in PARSE_ERRORS])
def test_parse_errors_are_one_line_naming_the_flag(gp, args, msg):
    r = gp(*args)
    line = one_error(r)
    assert msg in line and r.stderr.count("\n") == 1, r.stderr
    assert not set(r.stderr) & set("╭╮╰╯│"), r.stderr  # no boxes
    assert "Possible options" not in line and "did you mean" not in line  # nothing close to --bogus


@pytest.mark.parametrize("args, flag", [
    (["measure", "tiny", "--intensity", "-3"], "--intensity"), (["measure", "tiny", "--price-kwh", "-1"], "--price-kwh"),
    (["measure", "tiny", "--threads", "0"], "--threads"), (["measure", "tiny", "--region", "Atlantis"], "--region"),
    (["runs", "--region", "Atlantis"], "--region"), (["dashboard", "--region", "Atlantis"], "--region"),
])
def test_errors_name_the_flag_and_suggest_what_exists(gp, args, flag):
    line = one_error(gp(*args))
    assert line.startswith(f"greenprof: error: {flag}: "), line
    assert "option " not in line and "_per_" not in line
    # only measure has --intensity
    assert ("--intensity" in line) == (args[0] == "measure" and flag in ("--intensity", "--region"))


def test_a_close_option_is_suggested(gp):
    assert "(did you mean --region?)" in one_error(gp("measure", "tiny", "--regon", "FRA"))


def test_no_blank_first_line_and_notes_are_not_wrapped(gp, tmp_path):
    r = gp("measure", "tiny", "--region", "Atlantis")
    assert r.stderr.splitlines()[0].startswith("greenprof: error:")
    r = gp("measure", "tiny", "--db", tmp_path / "g.db", "--runs", "1", "--warmup", "0", "--new-tokens", "1",
           "--prompt-tokens", "2")
    assert r.code == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].strip(), r.stderr
    assert "tiny: run 1/1 (1 new token)" in lines
    (note,) = [x for x in lines if "no region set" in x]
    assert note.endswith("set one with --region FRA, GREENPROF_REGION or [tool.greenprof] region") and len(note) > 80


def test_help_has_clean_metavars(gp):
    import typer

    from greenprof.cli import app

    root = typer.main.get_command(app)
    paths = [[]] + [[name] for name in root.commands]
    paths += [[name, sub] for name, cmd in root.commands.items() for sub in getattr(cmd, "commands", {})]
    for path in paths:
        r = gp(*path, "--help")
        assert r.code == 0, r.stderr
        assert not re.search(r"<(bool|str|int|float|path|list\[str\])>", r.stdout), r.stdout
        assert "[[" not in r.stdout
    usage = gp("measure", "--help").stdout
    assert "[MODEL]..." in usage and "--threads" in usage and "--name" in usage


@pytest.fixture
def foreground_sigint():
    """SIGINT as a foreground program has it. pytest started as a background job (`make test &`,
    nohup) inherits SIGINT ignored, and measure rightly leaves an ignored SIGINT alone."""
    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("during", ["start_run", "finish_run"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_a_run_is_written_never_leaves_it_running(tmp_path, during, sig, foreground_sigint):
    """A signal that lands while a run's row is inserted or its energy written waits until that
    write is done: the run ends stored (interrupted, or completed), never ``running`` with no
    energy while the message claims it was stored."""
    from greenprof.config import load_settings
    from greenprof.measure import MeasureRequest, Terminated, measure_models

    db = tmp_path / "g.db"
    store = open_store(str(db))
    calls = {"n": 0}

    class SignalsMidWrite:
        def __getattr__(self, name):
            real = getattr(store, name)
            if name != during:
                return real

            def write(*a, **k):
                calls["n"] += 1
                if calls["n"] == 2:  # the second run's write: one run is already stored
                    os.kill(os.getpid(), sig)  # the handler runs here, inside the write
                return real(*a, **k)

            return write

    expect = Terminated if sig == signal.SIGTERM else KeyboardInterrupt
    with pytest.raises(expect) as ei:
        measure_models(MeasureRequest(models=["tiny"], runs=4, warmup=0, new_tokens=3, prompt_tokens=4),
                       settings=load_settings({"db": str(db)}), store=SignalsMidWrite())
    rows = sqlite3.connect(db).execute("select id, status from runs order by id").fetchall()
    assert "running" not in [s for _, s in rows], rows
    claimed = ei.value.interrupted_run_id
    if during == "start_run":  # the second run was started, then stopped before any work
        assert rows == [(rows[0][0], "completed"), (rows[1][0], "interrupted")] and claimed == rows[1][0]
    else:  # the second run's energy was being written: it completes, and no run is claimed
        assert rows == [(rows[0][0], "completed"), (rows[1][0], "completed")] and claimed is None
        assert [r["id"] for r in ei.value.partial_doc["runs"]] == [i for i, _ in rows]
    store.close()


# -- user input that reached a traceback or was checked too late ---------------------------------------
def test_run_ids_and_limits_beyond_64_bits_are_plain_errors(gp, tmp_path):
    db = tmp_path / "g.db"
    assert gp("measure", "tiny", "--db", db, *TINY).code == 0
    for args in (("show", "99999999999999999999999"), ("show", "9223372036854775808", "--json"),
                 ("compare", "1", "99999999999999999999")):
        assert "no run 9" in one_error(gp(*args, "--db", db))
    r = gp("runs", "--limit", "99999999999999999999999", "--db", db, "--json")
    assert r.code == 0 and len(r.json()["runs"]) == 1


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [("runs", "--json"), ("export",)])
def test_output_that_cannot_be_written_is_one_line(tmp_path, args):
    db = tmp_path / "g.db"
    assert cli("measure", "tiny", "--db", db, *TINY).code == 0
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "greenprof.cli", *args, "--db", str(db)], stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == ["greenprof: error: cannot write the output: No space left on device "
                                             "(free some space or write elsewhere, e.g. with -o FILE where the "
                                             "command has it)"]


def test_measure_refuses_what_cannot_run_before_measuring_anything(gp, tmp_path):
    from greenprof.models.builder import machine_memory_bytes, memory_needed_bytes

    db = tmp_path / "g.db"
    assert "--threads 3000000000 is more than 4096" in one_error(gp("measure", "tiny", "--db", db, *TINY,
                                                                    "--threads", "3000000000"))
    msg = one_error(gp("measure", "tiny", "--db", db, *TINY, "--batch", "99999999999999999999"), code=1)
    assert "with --batch 99999999999999999999 needs" in msg and "use --batch" in msg
    assert "no energy domain" in one_error(gp("measure", "tiny", "--db", db, *TINY, "--collectors", " , "))
    # a model this machine cannot hold, after one it can: neither is measured
    big = next(n for n in ("smollm-1.7b", "llama-2-7b", "mistral-nemo-12b", "falcon-40b")
               if memory_needed_bytes(n) > machine_memory_bytes())
    assert "of memory" in one_error(gp("measure", "tiny", big, "--db", db, *TINY), code=1)
    assert not db.exists() or sqlite3.connect(db).execute("select count(*) from runs").fetchone() == (0,)


def test_a_text_prompt_longer_than_the_context_is_refused_before_the_warm_up(gp, tmp_path):
    prompt = tmp_path / "long.txt"
    prompt.write_text("word " * 3000)
    r = gp("measure", "tiny", "--prompt-file", prompt, "--new-tokens", "4", "--runs", "1", "--warmup", "2",
           "--db", tmp_path / "g.db")
    msg = one_error(r)
    assert "--new-tokens 4 exceeds its context length" in msg and "--prompt" in msg
    assert "warm-up" not in r.stderr


def test_tables_print_data_as_it_is_never_as_markup(gp, tmp_path):
    """Rich reads "[...]" in a cell as a style tag: one run's "[n/a]" interval and a name with
    brackets vanished from the tables."""
    db = tmp_path / "g.db"
    name = "x [bold]y[/bold] [n/a]"
    r = gp("measure", "tiny", "--name", name, "--db", db, *TINY)
    assert r.code == 0, r.stderr
    assert "[n/a]" in r.stdout and name in r.stdout
    r = gp("runs", "--db", db)
    assert r.code == 0 and name in r.stdout and "completed" in r.stdout
    assert name in gp("show", "1", "--db", db).stdout


def test_tables_piped_to_a_file_are_never_wrapped(tmp_path):
    import re

    assert cli("models", "build", "tiny").code == 0
    info = cli("models", "info", "tiny")
    assert info.code == 0, info.stderr
    assert re.search(r"model sha256\s+[0-9a-f]{64}\s*$", info.stdout, re.M), info.stdout
    listing = cli("models", "list").stdout
    assert "Build: greenprof models build NAME --precision int4" in listing  # the footer on one line
    sensors = cli("sensors")
    rows = [line for line in sensors.stdout.splitlines() if "cpu-estimate" in line]
    assert rows and all("W" in line or "estimate" in line for line in rows)
    # every table row of sensors is one line: as many row lines as rows in its JSON
    n = len(cli("sensors", "--json").json()["sensors"])
    assert len([line for line in sensors.stdout.splitlines() if line.startswith("│")]) == n


def test_a_run_with_no_energy_says_so_in_runs_and_compare(gp, tmp_path):
    db = tmp_path / "g.db"
    assert gp("measure", "tiny", "--db", db, *TINY).code == 0
    with open_store(str(db)) as store:
        rid = store.start_run(kind="measure", model_name="tiny")
        store.finish_run(rid, None, status="failed", error="RuntimeError: before the meter started")
    rows = gp("runs", "--db", db).stdout
    assert "no energy recorded" in rows and "none, gross" not in rows
    r = gp("compare", "1", str(rid), "--db", db)
    assert r.code == 0 and f"run {rid} is failed: it has no energy recorded" in r.stderr


def test_serve_and_exporter_name_the_flag_of_a_bad_setting(gp):
    assert one_error(gp("exporter", "--sample-hz", "-5")).startswith("greenprof: error: --sample-hz:")
    assert "--pue" in one_error(gp("serve", "tiny", "--pue", "0.5"))


def test_collectors_that_count_none_of_the_models_device_say_so(gp, tmp_path, monkeypatch):
    """A CPU model measured with only a GPU's domain is charged about nothing, and its CPU energy
    is counted nowhere: every run says so (it said nothing). A replayed CPU trace is the CPU."""
    from greenprof.measure import uncounted_parts

    trace = tmp_path / "trace.csv"
    trace.write_text("t_s,domain,power_w\n0,gpu-0,20\n1,gpu-0,30\n0,cpu,5\n1,cpu,5\n")
    monkeypatch.setenv("GREENPROF_REPLAY", str(trace))
    r = gp("measure", "tiny", "--collectors", "replay:gpu-0", "--db", tmp_path / "g.db", *TINY, "--json")
    assert r.code == 0, r.stderr
    (run,) = r.json()["runs"]
    (w,) = [w for w in run["warnings"] if "count no energy of the CPU" in w]
    assert "runs on cpu" in w and "replay:gpu-0" in w
    assert any("count no energy of the CPU" in n for n in r.json()["summary"][0]["notes"])
    r = gp("measure", "tiny", "--collectors", "replay:gpu-0", "--db", tmp_path / "g.db", *TINY)
    assert r.code == 0 and "note: the model runs on cpu but the collectors chosen" in r.stderr
    r = gp("measure", "tiny", "--collectors", "replay:cpu", "--db", tmp_path / "g.db", *TINY, "--json")
    assert r.code == 0 and not any("count no energy" in w for w in r.json()["runs"][0]["warnings"])
    assert uncounted_parts(["gpu-1", "cpu-package-0", "dram-0"], ["gpu-0", "cpu-package-0"]) == ["gpu-1"]
    assert uncounted_parts(["cpu-package-0", "dram-0"], ["cpu-estimate"]) == []
    assert uncounted_parts(["gpu-0", "cpu-estimate"], ["gpu-0"]) == ["the CPU"]
