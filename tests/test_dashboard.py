"""`greenprof dashboard` end to end: a real store, a real report, opened in headless Chromium offline.

The database holds real measurements: `measure_models` on the built-in `tiny` model at two
precisions (real onnxruntime, the machine's own energy sources), and runs of the real Meter over
replayed power traces saved through the store API with different parameter counts, one of them
named like an XSS payload, labelled measured, estimated or replayed; a partial run (a domain lost
mid-run), an uncertain run (a counter may have wrapped unseen) and runs stored as before
attribution existed (gross energy only). The report is opened in Debian's Chromium (/usr/bin/chromium, driven by
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

from greenprof import accounting, carbon  # noqa: E402
from greenprof.cli_dashboard import register  # noqa: E402
from greenprof.accounting import Costing as _Costing, run_summary as summarize  # noqa: E402
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


def as_method(m, method: str):
    """The same joules labelled as another source's: "measured" stands in for a RAPL/NVML machine,
    "estimated" for the CPU-time estimate."""
    return dataclasses.replace(m, method={d: method for d in m.method})


def as_measured(m):
    return as_method(m, "measured")


#: synthetic models (name, params, precision, watts scale, seconds per token, repeats, method)
SYNTHETIC = [
    ("SmolLM-135M", 134_515_008, "fp32", 0.5, 0.008, 3, "measured"),
    ("SmolLM-360M", 361_821_120, "fp32", 1.0, 0.004, 3, "measured"),
    ("SmolLM-360M", 361_821_120, "int8", 0.6, 0.008, 2, "estimated"),
    ("SmolLM-1.7B", 1_711_376_384, "int4", 2.0, 0.00005, 2, "replayed"),  # fast: on the Pareto front
    (XSS, 1_000_000_000, "fp32", 1.5, 0.008, 2, "estimated"),
    (IMG_XSS, 2_000_000_000, "int8", 1.8, 0.008, 1, "replayed"),
]
#: runs stored as before attribution existed (gross energy only): a group of their own
GROSS_MODEL = ("SmolLM-360M", 361_821_120, "fp32", 1.1, 0.004, 2, "measured")


def forget_attribution(store, run_ids) -> None:
    """Make runs look stored before schema 0003: no attributed energy, share or scope (the
    migration adds those columns empty). Only the database rows change."""
    from sqlalchemy import update

    from greenprof.store import schema as S

    with store.engine.begin() as conn:
        conn.execute(update(S.run_domains).where(S.run_domains.c.run_id.in_(run_ids))
                     .values(attributed_energy_j=None, share=None, scope=None))
        conn.execute(update(S.segment_energy).where(S.segment_energy.c.run_id.in_(run_ids))
                     .values(attributed_energy_j=None))


def store_run(store, name, params, prec, m, grid=FRA) -> int:
    rid = store.start_run(model_name=name, model_shape=name, param_count=params, precision=prec,
                          prompt_tokens=16, new_tokens=8, region=grid.region,
                          intensity_g_per_kwh=grid.intensity_g_per_kwh, intensity_source=grid.source,
                          intensity_year=grid.year, pue=1.2, price_usd_per_kwh=0.2)
    store.finish_run(rid, m)
    return rid


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
        for k, (name, params, prec, scale, token_s, repeats, method) in enumerate(SYNTHETIC):
            grid = POL if k % 2 else FRA
            for r in range(repeats):
                m = as_method(replay_measurement(scale * (1 + 0.05 * r), token_s=token_s), method)
                store_run(store, name, params, prec, m, grid)
        name, params, prec, scale, token_s, repeats, method = GROSS_MODEL
        gross = [store_run(store, name, params, prec,
                           as_method(replay_measurement(scale * (1 + 0.05 * r), token_s=token_s), method))
                 for r in range(repeats)]
        forget_attribution(store, gross)
        # a SmolLM-135M run that lost its GPU mid-run: ten times the energy it would have had, so
        # averaging it in would show; it must be left out of its group and listed
        lost = dataclasses.replace(as_measured(replay_measurement(5.0)), lost={"gpu-0": "GPU fell off the bus"})
        partial = store_run(store, "SmolLM-135M", 134_515_008, "fp32", lost)
        # a SmolLM-360M fp32 run whose package counter may have wrapped unseen: averaged, and marked
        unsure = dataclasses.replace(as_measured(replay_measurement(1.1, token_s=0.004)),
                                     uncertain={"cpu-package-0": "no read for 50 s: a wrap may be missed"})
        uncertain = store_run(store, "SmolLM-360M", 361_821_120, "fp32", unsure)
        failed = store.start_run(model_name="broken", precision="fp32")
        store.finish_run(failed, None, status="failed", error="model file not found")
        # the latest completed measure run: the one drawn by default
        latest = store.start_run(model_name="SmolLM-135M", model_shape="SmolLM-135M", param_count=134_515_008,
                                 precision="fp32", prompt_tokens=16, new_tokens=8, region=FRA.region,
                                 intensity_g_per_kwh=FRA.intensity_g_per_kwh, intensity_source=FRA.source,
                                 intensity_year=FRA.year, pue=1.2, price_usd_per_kwh=0.2)
        store.finish_run(latest, as_measured(replay_measurement(0.5, tokens=24, token_s=0.01)))
    return path, {"tiny": measured_tiny, "latest": latest, "failed": failed, "gross": gross,
                  "partial": partial, "uncertain": uncertain}


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
    # 1: log-log, a series per precision, method and basis, CI error bars; the legend says what
    # each series' energy is
    params = state["fig-params"]
    assert params["points"] >= 8 and params["errorbars"] >= 5
    legend = set(params["legend"])
    assert {"fp32 · measured energy (attributed)", "fp32 · estimated energy (attributed)",
            "int8 · estimated energy (attributed)", "int4 · replayed energy (attributed)",
            "fp32 · measured energy (gross)"} <= legend
    assert not any("mixed" in t for t in legend)
    layout = driver.execute_script("var gd = document.getElementById('fig-params');"
                                   "return [gd.layout.xaxis.type, gd.layout.yaxis.type,"
                                   " gd.data.map(t => t.marker ? t.marker.symbol : null)]")
    assert layout[:2] == ["log", "log"]
    assert "circle" in layout[2] and "circle-open" in layout[2]  # filled = measured, hollow = estimate
    # 2: one bar series for the stored grid plus the six contrasting grids and USA/CA (FRA once)
    co2 = state["fig-co2"]
    assert co2["traces"] == 1 + 6 + 1
    assert any("California" in t for t in co2["legend"]) and sum("FRA" in t for t in co2["legend"]) == 1
    # 3: stacked phases: prefill and decode always (setup and teardown where a run has them)
    assert {"prefill (prompt)", "decode (generation)"} <= set(state["fig-phases"]["legend"])
    assert 2 <= state["fig-phases"]["traces"] <= 4
    assert driver.execute_script("return document.getElementById('fig-phases').layout.barmode") == "stack"
    # 5: the Pareto front is its own trace, over the models no other beats on both axes
    assert "Pareto front" in state["fig-pareto"]["legend"]
    front = driver.execute_script("var gd = document.getElementById('fig-pareto');"
                                  "var t = gd.data.filter(t => t.name === 'Pareto front')[0];"
                                  "return [t.x, t.y, gd.querySelectorAll('.scatterlayer .trace:last-child path.point').length]")
    assert front[2] == len(front[0]) >= 1
    assert front[0] == sorted(front[0]) and front[1] == sorted(front[1])  # cheaper to faster
    # 6: the GPT-4o mini reference lines, labelled; a bar series per kind of energy
    assert {"electricity, measured energy (attributed)", "electricity, estimated energy (attributed)",
            "electricity, measured energy (gross)"} <= set(state["fig-cost"]["legend"])
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
    groups = {(r.model_name, r.precision, r.batch_size, r.hardware_fingerprint, accounting.record_basis(r))
              for r in runs if r.status == "completed" and not any(d.lost_reason for d in r.domains.values())}
    rows = driver.find_elements("css selector", "#summary tbody tr")
    # six synthetic models, tiny at two precisions, and the runs stored before attribution
    assert len(rows) == len(groups) == len(SYNTHETIC) + 2 + 1
    names = [r.find_element("css selector", "td.model").text for r in rows]
    assert "broken" not in names  # the failed run is not charted
    assert names.count("tiny") == 2
    head = [th.text.lower() for th in driver.find_elements("css selector", "#summary thead th")]
    for col in ("model", "params", "precision", "hardware", "method", "basis", "grid intensity",
                "intensity source", "year", "pue", "runs", "95% ci"):
        assert any(col in h for h in head), col
    # every row says its method and basis; the gross runs are their own row, labelled gross
    for r in rows:
        assert r.find_element("css selector", "td.method").text in ("measured", "estimated", "replayed", "mixed")
        assert r.find_element("css selector", "td.basis").text in ("attributed", "gross")
    gross = [r for r in rows if r.find_element("css selector", "td.basis").text == "gross"]
    assert [(r.find_element("css selector", "td.model").text, r.find_element("css selector", "td.runs").text)
            for r in gross] == [("SmolLM-360M", str(len(facts["gross"])))]


def test_partial_and_uncertain_runs_are_marked_and_not_averaged_silently(page):
    """The partial run is left out of its group, and the page says so three times: in the notes,
    in its group's row, and in the list of flagged runs. The uncertain run is averaged and marked."""
    driver, _, facts = page
    notes = driver.find_element("css selector", "ul.notes").text
    assert "1 partial run(s) left out of every average" in notes and str(facts["partial"]) in notes
    assert "uncertain" in notes and str(facts["uncertain"]) in notes
    assert "1 partial run left out" in driver.find_element("css selector", "header").text
    rows = {(r.find_element("css selector", "td.model").text, r.find_element("css selector", "td.basis").text,
             r.find_elements("css selector", "td")[2].text.split()[0]): r
            for r in driver.find_elements("css selector", "#summary tbody tr")}
    small = rows[("SmolLM-135M", "attributed", "fp32")].find_element("css selector", "td.runs").text
    # three synthetic runs and the latest one; the partial run is left out
    assert small.splitlines() == ["4", "1 partial left out"]
    mid = rows[("SmolLM-360M", "attributed", "fp32")].find_element("css selector", "td.runs").text
    assert mid.splitlines() == ["4", "1 uncertain"]  # averaged, and marked
    flagged = {int(r.get_attribute("data-run-id")): r for r in
               driver.find_elements("css selector", "#flagged-runs tbody tr")}
    assert sorted(flagged) == sorted([facts["partial"], facts["uncertain"]])
    p = flagged[facts["partial"]].text
    assert "partial" in p and "gpu-0 lost: GPU fell off the bus" in p and "left out" in p
    assert "measured energy (attributed)" in p
    u = flagged[facts["uncertain"]].text
    assert "uncertain" in u and "cpu-package-0 uncertain" in u and "yes" in u
    # hovering the uncertain group's point says so
    hover = driver.execute_script("""
        var gd = document.getElementById('fig-params');
        for (var c = 0; c < gd.data.length; c++) {
          var i = (gd.data[c].customdata || []).findIndex(cd => cd[4] === 'SmolLM-360M · fp32');
          if (i >= 0) { Plotly.Fx.hover(gd, [{curveNumber: c, pointNumber: i}]); break; }
        }
        return Array.from(gd.querySelectorAll('.hoverlayer text')).map(t => t.textContent).join(' | ');""")
    assert "1 of 4 runs uncertain" in hover and "measured energy (attributed)" in hover, hover


