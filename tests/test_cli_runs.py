"""`greenprof runs | show | export | compare | regions` over a real store of real Meter runs.

Runs are measured by the real Meter over replayed power traces (and one over the real CPU-time
estimate), saved through the store API, then read back through the commands, registered on a
fresh typer app exactly as the CLI registers them.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import io
import json
import math
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

pytest.importorskip("sqlalchemy")

from greenprof import carbon  # noqa: E402
from greenprof.cli_runs import register  # noqa: E402
from greenprof.export import CODECARBON_COLUMNS, EXPORT_COLUMNS  # noqa: E402
from greenprof.collectors.replay import PowerTrace, ReplayCounterCollector  # noqa: E402
from greenprof.errors import GreenprofError  # noqa: E402
from greenprof.meter import Meter  # noqa: E402
from greenprof.store import open_store  # noqa: E402

J_PER_KWH = 3.6e6


# -- the app and an invoker that handles errors like greenprof.cli.main -----------------------------
def make_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """test root"""

    register(app)
    return app


APP = make_app()


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def json(self):
        return json.loads(self.stdout)


def cli(*args: str, env: dict | None = None) -> Result:
    """Invoke like greenprof.cli.main: a GreenprofError becomes one line on stderr and its exit code."""
    runner = CliRunner()
    r = runner.invoke(APP, list(args), env={"GREENPROF_DB": None, **(env or {})})
    stderr = r.stderr
    code = r.exit_code
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        if not isinstance(r.exception, GreenprofError):
            raise r.exception
        stderr += f"greenprof: error: {r.exception}\n"
        code = r.exception.exit_code
    return Result(code, r.stdout, stderr)


# -- real measurements --------------------------------------------------------------------------
def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def replay_measurement(scale: float, tokens: int):
    """A real Meter window over replayed cpu, gpu and dram traces (watts x ``scale``)."""
    cols = [
        ReplayCounterCollector(PowerTrace("cpu-package-0", [0.0, 60.0], [40.0 * scale, 50.0 * scale])),
        ReplayCounterCollector(PowerTrace("gpu-0", [0.0, 0.5, 60.0], [80.0 * scale, 200.0 * scale, 90.0 * scale])),
        ReplayCounterCollector(PowerTrace("dram-0", [0.0, 60.0], [5.0 * scale, 5.0 * scale])),
    ]
    with Meter(collectors=cols, sample_hz=50, idle_s=0.02) as meter:
        busy(0.03)
        meter.mark("prefill")
        for i in range(1, tokens + 1):
            busy(0.01)
            meter.mark(f"token-{i}")
    return meter.measurement


def estimate_measurement(tokens: int):
    with Meter(collectors="cpu-estimate", sample_hz=20) as meter:
        busy(0.02)
        meter.mark("prefill")
        for i in range(1, tokens + 1):
            busy(0.005)
            meter.mark(f"token-{i}")
    return meter.measurement


@pytest.fixture(scope="module")
def measurements():
    return {"a": replay_measurement(1.0, 8), "b": replay_measurement(0.4, 8), "est": estimate_measurement(4)}


FRA = carbon.lookup("FRA")
POL = carbon.lookup("POL")


@pytest.fixture
def db(tmp_path, measurements):
    """A store with: 1 FRA run, 2 POL run (pue 1.2), 3 an estimated run without intensity, 4 failed."""
    path = tmp_path / "runs.db"
    with open_store(path) as store:
        a = store.start_run(model_name="SmolLM-135M", model_shape="SmolLM-135M", param_count=134_515_008,
                            precision="fp32", provider="CPUExecutionProvider", threads=2, prompt_tokens=16,
                            new_tokens=8, region=FRA.region, intensity_g_per_kwh=FRA.intensity_g_per_kwh,
                            intensity_source=FRA.source, intensity_year=FRA.year, pue=1.0,
                            price_usd_per_kwh=0.2, batch_id="batch-a")
        store.finish_run(a, measurements["a"])
        b = store.start_run(model_name="SmolLM-360M", param_count=361_821_120, precision="int8",
                            prompt_tokens=16, new_tokens=8, region=POL.region,
                            intensity_g_per_kwh=POL.intensity_g_per_kwh, intensity_source=POL.source,
                            intensity_year=POL.year, pue=1.2, price_usd_per_kwh=0.3, batch_id="batch-b")
        store.finish_run(b, measurements["b"])
        c = store.start_run(model_name="tiny", kind="track", prompt_tokens=4, new_tokens=4)
        store.finish_run(c, measurements["est"])
        d = store.start_run(model_name="broken", precision="fp32")
        store.finish_run(d, None, status="failed", error="model file not found")
    assert (a, b, c, d) == (1, 2, 3, 4)
    return path


def total(m) -> float:
    return math.fsum(m.energy_j.values())


def decode_j(m) -> float:
    return math.fsum(e for s in m.segments if s.label.startswith("token-") for e in s.energy_j.values())


def prefill_j(m) -> float:
    return math.fsum(m.segments[0].energy_j.values())


# -- runs -------------------------------------------------------------------------------------------
def test_runs_json_fields_from_stored_joules(db, measurements):
    r = cli("runs", "--db", str(db), "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    assert set(doc) >= {"runs", "region", "intensity_g_per_kwh", "intensity_source"}
    assert doc["region"] is None and doc["intensity_g_per_kwh"] is None  # each run's own intensity
    by = {x["id"]: x for x in doc["runs"]}
    assert list(by) == [4, 3, 2, 1]  # newest first
    a, m = by[1], measurements["a"]
    assert (a["model"], a["precision"], a["params"], a["status"]) == ("SmolLM-135M", "fp32", 134_515_008, "completed")
    assert (a["prompt_tokens"], a["new_tokens"], a["decode_tokens"], a["prefill_tokens"]) == (16, 8, 8, 16)
    assert a["method"] == "replayed" and a["methods"] == {"cpu-package-0": "replayed", "dram-0": "replayed",
                                                         "gpu-0": "replayed"}
    assert a["energy_j"] == pytest.approx(total(m), rel=1e-9)
    assert a["j_per_token"] == pytest.approx(decode_j(m) / 8, rel=1e-9)
    assert a["j_per_prompt_token"] == pytest.approx(prefill_j(m) / 16, rel=1e-9)
    assert a["tokens_per_s"] > 0
    assert a["region"] == "FRA" and a["intensity_g_per_kwh"] == FRA.intensity_g_per_kwh and not a["what_if"]
    assert a["co2e_g"] == pytest.approx(total(m) / J_PER_KWH * FRA.intensity_g_per_kwh, rel=1e-9)
    assert a["cost_usd"] == pytest.approx(total(m) / J_PER_KWH * 0.2, rel=1e-9)
    b, mb = by[2], measurements["b"]
    assert b["pue"] == 1.2
    assert b["co2e_g"] == pytest.approx(total(mb) / J_PER_KWH * POL.intensity_g_per_kwh * 1.2, rel=1e-9)
    # the estimated run without a stored intensity is costed at the current settings (world average)
    c = by[3]
    assert c["method"] == "estimated" and c["region"] == "WORLD"
    assert "run 3 has no stored grid intensity: costed at WORLD" in r.stderr
    assert "run 4" not in r.stderr  # nothing to cost, nothing to say
    # the failed run has no energy and no figures, but is listed
    d = by[4]
    assert d["status"] == "failed" and d["energy_j"] is None and d["co2e_g"] is None and d["method"] == "none"
    assert d["basis"] == "none"  # nothing charged, on no basis (it said "gross", the pre-attribution label)
    assert d["error"] == "model file not found"


def test_runs_region_what_if_recosts_stored_joules(db):
    pol = cli("runs", "--db", str(db), "--json", "--region", "POL").json()
    fra = cli("runs", "--db", str(db), "--json", "--region", "fr").json()  # alpha-2 works too
    assert (pol["region"], fra["region"]) == ("POL", "FRA")
    assert pol["intensity_g_per_kwh"] == POL.intensity_g_per_kwh and pol["intensity_source"] == POL.source
    want = POL.intensity_g_per_kwh / FRA.intensity_g_per_kwh
    p, f = ({x["id"]: x for x in d["runs"]} for d in (pol, fra))
    for rid in (1, 2, 3):
        assert p[rid]["co2e_g"] / f[rid]["co2e_g"] == pytest.approx(want, rel=1e-12)
        assert p[rid]["energy_j"] == f[rid]["energy_j"]  # same stored joules, only the grid changed
        assert p[rid]["what_if"] and p[rid]["region"] == "POL"
    assert p[1]["run_region"] == "FRA"
    # run 1 was measured in France: its own figure equals the FRA what-if
    own = {x["id"]: x for x in cli("runs", "--db", str(db), "--json").json()["runs"]}
    assert own[1]["co2e_g"] == pytest.approx(f[1]["co2e_g"], rel=1e-12)
    # unknown region: one line, exit 2, before touching anything
    bad = cli("runs", "--db", str(db), "--region", "Atlantis")
    assert bad.code == 2 and bad.stderr.count("\n") == 1 and "unknown region 'Atlantis'" in bad.stderr


def test_runs_table_limit_and_model_filter(db):
    r = cli("runs", "--db", str(db))
    assert r.code == 0, r.stderr
    for text in ("SmolLM-135M", "SmolLM-360M", "replayed", "estimated", "failed", "16/8", "135M"):
        assert text in r.stdout
    r = cli("runs", "--db", str(db), "--json", "--limit", "2")
    assert [x["id"] for x in r.json()["runs"]] == [4, 3]
    r = cli("runs", "--db", str(db), "--json", "--model", "SmolLM-360M")
    assert [x["id"] for x in r.json()["runs"]] == [2]
    r = cli("runs", "--db", str(db), "--limit", "-1")
    assert r.code == 2 and "--limit" in r.stderr


def test_db_falls_back_to_the_environment(db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("runs", "--json", env={"GREENPROF_DB": str(db)})
    assert r.code == 0 and len(r.json()["runs"]) == 4
    assert r.json()["db"] == str(db)


def test_stale_running_run_is_reported_interrupted(db):
    # a run whose pid now belongs to a process younger than the run: its own process is gone
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open_store(db) as store:
            rid = store.start_run(model_name="victim", pid=child.pid, new_tokens=250,
                                  started_at=datetime(2024, 1, 1, tzinfo=timezone.utc))
            assert store.get_run(rid).status == "running"
        r = cli("runs", "--db", str(db), "--json")
        assert r.code == 0, r.stderr
        (victim,) = [x for x in r.json()["runs"] if x["id"] == rid]
        assert victim["status"] == "interrupted" and "process ended without closing" in victim["error"]
        # how many of the 250 tokens it was asked for were generated is not known (it said all 250)
        assert victim["new_tokens"] is None and victim["requested_new_tokens"] == 250
        assert f"run {rid} left 'running'" in r.stderr
        r = cli("runs", "--db", str(db), "--json")  # reported once
        assert "left 'running'" not in r.stderr
    finally:
        child.kill()
        child.wait()


# -- show ---------------------------------------------------------------------------------------------
def test_show_json_has_everything(db, measurements):
    r = cli("show", "1", "--db", str(db), "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    for key in ("host", "hardware", "software", "model", "params", "model_file_hash", "precision", "provider",
                "threads", "region", "intensity_g_per_kwh", "intensity_source", "intensity_year", "pue",
                "price_usd_per_kwh", "status", "error"):
        assert key in doc, key
    assert doc["provider"] == "CPUExecutionProvider" and doc["threads"] == 2
    m = measurements["a"]
    assert doc["segment_count"] == len(m.segments) >= 9
    assert doc["sample_count"] == len(m.samples) > 0
    assert set(doc["domains"]) == {"cpu-package-0", "gpu-0", "dram-0"}
    assert set(doc["domain_detail"]) == set(doc["domains"])
    dom = doc["domain_detail"]["gpu-0"]
    assert dom["gross_energy_j"] == m.energy_j["gpu-0"] and dom["idle_power_w"] == m.idle_power_w["gpu-0"]
    assert "energy_j" not in dom  # energy_j alone is always the energy charged to the run
    assert dom["dynamic_energy_j"] == pytest.approx(m.dynamic_energy_j["gpu-0"], rel=1e-9)
    assert doc["phases"]["decode"]["tokens"] == 8
    assert doc["phases"]["decode"]["j_per_token"] == pytest.approx(decode_j(m) / 8, rel=1e-9)
    assert doc["phases"]["prefill"]["j_per_token"] == pytest.approx(prefill_j(m) / 16, rel=1e-9)
    s = doc["summary"]
    assert s["co2e_g"] == pytest.approx(total(m) / J_PER_KWH * FRA.intensity_g_per_kwh, rel=1e-9)
    assert s["cost_usd"] == pytest.approx(total(m) / J_PER_KWH * 0.2, rel=1e-9)


def test_show_table(db):
    r = cli("show", "2", "--db", str(db))
    assert r.code == 0, r.stderr
    for text in ("SmolLM-360M", "int8", "POL", "gpu-0", "dram-0", "prefill", "decode", "Domains", "Phases"):
        assert text in r.stdout
    r = cli("show", "4", "--db", str(db))
    assert r.code == 0 and "model file not found" in r.stdout


def test_show_unknown_run_is_one_line_exit_2(db):
    r = cli("show", "999", "--db", str(db))
    assert r.code == 2
    assert r.stderr == f"greenprof: error: no run 999 in {db}; see `greenprof runs`\n"
    assert r.stdout == ""


def test_show_unknown_run_through_the_real_main(db, monkeypatch, capsys):
    import greenprof.cli as gcli

    monkeypatch.setattr(gcli, "app", make_app())
    monkeypatch.delenv("GREENPROF_DB", raising=False)
    with pytest.raises(SystemExit) as exit_:
        gcli.main(["show", "999", "--db", str(db)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == f"greenprof: error: no run 999 in {db}; see `greenprof runs`\n"


# -- export ------------------------------------------------------------------------------------------
def test_export_csv_and_json(db, tmp_path, measurements):
    r = cli("export", "--format", "csv", "--db", str(db))
    assert r.code == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0]) == list(EXPORT_COLUMNS)
    assert [int(x["id"]) for x in rows] == [1, 2, 3, 4]  # one row per run, oldest first
    assert float(rows[0]["energy_j"]) == pytest.approx(total(measurements["a"]), rel=1e-9)
    assert rows[0]["methods"] == "cpu-package-0=replayed;dram-0=replayed;gpu-0=replayed"
    assert rows[3]["energy_j"] == "" and rows[3]["status"] == "failed"

    r = cli("export", "--format", "json", "--db", str(db))
    assert r.code == 0, r.stderr
    doc = r.json()
    assert [x["id"] for x in doc["runs"]] == [1, 2, 3, 4]
    assert doc["runs"][1]["summary"]["co2e_g"] == pytest.approx(
        total(measurements["b"]) / J_PER_KWH * POL.intensity_g_per_kwh * 1.2, rel=1e-9)
    assert doc["runs"][0]["hardware"] and doc["runs"][0]["domain_detail"]["gpu-0"]["method"] == "replayed"

    bad = cli("export", "--format", "xml", "--db", str(db))
    assert bad.code == 2 and "--format/-f must be csv or json" in bad.stderr


def test_export_output_file_refused_without_force(db, tmp_path):
    out = tmp_path / "runs.csv"
    r = cli("export", "--format", "csv", "-o", str(out), "--db", str(db))
    assert r.code == 0 and r.stdout == "" and "wrote 4 runs" in r.stderr
    first = out.read_text()
    assert first.startswith("id,parent_run_id,batch_id,")
    out.write_text("precious\n")
    r = cli("export", "--format", "json", "-o", str(out), "--db", str(db))
    assert r.code == 2 and r.stderr == f"greenprof: error: {out} exists: pass --force to overwrite it\n"
    assert out.read_text() == "precious\n"
    r = cli("export", "--format", "json", "-o", str(out), "--force", "--db", str(db))
    assert r.code == 0 and len(json.loads(out.read_text())["runs"]) == 4
    r = cli("export", "-o", str(tmp_path / "no" / "such.csv"), "--db", str(db))
    assert r.code == 2 and "does not exist" in r.stderr


def codecarbon_fields() -> list[str]:
    """The field names of CodeCarbon's EmissionsData dataclass, read from the installed source."""
    spec = importlib.util.find_spec("codecarbon")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("codecarbon is not installed")
    src = Path(list(spec.submodule_search_locations)[0]) / "output_methods" / "emissions_data.py"
    tree = ast.parse(src.read_text(encoding="utf-8"))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EmissionsData"]
    return [s.target.id for s in cls.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]


