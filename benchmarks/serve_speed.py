#!/usr/bin/env python3
"""What does energy accounting cost a server? `greenprof serve` with accounting on vs off.

    python benchmarks/serve_speed.py                 # human summary on stderr
    python benchmarks/serve_speed.py --json          # plus one JSON object on stdout
    python benchmarks/serve_speed.py --quick         # a short run, for smoke tests
    python benchmarks/serve_speed.py --save          # also benchmarks/results/serve_speed-<date>.json

For each model (``tiny`` and ``smollm-135m`` by default) one ``greenprof serve`` process is
started on 127.0.0.1 with a hidden switch (``--bench-toggle``) that lets this script turn energy
accounting off and on between rounds: **on** is how the server always runs (the node window,
one split window per request with a mark per token, the run stored, the energy in the answer);
**off** runs the same requests with no meter window, no store write and no energy fields. The
rounds alternate on/off in ABBA order on the same process, so drift (caches, other load) falls
on both. Each round, 8 client threads (plain keep-alive HTTP, to keep the client's own CPU use
small) each send the same number of chat completions (fixed length: ``ignore_eos``).

Per mode: requests/s and output tokens/s over the round's wall time, the p50/p99 latency of
single requests (client-side, pooled over rounds), and the server process's CPU time per request
(/proc, read after each round once the store writer has had time to write the round's runs, so
on a CPU-bound machine ``accounting_cpu_ms_per_request``, on minus off per pair, is what the
accounting costs each request in CPU, whatever the model). ``ratio`` = on / off throughput: the median
of the per-pair ratios with a distribution-free 95 % interval. Target >= 0.98: ``meets`` only
when the median meets it, ``inconclusive`` when it does not but the interval reaches it,
``misses`` otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from _common import emit, loadavg_1m, log, machine_info, median_with_ci, ratio_verdict, round_floats, shout

TARGET = 0.98
#: the pause after each round before the server's CPU time is read (the store writer batches for 0.25 s)
WRITER_DRAIN_S = 0.5
CLIENTS = 8
FULL = {"tiny": dict(rounds=16, per_client=8, max_tokens=64), "smollm-135m": dict(rounds=12, per_client=1, max_tokens=32)}
QUICK = {"tiny": dict(rounds=4, per_client=2, max_tokens=16), "smollm-135m": dict(rounds=2, per_client=1, max_tokens=4)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, body: dict | None = None, conn: http.client.HTTPConnection | None = None):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    r = conn.getresponse()
    raw = r.read()
    if own:
        conn.close()
    if r.status != 200:
        raise RuntimeError(f"{method} {path}: HTTP {r.status}: {raw[:300]!r}")
    return json.loads(raw)


class ServerProc:
    def __init__(self, model: str, tmp: Path) -> None:
        self.port = free_port()
        self._cpu = None  # a greenprof.cpushare.CpuTimesReader on the server's /proc/PID/stat
        self.log = open(tmp / f"{model}.err", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "greenprof.cli", "serve", model, "--port", str(self.port), "--db",
             str(tmp / f"{model}.db"), "--bench-toggle", "--idle-run-s", "0"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 1800  # a first build of smollm-135m takes a while
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve_speed: the server for {model} exited: "
                                 f"{(tmp / f'{model}.err').read_text()[-1000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"serve_speed: the server for {model} did not start")
                time.sleep(0.2)

    def cpu_s(self) -> float:
        """The server process's CPU time so far (user + system, all threads), from /proc."""
        if self._cpu is None:
            from greenprof.cpushare import CpuTimesReader

            self._cpu = CpuTimesReader(self_stat_path=f"/proc/{self.proc.pid}/stat")
        times = self._cpu.read()
        if times is None:
            raise SystemExit(f"serve_speed: cannot read the server's CPU time: {self._cpu.why_not}")
        return times.process_s

    def stop(self) -> int:
        if self._cpu is not None:
            self._cpu.close()
        self.proc.terminate()
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.log.close()