def test_cost_bars_say_what_energy_they_are(page):
    """An estimated model's cost bar is in the "estimated energy" series and nowhere else."""
    driver, _, _ = page
    traces = driver.execute_script("return document.getElementById('fig-cost').data"
                                   ".filter(t => t.type === 'bar').map(t => [t.name, t.x, t.y])")
    bar_of: dict[str, list[str]] = {}
    for name, xs, ys in traces:
        for x, y in zip(xs, ys):
            if y is not None:
                bar_of.setdefault(x, []).append(name)
    assert all(len(v) == 1 for v in bar_of.values())  # one bar per model
    assert bar_of["SmolLM-360M · int8"] == ["electricity, estimated energy (attributed)"]
    assert bar_of["SmolLM-1.7B · int4"] == ["electricity, replayed energy (attributed)"]
    assert bar_of["SmolLM-360M · fp32"] == ["electricity, measured energy (attributed)"]
    assert bar_of["SmolLM-360M · fp32 · gross"] == ["electricity, measured energy (gross)"]
    ticks = driver.execute_script("return Array.from(document.querySelectorAll('#fig-cost .xtick text'))"
                                  ".map(t => t.textContent)")
    assert any(t.startswith("SmolLM-360M · int8") and t.endswith("estimated energy (attributed)") for t in ticks)
    caption = driver.find_element("css selector", "#fig-cost").find_element(
        "xpath", "./ancestor::section/p").text
    assert "Measured energy" not in caption


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


