#!/usr/bin/env python3
"""How fast is the run store, and how cheap is ``import greenprof``? Measured here, in one run.

    python benchmarks/store_speed.py            # human summary on stderr
    python benchmarks/store_speed.py --json     # plus one JSON object on stdout
    python benchmarks/store_speed.py --quick    # short run, for smoke tests

What is measured (SQLite file in a temp dir, WAL, synchronous=NORMAL, as ``open_store`` sets it):

* ``samples_rows_per_s``: ``Store.add_samples`` of one large run (bulk executemany, 5000 rows
  per ``BEGIN IMMEDIATE`` transaction), median of several repetitions.
* ``finish_rows_per_s`` / ``finish_ms``: the whole run-finish path for a realistic measurement
  (64 segments x 2 domains, 600 samples): ``start_run`` + ``finish_run``, which writes
  run_domains, segments, segment_energy, samples and the final status in a few transactions.
  Rows counted: 2 + 64 + 128 + 600 + the run row.
* ``import_greenprof_ms`` and ``import_codecarbon_ms``: the import alone (interpreter start
  excluded), each in a fresh subprocess, alternating, median of several. Not a comparison:
  ``import greenprof`` is a lazy stub and ``import codecarbon`` its tracker stack;
  ``startup_speed.py`` compares the two on the same work (the time to a first measurement). ``import_store_open_ms``: a fresh process importing
  ``greenprof.store`` and opening an existing database (what a decorated function pays once).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import log

FULL = dict(sample_rows=200_000, sample_reps=5, finish_runs=60, import_reps=9)
QUICK = dict(sample_rows=20_000, sample_reps=2, finish_runs=8, import_reps=3)


def realistic_measurement(segments: int = 64, samples: int = 600):
    """64 segments (prefill + 63 tokens) x 2 domains, 600 power samples (30 s at 10 Hz x 2)."""
    from greenprof.meter import Measurement, PowerSample, Segment

    doms = ("cpu-package-0", "gpu-0")
    segs, t = [], 0.0
    for i in range(segments):
        label = "prefill" if i == 0 else f"token-{i}"
        d = 0.2 if i == 0 else 0.05
        segs.append(Segment(label, t, t + d, {"cpu-package-0": 40.0 * d, "gpu-0": 180.0 * d},
                            {"cpu-package-0": 8.0 * d, "gpu-0": 60.0 * d}))
        t += d
    per = samples // len(doms)
    pts = [PowerSample(t * j / per, dom, 40.0 + 140.0 * k + j % 7) for j in range(per) for k, dom in enumerate(doms)]
    energy = {dom: sum(s.energy_j[dom] for s in segs) for dom in doms}
    return Measurement(duration_s=t, energy_j=energy, method={d: "measured" for d in doms}, segments=segs,
                       idle_power_w={"cpu-package-0": 8.0, "gpu-0": 60.0}, lost={}, samples=pts,
                       sample_hz=10.0, sources={"cpu-package-0": "rapl", "gpu-0": "nvml"})


def bench_samples(db: Path, rows: int, reps: int) -> float:
    from greenprof.meter import PowerSample
    from greenprof.store import open_store

    pts = [PowerSample(i * 0.01, "gpu-0" if i % 2 else "cpu-package-0", 100.0 + i % 50) for i in range(rows)]
    rates = []
    with open_store(db) as store:
        for _ in range(reps):
            rid = store.start_run()
            t0 = time.perf_counter()
            store.add_samples(rid, pts)
            rates.append(rows / (time.perf_counter() - t0))
            assert store.count_samples(rid) == rows
    return statistics.median(rates)


def bench_finish(db: Path, runs: int) -> tuple[float, float, int]:
    from greenprof.store import open_store

    m = realistic_measurement()
    rows = len(m.energy_j) + len(m.segments) + sum(len(s.energy_j) for s in m.segments) + len(m.samples) + 1
    times = []
    with open_store(db) as store:
        for _ in range(runs):
            t0 = time.perf_counter()
            rid = store.start_run(model_name="SmolLM-135M", precision="fp32", prompt_tokens=32, new_tokens=63)
            store.finish_run(rid, m)
            times.append(time.perf_counter() - t0)
        assert store.get_run(rid).status == "completed"
    med = statistics.median(times)
    return rows / med, med * 1e3, rows


IMPORT_CODE = "import time; t = time.perf_counter(); import {mod}; print(time.perf_counter() - t)"
OPEN_CODE = ("import sys, time; t = time.perf_counter(); from greenprof.store import open_store; "
             "open_store(sys.argv[1]).close(); print(time.perf_counter() - t)")


def timed_subprocess(code: str, *args: str) -> float:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"store_speed: subprocess failed: {r.stderr.strip().splitlines()[-1:]}")
    return float(r.stdout.strip().splitlines()[-1])


def bench_imports(reps: int, db: Path) -> dict[str, float | None]:
    gp, cc, op = [], [], []
    have_cc = subprocess.run([sys.executable, "-c", "import importlib.util, sys; "
                              "sys.exit(importlib.util.find_spec('codecarbon') is None)"]).returncode == 0
    timed_subprocess(IMPORT_CODE.format(mod="greenprof"))  # warm the page cache for both
    if have_cc:
        timed_subprocess(IMPORT_CODE.format(mod="codecarbon"))
    for _ in range(reps):  # alternate, so drift hits both alike
        gp.append(timed_subprocess(IMPORT_CODE.format(mod="greenprof")))
        if have_cc:
            cc.append(timed_subprocess(IMPORT_CODE.format(mod="codecarbon")))
        op.append(timed_subprocess(OPEN_CODE, str(db)))
    g = statistics.median(gp) * 1e3
    c = statistics.median(cc) * 1e3 if cc else None
    return {"import_greenprof_ms": round(g, 2), "import_codecarbon_ms": round(c, 1) if c else None,
            "import_store_open_ms": round(statistics.median(op) * 1e3, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quick", action="store_true", help="short run (a few seconds)")
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="greenprof-store-bench-") as tmp:
        tmpd = Path(tmp)
        log(f"bulk sample insert: {cfg['sample_rows']} rows x {cfg['sample_reps']} ...")
        samples_rate = bench_samples(tmpd / "samples.db", cfg["sample_rows"], cfg["sample_reps"])
        log(f"  {samples_rate:,.0f} rows/s")
        log(f"run-finish path: {cfg['finish_runs']} runs (64 segments x 2 domains, 600 samples) ...")
        finish_rate, finish_ms, finish_rows = bench_finish(tmpd / "finish.db", cfg["finish_runs"])
        log(f"  {finish_ms:.1f} ms per run, {finish_rate:,.0f} rows/s")
        log(f"imports: {cfg['import_reps']} fresh subprocesses each ...")
        imports = bench_imports(cfg["import_reps"], tmpd / "finish.db")
        log(f"  import greenprof {imports['import_greenprof_ms']} ms, import codecarbon "
            f"{imports['import_codecarbon_ms']} ms (not comparable: see startup_speed.py); "
            f"import greenprof.store + open_store {imports['import_store_open_ms']} ms")
    import sqlalchemy
    import sqlite3

    result = {
        "samples_rows_per_s": round(samples_rate),
        "finish_rows_per_s": round(finish_rate),
        "finish_ms": round(finish_ms, 2),
        "finish_rows_per_run": finish_rows,
        **imports,
        "quick": args.quick,
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "machine": platform.machine(),
        "method": "SQLite file in a temp dir (WAL, synchronous=NORMAL); medians; imports timed in fresh "
                  "subprocesses, alternating greenprof/codecarbon, interpreter start excluded",
    }
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