def test_codecarbon_columns_match_the_installed_codecarbon():
    assert list(CODECARBON_COLUMNS) == codecarbon_fields()


def test_export_codecarbon(db, tmp_path, measurements):
    out = tmp_path / "emissions.csv"
    r = cli("export", "--codecarbon", "-o", str(out), "--db", str(db))
    assert r.code == 0, r.stderr
    assert "1 run without any energy" in r.stderr  # the failed run
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert reader.fieldnames == codecarbon_fields()
    assert [x["run_id"] for x in rows] == ["1", "2", "3"]
    a, m = rows[0], measurements["a"]
    assert a["project_name"] == "greenprof" and a["experiment_id"] == "batch-a"
    assert float(a["duration"]) == pytest.approx(m.duration_s)
    assert float(a["cpu_energy"]) == pytest.approx(m.energy_j["cpu-package-0"] / J_PER_KWH, rel=1e-9)
    assert float(a["gpu_energy"]) == pytest.approx(m.energy_j["gpu-0"] / J_PER_KWH, rel=1e-9)
    assert float(a["ram_energy"]) == pytest.approx(m.energy_j["dram-0"] / J_PER_KWH, rel=1e-9)
    assert float(a["energy_consumed"]) == pytest.approx(total(m) / J_PER_KWH, rel=1e-9)
    assert float(a["gpu_power"]) == pytest.approx(m.energy_j["gpu-0"] / m.duration_s, rel=1e-9)
    assert float(a["emissions"]) == pytest.approx(float(a["energy_consumed"]) * FRA.intensity_g_per_kwh / 1000,
                                                  rel=1e-9)
    assert float(a["emissions_rate"]) == pytest.approx(float(a["emissions"]) / m.duration_s, rel=1e-9)
    assert (a["country_iso_code"], a["country_name"], a["on_cloud"]) == ("FRA", "France", "N")
    # the energy exported is what the run was charged (its process's share): CodeCarbon's "process"
    assert a["tracking_mode"] == "process" and a["codecarbon_version"] == "3.3.2"
    assert a["longitude"] == a["latitude"] == "" and float(a["pue"]) == 1.0
    assert a["python_version"] == ".".join(map(str, sys.version_info[:3]))
    datetime.strptime(a["timestamp"], "%Y-%m-%dT%H:%M:%S")  # CodeCarbon's timestamp format
    # CodeCarbon's energy and power include the PUE: emissions = energy_consumed x intensity
    b, mb = rows[1], measurements["b"]
    assert float(b["energy_consumed"]) == pytest.approx(total(mb) * 1.2 / J_PER_KWH, rel=1e-9)
    assert float(b["emissions"]) == pytest.approx(float(b["energy_consumed"]) * POL.intensity_g_per_kwh / 1000,
                                                  rel=1e-9)
    # the CPU-time estimate is per process
    assert rows[2]["tracking_mode"] == "process" and float(rows[2]["cpu_energy"]) > 0
    # CodeCarbon's own record type accepts every row
    pytest.importorskip("pandas")
    from codecarbon.output_methods.emissions_data import EmissionsData

    EmissionsData(**a)
    r = cli("export", "--codecarbon", "--format", "json", "--db", str(db))
    assert r.code == 2 and "--codecarbon" in r.stderr


