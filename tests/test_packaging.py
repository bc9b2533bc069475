"""Build the wheel, install it (not editable) into a fresh venv, run the CLI from there."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, timeout=600)
    (whl,) = out.glob("greenprof-*.whl")
    return whl


def test_wheel_has_one_import_root(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert roots == {"greenprof"}, roots
    for sub in ("collectors", "models", "dashboards", "data"):
        assert f"greenprof/{sub}/__init__.py" in names
    assert "greenprof/collectors/rapl.py" in names
    assert "greenprof/data/traces/llm-decode-demo.csv" in names
    assert "greenprof/store/migrations/script.py.mako" in names
    assert "greenprof/store/migrations/versions/0001_initial.py" in names


def test_installed_wheel_runs(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=900)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for stray in ("models", "collectors", "dashboards", "data"):
        assert not (Path(site) / stray).exists(), f"top-level {stray} leaked into site-packages"
    exe = venv / "bin" / "greenprof"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GREENPROF_REPLAY")}
    env["GREENPROF_POWERCAP_ROOT"] = str(tmp_path / "none")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and "sensors" in r.stdout
    r = subprocess.run([str(exe), "sensors", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["default_set"] == ["cpu-estimate"]
    # the package data travels in the wheel: the replay source can load the shipped trace
    code = ("from importlib.resources import files; from greenprof.collectors.replay import load_trace;"
            "print(sorted(load_trace(str(files('greenprof.data') / 'traces' / 'llm-decode-demo.csv'))))")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "gpu-0" in r.stdout
    # the whole main job from the installed wheel: build tiny, measure it, store it, list it
    db = tmp_path / "w.db"
    env["GREENPROF_CACHE"] = str(tmp_path / "cache")
    r = subprocess.run([str(exe), "measure", "tiny", "--runs", "1", "--warmup", "0", "--new-tokens", "4",
                        "--prompt-tokens", "4", "--db", str(db), "--json"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["runs"][0]["new_tokens"] == 4
    r = subprocess.run([str(exe), "runs", "--db", str(db), "--json"], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [x["status"] for x in json.loads(r.stdout)["runs"]] == ["completed"]
    # a tiny measurement from the installed package
    code = ("import greenprof, time\n"
            "with greenprof.Meter() as m:\n"
            "    sum(range(200000)); m.mark('work')\n"
            "print(m.measurement.method, m.measurement.energy_j['cpu-estimate'] > 0)")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "{'cpu-estimate': 'estimated'} True"
    # python started in the repository root imports the source folder, not the installed
    # package: its greenprof.collectors (a top-level folder mapped in by the install) must work
    code = ("import greenprof, greenprof.collectors, greenprof.models.shapes;"
            "print(greenprof.__file__); t = greenprof.track(model='m', store=False)\n"
            "with t: sum(range(1000))\nprint(t.energy_j > 0)")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.split()
    assert Path(first).parent == ROOT / "greenprof" and second == "True"
