#!/usr/bin/env python3
"""How long does ``greenprof dashboard`` take on a big database? Measured here, in one run.

    python benchmarks/dashboard_speed.py            # human summary on stderr
    python benchmarks/dashboard_speed.py --json     # plus one JSON object on stdout
    python benchmarks/dashboard_speed.py --quick    # small database, for smoke tests

The database (SQLite in a temp dir, created and migrated by ``open_store``) is filled with bulk
inserts straight into the schema: RUNS completed runs (default 1,000) of 6 built-in shapes x 3
precisions on 2 machines (one measured, one estimated), each with a prefill and 64 token segments
on 2 energy domains, and SAMPLES power samples in all (default 1,000,000), of which
TIMELINE_SAMPLES belong to the latest run (the one the dashboard draws), the rest spread over the
others. Then:

* ``render_s``: ``build_report`` + ``write_report`` in this process (open store, SQL aggregates,
  the timeline downsampled in SQL, HTML with plotly.js inlined), median of ``--reps``;
* ``cli_s``: the whole command, ``greenprof dashboard --db ... -o ...``, in a fresh process
  (interpreter start and imports included), median of ``--reps``;
* ``file_bytes``: size of the report; ``plotly_js_bytes``: how much of it is plotly.js.

The target is ``cli_s < 5`` on the full-size database.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from _common import MEETS, log, median_ci95, shout, verdict

FULL = dict(runs=1000, samples=1_000_000, timeline_samples=200_000, reps=3)
QUICK = dict(runs=60, samples=30_000, timeline_samples=6_000, reps=1)
TARGET_S = 5.0

SHAPES = (("SmolLM-135M", 134_515_008), ("SmolLM-360M", 361_821_120), ("SmolLM-1.7B", 1_711_376_384),
          ("Phi-3-mini", 3_821_079_552), ("Llama-2-7B", 6_738_415_616), ("Mistral-NeMo-12B", 12_247_782_400))
PRECISIONS = {"fp32": 1.0, "int8": 0.45, "int4": 0.3}
MACHINES = (
    ({"cpu_model": "Intel Xeon Platinum 8480+", "cpu_logical": 112, "cpu_physical": 56, "memory_gib": 1007.5,
      "machine": "x86_64", "gpus": ["NVIDIA H100 80GB HBM3"]}, "measured", ("cpu-package-0", "gpu-0")),
    ({"cpu_model": "AMD EPYC 7B13", "cpu_logical": 16, "cpu_physical": 8, "memory_gib": 62.8,
      "machine": "x86_64", "gpus": []}, "estimated", ("cpu-estimate", "dram-0")),
)
TOKENS = 64
PROMPT = 128


def fill(db: Path, runs: int, samples: int, timeline_samples: int, seed: int = 0) -> dict:
    """Create the database with open_store, then bulk-insert every table; returns row counts."""
    from sqlalchemy import insert

    from greenprof import carbon
    from greenprof.hostinfo import fingerprint
    from greenprof.store import open_store
    from greenprof.store import schema as S

    rng = random.Random(seed)
    grids = [carbon.lookup(r) for r in ("FRA", "USA", "DEU", "SWE")]
    combos = [(s, p, m) for s in SHAPES for p in PRECISIONS for m in MACHINES]
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc).replace(tzinfo=None)
    run_rows, dom_rows, seg_rows, se_rows = [], [], [], []
    for rid in range(1, runs + 1):
        (name, params), prec, (hw, method, domains) = combos[(rid - 1) % len(combos)]
        g = grids[rid % len(grids)]
        scale = params / 1e9 * PRECISIONS[prec] * (3.0 if method == "estimated" else 1.0)
        tok_s = 0.02 * (params / 1e9) ** 0.9 * PRECISIONS[prec] + 0.004
        run_rows.append(dict(
            id=rid, batch_id=f"batch-{(rid - 1) // 3}", kind="measure", status="completed",
            started_at=t0 + timedelta(minutes=rid), ended_at=t0 + timedelta(minutes=rid, seconds=30),
            pid=1000 + rid, host="bench", hardware=hw, hardware_fingerprint=fingerprint(hw),
            software={"greenprof": "bench"}, model_name=name, model_shape=name, param_count=params,
            precision=prec, provider="CPUExecutionProvider", threads=8, prompt_tokens=PROMPT,
            new_tokens=TOKENS, region=g.region, intensity_g_per_kwh=g.intensity_g_per_kwh,
            intensity_source=g.source, intensity_year=g.year, pue=1.2, price_usd_per_kwh=0.1259,
            duration_s=tok_s * (TOKENS + 4), sample_hz=10.0, idle_window_s=0.0))
        t = 0.0
        per_dom: dict[str, float] = {d: 0.0 for d in domains}
        for idx in range(TOKENS + 1):
            label = "prefill" if idx == 0 else f"token-{idx}"
            dur = tok_s * (4 if idx == 0 else 1) * rng.uniform(0.9, 1.1)
            seg_rows.append(dict(run_id=rid, idx=idx, label=label, kind="prefill" if idx == 0 else "decode",
                                 start_s=t, duration_s=dur, tokens=PROMPT if idx == 0 else 1))
            for k, d in enumerate(domains):
                e = dur * (60.0 + 200.0 * k) * scale * rng.uniform(0.8, 1.2)
                per_dom[d] += e
                se_rows.append(dict(run_id=rid, idx=idx, domain=d, energy_j=e, dynamic_energy_j=0.7 * e))
            t += dur
        for d, e in per_dom.items():
            dom_rows.append(dict(run_id=rid, domain=d, method=method, source=method, energy_j=e,
                                 idle_power_w=10.0, dynamic_energy_j=e - 10.0 * t, resolution_s=0.001,
                                 lost_reason=None))
    with open_store(db) as store:
        with store.engine.begin() as conn:
            for table, rows in ((S.runs, run_rows), (S.run_domains, dom_rows), (S.segments, seg_rows),
                                (S.segment_energy, se_rows)):
                for i in range(0, len(rows), 20_000):
                    conn.execute(insert(table), rows[i:i + 20_000])
        # samples: the latest run gets timeline_samples, the others share the rest
        from greenprof.meter import PowerSample

        rest = max(0, samples - timeline_samples)
        others = max(1, runs - 1)
        written = 0
        for rid in range(1, runs + 1):
            n = timeline_samples if rid == runs else rest // others + (1 if rid <= rest % others else 0)
            if n <= 0:
                continue
            doms = MACHINES[0][2] if ((rid - 1) % len(combos)) % 2 == 0 else MACHINES[1][2]
            dur = run_rows[rid - 1]["duration_s"]
            per = -(-n // len(doms))  # ceil: exactly n points after the slice
            pts = [PowerSample(-0.5 + (dur + 0.5) * j / per, d, 40.0 + 150.0 * k + 20.0 * math.sin(j / 7.0))
                   for j in range(per) for k, d in enumerate(doms)][:n]
            written += store.add_samples(rid, pts)
    return {"runs": len(run_rows), "run_domains": len(dom_rows), "segments": len(seg_rows),
            "segment_energy": len(se_rows), "samples": written}


def render_once(db: Path, out: Path) -> tuple[float, int]:
    from greenprof.dashboards import build_report, write_report
    from greenprof.store import open_store

    t0 = time.perf_counter()
    with open_store(db) as store:
        html = build_report(store)
    write_report(html, out)
    return time.perf_counter() - t0, out.stat().st_size


#: ``greenprof`` as the console script runs it, with ``dashboard`` registered if greenprof.cli does
#: not register it itself (so the benchmark works before and after the command is wired in).
CLI = ("import sys; from greenprof.cli import app, main; from greenprof.cli_dashboard import register; "
       "'dashboard' in [c.name for c in app.registered_commands] or register(app); main(sys.argv[1:])")


def cli_once(db: Path, out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENPROF_")}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CLI, "dashboard", "--db", str(db), "-o", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"greenprof dashboard failed ({r.returncode}): {r.stderr.strip()}")
    if r.stdout.strip() != str(out.resolve()):
        raise SystemExit(f"greenprof dashboard printed {r.stdout!r}, expected the report path")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quick", action="store_true", help="small database, one repetition (smoke test)")
    ap.add_argument("--runs", type=int, help=f"runs in the database (default {FULL['runs']})")
    ap.add_argument("--samples", type=int, help=f"power samples in all (default {FULL['samples']})")
    ap.add_argument("--timeline-samples", type=int,
                    help=f"samples of the latest run, the one drawn (default {FULL['timeline_samples']})")
    ap.add_argument("--reps", type=int, help="repetitions of each timing (median reported)")
    ap.add_argument("--keep", metavar="DIR", help="build the database and report in DIR and keep them")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for k in ("runs", "samples", "timeline_samples", "reps"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    if cfg["runs"] < 1 or cfg["reps"] < 1 or cfg["samples"] < 0 or cfg["timeline_samples"] < 0:
        ap.error("--runs and --reps must be >= 1, sample counts >= 0")
    cfg["timeline_samples"] = min(cfg["timeline_samples"], cfg["samples"])

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="greenprof-dash-bench-")
    work = Path(args.keep or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    db, out = work / "bench.db", work / "report.html"
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        p.unlink(missing_ok=True)
    try:
        log(f"filling {db}: {cfg['runs']} runs, {cfg['samples']:,} samples "
            f"({cfg['timeline_samples']:,} in the latest run)...")
        t0 = time.perf_counter()
        counts = fill(db, cfg["runs"], cfg["samples"], cfg["timeline_samples"])
        fill_s = time.perf_counter() - t0
        log(f"  filled in {fill_s:.1f} s; database {db.stat().st_size / 1e6:.0f} MB")

        render, size = [], 0
        for _ in range(cfg["reps"]):
            s, size = render_once(db, out)
            render.append(s)
        cli = [cli_once(db, out) for _ in range(cfg["reps"])]
        from plotly.offline import get_plotlyjs

        plotly_bytes = len(get_plotlyjs().encode("utf-8"))
        doc = {
            "render_s": round(statistics.median(render), 4),
            "cli_s": round(statistics.median(cli), 4),
            "render_s_all": [round(x, 4) for x in render],
            "cli_s_all": [round(x, 4) for x in cli],
            "file_bytes": size,
            "plotly_js_bytes": plotly_bytes,
            "db_bytes": db.stat().st_size,
            "rows": counts,
            "fill_s": round(fill_s, 2),
            "target_s": TARGET_S,
            # meets / inconclusive (only the 95 % interval of the median reaches the target) / misses
            "verdict": verdict(statistics.median(cli), median_ci95(cli), TARGET_S, higher_is_better=False),
            "cli_s_ci95": list(median_ci95(cli) or []) or None,
            "quick": bool(args.quick),
            "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                        "platform": platform.platform()},
        }
        doc["meets_target"] = doc["verdict"] == MEETS
        log(f"render (in process): {doc['render_s']:.2f} s; whole command: {doc['cli_s']:.2f} s: "
            f"{shout(doc['verdict'])} (target < {TARGET_S:g} s)")
        log(f"report: {size / 1e6:.2f} MB ({plotly_bytes / 1e6:.2f} MB of it plotly.js)")
        if args.json:
            print(json.dumps(doc))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