def test_output_through_a_link_or_into_a_pipe_is_never_replaced(report_db, tmp_path):
    """-o writes through a symlink and into a FIFO (a device the same way): replacing them with a
    regular file once turned /dev/null into one."""
    import threading

    path, _ = report_db
    real = tmp_path / "real.html"
    real.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(real)
    assert cli("dashboard", "--db", str(path), "-o", str(link))[0] == 0
    assert link.is_symlink() and "<html" in real.read_text(encoding="utf-8")
    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert cli("dashboard", "--db", str(path), "-o", str(fifo))[0] == 0
    reader.join(60)
    assert fifo.is_fifo() and got and b"<html" in got[0]


def test_an_output_name_too_long_is_one_line(report_db, tmp_path):
    path, _ = report_db
    code, _, stderr = cli("dashboard", "--db", str(path), "-o", str(tmp_path / ("a" * 300 + ".html")))
    assert code == 2 and "File name too long" in stderr and "Traceback" not in stderr


def test_run_option_draws_that_run(report_db, tmp_path):
    path, facts = report_db
    out = tmp_path / "r.html"
    tiny_run = facts["tiny"][0]["run_ids"][0]
    assert cli("dashboard", "--db", str(path), "-o", str(out), "--run", str(tiny_run))[0] == 0
    assert f"Power timeline: run {tiny_run} (tiny · fp32)" in out.read_text(encoding="utf-8")


