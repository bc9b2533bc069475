"""`greenprof dashboard` end to end: a real store, a real report, opened in headless Chromium offline.

The database holds real measurements: `measure_models` on the built-in `tiny` model at two
precisions (real onnxruntime, the machine's own energy sources), and runs of the real Meter over
replayed power traces saved through the store API with different parameter counts, one of them
named like an XSS payload. The report is opened in Debian's Chromium (/usr/bin/chromium, driven by
/usr/bin/chromedriver; never a downloaded browser) with every network path closed; the tests skip
with a reason when Chromium, chromedriver or selenium is missing.

A full-page screenshot is saved as test-output/dashboard.png (and the report as
test-output/dashboard.html) in the repository, for a person to look at.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

pytest.importorskip("sqlalchemy")
pytest.importorskip("plotly")

from greenprof import carbon  # noqa: E402
from greenprof.cli_dashboard import register  # noqa: E402
from greenprof.cli_runs import _Costing, summarize  # noqa: E402
from greenprof.collectors.replay import PowerTrace, ReplayCounterCollector  # noqa: E402
from greenprof.config import load_settings  # noqa: E402
from greenprof.errors import GreenprofError  # noqa: E402
from greenprof.meter import Meter  # noqa: E402
from greenprof.store import open_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "test-output"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
XSS = "<script>alert(1)</script>"
IMG_XSS = '<img src=x onerror="window.__pwned=1">'
CHARTS = ("fig-params", "fig-pareto", "fig-co2", "fig-phases", "fig-cost", "fig-timeline")
FRA = carbon.lookup("FRA")
POL = carbon.lookup("POL")


# -- the CLI, registered on a fresh app as greenprof.cli registers it --------------------------------
def make_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """test root"""

    register(app)
    return app


APP = make_app()


def cli(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    """Invoke like greenprof.cli.main: a GreenprofError is one line on stderr and its exit code."""
    r = CliRunner().invoke(APP, list(args), env={"GREENPROF_DB": None, "GREENPROF_REGION": None, **(env or {})})
    code, stderr = r.exit_code, r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        if not isinstance(r.exception, GreenprofError):
            raise r.exception
        stderr += f"greenprof: error: {r.exception}\n"
        code = r.exception.exit_code
    return code, r.stdout, stderr


# -- real measurements ------------------------------------------------------------------------------
def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def replay_measurement(scale: float, tokens: int = 8, token_s: float = 0.008):
    """The real Meter over replayed cpu and gpu traces (watts x ``scale``), with an idle window."""
    cols = [
        ReplayCounterCollector(PowerTrace("cpu-package-0", [0.0, 60.0], [40.0 * scale, 50.0 * scale])),
        ReplayCounterCollector(PowerTrace("gpu-0", [0.0, 0.05, 0.2, 60.0],
                                          [80.0 * scale, 250.0 * scale, 120.0 * scale, 110.0 * scale])),
    ]
    with Meter(collectors=cols, sample_hz=200, idle_s=0.03) as meter:
        busy(0.03)
        meter.mark("prefill")
        for i in range(1, tokens + 1):
            busy(token_s)
            meter.mark(f"token-{i}")
    return meter.measurement


def as_measured(m):
    """The same joules labelled as a hardware counter's: stands in for a RAPL/NVML machine."""
    return dataclasses.replace(m, method={d: "measured" for d in m.method})


#: synthetic models (name, params, precision, watts scale, seconds per token, repeats, measured?)
SYNTHETIC = [
    ("SmolLM-135M", 134_515_008, "fp32", 0.5, 0.008, 3, True),
    ("SmolLM-360M", 361_821_120, "fp32", 1.0, 0.004, 3, True),
    ("SmolLM-360M", 361_821_120, "int8", 0.6, 0.008, 2, False),
    ("SmolLM-1.7B", 1_711_376_384, "int4", 2.0, 0.00005, 2, False),  # fast: on the Pareto front
    (XSS, 1_000_000_000, "fp32", 1.5, 0.008, 2, False),
    (IMG_XSS, 2_000_000_000, "int8", 1.8, 0.008, 1, False),
]