def one_round(port: int, model: str, per_client: int, max_tokens: int, seed0: int):
    """CLIENTS threads x per_client requests; (wall s, latencies, output tokens, energies)."""
    lat: list[float] = []
    tokens: list[int] = []
    energy: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(CLIENTS + 1)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.connect()
        go.wait()
        try:
            for i in range(per_client):
                body = {"model": model, "messages": [{"role": "user", "content": f"client {k} request {i}"}],
                        "max_tokens": max_tokens, "ignore_eos": True, "seed": seed0 + k * 1000 + i}
                t = time.perf_counter()
                doc = call(port, "POST", "/v1/chat/completions", body, conn)
                dt = time.perf_counter() - t
                with lock:
                    lat.append(dt)
                    tokens.append(doc["usage"]["completion_tokens"])
                    if doc["usage"].get("energy_j") is not None:
                        energy.append(doc["usage"]["energy_j"])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"serve_speed: {len(errors)} request(s) failed: {errors[0]}")
    return wall, lat, tokens, energy


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def bench_model(model: str, cfg: dict, tmp: Path) -> dict:
    log(f"{model}: starting greenprof serve (building the model on first use)")
    srv = ServerProc(model, tmp)
    try:
        port = srv.port
        # warm-up, both modes
        for on in (True, False):
            call(port, "POST", "/greenprof/bench/accounting", {"enabled": on})
            one_round(port, model, 1, cfg["max_tokens"], 10_000_000)
        modes = {on: {"rps": [], "tps": [], "lat": [], "energy": [], "cpu_ms": []} for on in (True, False)}
        pairs: list[float] = []
        cpu_pairs: list[float] = []
        for r in range(cfg["rounds"]):
            order = (True, False) if r % 2 == 0 else (False, True)  # ABBA
            got = {}
            for on in order:
                call(port, "POST", "/greenprof/bench/accounting", {"enabled": on})
                cpu0 = srv.cpu_s()
                wall, lat, tokens, energy = one_round(port, model, cfg["per_client"], cfg["max_tokens"], r * 100_000)
                time.sleep(WRITER_DRAIN_S)  # both modes: the store writes an "on" round's runs meanwhile
                m = modes[on]
                m["cpu_ms"].append((srv.cpu_s() - cpu0) / len(lat) * 1e3)
                m["rps"].append(len(lat) / wall)
                m["tps"].append(sum(tokens) / wall)
                m["lat"] += lat
                m["energy"] += energy
                got[on] = len(lat) / wall
            pairs.append(got[True] / got[False])
            cpu_pairs.append(modes[True]["cpu_ms"][-1] - modes[False]["cpu_ms"][-1])
            log(f"{model}: round {r + 1}/{cfg['rounds']}: on {got[True]:.2f} req/s, off {got[False]:.2f} req/s, "
                f"ratio {pairs[-1]:.3f}")
        status = call(port, "GET", "/health")
    finally:
        code = srv.stop()
    if code != 0:
        raise SystemExit(f"serve_speed: the {model} server exited with {code}")
    ratio = median_with_ci(pairs)
    cpu = median_with_ci(cpu_pairs)
    out = {"rounds": cfg["rounds"], "clients": CLIENTS, "requests_per_client": cfg["per_client"],
           "max_tokens": cfg["max_tokens"], "pair_ratios": pairs, "ratio": ratio["median"], "ratio_ci95": ratio["ci95"],
           "target": TARGET, "verdict": ratio_verdict(ratio["median"], pairs, TARGET), "in_flight_at_end": status["in_flight"],
           "accounting_cpu_ms_per_request": cpu["median"], "accounting_cpu_ms_per_request_ci95": cpu["ci95"]}
    for on, name in ((True, "on"), (False, "off")):
        m = modes[on]
        out[name] = {"requests_per_s": statistics.median(m["rps"]), "output_tokens_per_s": statistics.median(m["tps"]),
                     "p50_latency_s": pct(m["lat"], 0.50), "p99_latency_s": pct(m["lat"], 0.99), "requests": len(m["lat"]),
                     "cpu_ms_per_request": statistics.median(m["cpu_ms"])}
    e = modes[True]["energy"]
    out["on"]["j_per_request"] = statistics.fmean(e) if e else None
    out["on"]["energy_fields"] = len(e) == out["on"]["requests"]
    out["off"]["energy_fields"] = bool(modes[False]["energy"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    ap.add_argument("--save", action="store_true", help="also write benchmarks/results/serve_speed-<date>.json")
    ap.add_argument("--models", default="tiny,smollm-135m", help="comma-separated built-in models")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    doc = {"method": __doc__.split("\n\n", 1)[1].strip(), "load_1m_before": loadavg_1m(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="gp-serve-speed-") as tmp:
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            cfg = plan.get(model, plan["tiny"])
            doc["models"][model] = bench_model(model, cfg, Path(tmp))
    doc["load_1m_after"] = loadavg_1m()
    doc["machine"] = machine_info()
    doc = round_floats(doc)
    log("")
    for model, r in doc["models"].items():
        ci = r["ratio_ci95"]
        log(f"{model}: on {r['on']['requests_per_s']:.2f} req/s ({r['on']['output_tokens_per_s']:.0f} tok/s, "
            f"p50 {r['on']['p50_latency_s'] * 1e3:.0f} ms, p99 {r['on']['p99_latency_s'] * 1e3:.0f} ms) vs off "
            f"{r['off']['requests_per_s']:.2f} req/s ({r['off']['output_tokens_per_s']:.0f} tok/s, p50 "
            f"{r['off']['p50_latency_s'] * 1e3:.0f} ms, p99 {r['off']['p99_latency_s'] * 1e3:.0f} ms): ratio "
            f"{r['ratio']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (target >= {TARGET}) {shout(r['verdict'])}"
            if ci else f"{model}: ratio {r['ratio']:.3f} (no interval with {len(r['pair_ratios'])} pairs) "
            f"{shout(r['verdict'])}")
        cci = r["accounting_cpu_ms_per_request_ci95"]
        log(f"{model}: server CPU per request on {r['on']['cpu_ms_per_request']:.2f} ms, off "
            f"{r['off']['cpu_ms_per_request']:.2f} ms; accounting costs {r['accounting_cpu_ms_per_request']:.3f} ms"
            + (f" [{cci[0]:.3f}, {cci[1]:.3f}]" if cci else "") + " of CPU per request")
    emit("serve_speed", doc, save=args.save, as_json=args.json)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
