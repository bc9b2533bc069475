import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "runner_speed.py"
# In the test extra (CI installs it): onnxruntime-genai, transformers, torch, and onnx_ir, which
# onnxruntime-genai's model builder imports without declaring it. Missing ones fail, not skip.
BENCH_DEPS = ("onnxruntime_genai", "transformers", "torch", "onnx_ir")


def _verdict(value, ci, target, higher_is_better):
    if ci is not None and ci[0] < target < ci[1]:
        return "inconclusive"  # the interval straddles the target: this run cannot tell
    ok = value >= target if higher_is_better else value <= target
    return "meets" if ok else "misses"


def test_runner_speed_quick_json():
    """Smoke test only: the script runs end to end on the tiny shape (both exports,
    onnxruntime-genai's Generator, greenprof on the genai export, the settings grid, the meter)
    and reports sane types; verdicts follow the documented rule. No timing thresholds here."""
    h = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert h.returncode == 0 and "--quick" in h.stdout and "--json" in h.stdout and "--save" in h.stdout

    missing = [m for m in BENCH_DEPS if importlib.util.find_spec(m) is None]
    assert not missing, f"runner_speed's dependencies are missing ({', '.join(missing)}): pip install -e '.[test]'"
    # GREENPROF_CACHE is the session's temp cache (conftest): both builds land there
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    doc = json.loads(r.stdout)  # one JSON object, nothing else on stdout

    assert doc["quick"] is True and doc["model"] == "tiny"
    assert doc["genai_runtime"].startswith("onnxruntime_genai.Generator ")
    assert doc["genai_runtime"].split()[-1] == doc["versions"]["onnxruntime-genai"]
    for key in ("decode_ms_per_token", "genai_decode_ms_per_token", "export_decode_ms_per_token", "ratio_vs_genai",
                "ratio_export_vs_genai", "mem_bandwidth_gbps", "achieved_gbps", "roofline_fraction",
                "tracked_ms_per_token", "untracked_ms_per_token", "tracked_ratio", "duration_s"):
        assert isinstance(doc[key], float) and doc[key] > 0, key
    assert isinstance(doc["weight_bytes_per_token"], int) and doc["weight_bytes_per_token"] > 0
    graph = doc["details"]["graph"]
    assert graph["ours"]["weight_bytes_per_token"] == graph["genai"]["weight_bytes_per_token"]

    vs = doc["vs_genai"]
    # the headline is the median of the interleaved per-round ratios
    assert len(vs["ratio_vs_genai"]["per_round"]) == doc["rounds"] == 2
    assert min(vs["ratio_vs_genai"]["per_round"]) <= doc["ratio_vs_genai"] <= max(vs["ratio_vs_genai"]["per_round"])
    # greenprof's runner takes the shared-KV fast path on onnxruntime-genai's export too
    assert vs["shared_kv"] == {"ours": True, "ours_on_genai_export": True}
    assert set(vs["ms_per_token"]) == {"ours", "genai", "ours_on_genai_export", "hand_loop"}

    # the settings grid: measure's default, 1 thread and every usable CPU, spinning off and on,
    # each with J/token from a Meter as measure charges it
    st = doc["settings"]
    assert st["measure_default"] in st["settings"] and doc["measure_settings"] == st["measure_default"]
    assert {k.split(",")[1] for k in st["settings"]} == {"spinning=off", "spinning=on"}
    for key, s in st["settings"].items():
        assert s["j_per_token"] > 0 and s["j_per_token_as_reported"] > 0 and s["ms_per_token"] > 0, key
    # the figures are rounded to 5 significant digits in the JSON, so two settings can tie there:
    # the one named must have the lowest J/token, not necessarily be the first of a tie
    lowest = st["settings"][st["lowest_j_per_token"]]["j_per_token"]
    assert lowest == min(s["j_per_token"] for s in st["settings"].values())
    assert doc["roofline_fraction"] == st["settings"][st["measure_default"]]["roofline_fraction"]
    # where a decode step goes, from onnxruntime's profiler at measure's default settings
    prof = doc["op_profile"]
    assert prof["settings"] == st["measure_default"] and prof["decode_steps"] == doc["new_tokens"]
    assert prof["ops"]["MatMul"]["ms_per_token"] > 0 and prof["matmul_gbps"] > 0
    assert 0 < prof["kernel_ms_per_token"] <= prof["run_ms_per_token"]
    assert any(n.startswith("op_profile: ") for n in doc["notes"])

    # verdicts: meets / inconclusive / misses by the documented rule, nothing else
    t = doc["targets"]
    v = doc["verdicts"]
    assert v["ratio_vs_genai"] == _verdict(doc["ratio_vs_genai"], doc["ratio_vs_genai_ci95"],
                                           t["ratio_vs_genai_max"], False)
    assert v["roofline_fraction"] == _verdict(doc["roofline_fraction"], doc["roofline_fraction_ci95"],
                                              t["roofline_fraction_min"], True)
    assert v["tracked_ratio"] == _verdict(doc["tracked_ratio"], doc["tracked_ratio_ci95"], t["tracked_ratio_min"], True)
    assert t["roofline_fraction_min"] == 0.8
    assert doc["meets_all"] == all(x == "meets" for x in v.values())
    assert len(doc["tracked"]["pairs"]) == doc["tracked_pairs"] == 6
    lo, hi = doc["tracked_ratio_ci95"]
    assert lo <= doc["tracked_ratio"] <= hi
    cost = doc["tracked"]["meter_cost_per_tracked_generation"]
    assert cost["marks"] == doc["new_tokens"] + 2  # setup, prefill, one per token
    assert 0 < doc["tracked_ratio_cost"] < 1

    # the human summary on stderr: every verdict and every note
    assert "ms/token" in r.stderr
    assert isinstance(doc["notes"], list) and doc["notes"]
    for note in doc["notes"]:
        assert f"note: {note}" in r.stderr
    for dist in ("onnxruntime", "onnxruntime-genai", "torch", "transformers"):
        assert isinstance(doc["versions"][dist], str), dist
    assert isinstance(doc["machine"]["cpu_count"], int)
