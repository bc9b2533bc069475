"""Many hosts, one database: three processes with their own host ids measure into one
PostgreSQL at once; nothing is lost and each host's runs are told apart."""

import json
import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "greenprof.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_three_hosts_measure_into_one_postgres_at_once(postgres_url, tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in ("GREENPROF_REPLAY", "GREENPROF_HOST_ID")}
    base["GREENPROF_POWERCAP_ROOT"] = str(tmp_path / "none")
    # build tiny once, so the three measure processes do not race to build it
    r = _cli("models", "build", "tiny", env=base)
    assert r.returncode == 0, r.stderr
    procs = []
    for h in ("edge-a", "edge-b", "edge-c"):
        env = dict(base, GREENPROF_HOST_ID=h)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "greenprof.cli", "measure", "tiny", "--runs", "3", "--warmup", "0",
             "--new-tokens", "8", "--prompt-tokens", "8", "--db", postgres_url, "--json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    ids = sorted(r["id"] for out, _ in outs for r in json.loads(out)["runs"])
    assert len(ids) == 9 and len(set(ids)) == 9
    r = _cli("runs", "--db", postgres_url, "--json", "--limit", "0", env=base)
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert sorted(x["id"] for x in runs) == ids
    assert {x["status"] for x in runs} == {"completed"}
    assert sorted(x["host"] for x in runs) == ["edge-a"] * 3 + ["edge-b"] * 3 + ["edge-c"] * 3
    assert all(x["energy_j"] and x["energy_j"] > 0 for x in runs)
    r = _cli("runs", "--db", postgres_url, "--json", "--host", "edge-b", env=base)
    assert r.returncode == 0, r.stderr
    assert {x["host"] for x in json.loads(r.stdout)["runs"]} == {"edge-b"}
    assert len(json.loads(r.stdout)["runs"]) == 3


def test_the_dashboard_compares_hosts(tmp_path):
    """Runs of the same model on two hosts form two groups, each named by its host."""
    from greenprof.collectors.replay import PowerTrace, ReplayCounterCollector
    from greenprof.meter import Meter
    from greenprof.store import open_store
    from greenprof.dashboards.queries import model_aggregates

    db = f"sqlite:///{tmp_path / 'f.db'}"
    with open_store(db) as store:
        for host, watts in (("edge-a", 10.0), ("edge-b", 30.0)):
            for _ in range(2):
                col = ReplayCounterCollector(PowerTrace("cpu-package-0", [0.0, 100.0], [watts, watts]))
                with Meter(collectors=[col], sample_hz=0) as m:
                    m.mark("setup")
                    m.mark("prefill")
                    for i in range(1, 5):
                        time.sleep(0.01)
                        m.mark(f"token-{i}")
                rid = store.start_run(model_name="tiny", precision="fp32", host=host, prompt_tokens=4,
                                      new_tokens=4, batch_size=1, region="FRA", intensity_g_per_kwh=56.0,
                                      pue=1.0, price_usd_per_kwh=0.2)
                store.finish_run(rid, m.measurement)
    with open_store(db) as store:
        aggregates = model_aggregates(store, fallback_intensity=475.0, fallback_price=0.1259)
    out = tmp_path / "report.html"
    r = _cli("dashboard", "--db", db, "-o", str(out), env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    html = out.read_text()
    assert sorted(a.host for a in aggregates) == ["edge-a", "edge-b"]
    a, b = sorted(aggregates, key=lambda a: a.host)
    assert b.j_per_token > 2 * a.j_per_token  # the 30 W host costs more per token
    assert "edge-a" in html and "edge-b" in html
