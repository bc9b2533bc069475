#!/usr/bin/env python3
"""How long until a fresh process has its first measurement: greenprof against CodeCarbon.

    python benchmarks/startup_speed.py            # human summary on stderr
    python benchmarks/startup_speed.py --json     # plus one JSON object on stdout
    python benchmarks/startup_speed.py --save     # plus benchmarks/results/startup_speed-<date>.json
    python benchmarks/startup_speed.py --quick    # a few repetitions (smoke test)

What a decorated function pays once per process, measured the same way for both, in one run:

* greenprof: ``import greenprof``, ``greenprof.Meter()``, ``.start()``, one ``.mark()``, ``.stop()``
  (the default collectors; the measurement is read back).
* CodeCarbon: ``import codecarbon``, ``codecarbon.OfflineEmissionsTracker(country_iso_code=...)``,
  ``.start()``, ``.stop()`` (offline: no network; no file written; the lock that refuses a second
  tracker on the machine turned off, since each repetition is a new process).

Each repetition is a fresh interpreter (``python -c``) timing itself from just before the import
to just after the stop (interpreter start-up excluded: both pay the same); the two alternate
(greenprof first on even repetitions, CodeCarbon first on odd ones) after one discarded warm-up
of each, which also leaves Python's bytecode cache written, as a regular install does
(``PYTHONDONTWRITEBYTECODE`` is dropped from the children's environment). ``ratio`` = the median
of the per-pair ratios greenprof / CodeCarbon, with a distribution-free 95 % interval (target
<= 0.2); ``first_meter_start_ms`` = the median time from ``greenprof.Meter()`` to ``start()``
returning, the lazy import of the meter included (target < 50 ms). Verdicts: ``meets`` when the
median meets the target, ``inconclusive`` when only its 95 % interval reaches it, ``misses``
otherwise. ``details.cold_tdp_cache`` repeats greenprof's run with an empty user cache folder
(the first start ever on a machine, when the CPU's TDP lookup is not cached yet).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import emit, loadavg_1m, log, machine_info, median_ci95, round_floats, shout, verdict

TARGET_RATIO = 0.2  # greenprof / CodeCarbon, time to first measurement: lower is better
TARGET_START_MS = 50.0
COUNTRY = "FRA"

FULL = dict(reps=15, cold_reps=6)
QUICK = dict(reps=3, cold_reps=2)

GREENPROF_CODE = """\
import time
t0 = time.perf_counter()
import greenprof
t1 = time.perf_counter()
meter = greenprof.Meter()
meter.start()
t2 = time.perf_counter()
meter.mark("first")
meter.stop()
m = meter.measurement
t3 = time.perf_counter()
import json
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "start_ms": (t2 - t1) * 1e3, "stop_ms": (t3 - t2) * 1e3,
                  "total_ms": (t3 - t0) * 1e3, "domains": sorted(m.energy_j),
                  "energy_j": sum(m.energy_j.values())}))
"""

CODECARBON_CODE = """\
import logging, sys, time
t0 = time.perf_counter()
import codecarbon
t1 = time.perf_counter()
tracker = codecarbon.OfflineEmissionsTracker(country_iso_code=sys.argv[1], save_to_file=False,
                                             log_level="error", allow_multiple_runs=True)
tracker.start()
t2 = time.perf_counter()
emissions = tracker.stop()
t3 = time.perf_counter()
import json
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "start_ms": (t2 - t1) * 1e3, "stop_ms": (t3 - t2) * 1e3,
                  "total_ms": (t3 - t0) * 1e3, "emissions_kg": emissions}))
"""


def child_env(cache_home: str | None = None) -> dict[str, str]:
    """The children's environment: bytecode caching on (as an installed package has it), no
    replay or fake sensors from the caller, optionally another user cache folder."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "GREENPROF_REPLAY", "GREENPROF_POWERCAP_ROOT")}
    if cache_home is not None:
        env["XDG_CACHE_HOME"] = cache_home
    return env