@pytest.fixture(scope="module")
def report_db(tmp_path_factory):
    """A store filled with real runs; returns (path, facts)."""
    from greenprof.measure import MeasureRequest, measure_models

    path = tmp_path_factory.mktemp("dash") / "runs.db"
    settings = load_settings({"db": str(path), "region": "FRA"})
    measured_tiny = []
    for precision in ("fp32", "int8"):
        doc = measure_models(MeasureRequest(models=["tiny"], precision=precision, runs=3, warmup=1,
                                            new_tokens=8, prompt_tokens=8), settings=settings)
        measured_tiny.append(doc["summary"][0])
    with open_store(path) as store:
        for k, (name, params, prec, scale, token_s, repeats, measured) in enumerate(SYNTHETIC):
            grid = POL if k % 2 else FRA
            for r in range(repeats):
                m = replay_measurement(scale * (1 + 0.05 * r), token_s=token_s)
                if measured:
                    m = as_measured(m)
                rid = store.start_run(model_name=name, model_shape=name, param_count=params, precision=prec,
                                      prompt_tokens=16, new_tokens=8, region=grid.region,
                                      intensity_g_per_kwh=grid.intensity_g_per_kwh, intensity_source=grid.source,
                                      intensity_year=grid.year, pue=1.2, price_usd_per_kwh=0.2)
                store.finish_run(rid, m)
        failed = store.start_run(model_name="broken", precision="fp32")
        store.finish_run(failed, None, status="failed", error="model file not found")
        # the latest completed measure run: the one drawn by default
        latest = store.start_run(model_name="SmolLM-135M", model_shape="SmolLM-135M", param_count=134_515_008,
                                 precision="fp32", prompt_tokens=16, new_tokens=8, region=FRA.region,
                                 intensity_g_per_kwh=FRA.intensity_g_per_kwh, intensity_source=FRA.source,
                                 intensity_year=FRA.year, pue=1.2, price_usd_per_kwh=0.2)
        store.finish_run(latest, as_measured(replay_measurement(0.5, tokens=24, token_s=0.01)))
    return path, {"tiny": measured_tiny, "latest": latest, "failed": failed}


@pytest.fixture(scope="module")
def report(report_db, tmp_path_factory):
    path, facts = report_db
    out = tmp_path_factory.mktemp("report") / "greenprof-report.html"
    code, stdout, stderr = cli("dashboard", "--db", str(path), "-o", str(out), "--region", "USA/CA",
                               "--region", "FRA")
    assert code == 0, stderr
    assert stdout.strip() == str(out.resolve())  # the path, alone, on stdout
    OUT_DIR.mkdir(exist_ok=True)
    shutil.copyfile(out, OUT_DIR / "dashboard.html")
    return out, facts


# -- the browser ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver")
    if not CHROMEDRIVER.exists():
        pytest.skip(f"{CHROMEDRIVER} is missing: apt-get install chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--disable-extensions", "--disable-default-apps",
                 f"--user-data-dir={profile}", "--window-size=1400,1000",
                 # every request would go to a closed local port; loopback is proxied too
                 "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Selenium Manager never runs: the driver path is given, so no browser or driver is downloaded
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                               {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
        # record alerts instead of showing them, from before any page script runs
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
            "window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };")})
        yield driver
    finally:
        driver.quit()


