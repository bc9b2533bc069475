"""A real Prometheus (Debian's `prometheus` package, installed by .ci/run) scrapes `greenprof serve`
and `greenprof exporter` every second, both on a fake powercap tree whose package counter moves
at a known power. PromQL must see that power, and the tokens the test asked for."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse

import openai
import pytest

from powercap_fake import CounterWriter, build
from serve_proc import Proc, env_with, free_port, http

POWER_W = 20.0
DOMAIN = "cpu-package-0"
PROMETHEUS = shutil.which("prometheus")


def query(prom: str, q: str) -> list[dict]:
    status, doc, _ = http("GET", f"{prom}/api/v1/query?query={urllib.parse.quote(q)}")
    assert status == 200 and doc["status"] == "success", doc
    return doc["data"]["result"]


@pytest.fixture
def tiny_built():
    from greenprof.models import builder

    builder.build("tiny", "fp32")


@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is not installed (apt-get install prometheus; "
                                               ".ci/run installs it)")
def test_prometheus_scrapes_serve_and_exporter(tmp_path, tiny_built):
    pc = build(tmp_path / "pc", sockets=1, dram=False)
    env = env_with(GREENPROF_POWERCAP_ROOT=str(pc.root))
    serve_port, exp_port, prom_port = free_port(), free_port(), free_port()
    procs: list[Proc] = []
    prom = None
    with CounterWriter(pc.zone("intel-rapl:0"), POWER_W):
        try:
            serve = Proc(["serve", "tiny", "--port", str(serve_port), "--db", str(tmp_path / "s.db")], env,
                         tmp_path / "serve.err")
            procs.append(serve)
            exporter = Proc(["exporter", "--port", str(exp_port)], env, tmp_path / "exporter.err")
            procs.append(exporter)
            serve.wait_http(f"http://127.0.0.1:{serve_port}/health")
            exporter.wait_http(f"http://127.0.0.1:{exp_port}/metrics")
            config = tmp_path / "prometheus.yml"
            config.write_text(json.dumps({  # YAML is a superset of JSON
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
                "scrape_configs": [
                    {"job_name": "serve", "static_configs": [{"targets": [f"127.0.0.1:{serve_port}"]}]},
                    {"job_name": "exporter", "static_configs": [{"targets": [f"127.0.0.1:{exp_port}"]}]},
                ]}))
            prom_log = open(tmp_path / "prometheus.log", "wb")
            prom = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                     f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                                    stdout=prom_log, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{prom_port}"
            t_start = time.monotonic()
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{serve_port}/v1", api_key="unused", max_retries=0)
            asked, prompt_tokens = 0, 0
            for k, n in enumerate((5, 17, 40)):
                r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"q{k}"}],
                                                   max_tokens=n, extra_body={"ignore_eos": True})
                assert r.usage.completion_tokens == n
                asked += n
                prompt_tokens += r.usage.prompt_tokens
            # The 10 s rate window must be full of successful scrapes of both targets: a target
            # whose first scrapes came late (a slow machine) has a series younger than the window,
            # and rate() over it extrapolates only half a scrape interval past its first sample.
            series = f'greenprof_energy_joules_total{{domain="{DOMAIN}"}}'
            rates: list[dict] = []
            deadline = t_start + 90
            while time.monotonic() < deadline:
                time.sleep(1)
                if prom.poll() is not None:
                    raise AssertionError(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")
                try:
                    full = query(url, f"count_over_time({series}[10s]) >= 9")
                    steady = query(url, "min_over_time(up[11s]) == 1")
                except (AssertionError, OSError):
                    continue
                if time.monotonic() - t_start < 15 or len(full) < 2 or len(steady) < 2:
                    continue
                rates = query(url, f"rate({series}[10s])")
                if len(rates) == 2:
                    break

            def diagnosis() -> str:
                try:
                    raw = query(url, f"{series}[12s]")
                    took = query(url, "scrape_duration_seconds")
                except (AssertionError, OSError) as e:
                    raw, took = f"(query failed: {e})", ""
                return (f"rates={rates}\nsamples={raw}\nscrape_duration_seconds={took}\n"
                        + "\n".join(f"--- {p.log.name}:\n{p.stderr()[-1500:]}" for p in procs))

            by_job = {r["metric"]["job"]: float(r["value"][1]) for r in rates}
            assert set(by_job) == {"serve", "exporter"}, diagnosis()
            for job, watts in by_job.items():
                assert watts == pytest.approx(POWER_W, rel=0.05), (job, watts, diagnosis())
            assert {r["metric"]["method"] for r in rates} == {"measured"}
            out = query(url, 'greenprof_model_tokens_total{type="output"}')
            assert [float(r["value"][1]) for r in out] == [asked]
            inp = query(url, 'greenprof_model_tokens_total{type="input"}')
            assert [float(r["value"][1]) for r in inp] == [prompt_tokens]
            done = query(url, 'greenprof_requests_total{status="completed"}')
            assert [float(r["value"][1]) for r in done] == [3]
            power = query(url, f'greenprof_power_watts{{domain="{DOMAIN}",job="exporter"}}')
            assert float(power[0]["value"][1]) == pytest.approx(POWER_W, rel=0.1)
        finally:
            if prom is not None:
                prom.terminate()
                try:
                    prom.wait(30)
                except subprocess.TimeoutExpired:
                    prom.kill()
                    prom.wait()
            codes = [p.terminate() for p in procs]
    for p, code in zip(procs, codes):
        assert code == 0, p.stderr()
        assert "Traceback" not in p.stderr()


def test_exporter_on_a_fake_counter_and_its_mistakes(tmp_path):
    """The exporter alone: two scrapes a second apart see the counter's power; a busy port and
    an unknown domain are one line each."""
    from prometheus_client.parser import text_string_to_metric_families

    pc = build(tmp_path / "pc", sockets=1, dram=False)
    env = env_with(GREENPROF_POWERCAP_ROOT=str(pc.root))
    port = free_port()

    def energy() -> tuple[float, float]:
        t = time.monotonic()
        status, text, _ = http("GET", f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        vals = {s.labels.get("domain"): s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "greenprof_energy_joules_total"}
        return t, vals[DOMAIN]

    with CounterWriter(pc.zone("intel-rapl:0"), POWER_W):
        p = Proc(["exporter", "--port", str(port)], env, tmp_path / "exp.err")
        try:
            p.wait_http(f"http://127.0.0.1:{port}/metrics")
            t0, e0 = energy()
            time.sleep(2.0)
            t1, e1 = energy()
            busy = Proc(["exporter", "--port", str(port)], env, tmp_path / "busy.err")
            assert busy.proc.wait(60) == 1
            busy.terminate()
            bad = Proc(["exporter", "--port", "0", "--collectors", "gpu-7"], env, tmp_path / "bad.err")
            assert bad.proc.wait(60) == 2
            bad.terminate()
        finally:
            code = p.terminate()
    assert (e1 - e0) / (t1 - t0) == pytest.approx(POWER_W, rel=0.1)
    assert code == 0 and "Traceback" not in p.stderr()
    for proc in (busy, bad):
        err = proc.stderr().strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "pick another --port" in busy.stderr()
    assert "gpu-7" in bad.stderr()
