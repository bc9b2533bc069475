"""`greenprof measure` and the `track` decorator end to end: real onnxruntime, real SQLite."""

import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import greenprof
from greenprof.measure import MeasureRequest, measure_models

FAST = ["tiny", "--runs", "2", "--warmup", "1", "--new-tokens", "8", "--prompt-tokens", "8"]


def cli(*args, cwd=None, env=None, timeout=300):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "greenprof.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=e, timeout=timeout)


def rows(db, sql):
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


def test_measure_json_document(tmp_path):
    db = tmp_path / "g.db"
    r = cli("measure", *FAST, "--db", str(db), "--region", "FRA", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["runs"]) == 2
    for run in doc["runs"]:
        assert {"id", "model", "precision", "duration_s", "energy_j", "prefill_energy_j",
                "decode_energy_j", "prompt_tokens", "new_tokens", "method"} <= set(run)
        assert run["new_tokens"] == 8 and run["prompt_tokens"] == 8
        assert run["method"] == "estimated"  # no sensor on this machine
        assert run["prefill_energy_j"] > 0 and run["decode_energy_j"] > 0
        # the JSON contract: charged (attributed) and gross side by side, phases adding up
        assert run["basis"] == "attributed" and run["domains"] == ["cpu-estimate"]
        assert run["energy_j_by_domain"].keys() == run["gross_energy_j_by_domain"].keys() == {"cpu-estimate"}
        assert sum(run["phase_energy_j"].values()) == pytest.approx(run["energy_j"], rel=1e-9)
        assert set(run["phase_energy_j"]) == {"setup", "prefill", "decode", "teardown"}
        assert run["share"]["cpu-estimate"] == pytest.approx(1.0)  # the estimate is this process's own
        assert run["uncertain"] == {} and run["lost"] == {}
    (s,) = doc["summary"]
    assert s["model"] == "tiny" and s["runs"] == 2 and s["params"] > 0
    assert s["basis"] == "attributed" and s["domains"] == ["cpu-estimate"] and s["j_per_request"] > 0
    lo, hi = s["j_per_token_ci95"]
    assert lo > 0
    assert lo <= s["j_per_token"] <= hi
    assert s["co2e_g_per_1k_tokens"] == pytest.approx(s["j_per_token"] * 1000 / 3.6e6 * doc["grid"]["intensity_g_per_kwh"])
    assert doc["grid"]["region"] == "FRA"
    # the runs are in the database with segments per token and the sampler's timeline
    ids = [run["id"] for run in doc["runs"]]
    assert rows(db, "select status, prompt_tokens, new_tokens, region from runs order by id") == [
        ("completed", 8, 8, "FRA")] * 2
    n_tokens = rows(db, f"select count(*) from segments where run_id = {ids[0]} and label like 'token-%'")[0][0]
    assert n_tokens == 8
    # progress went to stderr, not stdout
    assert "run 1/2" in r.stderr


def test_one_run_has_no_interval_and_the_json_is_strict(tmp_path):
    r = cli("measure", "tiny", "--runs", "1", "--warmup", "0", "--new-tokens", "4", "--prompt-tokens", "4",
            "--db", str(tmp_path / "g.db"), "--json")
    assert r.returncode == 0, r.stderr

    def no_constants(name):
        raise AssertionError(f"{name} in JSON output")

    doc = json.loads(r.stdout, parse_constant=no_constants)  # NaN / Infinity are not JSON
    assert doc["summary"][0]["j_per_token_ci95"] is None


def test_a_cpu_run_on_a_gpu_host_is_not_charged_the_gpus(tmp_path, monkeypatch):
    """collectors_for_device on a host with RAPL and two GPUs (a powercap tree and the NVML
    shim): a CPU run gets the CPU domains only, never an idle GPU; a CUDA run its own GPU."""
    from nvml_shim import FakeGpu, NvmlShim
    from powercap_fake import build

    from greenprof.measure import collectors_for_device

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    root = str(build(tmp_path / "pc", sockets=1, dram=True).root)
    shim = NvmlShim([FakeGpu(uuid="GPU-aaaa0000-0000-0000-0000-000000000000"),
                     FakeGpu(uuid="GPU-bbbb0000-0000-0000-0000-000000000000")])
    assert collectors_for_device("cpu", powercap_root=root, nvml=shim) == ["cpu-package-0", "dram-0"]
    assert collectors_for_device("cuda", 1, powercap_root=root, nvml=shim) == \
        ["cpu-package-0", "dram-0", "gpu-1"]
    assert not shim.initialized  # every collector it opened to decide was closed