def load(driver, path: Path, wait_rendered: bool = True) -> list[dict]:
    """Open ``path``; wait until every chart is drawn; return the console log of the load."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    if wait_rendered:
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return document.body.getAttribute('data-rendered')") is not None)
        assert driver.execute_script("return document.body.getAttribute('data-rendered')") == "true"
    return driver.get_log("browser")


@pytest.fixture(scope="module")
def page(browser, report):
    """The report loaded once; its console log; a full-page screenshot saved."""
    out, facts = report
    log = load(browser, out)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(int(height) + 40, 12000))
    time.sleep(0.5)  # plotly's responsive resize
    OUT_DIR.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(OUT_DIR / "dashboard.png"))
    log += browser.get_log("browser")
    return browser, log, facts


# -- tests: the page in the browser -----------------------------------------------------------------
def test_no_console_errors_and_no_network(page):
    driver, log, _ = page
    assert [e for e in log if e["level"] in ("SEVERE", "WARNING")] == [], log
    # nothing was fetched: no resource (script, font, image, XHR) was loaded from anywhere
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources == []
    # plotly.js is embedded once and no script has a src
    scripts = driver.execute_script(
        "return Array.from(document.scripts).map(s => [s.src, s.type, s.text.length])")
    assert all(src == "" for src, _, _ in scripts)
    assert sum(1 for _, typ, n in scripts if typ == "" and n > 1_000_000) == 1
    assert (OUT_DIR / "dashboard.png").stat().st_size > 50_000


CHART_STATE = """
return Array.from(document.querySelectorAll('div.chart')).map(function (gd) {
  var lines = Array.from(gd.querySelectorAll('.scatterlayer path.js-line'))
                   .filter(function (p) { return (p.getAttribute('d') || '').length > 20; });
  return {id: gd.id, traces: (gd.data || []).length,
          points: gd.querySelectorAll('.scatterlayer path.point').length,
          bars: gd.querySelectorAll('.barlayer path').length,
          errorbars: gd.querySelectorAll('.errorbars path.yerror').length,
          lines: lines.length,
          xticks: Array.from(gd.querySelectorAll('.xtick text')).map(function (t) { return t.textContent; }),
          legend: Array.from(gd.querySelectorAll('.legendtext')).map(function (t) { return t.textContent; })};
});
"""


def test_every_chart_has_drawn_data(page):
    driver, _, _ = page
    state = {c["id"]: c for c in driver.execute_script(CHART_STATE)}
    assert sorted(state) == sorted(CHARTS)
    assert not driver.find_elements("css selector", ".placeholder")
    for cid, c in state.items():
        assert c["traces"] > 0, cid
        assert c["points"] + c["bars"] + c["lines"] > 0, cid
    # 1: log-log, a series per precision and method, CI error bars, measured vs estimated in the legend
    params = state["fig-params"]
    assert params["points"] >= 8 and params["errorbars"] >= 5
    legend = set(params["legend"])
    assert {"fp32 · measured", "fp32 · estimated", "int8 · estimated"} <= legend
    layout = driver.execute_script("var gd = document.getElementById('fig-params');"
                                   "return [gd.layout.xaxis.type, gd.layout.yaxis.type,"
                                   " gd.data.map(t => t.marker.symbol)]")
    assert layout[:2] == ["log", "log"]
    assert "circle" in layout[2] and "circle-open" in layout[2]  # filled = measured, hollow = estimate
    # 2: one bar series for the stored grid plus the six contrasting grids and USA/CA (FRA once)
    co2 = state["fig-co2"]
    assert co2["traces"] == 1 + 6 + 1
    assert any("California" in t for t in co2["legend"]) and sum("FRA" in t for t in co2["legend"]) == 1
    # 3: stacked prefill + decode
    assert state["fig-phases"]["traces"] == 2
    assert driver.execute_script("return document.getElementById('fig-phases').layout.barmode") == "stack"
    # 5: the Pareto front is its own trace, over the models no other beats on both axes
    assert "Pareto front" in state["fig-pareto"]["legend"]
    front = driver.execute_script("var gd = document.getElementById('fig-pareto');"
                                  "var t = gd.data.filter(t => t.name === 'Pareto front')[0];"
                                  "return [t.x, t.y, gd.querySelectorAll('.scatterlayer .trace:last-child path.point').length]")
    assert front[2] == len(front[0]) >= 1
    assert front[0] == sorted(front[0]) and front[1] == sorted(front[1])  # cheaper to faster
    # 6: the GPT-4o mini reference lines, labelled
    assert any("$0.60/M" in t for t in state["fig-cost"]["legend"])
    assert any("$0.15/M" in t for t in state["fig-cost"]["legend"])
    # 4: one line per domain
    assert state["fig-timeline"]["lines"] >= 2


def test_timeline_is_the_latest_run_with_its_prefill_boundary(page, report_db):
    driver, _, facts = page
    path, _ = report_db
    with open_store(path) as store:
        run = store.get_run(facts["latest"])
    prefill = next(s for s in run.segments if s.kind == "prefill")
    decode = [s for s in run.segments if s.kind == "decode"]
    title = driver.find_element("css selector", "#fig-timeline").find_element(
        "xpath", "./ancestor::section/h2").text
    assert f"run {facts['latest']}" in title
    xs = driver.execute_script("return document.getElementById('fig-timeline').layout.shapes"
                               ".filter(s => s.type === 'line').map(s => s.x0)")
    assert any(math.isclose(x, prefill.start_s + prefill.duration_s, rel_tol=1e-9) for x in xs)
    assert any(math.isclose(x, decode[-1].start_s + decode[-1].duration_s, rel_tol=1e-9) for x in xs)
    assert len(driver.find_elements("css selector", "#fig-timeline .shapelayer path")) >= 3


def test_table_has_a_row_per_model(page, report_db):
    driver, _, facts = page
    path, _ = report_db
    with open_store(path) as store:
        runs = store.list_runs(limit=None)
    groups = {(r.model_name, r.precision, r.hardware_fingerprint) for r in runs
              if r.status == "completed"}
    rows = driver.find_elements("css selector", "#summary tbody tr")
    assert len(rows) == len(groups) == len(SYNTHETIC) + 2  # six synthetic models + tiny at two precisions
    names = [r.find_element("css selector", "td.model").text for r in rows]
    assert "broken" not in names  # the failed run is not charted
    assert names.count("tiny") == 2
    head = [th.text.lower() for th in driver.find_elements("css selector", "#summary thead th")]
    for col in ("model", "params", "precision", "hardware", "method", "grid intensity", "intensity source",
                "year", "pue", "runs", "95% ci"):
        assert any(col in h for h in head), col


def test_user_strings_render_as_text(page, report):
    driver, _, _ = page
    out, _ = report
    assert driver.execute_script("return window.__alerts") == []
    assert driver.execute_script("return window.__pwned === undefined")
    # only our three script elements exist: plotly.js, the figure JSON, the boot code
    assert driver.execute_script("return document.scripts.length") == 3
    cells = [c.text for c in driver.find_elements("css selector", "#summary td.model")]
    assert XSS in cells and IMG_XSS in cells  # the literal text, in the table
    assert not driver.find_elements("css selector", "#summary img")
    # and in chart labels (category ticks, Pareto labels, hover text come from the same strings)
    ticks = [t for c in driver.execute_script(CHART_STATE) for t in c["xticks"]]
    assert any(XSS in t for t in ticks), ticks
    assert any(t.startswith(IMG_XSS[:30]) for t in ticks), ticks  # long: shortened on the axis
    # hover labels show it whole, as text: hover the bar of the last model in the CO2e chart
    hover = driver.execute_script("""
        var gd = document.getElementById('fig-co2');
        Plotly.Fx.hover(gd, [{curveNumber: 0, pointNumber: gd.data[0].x.length - 1}]);
        return Array.from(gd.querySelectorAll('.hoverlayer text')).map(t => t.textContent).join(' | ');""")
    assert IMG_XSS in hover, hover
    assert not driver.find_elements("css selector", "svg img, svg script, svg foreignObject")
    raw = out.read_text(encoding="utf-8")
    assert XSS not in raw and IMG_XSS not in raw  # escaped everywhere in the file
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw


def test_empty_database_page_says_how_to_record_a_run(browser, tmp_path):
    db = tmp_path / "empty.db"
    open_store(db).close()  # created, migrated, no runs
    out = tmp_path / "empty.html"
    code, stdout, stderr = cli("dashboard", "--db", str(db), "-o", str(out))
    assert code == 0, stderr
    assert stdout.strip() == str(out.resolve())
    log = load(browser, out, wait_rendered=False)
    assert [e for e in log if e["level"] in ("SEVERE", "WARNING")] == [], log
    OUT_DIR.mkdir(exist_ok=True)
    browser.save_screenshot(str(OUT_DIR / "dashboard-empty.png"))
    hint = browser.find_element("css selector", "#empty-hint").text
    assert "greenprof measure" in hint and str(db) in hint
    assert not browser.find_elements("css selector", "div.chart")


# -- tests: no browser needed -----------------------------------------------------------------------
def test_missing_database_is_not_created(tmp_path):
    db = tmp_path / "nothing-here.db"
    out = tmp_path / "r.html"
    code, stdout, stderr = cli("dashboard", "--db", str(db), "-o", str(out))
    assert code == 0, stderr
    assert not db.exists()  # the dashboard only reads
    html = out.read_text(encoding="utf-8")
    assert "greenprof measure" in html and "no database" in stderr


def test_only_failed_runs_give_the_empty_page(tmp_path):
    db = tmp_path / "f.db"
    with open_store(db) as store:
        rid = store.start_run(model_name="x")
        store.finish_run(rid, None, status="failed", error="boom")
    out = tmp_path / "r.html"
    assert cli("dashboard", "--db", str(db), "-o", str(out))[0] == 0
    html = out.read_text(encoding="utf-8")
    assert 'id="empty-hint"' in html and "holds 1 run" in html


@pytest.mark.parametrize("args, needle", [
    (["--region", "Atlantis"], "Atlantis"),
    (["--run", "9999"], "no run 9999"),
    (["--run", "0"], "--run"),
])
def test_user_mistakes_exit_2_with_one_line(report_db, tmp_path, args, needle):
    path, _ = report_db
    out = tmp_path / "r.html"
    code, stdout, stderr = cli("dashboard", "--db", str(path), "-o", str(out), *args)
    assert code == 2 and stdout == ""
    assert needle in stderr and "Traceback" not in stderr
    assert not out.exists()


def test_output_must_be_a_file_in_an_existing_directory(report_db, tmp_path):
    path, _ = report_db
    assert cli("dashboard", "--db", str(path), "-o", str(tmp_path))[0] == 2
    assert cli("dashboard", "--db", str(path), "-o", str(tmp_path / "no" / "r.html"))[0] == 2


def test_run_option_draws_that_run(report_db, tmp_path):
    path, facts = report_db
    out = tmp_path / "r.html"
    tiny_run = facts["tiny"][0]["run_ids"][0]
    assert cli("dashboard", "--db", str(path), "-o", str(out), "--run", str(tiny_run))[0] == 0
    assert f"Power timeline: run {tiny_run} (tiny · fp32)" in out.read_text(encoding="utf-8")


def test_aggregates_match_the_per_run_summaries(report_db):
    """The SQL GROUP BY figures equal `greenprof runs`' per-run figures averaged in Python, and the
    interval equals greenprof.models.runner.summarize's."""
    from greenprof.dashboards import queries
    from greenprof.models.runner import summarize as ci_summary

    path, facts = report_db
    settings = load_settings({"db": str(path)})
    costing = _Costing(settings)
    with open_store(path) as store:
        runs = store.list_runs(limit=None)
        aggs = queries.model_aggregates(store, fallback_intensity=475.0, fallback_price=0.1259)
    by_key: dict[tuple, list[dict]] = {}
    for r in runs:
        s = summarize(r, costing)
        if r.status == "completed" and s["j_per_token"] is not None:
            by_key.setdefault((r.model_name, r.precision, r.hardware_fingerprint), []).append(s)
    assert len(aggs) == len(by_key)
    for a in aggs:
        rows = by_key[(a.model_name, a.precision, a.hardware_fingerprint)]
        jpt = [s["j_per_token"] for s in rows]
        mean, lo, hi = ci_summary(jpt)
        assert a.runs == len(rows)
        assert a.j_per_token == pytest.approx(mean, rel=1e-12)
        if len(rows) > 1:
            assert a.j_per_token_ci95 == pytest.approx((lo, hi), rel=1e-9)
        else:
            assert all(math.isnan(x) for x in a.j_per_token_ci95)
        assert a.tokens_per_s == pytest.approx(sum(s["tokens_per_s"] for s in rows) / len(rows), rel=1e-12)
        assert a.co2e_g_per_1k_own_grid == pytest.approx(
            sum(s["co2e_g_per_1k_tokens"] for s in rows) / len(rows), rel=1e-12)
        assert a.usd_per_m_tokens == pytest.approx(sum(s["usd_per_m_tokens"] for s in rows) / len(rows), rel=1e-12)
        assert a.prefill_j_per_request == pytest.approx(
            sum(s["prefill_energy_j"] for s in rows) / len(rows), rel=1e-12)
        assert a.decode_j_per_request == pytest.approx(
            sum(s["decode_energy_j"] for s in rows) / len(rows), rel=1e-12)
        assert a.method == rows[0]["method"]
        # what-if: the same joules on Poland's grid, at the runs' own PUE
        assert a.co2e_g_per_1k_at(POL.intensity_g_per_kwh) == pytest.approx(
            sum(carbon.co2e_g_per_1k_tokens(s["j_per_token"], POL.intensity_g_per_kwh, s["pue"])
                for s in rows) / len(rows), rel=1e-12)
    # the tiny runs measured by measure_models: same J/token as it reported
    for doc in facts["tiny"]:
        (a,) = [x for x in aggs if x.model_name == "tiny" and x.precision == doc["precision"]]
        assert a.j_per_token == pytest.approx(doc["j_per_token"], rel=1e-9)
        assert a.j_per_token_ci95 == pytest.approx(tuple(doc["j_per_token_ci95"]), rel=1e-9)
        assert a.param_count == doc["params"]


