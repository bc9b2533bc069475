"""Many hosts, one database: three processes with their own host ids measure into one
PostgreSQL at once; nothing is lost and each host's runs are told apart."""

import json
import os
import subprocess
import sys

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
    ids = sorted(r["run_id"] for out, _ in outs for r in json.loads(out)["runs"])
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