def test_measure_table_and_measured_with_powercap(tmp_path):
    from powercap_fake import build

    pc = build(tmp_path / "pc", sockets=1, dram=True)
    r = cli("measure", *FAST, "--db", str(tmp_path / "g.db"), env={"GREENPROF_POWERCAP_ROOT": str(pc.root)})
    assert r.returncode == 0, r.stderr
    assert "tiny" in r.stdout and "measured" in r.stdout  # the table on stdout
    assert "world average" in r.stderr  # no region set: said once, with how to set it
    got = rows(tmp_path / "g.db", "select distinct domain, method from run_domains order by domain")
    assert got == [("cpu-package-0", "measured"), ("dram-0", "measured")]


def test_no_socket_is_opened_during_measure(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("greenprof opened a socket during measure")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    from greenprof.config import load_settings

    settings = load_settings({"db": str(tmp_path / "g.db"), "region": "SWE"})
    doc = measure_models(MeasureRequest(models=["tiny"], runs=1, warmup=0, new_tokens=4, prompt_tokens=4),
                         settings=settings)
    assert doc["runs"][0]["new_tokens"] == 4


def _corrupt_onnx(tmp_path):
    p = tmp_path / "broken.onnx"
    p.write_bytes(b"\x08\x07\x12\x04junk" * 10)
    return p


BAD = [
    (["measure", "/nonexistent/model.onnx"], "does not exist"),
    (["measure", "CORRUPT"], "onnx"),
    (["measure", "no-such-model"], "unknown model"),
    (["measure", "tiny", "--region", "Atlantis"], "Atlantis"),
    (["measure", "tiny", "--new-tokens", "0"], "--new-tokens"),
    (["measure", "tiny", "--new-tokens", "-3"], "--new-tokens"),
    (["measure", "tiny", "--prompt-tokens", "0"], "--prompt-tokens"),
    (["measure", "tiny", "--runs", "0"], "--runs"),
    (["measure", "tiny", "--graph-opt", "turbo"], "--graph-opt"),
]


@pytest.mark.parametrize("args, msg", BAD, ids=[" ".join(a[1:]) for a, _ in BAD])
def test_bad_input_one_line_no_traceback_db_untouched(tmp_path, args, msg):
    db = tmp_path / "g.db"
    ok = cli("measure", *FAST[:1], "--runs", "1", "--warmup", "0", "--new-tokens", "2",
             "--prompt-tokens", "2", "--db", str(db))
    assert ok.returncode == 0, ok.stderr
    before = db.read_bytes()
    args = [str(_corrupt_onnx(tmp_path)) if a == "CORRUPT" else a for a in args]
    r = cli(*args, "--db", str(db))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("greenprof: error:")]
    assert len(lines) == 1 and msg.lower() in lines[0].lower(), r.stderr
    assert db.read_bytes() == before


@pytest.mark.parametrize("db_arg, msg", [
    ("UNWRITABLE", "cannot"),
    ("mysql+nope://x", "--db"),
    ("NOTADB", "not a greenprof database"),
])
def test_bad_database_one_line(tmp_path, db_arg, msg):
    if db_arg == "UNWRITABLE":
        db_arg = str(tmp_path / "missing-dir" / "g.db")
    if db_arg == "NOTADB":
        p = tmp_path / "notes.txt"
        p.write_text("hello, not a database\n" * 20)
        db_arg = str(p)
    r = cli("measure", *FAST, "--db", db_arg)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert msg in r.stderr
    if db_arg.endswith("notes.txt"):
        assert Path(db_arg).read_text() == "hello, not a database\n" * 20