def test_pareto_front():
    from greenprof.dashboards.queries import pareto_front

    pts = [(1.0, 10.0), (2.0, 20.0), (1.5, 5.0), (3.0, 15.0), (0.5, 1.0), (2.0, 25.0), (math.nan, 9.0)]
    assert pareto_front(pts) == [4, 0, 5]


def test_figures_are_valid_plotly(report_db):
    """Every figure dict passes plotly's own validation (property names, values)."""
    import plotly.graph_objects as go

    from greenprof.dashboards import contrasting_grids, figures as F, queries

    path, facts = report_db
    with open_store(path) as store:
        aggs = queries.model_aggregates(store, fallback_intensity=475.0, fallback_price=0.1259)
        tl = queries.run_timeline(store, facts["latest"])
    labels = F.model_labels(aggs)
    assert len(set(labels)) == len(labels)
    grids, _ = contrasting_grids(["USA/CA"])
    colours: dict[str, str] = {}
    for fig in (F.energy_vs_params(aggs, labels, colours), F.co2e_by_grid(aggs, labels, grids),
                F.prefill_decode(aggs, labels), F.power_timeline(tl), F.pareto(aggs, labels, colours),
                F.cost(aggs, labels)):
        assert fig is not None
        go.Figure(fig)  # raises on an invalid property