def test_the_timeline_of_a_run_that_did_not_complete_says_so(tmp_path):
    from greenprof.store import open_store

    db = tmp_path / "d.db"
    with open_store(str(db)) as store:
        store_run(store, "tiny", 106_816, "fp32", replay_measurement(0.5))  # a page needs a completed run
        rid = store.start_run(model_name="tiny", precision="fp32", prompt_tokens=16, new_tokens=8)
        store.finish_run(rid, replay_measurement(0.5), status="interrupted")
    out = tmp_path / "r.html"
    assert cli("dashboard", "--db", str(db), "-o", str(out), "--run", str(rid))[0] == 0
    assert f"Power timeline: run {rid} (tiny · fp32) [interrupted: it covers part of the work]" in \
        out.read_text(encoding="utf-8")


def test_aggregates_match_the_per_run_summaries(report_db):
    """The model figures equal `greenprof runs`' per-run figures (greenprof.cli_runs.summarize)
    averaged in Python, the interval is greenprof.accounting.interval95 over the runs' J per
    token, and partial runs are left out."""
    from greenprof.dashboards import queries

    path, facts = report_db
    settings = load_settings({"db": str(path)})
    costing = _Costing(settings)
    with open_store(path) as store:
        runs = store.list_runs(limit=None)
        aggs = queries.model_aggregates(store, fallback_intensity=475.0, fallback_price=0.1259)
    by_key: dict[tuple, list[dict]] = {}
    partial: dict[tuple, list[int]] = {}
    for r in runs:
        s = summarize(r, costing)
        key = (r.model_name, r.precision, r.batch_size, r.hardware_fingerprint, s["basis"])
        if r.status == "completed" and s["partial"]:
            partial.setdefault(key, []).append(r.id)
        elif r.status == "completed" and s["j_per_token"] is not None:
            by_key.setdefault(key, []).append(s)
    assert [(k[0], k[1], k[4], v) for k, v in partial.items()] == [
        ("SmolLM-135M", "fp32", "attributed", [facts["partial"]])]
    assert len(aggs) == len(by_key)
    for a in aggs:
        key = (a.model_name, a.precision, a.batch_size, a.hardware_fingerprint, a.basis)
        rows = by_key[key]
        assert {s["basis"] for s in rows} == {a.basis}  # one basis per group
        jpt = [s["j_per_token"] for s in rows]
        iv = accounting.interval95(jpt)
        assert a.runs == len(rows) and a.run_ids == sorted(s["id"] for s in rows)
        assert a.interval == iv and a.j_per_token == iv.mean
        assert a.j_per_token == pytest.approx(sum(jpt) / len(jpt), rel=1e-12)
        if len(rows) > 1:
            assert a.j_per_token_ci95 == [iv.lo, iv.hi] and 0 < iv.lo < a.j_per_token < iv.hi
            assert iv.method == "lognormal-cox"
        else:
            assert a.j_per_token_ci95 is None and a.interval.lo is None and a.interval.hi is None
        assert a.partial_run_ids == partial.get(key, [])
        assert a.uncertain_run_ids == sorted(s["id"] for s in rows if s["uncertain"])
        assert a.method == accounting.collapse_methods(m for s in rows for m in s["methods"].values())
        assert a.tokens_per_s == pytest.approx(sum(s["tokens_per_s"] for s in rows) / len(rows), rel=1e-12)
        assert a.co2e_g_per_1k_own_grid == pytest.approx(
            sum(s["co2e_g_per_1k_tokens"] for s in rows) / len(rows), rel=1e-12)
        assert a.usd_per_m_tokens == pytest.approx(sum(s["usd_per_m_tokens"] for s in rows) / len(rows), rel=1e-12)
        for phase in ("prefill", "decode"):
            assert a.phase_j_per_request[phase] == pytest.approx(
                sum(s[f"{phase}_energy_j"] or 0.0 for s in rows) / len(rows), rel=1e-12)
        assert math.fsum(a.phase_j_per_request.values()) == pytest.approx(
            sum(s["j_per_request"] for s in rows) / len(rows), rel=1e-12)
        # what-if: the same joules on Poland's grid, at the runs' own PUE
        assert a.co2e_g_per_1k_at(POL.intensity_g_per_kwh) == pytest.approx(
            sum(accounting.co2e_g_per_1k_tokens(s["j_per_token"], POL.intensity_g_per_kwh, s["pue"])
                for s in rows) / len(rows), rel=1e-12)
    # the tiny runs measured by measure_models: same J/token and interval as it reported
    for doc in facts["tiny"]:
        (a,) = [x for x in aggs if x.model_name == "tiny" and x.precision == doc["precision"]]
        assert a.basis == doc["basis"] == "attributed"
        assert a.j_per_token == pytest.approx(doc["j_per_token"], rel=1e-9)
        assert a.j_per_token_ci95 == pytest.approx(doc["j_per_token_ci95"], rel=1e-9)
        assert a.param_count == doc["params"]
    # the runs stored before attribution are a gross group of their own, never averaged with the
    # attributed runs of the same model
    (g,) = [a for a in aggs if a.basis == "gross"]
    assert g.run_ids == sorted(facts["gross"]) and g.energy_label == "measured energy (gross)"
    (att,) = [a for a in aggs if a.model_name == "SmolLM-360M" and a.precision == "fp32" and a.basis == "attributed"]
    assert not set(att.run_ids) & set(g.run_ids) and facts["uncertain"] in att.uncertain_run_ids


