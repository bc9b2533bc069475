import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "meter_overhead.py"


def test_meter_overhead_quick_json_has_every_field():
    """Smoke test only: the script runs and reports sane types. No timing thresholds here."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GREENPROF_REPLAY", "GREENPROF_POWERCAP_ROOT")}
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # one JSON object, nothing else on stdout
    assert "mark" in r.stderr  # the human summary goes to stderr

    for key in ("mark_us", "mark_us_estimate", "rapl_read_us"):
        assert isinstance(doc[key], float) and doc[key] > 0, key
    for key in ("sampler_cpu_share_10hz", "sampler_cpu_share_100hz"):
        assert isinstance(doc[key], float) and 0 <= doc[key] < 2, key
    for key in ("ratio", "ratio_numpy", "ratio_cpu", "ratio_numpy_cpu"):
        assert isinstance(doc[key], float) and doc[key] > 0, key
    assert doc["target"] == 0.99
    assert isinstance(doc["meets_target"], bool)
    # the documented rule: inconclusive when the interval straddles the target, else meets or
    # misses by the median; the measured cost is a detail that never decides
    assert 0 < doc["ratio_cost"] < 1
    for name in ("ratio", "ratio_numpy"):
        ci = doc[f"{name}_ci95"]
        expected = ("inconclusive" if ci is not None and ci[0] < doc["target"] < ci[1] else
                    "meets" if doc[name] >= doc["target"] else "misses")
        assert doc["verdicts"][name] == expected, name
        assert f"{name} {doc[name]:.4f}" in r.stderr and expected.replace("misses", "MISSES") in r.stderr
    assert doc["meets_target"] == all(v == "meets" for v in doc["verdicts"].values())
    assert doc["notes"] and all(f"note: {n}" in r.stderr for n in doc["notes"])  # every note printed
    assert isinstance(doc["machine"]["cpu_count"], int)
    assert isinstance(doc["machine"]["python"], str)
    assert isinstance(doc["duration_s"], float) and doc["duration_s"] > 0
    assert doc["quick"] is True
    assert isinstance(doc["method"], str) and doc["method"]
    # the fake powercap tree was used: RAPL package + dram, not the CPU estimate (a machine
    # with an NVIDIA GPU adds gpu-N: collectors="auto")
    domains = doc["details"]["domains"]
    assert {"cpu-package-0", "dram-0"} <= set(domains) and "cpu-estimate" not in domains


def test_meter_overhead_help():
    r = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0
    assert "--quick" in r.stdout and "--json" in r.stdout


BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _common():
    import importlib.util

    spec = importlib.util.spec_from_file_location("greenprof_bench_common", BENCH / "_common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_verdicts_meets_inconclusive_misses():
    """inconclusive whenever the 95 % interval straddles the target; otherwise meets when the
    figure meets it and misses when it does not, whichever way the target points."""
    c = _common()
    # a minimum (higher is better)
    assert c.verdict(0.995, (0.95, 1.02), 0.99, higher_is_better=True) == "inconclusive"  # straddles
    assert c.verdict(0.995, (0.991, 1.02), 0.99, higher_is_better=True) == "meets"
    assert c.verdict(0.985, (0.95, 1.02), 0.99, higher_is_better=True) == "inconclusive"
    assert c.verdict(0.985, (0.95, 0.989), 0.99, higher_is_better=True) == "misses"
    assert c.verdict(0.985, None, 0.99, higher_is_better=True) == "misses"  # no interval: no benefit of doubt
    # a maximum (lower is better)
    assert c.verdict(0.93, (0.9, 1.1), 1.0, higher_is_better=False) == "inconclusive"
    assert c.verdict(0.93, (0.9, 0.99), 1.0, higher_is_better=False) == "meets"
    assert c.verdict(1.04, (0.98, 1.1), 1.0, higher_is_better=False) == "inconclusive"
    assert c.verdict(1.04, (1.01, 1.1), 1.0, higher_is_better=False) == "misses"
    # ratio_verdict takes the interval of the median of the pairs: 6 pairs -> [min, max]
    assert c.ratio_verdict(0.98, [0.97, 0.98, 0.98, 0.985, 0.99, 1.0], 0.99) == "inconclusive"
    assert c.ratio_verdict(0.98, [0.97, 0.98, 0.98, 0.98, 0.985, 0.986], 0.99) == "misses"


def test_save_result_writes_a_dated_file(tmp_path):
    c = _common()
    path = Path(c.save_result("demo_bench", {"ratio": 0.5}, tmp_path))
    doc = json.loads(path.read_text())
    assert path.parent == tmp_path and path.name == f"demo_bench-{doc['date']}.json"
    assert doc["benchmark"] == "demo_bench" and doc["ratio"] == 0.5
    assert isinstance(doc["machine"]["cpu_count"], int)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    # a second run the same day is the dated file; the first is kept under its own time
    again = Path(c.save_result("demo_bench", {"ratio": 0.7}, tmp_path))
    assert again == path and json.loads(path.read_text())["ratio"] == 0.7
    kept = f"demo_bench-{doc['date']}T{doc['saved_utc'].split('T')[1].rstrip('Z').replace(':', '')}.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, kept])
    assert json.loads((tmp_path / kept).read_text())["ratio"] == 0.5


def test_startup_speed_quick_json():
    """Smoke test only: both fresh-process timings ran, the verdicts follow the rule, every note
    is printed. No timing thresholds here."""
    env = {k: v for k, v in os.environ.items() if k not in ("GREENPROF_REPLAY", "GREENPROF_POWERCAP_ROOT")}
    r = subprocess.run([sys.executable, str(BENCH / "startup_speed.py"), "--quick", "--json"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    for key in ("greenprof_ms", "codecarbon_ms", "ratio", "first_meter_start_ms"):
        assert isinstance(doc[key], float) and doc[key] > 0, key
    d = doc["details"]
    assert len(d["pair_ratios"]) == doc["reps"] == 3
    assert min(d["pair_ratios"]) <= doc["ratio"] <= max(d["pair_ratios"])
    assert d["greenprof"]["start_ms"]["median"] == doc["first_meter_start_ms"]
    assert d["greenprof_domains"]  # the meter measured something
    assert d["cold_tdp_cache"]["start_ms"]["median"] > 0
    assert doc["targets"] == {"ratio_max": 0.2, "first_meter_start_ms_max": 50.0}
    assert doc["verdicts"]["ratio"] in ("meets", "misses")  # 3 pairs: no interval, so never inconclusive
    assert doc["verdicts"]["ratio"] == ("meets" if doc["ratio"] <= 0.2 else "misses")
    assert doc["versions"]["codecarbon"]
    for note in doc["notes"]:
        assert f"note: {note}" in r.stderr