def test_report_opens_no_socket(report_db, monkeypatch):
    from greenprof.dashboards import build_report

    path, _ = report_db

    def refuse(*a, **k):
        raise AssertionError("the dashboard opened a socket")

    with open_store(path) as store:
        monkeypatch.setattr(socket, "socket", refuse)
        monkeypatch.setattr(socket, "create_connection", refuse)
        html = build_report(store, regions=["DEU"])
    assert "<script src" not in html and "cdn.plot.ly/plotly" not in html
    assert html.count("plotly.js v") == 1  # the library once


def test_importing_the_command_is_cheap():
    code = ("import sys, greenprof.cli_dashboard, greenprof.dashboards; "
            "print(sorted(m for m in ('plotly', 'sqlalchemy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_benchmark_quick_json():
    """Smoke test only: the script runs and reports sane fields. No timing threshold here."""
    script = ROOT / "benchmarks" / "dashboard_speed.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENPROF_")}
    r = subprocess.run([sys.executable, str(script), "--quick", "--json"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # one JSON object, nothing else on stdout
    assert doc["render_s"] > 0 and doc["cli_s"] > 0 and doc["file_bytes"] > doc["plotly_js_bytes"]
    assert doc["rows"]["runs"] == 60 and doc["rows"]["samples"] == 30_000
    assert isinstance(doc["meets_target"], bool) and doc["quick"] is True
    assert "render" in r.stderr


def test_postgresql_aggregates_match(postgres_url):
    """The same SQL on PostgreSQL: aggregates equal the per-run summaries, and a page is built."""
    from greenprof.dashboards import build_report, queries

    with open_store(postgres_url) as store:
        for name, params, scale, repeats in (("pg-small", 100_000_000, 0.5, 3), ("pg-big", 1_000_000_000, 2.0, 2)):
            for r in range(repeats):
                rid = store.start_run(model_name=name, param_count=params, precision="fp32", prompt_tokens=16,
                                      new_tokens=8, region=FRA.region, intensity_g_per_kwh=FRA.intensity_g_per_kwh,
                                      pue=1.1, price_usd_per_kwh=0.2)
                store.finish_run(rid, replay_measurement(scale * (1 + 0.1 * r), token_s=0.004))
        runs = [r for r in store.list_runs(limit=None) if r.model_name in ("pg-small", "pg-big")]
        aggs = {a.model_name: a for a in queries.model_aggregates(store, fallback_intensity=475.0,
                                                                  fallback_price=0.1259)}
        html = build_report(store)
    costing = _Costing(load_settings({}))
    for name in ("pg-small", "pg-big"):
        rows = [summarize(r, costing) for r in runs if r.model_name == name]
        a = aggs[name]
        assert a.runs == len(rows)
        assert a.j_per_token == pytest.approx(sum(s["j_per_token"] for s in rows) / len(rows), rel=1e-9)
        assert a.co2e_g_per_1k_own_grid == pytest.approx(
            sum(s["co2e_g_per_1k_tokens"] for s in rows) / len(rows), rel=1e-9)
    assert 'id="fig-timeline"' in html and "pg-big" in html


def test_batch_sizes_are_separate_groups(tmp_path):
    """J/token at batch 4 is not J/token at batch 1: never averaged together."""
    from greenprof.config import load_settings
    from greenprof.dashboards.queries import model_aggregates
    from greenprof.measure import MeasureRequest, measure_models
    from greenprof.store import open_store

    settings = load_settings({"db": str(tmp_path / "b.db"), "region": "FRA"})
    for batch in (1, 4):
        measure_models(MeasureRequest(models=["tiny"], runs=2, warmup=0, new_tokens=4, prompt_tokens=4,
                                      batch=batch), settings=settings)
    with open_store(str(tmp_path / "b.db")) as store:
        groups = model_aggregates(store, fallback_intensity=475.0, fallback_price=0.1)
    assert sorted((g.batch_size, g.runs) for g in groups) == [(1, 2), (4, 2)]
    from greenprof.dashboards.figures import model_labels

    assert sorted(model_labels(groups)) == ["tiny · fp32", "tiny · fp32 · batch 4"]