def test_interval_never_negative_and_none_for_one_run(tmp_path):
    """Two runs 4x apart: a Student-t interval would go below zero; accounting.interval95's
    log-normal one does not. One run: no interval, and the table and the chart say so."""
    from greenprof.dashboards import build_report, figures as F, queries

    db = tmp_path / "iv.db"
    with open_store(db) as store:
        for scale in (0.5, 2.0):
            store_run(store, "spread", 100_000_000, "fp32", replay_measurement(scale))
        store_run(store, "single", 200_000_000, "fp32", replay_measurement(1.0))
        aggs = {a.model_name: a for a in queries.model_aggregates(store, fallback_intensity=475.0,
                                                                  fallback_price=0.1)}
        html = build_report(store, settings=load_settings({"db": str(db)}))
    spread, single = aggs["spread"], aggs["single"]
    values = [v for v, _ in spread.jpt_pue]
    assert spread.interval == accounting.interval95(values)
    mean, sd = spread.j_per_token, (sum((v - spread.j_per_token) ** 2 for v in values) / 1) ** 0.5
    assert mean - accounting.t_quantile(0.975, 1) * sd / math.sqrt(2) < 0  # what Student-t would give
    assert 0 < spread.interval.lo < spread.j_per_token < spread.interval.hi
    assert single.runs == 1 and single.interval.lo is None and single.j_per_token_ci95 is None
    fig = F.energy_vs_params([spread, single], F.model_labels([spread, single]), {})
    (trace,) = fig["data"]
    assert trace["error_y"]["arrayminus"][1] == 0.0 and trace["error_y"]["array"][1] == 0.0
    assert 0 < trace["error_y"]["arrayminus"][0] < spread.j_per_token  # the bar stays above zero
    assert "(1 run: no interval)" in html