def test_several_processes_measure_into_one_file(tmp_path):
    db = tmp_path / "shared.db"
    procs = [subprocess.Popen([sys.executable, "-m", "greenprof.cli", "measure", "tiny", "--runs", "3",
                               "--warmup", "0", "--new-tokens", "16", "--prompt-tokens", "4", "--db", str(db),
                               "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    ids = sorted(r["id"] for out, _ in outs for r in json.loads(out)["runs"])
    assert len(ids) == 12 and len(set(ids)) == 12
    assert rows(db, "select count(*), min(status), max(status) from runs") == [(12, "completed", "completed")]
    assert rows(db, "select count(*) from segments where label like 'token-%'") == [(12 * 16,)]
    assert rows(db, "pragma integrity_check") == [("ok",)]


def _default_signals() -> None:
    """In the child, before exec: SIGINT as in a foreground program. A shell starts a background
    job (`make test &`) with SIGINT ignored, the child inherits that, and Python then leaves it
    ignored, as it should: the test would wait on a measurement that never sees the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _start_long_measure(db, *extra):
    return subprocess.Popen([sys.executable, "-m", "greenprof.cli", "measure", "tiny", "--runs", "500",
                             "--warmup", "0", "--new-tokens", "1500", "--prompt-tokens", "4", "--db", str(db),
                             *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals)


def _wait_for_completed_runs(db, n, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if db.exists():
            try:
                if rows(db, "select count(*) from runs where status = 'completed'")[0][0] >= n:
                    return
            except sqlite3.Error:
                pass
        time.sleep(0.1)
    raise AssertionError("measure never completed a run")


def _wait_for_running_run(db, timeout=30):
    # a run takes ~0.3 s and the gap between runs ~ms: wait until one is under way
    end = time.time() + timeout
    while time.time() < end:
        if rows(db, "select count(*) from runs where status = 'running'")[0][0]:
            return
        time.sleep(0.005)
    raise AssertionError("measure never started another run")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_is_stored_as_interrupted(tmp_path, sig):
    db = tmp_path / "g.db"
    p = _start_long_measure(db)
    _wait_for_completed_runs(db, 2)
    _wait_for_running_run(db)
    time.sleep(0.05)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == (130 if sig == signal.SIGINT else 143) and "Traceback" not in err, err
    assert "stored as interrupted" in err
    statuses = dict(rows(db, "select status, count(*) from runs group by status"))
    assert statuses.get("interrupted") == 1 and "running" not in statuses, statuses
    (rid,) = rows(db, "select id from runs where status = 'interrupted'")[0]
    # what was measured until the signal is there
    assert rows(db, f"select count(*) from run_domains where run_id = {rid}")[0][0] >= 1
    assert rows(db, "pragma integrity_check") == [("ok",)]


def test_json_output_of_a_terminated_measurement_lists_the_stored_runs(tmp_path):
    db = tmp_path / "g.db"
    p = _start_long_measure(db, "--json")
    _wait_for_completed_runs(db, 1)
    _wait_for_running_run(db)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 143 and "Traceback" not in err, err
    doc = json.loads(out)
    assert doc["complete"] is False and "error" in doc and doc["summary"] == []
    stored = dict(rows(db, "select id, status from runs"))
    assert doc["runs"] and all(stored[r["id"]] == "completed" for r in doc["runs"])
    # the run in progress, stored as interrupted, is named too (it was only on stderr)
    assert stored[doc["interrupted_run_id"]] == "interrupted"


def test_killed_process_leaves_running_row_reported_interrupted(tmp_path):
    db = tmp_path / "g.db"
    p = _start_long_measure(db)
    _wait_for_completed_runs(db, 1)
    _wait_for_running_run(db)  # not in the gap between two runs, where no row is running
    p.kill()
    p.wait(timeout=30)
    assert rows(db, "select count(*) from runs where status = 'running'")[0][0] == 1
    assert rows(db, "pragma integrity_check") == [("ok",)]
    from greenprof.store import open_store

    with open_store(str(db)) as store:
        stale = store.mark_stale_runs()
        assert len(stale) == 1
        assert store.get_run(stale[0]).status == "interrupted"
        assert store.integrity_check() == "ok"


def test_track_decorator_and_block(tmp_path):
    db = str(tmp_path / "t.db")

    @greenprof.track(model="my-model", tokens=lambda out: len(out), db=db, region="DEU")
    def infer(n):
        s = 0
        for i in range(100_000):
            s += i
        return list(range(n))

    assert infer(12) == list(range(12))
    t = infer.greenprof_track.last
    assert t.run_id is not None and t.tokens == 12
    assert t.energy_j > 0 and t.j_per_token == pytest.approx(t.energy_j / 12)
    assert t.co2e_g == pytest.approx(t.energy_j / 3.6e6 * t.grid.intensity_g_per_kwh)

    with greenprof.track(model="block", db=db) as b:
        sum(range(50_000))
        b.mark("prefill")
        b.add_tokens(3)
    with pytest.raises(KeyError, match="boom"):
        with greenprof.track(model="fails", db=db):
            raise KeyError("boom")
    got = rows(db, "select model_name, kind, status, new_tokens, region, error from runs order by id")
    assert got[0][:5] == ("my-model", "track", "completed", 12, "DEU")
    assert got[1][:4] == ("block", "track", "completed", 3)
    assert got[2][:3] == ("fails", "track", "failed") and "boom" in got[2][5]
    assert rows(db, "select label from segments where run_id = 2 order by idx")[0] == ("prefill",)


def test_track_bad_tokens_argument():
    with pytest.raises(greenprof.GreenprofError, match="tokens="):
        greenprof.track(model="x", tokens=5)


def test_idle_baseline_gives_dynamic_figures(tmp_path):
    r = cli("measure", *FAST, "--idle-s", "0.3", "--db", str(tmp_path / "g.db"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for run in doc["runs"]:
        assert set(run["idle_power_w"]) == {"cpu-estimate"}
        assert run["dynamic_j_per_token"] <= run["j_per_token"]
    s = doc["summary"][0]
    assert s["dynamic_j_per_token"] is not None and s["dynamic_j_per_token"] <= s["j_per_token"]
    # without a baseline there is no dynamic figure rather than a made-up one
    r = cli("measure", *FAST, "--db", str(tmp_path / "g.db"), "--json")
    assert json.loads(r.stdout)["summary"][0]["dynamic_j_per_token"] is None


def _strict_json(text):
    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("stored_before_the_rule", [False, True])
def test_without_an_idle_baseline_no_surface_shows_a_dynamic_figure(tmp_path, stored_before_the_rule):
    """Dynamic = gross above the idle baseline: with none taken it is empty in runs, show and
    export alike (it was the gross again there, while measure said null), also for runs stored
    when the gross was written in its place."""
    db = str(tmp_path / "g.db")
    r = cli("measure", *FAST, "--db", db, "--json")
    assert r.returncode == 0, r.stderr
    run_id = _strict_json(r.stdout)["runs"][0]["id"]
    if stored_before_the_rule:
        with sqlite3.connect(db) as c:
            c.execute("update run_domains set dynamic_energy_j = energy_j")
            c.execute("update segment_energy set dynamic_energy_j = energy_j")
    (row,) = [x for x in _strict_json(cli("runs", "--db", db, "--json").stdout)["runs"] if x["id"] == run_id]
    assert row["dynamic_j_per_token"] is None and row["dynamic_energy_j"] is None
    show = _strict_json(cli("show", str(run_id), "--db", db, "--json").stdout)
    assert show["summary"]["dynamic_j_per_token"] is None and show["summary"]["dynamic_energy_j"] is None
    assert all(d["dynamic_energy_j"] is None for d in show["domain_detail"].values())
    assert all(p["dynamic_energy_j"] is None for p in show["phases"].values())
    exported = _strict_json(cli("export", "-f", "json", "--db", db).stdout)
    (run,) = [x for x in exported["runs"] if x["id"] == run_id]
    assert all(d["dynamic_energy_j"] is None for d in run["domain_detail"].values())
    assert run["summary"]["dynamic_j_per_token"] is None
    text = cli("show", str(run_id), "--db", db).stdout
    assert "dynamic" not in text.split("Domains")[0]  # the summary says no dynamic energy either


def test_export_json_never_writes_infinity(tmp_path):
    db = str(tmp_path / "g.db")
    r = cli("measure", "tiny", "--runs", "1", "--warmup", "0", "--new-tokens", "2", "--prompt-tokens", "4",
            "--intensity", "1e308", "--pue", "1e300", "--db", db)
    assert r.returncode == 0, r.stderr
    e = cli("export", "-f", "json", "--db", db)
    assert e.returncode == 0, e.stderr
    (run,) = _strict_json(e.stdout)["runs"]
    assert run["summary"]["co2e_g"] is None  # overflowed: null, as runs --json has it


def test_batch_counts_every_sequence_token(tmp_path):
    db = tmp_path / "g.db"
    r = cli("measure", *FAST, "--batch", "3", "--db", str(db), "--json")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)["runs"][0]
    assert run["batch_size"] == 3
    # per-token energy is per sequence token: decode energy / (new tokens x batch)
    assert run["j_per_token"] == pytest.approx(run["decode_energy_j"] / (8 * 3))
    rid = run["id"]
    assert rows(db, f"select sum(tokens) from segments where run_id = {rid} and label like 'token-%'") == [(24,)]
    assert rows(db, f"select tokens from segments where run_id = {rid} and label = 'prefill'") == [(24,)]


def test_session_options_are_stored_with_each_run(tmp_path):
    db = tmp_path / "g.db"
    r = cli("measure", *FAST, "--spinning", "--graph-opt", "basic", "--db", str(db), "--json")
    assert r.returncode == 0, r.stderr
    run_ids = [run["id"] for run in json.loads(r.stdout)["runs"]]
    extras = [json.loads(e) for (e,) in rows(db, f"select extra from runs where id in ({','.join(map(str, run_ids))})")]
    assert extras and all(e["session"] == {"spinning": True, "graph_opt": "basic", "warmup": 1} for e in extras)
    # the default keeps spinning off while measuring
    r = cli("measure", *FAST, "--runs", "1", "--db", str(db), "--json")
    (rid,) = [run["id"] for run in json.loads(r.stdout)["runs"]]
    assert json.loads(rows(db, f"select extra from runs where id = {rid}")[0][0])["session"] == {
        "spinning": False, "graph_opt": "all", "warmup": 1}


def test_compare_and_export_show_warm_up_and_batch(tmp_path):
    import csv
    import io

    db = str(tmp_path / "g.db")
    base = ["tiny", "--runs", "1", "--new-tokens", "4", "--prompt-tokens", "4", "--db", db]
    assert cli("measure", *base, "--warmup", "1").returncode == 0
    assert cli("measure", *base, "--warmup", "0", "--batch", "2").returncode == 0
    r = cli("compare", "1", "2", "--db", db)
    assert r.returncode == 0, r.stderr
    assert "warm-up passes" in r.stdout and "batch size (sequences)" in r.stdout
    assert any(line.split()[:1] == ["host"] or "│ host" in line for line in r.stdout.splitlines())
    doc = json.loads(cli("compare", "1", "2", "--db", db, "--json").stdout)
    assert (doc["a"]["warmup"], doc["b"]["warmup"], doc["ratios_b_over_a"]["batch_size"]) == (1, 0, 2.0)
    assert any("warm-up passes" in n for n in doc["notes"])
    assert any("batches of 1 sequences and B of 2" in n for n in doc["notes"])
    rows = list(csv.DictReader(io.StringIO(cli("export", "--db", db).stdout)))
    assert [(r["warmup"], r["requested_new_tokens"], r["batch_size"]) for r in rows] == [("1", "4", "1"),
                                                                                          ("0", "4", "2")]


def test_one_name_one_meaning_across_every_commands_json(tmp_path):
    """A name that measure --json, runs --json, show --json (and its summary) and export -f json
    share means the same thing: on one run, every shared name has the same value in each. (They
    said run_id / id, model_name / model, param_count / params, `domains` was a list in some and
    a dict in others, and export's `phases` held gross per-domain dicts under `energy_j`.)"""
    db = str(tmp_path / "g.db")
    r = cli("measure", "tiny", "--runs", "1", "--warmup", "0", "--new-tokens", "4", "--prompt-tokens", "4",
            "--db", db, "--json")
    assert r.returncode == 0, r.stderr
    (run,) = _strict_json(r.stdout)["runs"]
    rid = run["id"]
    (row,) = [x for x in _strict_json(cli("runs", "--db", db, "--json").stdout)["runs"] if x["id"] == rid]
    show = _strict_json(cli("show", str(rid), "--db", db, "--json").stdout)
    (exported,) = [x for x in _strict_json(cli("export", "-f", "json", "--db", db).stdout)["runs"] if x["id"] == rid]
    docs = {"measure": run, "runs": row, "show": show, "show.summary": show["summary"],
            "export": exported, "export.summary": exported["summary"]}

    def same(a, b):
        if isinstance(a, float) and isinstance(b, float):
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return type(a) is type(b) and a == b

    names = list(docs)
    shared = 0
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for k in set(docs[a]) & set(docs[b]):
                shared += 1
                assert same(docs[a][k], docs[b][k]), f"{k}: {a} says {docs[a][k]!r}, {b} says {docs[b][k]!r}"
    assert shared > 100  # the documents do overlap: the check compared something
    for d in docs.values():
        assert "run_id" not in d and "model_name" not in d and "param_count" not in d
        if "domains" in d:
            assert d["domains"] == ["cpu-estimate"]
    assert show["domain_detail"]["cpu-estimate"]["attributed_energy_j"] == pytest.approx(run["energy_j"], rel=1e-9)
    assert show["model"] == run["model"] == "tiny" and show["params"] == row["params"] > 0


def test_a_default_domain_gone_before_a_run_is_left_out_and_marked_not_blamed_on_the_user(tmp_path, monkeypatch):
    """A RAPL zone that disappeared after measure chose the device's domains (here: during the
    warm-up) made the next run's meter refuse "cannot use dram-0" as if the user had named it,
    and the whole measure stopped. The runs now go on without it and are marked partial."""
    from powercap_fake import build

    from greenprof.config import load_settings
    from greenprof.models import runner

    pc = build(tmp_path / "pc", sockets=1, dram=True)
    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", str(pc.root))
    real = runner.generate

    def generate(model, *a, meter=None, **kw):
        if meter is None:  # the unmeasured first call: the DRAM zone goes away
            (pc.zone("intel-rapl:0:0").path / "energy_uj").unlink(missing_ok=True)
        return real(model, *a, meter=meter, **kw)

    monkeypatch.setattr(runner, "generate", generate)
    settings = load_settings({"db": str(tmp_path / "g.db")})
    doc = measure_models(MeasureRequest(models=["tiny"], runs=2, warmup=0, new_tokens=4, prompt_tokens=4),
                         settings=settings)
    assert [r["domains"] for r in doc["runs"]] == [["cpu-package-0"], ["cpu-package-0"]]
    for r in doc["runs"]:
        assert "dram-0" in r["lost"] and any(w.startswith("dram-0 lost") for w in r["warnings"])
    (s,) = doc["summary"]
    assert s["partial_run_ids"] == [r["id"] for r in doc["runs"]]
    got = rows(tmp_path / "g.db", "select status from runs order by id")
    assert got == [("completed",), ("completed",)]


def test_a_meter_warning_in_measure_is_one_note_not_a_python_warning(tmp_path):
    """measure printed a sampling-rate warning as Python does ("measure.py:630: GreenprofWarning:
    ..." and the source line `with meter:`): it is one `note:` line, and it stays on the run."""
    from powercap_fake import build

    pc = build(tmp_path / "pc", sockets=1, dram=False, max_energy_range_uj=3_000_000)  # wraps in ~ms at max power
    r = cli("measure", *FAST, "--db", str(tmp_path / "g.db"), "--json",
            env={"GREENPROF_POWERCAP_ROOT": str(pc.root), "GREENPROF_RAPL_WATCH": "0", "GREENPROF_SAMPLE_HZ": "1"})
    assert r.returncode == 0, r.stderr
    assert "GreenprofWarning" not in r.stderr and "with meter" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert any("could miss a counter wrap" in w for w in doc["runs"][0]["warnings"]), doc["runs"][0]["warnings"]