def one(code: str, env: dict[str, str], *args: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-3:]
        raise SystemExit(f"startup_speed: a child process failed (exit {r.returncode}): {' | '.join(tail)}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _summary(xs: list[float]) -> dict[str, Any]:
    ci = median_ci95(xs)
    return {"median": _med(xs), "ci95": list(ci) if ci else None, "all": xs}


def run(cfg: dict[str, int], quick: bool) -> dict[str, Any]:
    t_start = time.perf_counter()
    load_before = loadavg_1m()
    if importlib.util.find_spec("codecarbon") is None:
        raise SystemExit("startup_speed: codecarbon is not installed (it is one of greenprof's dependencies): "
                         "pip install -e .")
    env = child_env()
    reps = cfg["reps"]
    log(f"startup: {reps} fresh processes each, alternating greenprof / CodeCarbon (country {COUNTRY})")
    one(GREENPROF_CODE, env)  # warm-ups (discarded): bytecode written, the TDP lookup cached
    one(CODECARBON_CODE, env, COUNTRY)
    gp: list[dict[str, Any]] = []
    cc: list[dict[str, Any]] = []
    for i in range(reps):
        if i % 2 == 0:
            gp.append(one(GREENPROF_CODE, env))
            cc.append(one(CODECARBON_CODE, env, COUNTRY))
        else:
            cc.append(one(CODECARBON_CODE, env, COUNTRY))
            gp.append(one(GREENPROF_CODE, env))
        log(f"  {i + 1}/{reps}: greenprof {gp[-1]['total_ms']:.1f} ms (start {gp[-1]['start_ms']:.1f}), "
            f"CodeCarbon {cc[-1]['total_ms']:.1f} ms")

    cold: list[dict[str, Any]] = []
    for _ in range(cfg["cold_reps"]):
        with tempfile.TemporaryDirectory(prefix="greenprof-startup-") as home:
            cold.append(one(GREENPROF_CODE, child_env(home)))
    ratios = [g["total_ms"] / c["total_ms"] for g, c in zip(gp, cc)]
    ratio = _summary(ratios)
    start = _summary([g["start_ms"] for g in gp])
    verdicts = {
        "ratio": verdict(ratio["median"], ratio["ci95"], TARGET_RATIO, higher_is_better=False),
        "first_meter_start_ms": verdict(start["median"], start["ci95"], TARGET_START_MS, higher_is_better=False),
    }
    load_after = loadavg_1m()
    notes = [
        f"ratio: time from the import to the stop, greenprof over CodeCarbon, median of {reps} alternating "
        f"pairs of fresh processes (ratio of medians {_med([g['total_ms'] for g in gp]) / _med([c['total_ms'] for c in cc]):.3f}); "
        "interpreter start-up excluded, the same for both.",
        f"greenprof measured {', '.join(gp[-1]['domains'])} (the default collectors on this machine); CodeCarbon "
        "ran offline with its defaults (its own CPU, GPU and RAM detection).",
        f"first start with an empty user cache (the TDP lookup not cached yet, the first process on a machine): "
        f"median {_med([c['start_ms'] for c in cold]):.1f} ms over {len(cold)} processes.",
    ]
    busy = max(x for x in (load_before, load_after, 0.0) if x is not None)
    if busy > 0.5:
        notes.append(f"load average was {load_before} before and {load_after} after the run: other work shared "
                     f"these {os.cpu_count()} CPUs, so the timings are noisy")
    if quick:
        notes.append(f"quick run ({reps} pairs): a smoke test, not a measurement; too few for a 95 % interval")
    versions = {}
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("greenprof", "codecarbon"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return {
        "greenprof_ms": _med([g["total_ms"] for g in gp]),
        "codecarbon_ms": _med([c["total_ms"] for c in cc]),
        "ratio": ratio["median"],
        "ratio_ci95": ratio["ci95"],
        "first_meter_start_ms": start["median"],
        "first_meter_start_ms_ci95": start["ci95"],
        "targets": {"ratio_max": TARGET_RATIO, "first_meter_start_ms_max": TARGET_START_MS},
        "verdicts": verdicts,
        "reps": reps,
        "quick": quick,
        "versions": versions,
        "machine": {**machine_info(), "loadavg_1m_before": load_before, "loadavg_1m_after": load_after},
        "duration_s": time.perf_counter() - t_start,
        "notes": notes,
        "details": {
            "greenprof": {k: _summary([g[k] for g in gp]) for k in ("import_ms", "start_ms", "stop_ms", "total_ms")},
            "codecarbon": {k: _summary([c[k] for c in cc]) for k in ("import_ms", "start_ms", "stop_ms", "total_ms")},
            "pair_ratios": ratios,
            "greenprof_domains": gp[-1]["domains"],
            "cold_tdp_cache": {k: _summary([c[k] for c in cold]) for k in ("start_ms", "total_ms")},
            "country_iso_code": COUNTRY,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="startup_speed.py",
        description="Time to the first measurement in a fresh process, greenprof (import, Meter start, one mark, "
                    "stop) vs CodeCarbon (import, OfflineEmissionsTracker start, stop): ratio target <= 0.2, first "
                    "Meter start target < 50 ms. A human summary goes to stderr.")
    parser.add_argument("--json", action="store_true", help="also print one JSON object with every figure on stdout")
    parser.add_argument("--save", action="store_true",
                        help="also write the JSON to benchmarks/results/startup_speed-<date>.json")
    parser.add_argument("--quick", action="store_true", help="a few repetitions: a smoke test")
    parser.add_argument("--reps", type=int, default=None, help=f"pairs of fresh processes (default {FULL['reps']})")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.reps is not None:
        if args.reps < 1:
            parser.error("--reps must be >= 1")
        cfg["reps"] = args.reps

    result = run(cfg, args.quick)
    v = result["verdicts"]
    d = result["details"]
    log(f"  greenprof {result['greenprof_ms']:.1f} ms (import {d['greenprof']['import_ms']['median']:.1f}, start "
        f"{d['greenprof']['start_ms']['median']:.1f}, mark + stop {d['greenprof']['stop_ms']['median']:.1f}) vs "
        f"CodeCarbon {result['codecarbon_ms']:.1f} ms (import {d['codecarbon']['import_ms']['median']:.1f}, start "
        f"{d['codecarbon']['start_ms']['median']:.1f}, stop {d['codecarbon']['stop_ms']['median']:.1f})")
    ci = result["ratio_ci95"]
    log(f"  ratio {result['ratio']:.3f}" + (f" (95 % interval {ci[0]:.3f}..{ci[1]:.3f})" if ci else " (no interval)")
        + f": {shout(v['ratio'])} (target <= {TARGET_RATIO})")
    ci = result["first_meter_start_ms_ci95"]
    log(f"  first Meter start {result['first_meter_start_ms']:.1f} ms"
        + (f" (95 % interval {ci[0]:.1f}..{ci[1]:.1f})" if ci else " (no interval)")
        + f": {shout(v['first_meter_start_ms'])} (target < {TARGET_START_MS:g} ms)")
    for note in result["notes"]:
        log(f"  note: {note}")
    log(f"  took {result['duration_s']:.1f} s")
    doc = round_floats(result, 4)
    emit("startup_speed", doc, save=args.save, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