def test_estimated_only_report_never_says_measured(tmp_path):
    """A store of estimated runs: the cost chart says "estimated energy", never "measured energy"."""
    from greenprof.dashboards import build_report, contrasting_grids, figures as F, queries

    db = tmp_path / "est.db"
    with open_store(db) as store:
        for r in range(2):
            store_run(store, "est", 100_000_000, "fp32", as_method(replay_measurement(1 + 0.1 * r), "estimated"))
        aggs = queries.model_aggregates(store, fallback_intensity=475.0, fallback_price=0.1)
        html = build_report(store, settings=load_settings({"db": str(db)}))
    labels = F.model_labels(aggs)
    fig = F.cost(aggs, labels)
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert [t["name"] for t in bars] == ["electricity, estimated energy (attributed)"]
    grids, _ = contrasting_grids()
    for f in (fig, F.co2e_by_grid(aggs, labels, grids), F.prefill_decode(aggs, labels),
              F.energy_vs_params(aggs, labels, {}), F.pareto(aggs, labels, {})):
        text = json.dumps(f)
        assert "estimated energy (attributed)" in text and "measured energy" not in text
    assert "measured energy" not in html.split("<script>")[0].lower()  # nor anywhere on the page
    assert "estimated energy (attributed)" in html


def test_only_partial_runs_still_say_why_nothing_is_averaged(tmp_path):
    """Every completed run partial: no model aggregate, a page that lists the runs and says why."""
    from greenprof.dashboards import build_report

    db = tmp_path / "p.db"
    with open_store(db) as store:
        rid = store_run(store, "lossy", 100_000_000, "fp32",
                        dataclasses.replace(replay_measurement(1.0), lost={"gpu-0": "GPU lost"}))
        html = build_report(store, settings=load_settings({"db": str(db)}))
    assert 'id="empty-hint"' not in html
    assert "No complete run to aggregate" in html and f'data-run-id="{rid}"' in html
    assert "1 partial run(s) left out of every average" in html


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
    from greenprof.ladder import api_references

    fits = queries.size_fits(aggs, intensity_g_per_kwh=475.0, pue=1.0, price_usd_per_kwh=0.1259)
    assert fits  # the fp32 measured group has two sizes
    refs, _ = api_references(475.0, "WORLD")
    for fig in (F.energy_vs_params(aggs, labels, colours), F.energy_vs_params(aggs, labels, colours, fits, refs),
                F.co2e_by_grid(aggs, labels, grids),
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
        assert a.interval == accounting.interval95([s["j_per_token"] for s in rows])
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


# -- J per token vs size: the ladder's chart ----------------------------------------------------------
#: a measured SmolLM ladder (names, parameters, watts scale): J/token rises with size
LADDER = (("smollm-135m", 134_515_008, 0.4), ("smollm-360m", 361_821_120, 0.9), ("smollm-1.7b", 1_711_376_384, 3.5))


@pytest.fixture(scope="module")
def ladder_report(tmp_path_factory):
    """A store holding a measured three-size ladder (two runs each), and its report."""
    from greenprof.dashboards import build_report, queries

    db = tmp_path_factory.mktemp("ladder-dash") / "ladder.db"
    with open_store(db) as store:
        for name, params, scale in LADDER:
            for r in range(2):
                store_run(store, name, params, "fp32", as_measured(replay_measurement(scale * (1 + 0.04 * r))))
        aggs = queries.model_aggregates(store, fallback_intensity=475.0, fallback_price=0.1259)
        html = build_report(store, settings=load_settings({"db": str(db)}))
    out = db.parent / "report.html"
    out.write_text(html, encoding="utf-8")
    return out, aggs


def test_size_chart_reads_like_the_question(browser, ladder_report):
    """Human size ticks, each point named, the fit line with its band, the seed shapes hollow and
    dashed (extrapolated), GPT-4o mini as a band, and the headline ratio at the top."""
    from greenprof.dashboards import queries
    from greenprof.ladder import ecologits_version

    out, aggs = ladder_report
    log = load(browser, out)
    assert [e for e in log if e["level"] in ("SEVERE", "WARNING")] == [], log
    el = browser.find_element("id", "fig-params")
    browser.execute_script("arguments[0].scrollIntoView()", el)
    OUT_DIR.mkdir(exist_ok=True)
    assert el.screenshot(str(OUT_DIR / "dashboard-ladder.png"))
    gd = browser.execute_script("""
        var gd = document.getElementById('fig-params');
        return {xticks: Array.from(gd.querySelectorAll('.xtick text')).map(t => t.textContent),
                labels: Array.from(gd.querySelectorAll('.textpoint text')).map(t => t.textContent),
                traces: gd.data.map(t => ({name: t.name, mode: t.mode, fill: t.fill || null, x: t.x, y: t.y,
                                           symbol: t.marker ? t.marker.symbol : null,
                                           dash: t.line ? t.line.dash || null : null}))};""")
    assert {"100M", "1B", "10B"} <= set(gd["xticks"])
    assert not any("10" in t and ("^" in t or "×" in t or "e+" in t) for t in gd["xticks"]), gd["xticks"]
    assert {"smollm-135m", "smollm-360m", "smollm-1.7b", "phi-3-mini", "llama-2-7b", "mistral-nemo-12b"} \
        <= set(gd["labels"])
    # the fit: accounting.fit_power_law over the three measured means
    fit = queries.size_fits(aggs, intensity_g_per_kwh=475.0, pue=1.0, price_usd_per_kwh=0.1259)[0].fit
    (line,) = [t for t in gd["traces"] if (t["name"] or "").startswith("fp32 fit: J/token")]
    assert f"params^{fit.exponent:.2f} [{fit.exponent_ci95[0]:.2f}, {fit.exponent_ci95[1]:.2f}]" in line["name"]
    assert line["mode"] == "lines" and line["dash"] is None  # solid over the measured sizes
    assert any(t["fill"] == "tonexty" and "prediction band" in (t["name"] or "") for t in gd["traces"])
    assert any(t["dash"] == "dash" and t["mode"] == "lines" for t in gd["traces"])  # the line beyond them
    # the seed shapes: hollow diamonds with dashed intervals, apart from the measured points
    (seeds,) = [t for t in gd["traces"] if "extrapolated from the fit" in (t["name"] or "")]
    assert seeds["symbol"] == "diamond-open"
    measured_x = {x for t in gd["traces"] if (t["name"] or "").endswith("measured energy (attributed)")
                  for x in t["x"]}
    assert measured_x == {p for _, p, _ in LADDER} and not measured_x & set(seeds["x"])
    from greenprof.accounting import predict

    assert seeds["y"] == pytest.approx([predict(fit, x).j_per_token for x in seeds["x"]])
    # GPT-4o mini: a filled band, never a marker
    refs = [t for t in gd["traces"] if (t["name"] or "").startswith("gpt-4o-mini API")]
    if ecologits_version() is not None:
        (band,) = refs
        assert band["fill"] == "toself" and band["mode"] == "lines" and band["symbol"] is None
        assert f"EcoLogits {ecologits_version()}" in band["name"]
    else:
        assert refs == []
    # the headline: the measured smallest-vs-largest ratio, first thing on the page
    head = browser.find_element("css selector", "main > :first-child")
    assert head.get_attribute("id") == "headline"
    by = {a.model_name: a for a in aggs}
    ratio = by["smollm-1.7b"].j_per_token / by["smollm-135m"].j_per_token
    assert head.text.startswith("Measured on ")
    assert f"(fp32, measured energy (attributed)): smollm-1.7b (1.71B parameters) takes {ratio:.3g}x the " \
           "energy per generated token of smollm-135m (135M)" in head.text
    assert f"params^{fit.exponent:.2f}" in head.text


def test_without_ecologits_the_chart_has_no_band_and_the_page_says_how(tmp_path, monkeypatch):
    from greenprof.dashboards import build_report

    for mod in [k for k in sys.modules if k == "ecologits" or k.startswith("ecologits.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "ecologits", None)  # import ecologits -> ImportError
    db = tmp_path / "noeco.db"
    with open_store(db) as store:
        for name, params, scale in LADDER[:2]:
            store_run(store, name, params, "fp32", as_measured(replay_measurement(scale)))
        html = build_report(store, settings=load_settings({"db": str(db)}))
    assert "gpt-4o-mini: price only; for its energy and CO2e estimated by EcoLogits: " \
           "pip install &#x27;greenprof[ecologits]&#x27;" in html
    figs = json.loads(html.split('id="greenprof-figures">', 1)[1].split("</script>", 1)[0])
    assert not any(t.get("fill") == "toself" for t in figs["fig-params"]["data"])
    assert any("$0.60/M" in t.get("name", "") for t in figs["fig-cost"]["data"])  # the price stays


def test_one_size_under_several_names_is_one_fit_point_and_kinds_are_never_averaged(tmp_path):
    """Three names for the 135M model and one 360M: a fit over two sizes (not four), and a
    server's requests of the same model stay a group of their own, labelled serve."""
    from greenprof.dashboards import queries
    from greenprof.dashboards.figures import model_labels
    from greenprof.store import open_store

    with open_store(str(tmp_path / "d.db")) as store:
        for name in ("alias-a", "alias-b", "alias-c"):
            store_run(store, name, 134_515_008, "fp32", as_measured(replay_measurement(0.5)))
        store_run(store, "SmolLM-360M", 361_821_120, "fp32", as_measured(replay_measurement(1.0)))
        m = as_measured(replay_measurement(0.5))
        rid = store.start_run(kind="serve", model_name="alias-a", param_count=134_515_008, precision="fp32",
                              prompt_tokens=5, new_tokens=8, pue=1.2, price_usd_per_kwh=0.2)
        store.finish_run(rid, m)
        models = queries.model_aggregates(store, fallback_intensity=475.0, fallback_price=0.2)
    alias_a = [x for x in models if x.model_name == "alias-a"]
    assert sorted(x.kind for x in alias_a) == ["measure", "serve"] and all(x.runs == 1 for x in alias_a)
    labels = dict(zip([id(x) for x in models], model_labels(models)))
    assert [labels[id(x)] for x in alias_a if x.kind == "serve"] == ["alias-a · fp32 · serve"]
    (fit,) = queries.size_fits(models, intensity_g_per_kwh=475.0, pue=1.0, price_usd_per_kwh=0.2)
    assert [x.param_count for x in fit.models] == [134_515_008, 361_821_120]
    assert all(x.kind == "measure" for x in fit.models)


def test_a_database_without_runs_gives_the_report_that_says_so(tmp_path):
    """An empty file (or a server database without greenprof's tables): the report, exit 0."""
    db = tmp_path / "empty.db"
    db.write_bytes(b"")
    out = tmp_path / "r.html"
    code, stdout, stderr = cli("dashboard", "--db", str(db), "-o", str(out))
    assert code == 0 and "holds no greenprof runs yet" in out.read_text(encoding="utf-8"), stderr
    assert db.stat().st_size == 0  # read only: nothing was created in it
    code, _, stderr = cli("dashboard", "--db", str(db), "-o", str(out), "--run", "1")
    assert code == 2 and "holds no greenprof runs yet" in stderr


def test_measured_and_estimated_runs_of_one_model_are_never_averaged_together(tmp_path):
    """A model measured with RAPL and, on the same host, with the CPU-time estimate was one group
    labelled "mixed", its J/token the mean of a measurement and an estimate 8x apart."""
    from greenprof.dashboards import queries

    db = tmp_path / "mix.db"
    with open_store(db) as store:
        ids = {"measured": [], "estimated": []}
        for method, scale in (("measured", 1.0), ("measured", 1.1), ("estimated", 0.12), ("estimated", 0.13)):
            ids[method].append(store_run(store, "one", 100_000_000, "fp32",
                                         as_method(replay_measurement(scale), method)))
        aggs = [a for a in queries.model_aggregates(store, fallback_intensity=475.0, fallback_price=0.1)
                if a.model_name == "one"]
    assert sorted((a.method, a.run_ids) for a in aggs) == [("estimated", sorted(ids["estimated"])),
                                                           ("measured", sorted(ids["measured"]))]
    assert all(a.method != "mixed" for a in aggs)
    from greenprof.dashboards import figures as F

    assert sorted(F.model_labels(aggs)) == ["one · fp32 · estimated", "one · fp32 · measured"]