# -- compare -------------------------------------------------------------------------------------------
def test_compare_ratios(db, measurements):
    r = cli("compare", "1", "2", "--db", str(db), "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    ma, mb = measurements["a"], measurements["b"]
    ja, jb = decode_j(ma) / 8, decode_j(mb) / 8
    rat = doc["ratios_b_over_a"]
    assert doc["a"]["j_per_token"] == pytest.approx(ja, rel=1e-9)
    assert rat["j_per_token"] == pytest.approx(jb / ja, rel=1e-9)
    assert rat["j_per_prompt_token"] == pytest.approx((prefill_j(mb) / 16) / (prefill_j(ma) / 16), rel=1e-9)
    assert rat["params"] == pytest.approx(361_821_120 / 134_515_008)
    # g CO2e per 1k tokens: each run at its own grid and PUE
    co2_a = ja * 1e3 / J_PER_KWH * FRA.intensity_g_per_kwh
    co2_b = jb * 1e3 / J_PER_KWH * POL.intensity_g_per_kwh * 1.2
    assert doc["a"]["co2e_g_per_1k_tokens"] == pytest.approx(co2_a, rel=1e-9)
    assert rat["co2e_g_per_1k_tokens"] == pytest.approx(co2_b / co2_a, rel=1e-9)
    usd_a, usd_b = ja * 1e6 / J_PER_KWH * 0.2, jb * 1e6 / J_PER_KWH * 0.3 * 1.2
    assert doc["b"]["usd_per_m_tokens"] == pytest.approx(usd_b, rel=1e-9)
    assert rat["usd_per_m_tokens"] == pytest.approx(usd_b / usd_a, rel=1e-9)
    assert doc["summary"][0] == f"B (run 2) uses {jb / ja:.2f}x the energy per generated token of A (run 1)"

    r = cli("compare", "1", "2", "--db", str(db))
    assert r.code == 0, r.stderr
    assert f"B (run 2) uses {jb / ja:.2f}x the energy per generated token of A (run 1)" in r.stdout
    assert "J / generated token" in r.stdout and "USD / M tokens" in r.stdout

    r = cli("compare", "1", "3", "--db", str(db), "--json")
    assert "A is replayed (attributed), B is estimated (attributed)" in r.stderr
    r = cli("compare", "1", "77", "--db", str(db))
    assert r.code == 2 and "no run 77 in" in r.stderr


# -- regions ------------------------------------------------------------------------------------------
def test_regions(tmp_path):
    r = cli("regions", "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    assert doc["count"] == len(carbon.regions()) == len(doc["regions"])
    by = {x["region"]: x for x in doc["regions"]}
    assert by["FRA"]["intensity_g_per_kwh"] == FRA.intensity_g_per_kwh and "WORLD" in by
    r = cli("regions", "--json", "--search", "califor")
    assert [x["region"] for x in r.json()["regions"]] == ["USA/CA"]
    r = cli("regions", "--search", "poland")
    assert r.code == 0 and "POL" in r.stdout and "661.9" in r.stdout
    r = cli("regions", "--search", "zzzz-nowhere")
    assert r.code == 0 and "no region matches" in r.stderr


# -- import cost ------------------------------------------------------------------------------------
def test_importing_the_module_is_cheap():
    code = ("import sys, greenprof.cli_runs; "
            "print(' '.join(m for m in ('sqlalchemy', 'rich', 'greenprof.store.db', 'greenprof.carbon') "
            "if m in sys.modules) or 'none')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["none"]


def test_reading_commands_leave_no_wal_files_and_write_nothing(db):
    """`runs`, `show`, `export` and `compare` opened the database with mode=ro, and a read-only
    connection never removes the -wal/-shm files it makes: every read left them beside the file.
    They read through query_only connections now; the last one to close removes them."""
    import sqlite3

    with sqlite3.connect(db) as c:
        c.execute("pragma wal_checkpoint(truncate)")
        before = c.execute("select count(*), max(id) from runs").fetchone()
    c.close()
    sidecars = [db.with_name(db.name + s) for s in ("-wal", "-shm")]
    for p in sidecars:
        p.unlink(missing_ok=True)
    for args in (["runs"], ["runs", "--json"], ["show", "1", "--json"], ["export", "-f", "json"],
                 ["export", "-f", "csv"], ["compare", "1", "2", "--json"]):
        r = cli(*args, "--db", str(db))
        assert r.code == 0, (args, r.stderr)
        assert [p.name for p in sidecars if p.exists()] == [], args
    with sqlite3.connect(db) as c:
        assert c.execute("select count(*), max(id) from runs").fetchone() == before
    c.close()
    with open_store(db, readonly=True) as store:
        with pytest.raises(Exception, match="read-only|readonly"):
            store.delete_run(1)
        assert store.get_run(1) is not None


def test_runs_never_cuts_the_list_silently(db):
    """`runs` lists the newest 50 by default: a sum over its JSON was the database's total only
    while it held 50 runs or fewer, and nothing said so."""
    r = cli("runs", "--db", str(db), "--json", "--limit", "2")
    assert r.code == 0, r.stderr
    doc = r.json()
    assert (doc["total_runs"], doc["listed_runs"], [x["id"] for x in doc["runs"]]) == (4, 2, [4, 3])
    assert "the newest 2 of 4 runs are listed; --limit 0 lists them all" in r.stderr
    text = cli("runs", "--db", str(db), "--limit", "2")
    assert "The newest 2 of 4 runs" in text.stdout and "--limit 0" in text.stderr
    every = cli("runs", "--db", str(db), "--json", "--limit", "0")
    assert every.json()["total_runs"] == every.json()["listed_runs"] == 4 and "--limit 0" not in every.stderr
    filtered = cli("runs", "--db", str(db), "--json", "--limit", "1", "--model", "SmolLM-135M")
    assert filtered.json()["total_runs"] == len([x for x in every.json()["runs"] if x["model"] == "SmolLM-135M"])
