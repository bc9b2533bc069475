#!/usr/bin/env python3
"""How much does measuring cost? The meter's overhead, measured on this machine in one run.

    python benchmarks/meter_overhead.py            # human summary on stderr
    python benchmarks/meter_overhead.py --json     # plus one JSON object on stdout
    python benchmarks/meter_overhead.py --quick    # short run (a few seconds), for smoke tests

What is measured (see the ``method`` field of the JSON for the exact recipe):

* ``mark_us``: one ``meter.mark()`` with ``collectors="auto"`` pointed at a fake powercap (RAPL)
  tree in a temp dir (the layout of ``tests/powercap_fake.py``: ``intel-rapl:0`` = package-0
  with a dram subzone, so a mark reads two ``energy_uj`` files). ``rapl_read_us`` is one
  counter read; ``mark_us_estimate`` is a mark with the CPU-time estimate alone.
* ``sampler_cpu_share_10hz`` / ``_100hz``: CPU time of the sampler thread, read from its own
  per-thread CPU clock while the main thread sleeps, as a fraction of one core.
* ``ratio`` / ``ratio_numpy``: throughput of a CPU-bound loop (pure Python / numpy matmul)
  that marks every ~10 ms like a decode loop, with a running meter (10 Hz sampler), divided by
  the same loop with no meter. Tracked and untracked repetitions alternate (ABBA...), and the
  result is the median of the per-pair ratios, with a distribution-free 95 % interval. Target:
  >= 0.99; ``verdicts`` says ``meets`` (the median reaches it), ``inconclusive`` (it does not,
  but the interval does) or ``misses``. ``ratio_cost`` (the meter's own measured cost) is a
  detail beside it and never decides a verdict.

``--save`` also writes the JSON to ``benchmarks/results/meter_overhead-<date>.json``.

The fake counters live on an ordinary (tmp) filesystem, so a read is a plain ``pread`` of a
page-cached file; a real ``/sys/class/powercap/.../energy_uj`` read also makes the kernel read
an MSR and typically costs a few microseconds more. The counters do not move during the run.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import (MEETS, loadavg_1m, log, machine_info, median_ci95, ratio_verdict, round_floats, emit, shout,
                     thread_cpu_reader)

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.99
CHUNK_S = 0.010  # one "token" of work between marks, like a decode loop
SAMPLER_NAME = "greenprof-sampler"

FULL = dict(mark_n=20_000, mark_batches=7, sampler_s=3.0, rep_chunks=30, pairs=21)
QUICK = dict(mark_n=2_000, mark_batches=3, sampler_s=0.5, rep_chunks=10, pairs=3)


# -- fake powercap tree -------------------------------------------------------------------------
def _load_powercap_fake():
    """tests/powercap_fake.py, loaded by path (the tests folder is not a package)."""
    path = REPO / "tests" / "powercap_fake.py"
    if not path.is_file():
        raise SystemExit(f"meter_overhead: {path} not found: run this from a greenprof checkout")
    spec = importlib.util.spec_from_file_location("greenprof_bench_powercap_fake", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def make_powercap(base: Path) -> str:
    """One socket: intel-rapl:0 (package-0) with its dram subzone, sysfs layout; returns the
    root to give discovery."""
    fake = _load_powercap_fake().build(base, sockets=1, dram=True, layout="sysfs")
    return str(fake.root)


# -- mark / read cost ----------------------------------------------------------------------------
def _time_mark(mark, n: int, batches: int) -> list[float]:
    """Microseconds per call, one figure per batch (for-loop overhead included)."""
    per = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(n):
            mark("tok")
        per.append((time.perf_counter() - t0) / n * 1e6)
    return per


def _time_read(read, n: int, batches: int) -> list[float]:
    per = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(n):
            read()
        per.append((time.perf_counter() - t0) / n * 1e6)
    return per


def bench_marks(root: str, cfg: dict) -> dict:
    from greenprof import Meter
    from greenprof.collectors import rapl

    n, b = cfg["mark_n"], cfg["mark_batches"]

    t0 = time.perf_counter()
    meter = Meter(collectors="auto", powercap_root=root).start()
    start_ms = (time.perf_counter() - t0) * 1e3
    try:
        domains = meter.domains
        mark_runs = _time_mark(meter.mark, n, b)
    finally:
        meter.stop()

    found = rapl.discover(root)
    try:
        col = found.collectors["cpu-package-0"]
        read_runs = _time_read(col.read_j, n, b)
    finally:
        found.close()

    with Meter(collectors=["cpu-estimate"], powercap_root=root) as est:
        est_runs = _time_mark(est.mark, n, b)

    return {
        "mark_us": statistics.median(mark_runs),
        "mark_us_estimate": statistics.median(est_runs),
        "rapl_read_us": statistics.median(read_runs),
        "domains": domains,
        "meter_start_ms": start_ms,
        "batches": {"mark_us": mark_runs, "mark_us_estimate": est_runs, "rapl_read_us": read_runs},
    }


# -- sampler CPU share ---------------------------------------------------------------------------
def bench_sampler(root: str, hz: float, seconds: float) -> dict:
    from greenprof import Meter

    with Meter(collectors="auto", sample_hz=hz, powercap_root=root) as meter:
        sampler = next(t for t in threading.enumerate() if t.name == SAMPLER_NAME and t.is_alive())
        read_cpu, how = thread_cpu_reader(sampler)
        c0, p0, w0 = read_cpu(), time.process_time(), time.perf_counter()
        n0 = len(meter._hub.samples)
        time.sleep(seconds)
        c1, p1, w1 = read_cpu(), time.process_time(), time.perf_counter()
        n1 = len(meter._hub.samples)
    wall = w1 - w0
    return {
        "share": (c1 - c0) / wall,
        "process_share": (p1 - p0) / wall,  # whole process (main thread asleep): cross-check
        "samples_per_s": (n1 - n0) / wall,
        "us_per_sample": (c1 - c0) / max(1, n1 - n0) * 1e6,
        "how": how,
    }


def bench_idle_process(seconds: float) -> float:
    """Process CPU share while the main thread sleeps and no meter runs (cross-check floor)."""
    p0, w0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return (time.process_time() - p0) / (time.perf_counter() - w0)


# -- throughput ratio ----------------------------------------------------------------------------
def py_work(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


def _calibrate(fn, unit: int, target_s: float) -> int:
    """Units of ``fn`` that take about ``target_s``."""
    fn(unit)  # warm
    best = min(_elapsed(fn, unit) for _ in range(3))
    return max(1, round(unit * target_s / best))


def _elapsed(fn, arg) -> float:
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


def make_numpy_work(size: int = 256):
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((size, size))
    b = rng.random((size, size))
    out = np.empty((size, size))

    def np_work(n: int) -> None:
        for _ in range(n):
            np.matmul(a, b, out=out)

    return np_work


def _rep(work, arg: int, chunks: int, mark=None) -> tuple[float, float]:
    """Chunks per wall-clock second and per process-CPU second over one repetition."""
    if mark is None:
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(chunks):
            work(arg)
        t1, c1 = time.perf_counter(), time.process_time()
    else:
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(chunks):
            work(arg)
            mark("tok")
        t1, c1 = time.perf_counter(), time.process_time()
    return chunks / (t1 - t0), chunks / max(c1 - c0, 1e-9)


def _tracked_rep(root: str, work, arg: int, chunks: int) -> tuple[float, float]:
    from greenprof import Meter

    # meter start/stop (discovery, opening the files) is outside the timed loop: it is paid
    # once per window, and reported separately as meter_start_ms
    with Meter(collectors="auto", sample_hz=10, powercap_root=root) as meter:
        return _rep(work, arg, chunks, meter.mark)


def bench_ratio(root: str, work, arg: int, chunks: int, pairs: int) -> dict:
    _rep(work, arg, chunks)  # warm-up, discarded
    _tracked_rep(root, work, arg, chunks)
    ratios, cpu_ratios, tracked, untracked = [], [], [], []
    for i in range(pairs):
        if i % 2 == 0:  # ABBA ordering cancels a linear drift within and across pairs
            a = _tracked_rep(root, work, arg, chunks)
            u = _rep(work, arg, chunks)
        else:
            u = _rep(work, arg, chunks)
            a = _tracked_rep(root, work, arg, chunks)
        tracked.append(a[0])
        untracked.append(u[0])
        ratios.append(a[0] / u[0])
        cpu_ratios.append(a[1] / u[1])
    return {
        "ratio": statistics.median(ratios),
        "ratio_cpu": statistics.median(cpu_ratios),
        "pair_ratios": ratios,
        "pair_ratios_cpu": cpu_ratios,
        "tracked_chunks_per_s": statistics.median(tracked),
        "untracked_chunks_per_s": statistics.median(untracked),
    }


# -- main ----------------------------------------------------------------------------------------
def _numpy_version() -> str | None:
    try:
        import numpy as np
    except ImportError:
        return None
    return np.__version__


def _ci(r: dict) -> list[float] | None:
    ci = median_ci95(r["pair_ratios"])
    return list(ci) if ci else None


def run(quick: bool) -> dict:
    cfg = QUICK if quick else FULL
    t_start = time.perf_counter()
    load_before = loadavg_1m()
    with tempfile.TemporaryDirectory(prefix="greenprof-bench-") as tmp:
        root = make_powercap(Path(tmp))

        log(f"greenprof meter overhead ({'quick' if quick else 'full'} run)")
        marks = bench_marks(root, cfg)
        log(f"  mark (auto: {', '.join(marks['domains'])}): {marks['mark_us']:.2f} us"
            f"   cpu-estimate: {marks['mark_us_estimate']:.2f} us"
            f"   one RAPL read: {marks['rapl_read_us']:.2f} us"
            f"   meter start: {marks['meter_start_ms']:.1f} ms")

        idle = bench_idle_process(cfg["sampler_s"] / 2)
        s10 = bench_sampler(root, 10.0, cfg["sampler_s"])
        s100 = bench_sampler(root, 100.0, cfg["sampler_s"])
        log(f"  sampler CPU (share of one core): 10 Hz {s10['share']:.2e} "
            f"({s10['us_per_sample']:.0f} us/sample)   100 Hz {s100['share']:.2e} "
            f"({s100['us_per_sample']:.0f} us/sample)")

        py_n = _calibrate(py_work, 20_000, CHUNK_S)
        loop = bench_ratio(root, py_work, py_n, cfg["rep_chunks"], cfg["pairs"])
        log(f"  pure-Python loop, mark every ~{CHUNK_S * 1e3:.0f} ms: ratio {loop['ratio']:.4f} "
            f"(pairs {min(loop['pair_ratios']):.4f}..{max(loop['pair_ratios']):.4f})"
            f"   per CPU second: {loop['ratio_cpu']:.4f}")

        np_work = make_numpy_work()
        np_n = _calibrate(np_work, 4, CHUNK_S)
        npr = bench_ratio(root, np_work, np_n, cfg["rep_chunks"], cfg["pairs"])
        log(f"  numpy matmul loop, mark every ~{CHUNK_S * 1e3:.0f} ms: ratio {npr['ratio']:.4f} "
            f"(pairs {min(npr['pair_ratios']):.4f}..{max(npr['pair_ratios']):.4f})"
            f"   per CPU second: {npr['ratio_cpu']:.4f}")

    duration = time.perf_counter() - t_start
    # The meter's own measured cost in a loop that marks every CHUNK_S: one mark per chunk plus
    # the 10 Hz sampler's CPU share (counted in full, as if taken from the loop).
    ratio_cost = 1.0 - (marks["mark_us"] * 1e-6 / CHUNK_S + s10["share"])
    verdicts = {name: ratio_verdict(r["ratio"], r["pair_ratios"], TARGET)
                for name, r in (("ratio", loop), ("ratio_numpy", npr))}
    meets = all(v == MEETS for v in verdicts.values())
    rep_s = cfg["rep_chunks"] * CHUNK_S
    method = (
        f"mark_us / mark_us_estimate / rapl_read_us: median over {cfg['mark_batches']} batches of "
        f"{cfg['mark_n']} back-to-back calls timed with perf_counter (for-loop overhead included); "
        "marks run with the 10 Hz sampler on. RAPL files are a fake powercap tree "
        "(tests/powercap_fake.py, sysfs layout, one package + dram) on a regular filesystem, read "
        "by the real RaplCollector; a real sysfs read also costs the kernel's MSR read. "
        f"sampler_cpu_share_*: the sampler thread's own CPU clock ({s10['how']}) over "
        f"{cfg['sampler_s']:g} s while the main thread sleeps, divided by wall time "
        "(details.*.process_share is the whole process's CPU share over the same window, "
        "details.idle_process_share the same with no meter). "
        f"ratio / ratio_numpy: chunks of ~{CHUNK_S * 1e3:.0f} ms of work (pure-Python integer "
        "loop / 256x256 float64 matmuls), one meter.mark() after each chunk; "
        f"{cfg['rep_chunks']} chunks (~{rep_s:g} s) per repetition; tracked = a fresh "
        "Meter(collectors='auto', sample_hz=10) per repetition (start/stop outside the timed "
        "loop), untracked = same loop, no meter, no marks; "
        f"{cfg['pairs']} tracked/untracked pairs in ABBA order after one discarded warm-up of "
        "each; ratio = median of per-pair wall-clock throughput ratios (the target applies to "
        "ratio and ratio_numpy). ratio_cpu / ratio_numpy_cpu: the same pairs, throughput per "
        "second of process CPU time (every thread: the sampler's and BLAS's included), which "
        "other processes on a busy machine disturb less; it misses GIL hand-off waits. "
        "machine.loadavg_1m_before > 0.5 means other work was running and wall-clock ratios are "
        "noisy. ratio_ci95 / ratio_numpy_ci95: distribution-free 95 % interval of the median pair "
        "ratio. ratio_cost = 1 - (mark_us / chunk + sampler_cpu_share_10hz): the meter's own "
        "measured cost in the same loop, a detail: it never decides a verdict. verdicts, per ratio: "
        "'meets' when the median pair ratio reaches the target, 'inconclusive' when it does not but "
        "its 95 % interval reaches it (this run cannot tell), 'misses' otherwise; meets_target: "
        "both meet."
    )
    notes = []
    if load_before is not None and load_before > 0.5:
        notes.append(f"load average was {load_before:.2f} before the run: other work shares these CPUs, so "
                     "wall-clock ratios are noisy (see ratio_cpu)")
    if quick:
        notes.append(f"quick run ({cfg['pairs']} pairs): a smoke test, not a measurement; too few pairs for a "
                     "95 % interval")
    return {
        "mark_us": marks["mark_us"],
        "mark_us_estimate": marks["mark_us_estimate"],
        "rapl_read_us": marks["rapl_read_us"],
        "sampler_cpu_share_10hz": s10["share"],
        "sampler_cpu_share_100hz": s100["share"],
        "ratio": loop["ratio"],
        "ratio_numpy": npr["ratio"],
        "ratio_cpu": loop["ratio_cpu"],
        "ratio_numpy_cpu": npr["ratio_cpu"],
        "ratio_ci95": _ci(loop),
        "ratio_numpy_ci95": _ci(npr),
        "ratio_cost": ratio_cost,
        "target": TARGET,
        "meets_target": meets,
        "verdicts": verdicts,
        "notes": notes,
        "machine": {**machine_info(), "loadavg_1m_after": loadavg_1m(), "numpy": _numpy_version(),
                    "loadavg_1m_before": load_before},
        "duration_s": duration,
        "quick": quick,
        "method": method,
        "details": round_floats({
            "domains": marks["domains"],
            "meter_start_ms": marks["meter_start_ms"],
            "mark_batches_us": marks["batches"],
            "mark_share_at_100_marks_per_s": marks["mark_us"] * 100 / 1e6,
            "idle_process_share": idle,
            "sampler_10hz": s10,
            "sampler_100hz": s100,
            "loop": {**loop, "units_per_chunk": py_n},
            "numpy": {**npr, "matmuls_per_chunk": np_n},
        }, 6),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="meter_overhead.py",
        description="Measure greenprof's overhead on this machine: cost of one mark(), CPU used "
                    "by the sampler thread, and the throughput ratio of a CPU-bound loop with "
                    "and without a running meter (target >= 0.99). A human summary goes to "
                    "stderr.",
    )
    parser.add_argument("--json", action="store_true",
                        help="also print one JSON object with every figure on stdout")
    parser.add_argument("--quick", action="store_true",
                        help="short, noisy run (a few seconds), for smoke tests")
    parser.add_argument("--save", action="store_true",
                        help="also write the JSON to benchmarks/results/meter_overhead-<date>.json")
    args = parser.parse_args(argv)

    result = run(args.quick)
    for name, v in result["verdicts"].items():
        ci = result[f"{name}_ci95"]
        log(f"  {name} {result[name]:.4f}" + (f" (95 % interval {ci[0]:.3f}..{ci[1]:.3f})" if ci else " (no interval)")
            + f": {shout(v)} (target >= {TARGET})")
    log(f"  meter's measured cost in a loop marking every {CHUNK_S * 1e3:.0f} ms (a detail, not a verdict): "
        f"ratio_cost {result['ratio_cost']:.5f}")
    for note in result["notes"]:
        log(f"  note: {note}")
    log(f"  {'meets' if result['meets_target'] else 'does not meet'} the target (ratio and ratio_numpy >= {TARGET}); "
        f"{result['machine']['cpu_count']} CPUs, Python {result['machine']['python']}; "
        f"took {result['duration_s']:.1f} s")
    emit("meter_overhead", result, save=args.save, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
