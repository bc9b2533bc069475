#!/usr/bin/env python3
"""How fast is greenprof's decode loop, against onnxruntime-genai's own runtime and this
machine's memory bandwidth, and what does measuring cost? One run, everything side by side.

    python benchmarks/runner_speed.py            # human summary on stderr
    python benchmarks/runner_speed.py --json     # plus one JSON object on stdout
    python benchmarks/runner_speed.py --save     # plus benchmarks/results/runner_speed-<date>.json
    python benchmarks/runner_speed.py --quick    # smoke run on the "tiny" shape (seconds)

Needs the ``bench`` extra (``pip install -e '.[bench]'``; the ``test`` extra has it too):
onnxruntime-genai, onnx-ir, transformers, torch. Each section interleaves what it compares
(the order rotates every round, after one discarded warm-up of each) and reports medians; a
headline ratio is the median of the per-round ratios, with a distribution-free 95 % interval of
that median (``_common.median_ci95``). Verdicts (``verdicts``): ``meets`` when the headline
meets its target, ``inconclusive`` when it does not but its 95 % interval reaches the target,
``misses`` otherwise. Nothing else (no cost model, no best-of) decides a verdict.

1. ``ratio_vs_genai`` (target <= 1.00): decode ms/token of greenprof's built-in model
   (``builder.build(name, "fp32")``, ``load(threads=2, spinning=False)``, ``generate(prompt_tokens
   =128, new_tokens=64)``) over that of onnxruntime-genai's own runtime (``genai_runtime``:
   ``og.Model`` + ``og.Generator``, greedy, CPU provider, the same threads and spinning set in the
   session options) on the same shape exported by onnxruntime-genai's model builder (``python -m
   onnxruntime_genai.models.builder -p fp32 -e cpu`` from a random-weight transformers
   ``LlamaForCausalLM`` with the shape's config; cached in the model cache as ``bench-genai-*``).
   The two run back to back in every round (order alternating), so the per-round ratio compares
   generations under the same conditions. After them, in the same rounds: greenprof's runner on
   that genai export itself
   (``ratio_export_vs_genai``: a user's export gets the built-in model's shared-KV path), and a
   hand-written ``session.run`` loop over the export (``details``; it grows and copies its cache
   every step, which neither runtime does).
2. ``settings``: the measuring configurations compared on J per token (``accounting.attribute``
   over a ``Meter()`` with the default collectors, as ``greenprof measure`` charges it; with the
   CPU-time estimate J/token follows process CPU time), ms per token and roofline fraction:
   intra-op threads {onnxruntime's default, 1, the usable CPUs} x spinning {off, on}. The J/token
   compared (``j_per_token``) also charges the 0.2 s after the last token, where a spinning pool
   keeps spinning; ``j_per_token_as_reported`` is the decode segments alone, what measure shows.
   ``settings.lowest_j_per_token`` names the cheapest; ``settings.spinning_on_vs_off`` compares
   spinning on with off at measure's default threads (J/token ratio on / off with its interval).
3. ``roofline_fraction`` (target >= 0.80): with the settings ``greenprof measure`` uses by
   default (``MeasureRequest``'s threads and spinning), ``weight_bytes_per_token`` / median decode
   seconds per token over the median of ``mem_bandwidth_gbps`` probes (read-only numpy kernels
   over a 1 GiB float32 array: ``sum`` on 1 thread, ``sum`` and ``dot`` split over 2 threads; the
   kernel with the highest median; one probe per round of section 2): median against median.
   The interval is that of the per-round fractions (each generation over the probe of its
   round). ``weight_bytes_per_token`` is the initializer bytes one decode step must read, from the
   ONNX graph: every MatMul weight (the tied LM head through its Transpose), one embedding row
   and the RMSNorm weights; the KV cache and the rotary rows are not counted (``details`` has the
   KV bytes). ``op_profile``: where one decode step's time goes at those settings, from
   onnxruntime's profiler over one generation: kernel time per op type and token, the time inside
   each Run outside any kernel, and the MatMul kernels' GB/s over their weights beside the probe.
4. ``tracked_ratio`` (target >= 0.99): tokens/s with a ``Meter(sample_hz=10)`` passed as
   ``meter=`` (one mark per token) over tokens/s without, median over adjacent (untracked,
   tracked) pairs (order alternating). The meter's own measured cost (wall time in ``mark()``
   plus the sampler thread's CPU time, over the ``generate()`` call) is reported beside it as
   ``tracked_ratio_cost``, a detail.
5. ``fused_attention``: the same model built with ``attention="plain"`` (standard ONNX ops) vs
   the fused GroupQueryAttention, decode and prefill, interleaved (``--fused-rounds 0`` skips it).

Measured results are not kept here: ``--save`` writes them, dated and with the machine, under
``benchmarks/results/``, and the README's Benchmarks section quotes them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import (MEETS, loadavg_1m, log, machine_info, median_ci95, ratio_verdict, round_floats, emit, shout,
                     thread_cpu_reader, verdict)
from genai_export import GenaiLoop, GenaiRuntime, genai_build

TARGET_RATIO_VS_GENAI = 1.00  # ours / theirs, decode ms per token: lower is better
TARGET_ROOFLINE = 0.80
TARGET_TRACKED = 0.99

FULL = dict(model="smollm-135m", prompt_tokens=128, new_tokens=64, rounds=10, bw_mib=1024, bw_warm=3,
            settings_rounds=8, fused_rounds=8, long_prompt_tokens=1024, tracked_pairs=16)
QUICK = dict(model="tiny", prompt_tokens=16, new_tokens=8, rounds=2, bw_mib=128, bw_warm=1,
             settings_rounds=2, fused_rounds=2, long_prompt_tokens=64, tracked_pairs=6)
SAMPLER_NAME = "greenprof-sampler"
SPIN_SETTLE_S = 0.2
INSTALL_HINT = "pip install -e '.[bench]'"


# -- dependencies ------------------------------------------------------------------------------
def missing_bench_deps() -> list[str]:
    """Import names of the bench extra's packages that are not installed (nothing imported).

    ``onnx_ir`` is imported by onnxruntime-genai's model builder but not declared by it."""
    return [m for m in ("onnxruntime_genai", "transformers", "torch", "onnx_ir")
            if importlib.util.find_spec(m) is None]


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("onnxruntime", "onnxruntime-genai", "torch", "transformers", "onnx", "numpy", "onnx-ir",
                 "greenprof"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


# -- graph facts ---------------------------------------------------------------------------------
def graph_facts(model_file: Path) -> dict[str, Any]:
    """Op counts and the initializer bytes one decode step reads (see the module docs)."""
    import numpy as np
    import onnx
    from onnx import helper

    m = onnx.load(str(model_file), load_external_data=False)
    g = m.graph
    inits = {}
    for t in g.initializer:
        n = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
        inits[t.name] = (n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize, list(t.dims))
    producer = {o: node for node in g.node for o in node.output}

    def weight_of(name: str) -> tuple[str, list[int]] | None:
        """(initializer, its dims as the node sees them) for a weight input, through a Transpose."""
        if name in inits:
            return name, inits[name][1]
        node = producer.get(name)
        if node is None or not node.input or node.input[0] not in inits:
            return None
        src, dims = node.input[0], inits[node.input[0]][1]
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(range(len(dims)))[::-1])
            return src, [dims[p] for p in perm]
        if node.op_type == "Cast":
            return src, dims
        return None

    # (kind, initializer) -> bytes read per decode step; a tied embedding is counted twice, as the
    # whole LM head matrix and as one embedding row (onnxruntime folds the Transpose at load into a
    # second buffer, so they are different memory anyway).
    touched: dict[tuple[str, str], int] = {}
    for node in g.node:
        op = node.op_type
        if op in ("MatMul", "Gemm", "MatMulNBits", "MatMulInteger", "FusedMatMul"):
            for name in node.input[1:]:
                w = weight_of(name) if name else None
                if w is not None:
                    touched[("matmul", w[0])] = inits[w[0]][0]
        elif op in ("Gather", "GatherBlockQuantized") and node.input:
            w = weight_of(node.input[0])
            if w is not None and len(w[1]) >= 2:
                touched[("embedding row", w[0])] = inits[w[0]][0] // max(1, w[1][0])
                for extra in node.input[2:]:  # quantization scales / zero points of that row
                    if extra in inits and inits[extra][1]:
                        touched[("embedding row", extra)] = inits[extra][0] // max(1, inits[extra][1][0])
        elif op in ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "LayerNormalization",
                    "SkipLayerNormalization", "RMSNormalization"):
            for name in node.input[1:]:
                w = weight_of(name) if name else None
                if w is not None and len(w[1]) == 1:
                    touched[("norm", w[0])] = inits[w[0]][0]
        elif op == "Mul" and len(node.input) == 2:  # an unfused RMSNorm's gamma (the first one in ours)
            for name in node.input:
                w = weight_of(name)
                if w is not None and len(w[1]) == 1 and w[1][0] > 1:
                    touched[("norm", w[0])] = inits[w[0]][0]
    by_kind: dict[str, int] = Counter()
    for (kind, _), nbytes in touched.items():
        by_kind[kind] += nbytes
    data_files = {e.value for t in g.initializer for e in t.external_data if e.key == "location"}
    data_bytes = sum((model_file.parent / f).stat().st_size for f in data_files if (model_file.parent / f).is_file())
    ops = Counter(f"{n.domain + '.' if n.domain and n.domain != 'ai.onnx' else ''}{n.op_type}" for n in g.node)
    return {
        "weight_bytes_per_token": int(sum(touched.values())),
        "weight_bytes_by_kind": dict(by_kind),
        "external_data_bytes": int(data_bytes),
        "initializer_bytes": int(sum(b for b, _ in inits.values())),
        "ops": dict(sorted(ops.items())),
        "inputs": [i.name for i in g.input][:4] + ([f"... ({len(g.input)} in all)"] if len(g.input) > 4 else []),
    }


# -- memory bandwidth ----------------------------------------------------------------------------
def make_bandwidth_probe(mib: int):
    """A () -> {kernel: GB/s} function, each kernel one pass over a ``mib`` MiB float32 array."""
    import numpy as np

    a = np.full((mib << 20) // 4, 1.0, dtype=np.float32)
    halves = np.array_split(a, 2)
    nbytes = a.nbytes

    def split(fn) -> None:
        ts = [threading.Thread(target=fn, args=(h,)) for h in halves]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    kernels = {
        "sum_1t": lambda: a.sum(),
        "sum_2t": lambda: split(lambda h: h.sum()),
        "dot_2t": lambda: split(lambda h: np.dot(h, h)),
    }

    def probe() -> dict[str, float]:
        out = {}
        for name, fn in kernels.items():
            t0 = time.perf_counter()
            fn()
            out[name] = nbytes / (time.perf_counter() - t0) / 1e9
        return out

    return probe


# -- machine -------------------------------------------------------------------------------------
def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# -- fused vs plain attention -------------------------------------------------------------------
def fused_attention_section(cfg: dict[str, Any], threads: int, cache_dir: str | None, gqa_model: Any,
                            gqa_facts: dict[str, Any]) -> dict[str, Any]:
    """The same model built with onnxruntime's fused GroupQueryAttention ("gqa", what greenprof
    builds) and with the attention in standard ONNX ops ("plain"), generations interleaved.

    Per round, in the order gqa, plain (even rounds) or plain, gqa (odd ones): one generation of
    ``prompt_tokens`` + ``new_tokens`` (decode ms/token and prefill ms) and one prefill of
    ``long_prompt_tokens`` (``new_tokens=1``), after one discarded warm-up of each. Figures are
    medians over rounds; ratios are gqa / plain (below 1: the fused kernel is faster)."""
    from greenprof.models.builder import build, is_built
    from greenprof.models.loader import load
    from greenprof.models.runner import generate

    model, P, N = cfg["model"], cfg["prompt_tokens"], cfg["new_tokens"]
    rounds = cfg["fused_rounds"]
    cached = is_built(model, "fp32", cache_dir, attention="plain")
    t0 = time.perf_counter()
    plain_dir = build(model, "fp32", cache_dir, attention="plain")
    plain_build_s = time.perf_counter() - t0
    log(f"fused vs plain attention: {model} fp32, prompt {P} + {N} new tokens and a {cfg['long_prompt_tokens']}-token "
        f"prefill, {rounds} rounds; plain: {plain_dir} ({'cached' if cached else 'built'} in {plain_build_s:.1f} s)")
    plain_model = load(plain_dir, threads=threads, spinning=False)
    models = {"gqa": gqa_model, "plain": plain_model}
    context = min(m.context_length or 1 << 30 for m in models.values())
    L = max(1, min(cfg["long_prompt_tokens"], context - 1))

    def one(kind: str) -> tuple[float, float, float]:
        g = generate(models[kind], prompt_tokens=P, new_tokens=N)
        long = generate(models[kind], prompt_tokens=L, new_tokens=1)
        return (sum(g.token_durations_s) / len(g.token_durations_s) * 1e3, g.prefill_duration_s * 1e3,
                long.prefill_duration_s * 1e3)

    for kind in models:  # warm-ups (discarded)
        one(kind)
    dec: dict[str, list[float]] = {"gqa": [], "plain": []}
    pre: dict[str, list[float]] = {"gqa": [], "plain": []}
    pre_long: dict[str, list[float]] = {"gqa": [], "plain": []}
    for r in range(rounds):
        order = ("gqa", "plain") if r % 2 == 0 else ("plain", "gqa")
        for kind in order:
            d, p, pl = one(kind)
            dec[kind].append(d)
            pre[kind].append(p)
            pre_long[kind].append(pl)
        log(f"  round {r + 1}/{rounds} ({', '.join(order)}): decode gqa {dec['gqa'][-1]:.2f} plain "
            f"{dec['plain'][-1]:.2f} ms/token; prefill {P} gqa {pre['gqa'][-1]:.1f} plain {pre['plain'][-1]:.1f} ms; "
            f"prefill {L} gqa {pre_long['gqa'][-1]:.1f} plain {pre_long['plain'][-1]:.1f} ms")

    def pairs(xs: dict[str, list[float]]) -> dict[str, Any]:
        rs = [a / b for a, b in zip(xs["gqa"], xs["plain"])]
        q = statistics.quantiles(rs, n=4) if len(rs) >= 2 else [rs[0], rs[0], rs[0]]
        return {"median": _med(rs), "interquartile": [q[0], q[2]], "gqa_faster_rounds": sum(r < 1 for r in rs)}

    med = {name: {k: _med(v) for k, v in xs.items()} for name, xs in
           (("decode", dec), ("prefill", pre), ("prefill_long", pre_long))}
    ratios = {name: m["gqa"] / m["plain"] for name, m in med.items()}
    plain_facts = graph_facts(plain_dir / "model.onnx")
    ops = lambda facts: {k: v for k, v in facts["ops"].items()  # noqa: E731
                         if k in ("MatMul", "Softmax", "com.microsoft.GroupQueryAttention", "Concat", "Transpose")}
    return round_floats({
        "model": model,
        "precision": "fp32",
        "prompt_tokens": P,
        "new_tokens": N,
        "long_prompt_tokens": L,
        "rounds": rounds,
        "gqa_decode_ms_per_token": med["decode"]["gqa"],
        "plain_decode_ms_per_token": med["decode"]["plain"],
        "gqa_prefill_ms": med["prefill"]["gqa"],
        "plain_prefill_ms": med["prefill"]["plain"],
        "gqa_prefill_long_ms": med["prefill_long"]["gqa"],
        "plain_prefill_long_ms": med["prefill_long"]["plain"],
        "decode_ratio": ratios["decode"],
        "prefill_ratio": ratios["prefill"],
        "prefill_long_ratio": ratios["prefill_long"],
        "fused_faster": {name: bool(r < 1) for name, r in ratios.items()},
        "ratio_is": "gqa / plain (ms): below 1 the fused GroupQueryAttention is faster",
        "pair_ratios": {"decode": pairs(dec), "prefill": pairs(pre), "prefill_long": pairs(pre_long)},
        "per_generation_ms": {"decode": dec, "prefill": pre, "prefill_long": pre_long},
        "graph_ops": {"gqa": ops(gqa_facts), "plain": ops(plain_facts)},
        "plain_dir": str(plain_dir),
        "plain_cached": cached,
        "plain_build_s": plain_build_s,
    }, 4)




# -- helpers shared by the sections -----------------------------------------------------------------
def _ms_per_token(durations: list[float]) -> float:
    return sum(durations) / len(durations) * 1e3


def _order(kinds: list[str], r: int) -> list[str]:
    """Round ``r``'s order: the kinds rotated by ``r``, so each one runs in each slot in turn."""
    k = r % len(kinds)
    return kinds[k:] + kinds[:k]


def _paired(num: list[float], den: list[float]) -> dict[str, Any]:
    """Per-round ratios num / den: their median with its 95 % interval, and the ratio of medians."""
    rs = [a / b for a, b in zip(num, den)]
    ci = median_ci95(rs)
    return {"median": _med(rs), "ci95": list(ci) if ci else None, "per_round": rs,
            "ratio_of_medians": _med(num) / _med(den)}


def _ci_text(ci: list[float] | None) -> str:
    return f"95 % interval {ci[0]:.3f}..{ci[1]:.3f}" if ci else "no 95 % interval (fewer than 6 rounds)"


# -- 1. greenprof vs onnxruntime-genai's runtime ----------------------------------------------------
def vs_genai_section(cfg: dict[str, Any], threads: int, ours_dir: Path, genai_dir: Path) -> tuple[dict[str, Any], Any]:
    """Interleaved rounds of: greenprof's built-in model ("ours"), onnxruntime-genai's runtime on
    its export ("genai"), greenprof's runner on that export ("ours_on_genai_export") and the
    hand-written loop over it ("hand_loop"). Returns the section's figures and ours' loaded model."""
    from greenprof.models.loader import load
    from greenprof.models.runner import generate

    P, N, rounds = cfg["prompt_tokens"], cfg["new_tokens"], cfg["rounds"]
    load_s: dict[str, float] = {}
    t0 = time.perf_counter()
    ours = load(ours_dir, threads=threads, spinning=False)
    load_s["ours"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    runtime = GenaiRuntime(genai_dir, threads, spinning=False)
    load_s["genai"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    export = load(genai_dir, threads=threads, spinning=False)
    load_s["ours_on_genai_export"] = time.perf_counter() - t0
    hand = GenaiLoop(genai_dir, threads)
    log(f"vs onnxruntime-genai: {runtime.name}, {threads} threads, spinning off, prompt {P} + {N} new tokens, "
        f"{rounds} rounds")

    fast_path: dict[str, bool] = {}

    def ours_like(model: Any, kind: str) -> tuple[float, list[float]]:
        g = generate(model, prompt_tokens=P, new_tokens=N)
        fast_path[kind] = g.shared_kv
        return g.prefill_duration_s, g.token_durations_s

    prompt = generate(ours, prompt_tokens=P, new_tokens=1).prompt_ids  # the same ids for every runner
    runners = {
        "ours": lambda: ours_like(ours, "ours"),
        "genai": lambda: runtime.generate(prompt, N),
        "ours_on_genai_export": lambda: ours_like(export, "ours_on_genai_export"),
        "hand_loop": lambda: hand.generate(prompt, N),
    }
    kinds = list(runners)
    for kind in kinds:  # warm-ups (discarded): first passes page weights in and size the arenas
        runners[kind]()
    ms: dict[str, list[float]] = {k: [] for k in kinds}
    prefill_ms: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds):
        # the headline pair (ours, genai) always back to back, its order alternating; the details after
        order = ["ours", "genai", "ours_on_genai_export", "hand_loop"] if r % 2 == 0 else \
            ["genai", "ours", "hand_loop", "ours_on_genai_export"]
        for kind in order:
            pre, durs = runners[kind]()
            ms[kind].append(_ms_per_token(durs))
            prefill_ms[kind].append(pre * 1e3)
        log(f"  round {r + 1}/{rounds}: " + "  ".join(f"{k} {ms[k][-1]:.2f}" for k in kinds) + " ms/token")
    vs = _paired(ms["ours"], ms["genai"])
    export_vs = _paired(ms["ours_on_genai_export"], ms["genai"])
    hand_vs = _paired(ms["ours"], ms["hand_loop"])
    out = {
        "genai_runtime": runtime.name,
        "session_options": runtime.session_options,
        "ms_per_token": {k: _med(v) for k, v in ms.items()},
        "prefill_ms": {k: _med(v) for k, v in prefill_ms.items()},
        "ratio_vs_genai": vs,
        "ratio_export_vs_genai": export_vs,
        "ratio_vs_hand_loop": hand_vs,
        "shared_kv": fast_path,
        "per_generation_ms": ms,
        "load_s": load_s,
        "rounds": rounds,
    }
    del runtime, export, hand
    return out, ours


# -- 2 and 3. measuring settings: J/token, speed, roofline ------------------------------------------
def _setting_key(threads: int | None, spinning: bool) -> str:
    return f"threads={'default' if threads is None else threads},spinning={'on' if spinning else 'off'}"


def settings_section(cfg: dict[str, Any], ours_dir: Path, probe: Any, wbytes: int) -> dict[str, Any]:
    """Every (threads, spinning) setting in interleaved rounds, each generation measured by a
    Meter with the default collectors and charged as ``greenprof measure`` charges it; one
    bandwidth probe per round."""
    from greenprof import Meter
    from greenprof.accounting import attribute
    from greenprof.measure import MeasureRequest
    from greenprof.models.loader import load
    from greenprof.models.runner import generate

    P, N, rounds = cfg["prompt_tokens"], cfg["new_tokens"], cfg["settings_rounds"]
    defaults = MeasureRequest()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    thread_choices: list[int | None] = [defaults.threads] + [t for t in dict.fromkeys((1, usable))
                                                              if t != defaults.threads]
    settings = [(t, s) for t in thread_choices for s in (False, True)]
    default_key = _setting_key(defaults.threads, defaults.spinning)
    keys = [_setting_key(t, s) for t, s in settings]
    models = {k: load(ours_dir, threads=t, spinning=s) for k, (t, s) in zip(keys, settings)}
    log(f"measuring settings: {len(keys)} settings x {rounds} rounds ({cfg['model']} fp32, prompt {P} + {N}); "
        f"measure's default: {default_key}")

    ms: dict[str, list[float]] = {k: [] for k in keys}
    jpt: dict[str, list[float]] = {k: [] for k in keys}
    cpu_ms: dict[str, list[float]] = {k: [] for k in keys}
    domains: set[str] = set()
    methods: set[str] = set()
    reported_jpt: dict[str, list[float]] = {}

    def one(key: str) -> tuple[float, float, float]:
        c0 = time.process_time()
        with Meter() as meter:
            g = generate(models[key], prompt_tokens=P, new_tokens=N, meter=meter)
            # Spinning workers keep spinning a while after the run returns: the same settle pause
            # for every setting charges that tail to the generation that caused it (CPU column).
            time.sleep(SPIN_SETTLE_S)
        cpu = time.process_time() - c0
        m = meter.measurement
        domains.update(m.energy_j)
        methods.update(m.method.values() if isinstance(m.method, dict) else [str(m.method)])
        a = attribute(m, P, N)
        # J/token as measure reports it (the decode segments), and with the tail after the last
        # token (the settle pause: a spinning pool's trailing spin) charged too: the figure the
        # settings are compared on
        reported_jpt.setdefault(key, []).append(a.j_per_token)
        with_tail = (a.phase_energy_j.get("decode", 0.0) + a.phase_energy_j.get("teardown", 0.0)) / N
        return _ms_per_token(g.token_durations_s), with_tail, cpu / N * 1e3

    for key in keys:  # warm-ups (discarded)
        one(key)
    for _ in range(cfg["bw_warm"]):
        probe()
    bw: list[dict[str, float]] = []
    for r in range(rounds):
        for key in _order(keys, r):
            a, b, c = one(key)
            ms[key].append(a)
            jpt[key].append(b)
            cpu_ms[key].append(c)
        bw.append(probe())
        log(f"  round {r + 1}/{rounds}: " + "  ".join(f"{k} {ms[k][-1]:.2f} ms {jpt[k][-1]:.4f} J" for k in keys))
    del models

    kernel = max(bw[0], key=lambda k: _med([s[k] for s in bw]))
    bw_k = [s[kernel] for s in bw]
    per = {}
    for key in keys:
        achieved = [wbytes / (x / 1e3) / 1e9 for x in ms[key]]
        fractions = [a / b for a, b in zip(achieved, bw_k)]
        fci = median_ci95(fractions)
        per[key] = {
            "ms_per_token": _med(ms[key]),
            "j_per_token": _med(jpt[key]),
            "j_per_token_as_reported": _med(reported_jpt[key][1:]),  # [0] is the warm-up
            "cpu_ms_per_token": _med(cpu_ms[key]),
            "achieved_gbps": wbytes / (_med(ms[key]) / 1e3) / 1e9,
            "roofline_fraction": wbytes / (_med(ms[key]) / 1e3) / 1e9 / _med(bw_k),
            "roofline_fraction_per_round": fractions,
            "roofline_fraction_ci95": list(fci) if fci else None,
            "per_generation_ms": ms[key],
            "per_generation_j_per_token": jpt[key],
        }
    cheapest = min(keys, key=lambda k: per[k]["j_per_token"])
    on_key = _setting_key(defaults.threads, True)
    off_key = _setting_key(defaults.threads, False)
    spin = _paired(jpt[on_key], jpt[off_key])
    ci = spin["ci95"]
    if ci is not None and ci[1] < 1:
        spin_finding = "on costs less J/token"
    elif ci is not None and ci[0] > 1:
        spin_finding = "on costs more J/token"
    else:
        spin_finding = "no difference this run can tell"
    vs_default = _paired(jpt[cheapest], jpt[default_key])
    return {
        "settings": per,
        "measure_default": default_key,
        "lowest_j_per_token": cheapest,
        "lowest_vs_default_j_per_token": vs_default,
        "spinning_on_vs_off": {"threads": "default" if defaults.threads is None else defaults.threads,
                               "j_per_token_ratio": spin, "speed_ratio_on_over_off":
                                   per[off_key]["ms_per_token"] / per[on_key]["ms_per_token"],
                               "finding": spin_finding},
        "energy_domains": sorted(domains),
        "energy_methods": sorted(methods),
        "bandwidth": {"kernel": kernel, "median_gbps": _med(bw_k), "samples_gbps": bw,
                      "best_gbps": max(bw_k)},
        "rounds": rounds,
        "usable_cpus": usable,
    }


# -- 4. tracked vs untracked --------------------------------------------------------------------------
def op_profile_section(cfg: dict[str, Any], ours_dir: Path, ours_facts: dict[str, Any],
                       bw_gbps: float) -> dict[str, Any]:
    """Where a decode step's time goes at measure's default settings, from onnxruntime's own
    profiler over one generation (after a short warm-up): kernel time per op type and token, the
    time inside each Run outside any kernel, and the MatMul kernels' rate over the weights they
    read. The profiler slows every node a little, so the step is slower than unprofiled."""
    import json
    import tempfile

    from greenprof.measure import MeasureRequest
    from greenprof.models.loader import load
    from greenprof.models.runner import generate

    P, N = cfg["prompt_tokens"], cfg["new_tokens"]
    defaults = MeasureRequest()
    setting = _setting_key(defaults.threads, defaults.spinning)
    with tempfile.TemporaryDirectory(prefix="greenprof-ortprof-") as tmp:
        model = load(ours_dir, threads=defaults.threads, spinning=defaults.spinning,
                     profile_prefix=Path(tmp) / "decode")
        generate(model, prompt_tokens=P, new_tokens=min(N, 8))  # warm-up
        generate(model, prompt_tokens=P, new_tokens=N)
        events = json.loads(Path(model.session.end_profiling()).read_text())
        del model
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    steps = runs[-N:]  # the last generation's N decode passes (generate runs one per token after the prefill)
    lo, hi = steps[0]["ts"], steps[-1]["ts"] + steps[-1]["dur"]
    kernel_us: Counter = Counter()
    calls: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time") and lo <= e["ts"] <= hi:
            op = e.get("args", {}).get("op_name", "?")
            kernel_us[op] += e["dur"]
            calls[op] += 1
    n = len(steps)
    run_ms = sum(e["dur"] for e in steps) / n / 1e3
    kernels_ms = sum(kernel_us.values()) / n / 1e3
    matmul_ms = kernel_us.get("MatMul", 0) / n / 1e3
    matmul_bytes = ours_facts["weight_bytes_by_kind"].get("matmul", 0)
    matmul_gbps = matmul_bytes / (matmul_ms / 1e3) / 1e9 if matmul_ms > 0 else None
    out = {
        "settings": setting,
        "decode_steps": n,
        "run_ms_per_token": run_ms,
        "kernel_ms_per_token": kernels_ms,
        "outside_kernels_ms_per_token": run_ms - kernels_ms,
        "ops": {op: {"ms_per_token": us / n / 1e3, "calls_per_token": calls[op] / n, "share_of_run": us / n / 1e3 / run_ms}
                for op, us in kernel_us.most_common()},
        "matmul_gbps": matmul_gbps,
        "matmul_gbps_over_probe": matmul_gbps / bw_gbps if matmul_gbps and bw_gbps > 0 else None,
    }
    log(f"op profile ({setting}, onnxruntime's profiler, {n} decode steps): a step {run_ms:.2f} ms, kernels "
        f"{kernels_ms:.2f} ms, of which MatMul {matmul_ms:.2f} ms"
        + (f" ({matmul_gbps:.2f} GB/s over its weights)" if matmul_gbps else ""))
    return out


def tracked_section(cfg: dict[str, Any], model: Any) -> dict[str, Any]:
    """Adjacent (untracked, tracked) pairs of generations, the order alternating, so that slow
    drift of the machine's speed cancels within each pair; the meter's own cost measured inside
    the tracked ones."""
    from greenprof import Meter
    from greenprof.models.runner import generate

    P, N, n_pairs = cfg["prompt_tokens"], cfg["new_tokens"], cfg["tracked_pairs"]
    log(f"tracked vs untracked: {n_pairs} adjacent pairs")

    class TimedMarks:
        """The meter as generate() sees it, with the wall time spent inside mark() added up."""

        def __init__(self, meter: Any) -> None:
            self.meter, self.mark_s, self.marks = meter, 0.0, 0

        def mark(self, label: str) -> None:
            t0 = time.perf_counter()
            self.meter.mark(label)
            self.mark_s += time.perf_counter() - t0
            self.marks += 1

    def run_u() -> Any:
        return generate(model, prompt_tokens=P, new_tokens=N, meter=None)

    def run_t() -> tuple[Any, Any, dict[str, float]]:
        with Meter(sample_hz=10) as meter:
            sampler = next((t for t in threading.enumerate() if t.name == SAMPLER_NAME and t.is_alive()), None)
            read_cpu = thread_cpu_reader(sampler)[0] if sampler is not None else (lambda: 0.0)
            timed = TimedMarks(meter)
            c0, w0 = read_cpu(), time.perf_counter()
            gen = generate(model, prompt_tokens=P, new_tokens=N, meter=timed)
            w1, c1 = time.perf_counter(), read_cpu()
        cost = {"generate_s": w1 - w0, "mark_s": timed.mark_s, "marks": timed.marks, "sampler_cpu_s": c1 - c0}
        return gen, meter.measurement, cost

    run_u()
    _, m_warm, _ = run_t()
    tr: dict[str, list[float]] = {"U": [], "T": []}
    cpu_s: dict[str, list[float]] = {"U": [], "T": []}
    costs: list[dict[str, float]] = []
    marks_seen: list[int] = []
    for r in range(n_pairs):
        order = "UT" if r % 2 == 0 else "TU"
        for kind in order:
            c0 = time.process_time()
            if kind == "U":
                g = run_u()
            else:
                g, meas, cost = run_t()
                costs.append(cost)
                marks_seen.append(sum(1 for s in meas.segments if s.label.startswith("token-")))
            cpu_s[kind].append(time.process_time() - c0)
            tr[kind].append(_ms_per_token(g.token_durations_s))
        log(f"  pair {r + 1}/{n_pairs} ({order}): untracked {tr['U'][-1]:.2f}  tracked {tr['T'][-1]:.2f} ms/token")
    # tokens/s tracked / untracked = ms untracked / ms tracked, per adjacent pair
    pairs = [u / t for u, t in zip(tr["U"], tr["T"])]
    ci = median_ci95(pairs)
    # The meter's own measured cost: wall time in mark() plus the sampler thread's CPU time
    # (counted in full, as if it took a core from onnxruntime), as a share of generate().
    shares = [(c["mark_s"] + c["sampler_cpu_s"]) / c["generate_s"] for c in costs]
    return {
        "tracked_ratio": _med(pairs),
        "tracked_ratio_ci95": list(ci) if ci else None,
        "tracked_ms_per_token": _med(tr["T"]),
        "untracked_ms_per_token": _med(tr["U"]),
        "pairs": pairs,
        "per_generation_ms": {"untracked": tr["U"], "tracked": tr["T"]},
        "tracked_ratio_cost": 1.0 - _med(shares),
        "tracked_ratio_cpu": _med(cpu_s["U"]) / _med(cpu_s["T"]),
        "process_cpu_s_per_generation": {"untracked": _med(cpu_s["U"]), "tracked": _med(cpu_s["T"])},
        "meter_cost_per_tracked_generation": {
            "mark_us_per_mark": _med([c["mark_s"] / max(1, c["marks"]) * 1e6 for c in costs]),
            "marks": _med([c["marks"] for c in costs]),
            "sampler_cpu_ms": _med([c["sampler_cpu_s"] * 1e3 for c in costs]),
            "generate_ms": _med([c["generate_s"] * 1e3 for c in costs]),
            "share": _med(shares),
        },
        "marks_seen": marks_seen,
        "meter_domains": sorted(m_warm.energy_j),
    }


# -- the run ------------------------------------------------------------------------------------------
def prepare(cfg: dict[str, Any], cache_dir: str | None, rebuild_genai: bool) -> dict[str, Any]:
    """Both exports of the shape (built once into the model cache) and their graph facts."""
    from greenprof.models.builder import build, is_built

    model = cfg["model"]
    cached = is_built(model, "fp32", cache_dir)
    t0 = time.perf_counter()
    ours_dir = build(model, "fp32", cache_dir)
    ours_build_s = time.perf_counter() - t0
    log(f"  ours: {ours_dir} ({'cached' if cached else 'built'} in {ours_build_s:.1f} s)")
    t0 = time.perf_counter()
    genai_dir, meta = genai_build(model, cache_dir, rebuild_genai)
    genai_prepare_s = time.perf_counter() - t0
    log(f"  genai: {genai_dir} ({'cached, built earlier in' if meta['cached'] else 'built in'} "
        f"{meta['build_s']:.1f} s: transformers model {meta['hf_model_s']:.1f} s + builder {meta['builder_s']:.1f} s)")
    return {
        "ours_dir": ours_dir, "genai_dir": genai_dir,
        "ours_facts": graph_facts(ours_dir / "model.onnx"), "genai_facts": graph_facts(genai_dir / "model.onnx"),
        "build": {"ours_dir": str(ours_dir), "ours_cached": cached, "ours_build_s": ours_build_s,
                  "genai_dir": str(genai_dir), "genai_cached": meta["cached"], "genai_build_s": meta["build_s"],
                  "genai_hf_model_s": meta["hf_model_s"], "genai_builder_s": meta["builder_s"],
                  "genai_prepare_s_this_run": genai_prepare_s, "genai_command": meta.get("command")},
    }


def run(cfg: dict[str, Any], threads: int, cache_dir: str | None, rebuild_genai: bool, quick: bool) -> dict[str, Any]:
    import numpy as np

    t_start = time.perf_counter()
    load_before = loadavg_1m()
    model, P, N = cfg["model"], cfg["prompt_tokens"], cfg["new_tokens"]
    log(f"greenprof runner speed ({'quick' if quick else 'full'} run): {model} fp32, prompt {P} + {N} new tokens")
    prep = prepare(cfg, cache_dir, rebuild_genai)
    ours_facts, genai_facts = prep["ours_facts"], prep["genai_facts"]
    wbytes = ours_facts["weight_bytes_per_token"]

    vs, ours = vs_genai_section(cfg, threads, prep["ours_dir"], prep["genai_dir"])
    probe = make_bandwidth_probe(cfg["bw_mib"])
    st = settings_section(cfg, prep["ours_dir"], probe, wbytes)
    del probe
    prof = op_profile_section(cfg, prep["ours_dir"], ours_facts, st["bandwidth"]["median_gbps"])
    tracked = tracked_section(cfg, ours)
    fused = (fused_attention_section(cfg, threads, cache_dir, ours, ours_facts)
             if cfg.get("fused_rounds", 0) > 0 else None)

    sig = ours.signature
    kv_row = sig.num_layers * 2 * sig.num_kv_heads * sig.head_dim * np.dtype(sig.kv_dtype).itemsize
    kv_read_avg = kv_row * (P + (N - 1) / 2)  # past length averaged over the decode steps
    load_after = loadavg_1m()

    default = st["settings"][st["measure_default"]]
    ratio = vs["ratio_vs_genai"]
    verdicts = {
        "ratio_vs_genai": verdict(ratio["median"], ratio["ci95"], TARGET_RATIO_VS_GENAI, higher_is_better=False),
        "roofline_fraction": verdict(default["roofline_fraction"], default["roofline_fraction_ci95"], TARGET_ROOFLINE,
                                     higher_is_better=True),
        "tracked_ratio": ratio_verdict(tracked["tracked_ratio"], tracked["pairs"], TARGET_TRACKED),
    }
    notes = _notes(cfg, threads, quick, wbytes, ours_facts, genai_facts, vs, st, tracked, fused, kv_read_avg,
                   load_before, load_after, prof)
    return {
        "model": model,
        "precision": "fp32",
        "threads": threads,
        "prompt_tokens": P,
        "new_tokens": N,
        "rounds": cfg["rounds"],
        "quick": quick,
        "genai_runtime": vs["genai_runtime"],
        "decode_ms_per_token": vs["ms_per_token"]["ours"],
        "genai_decode_ms_per_token": vs["ms_per_token"]["genai"],
        "export_decode_ms_per_token": vs["ms_per_token"]["ours_on_genai_export"],
        "ratio_vs_genai": ratio["median"],
        "ratio_vs_genai_ci95": ratio["ci95"],
        "ratio_export_vs_genai": vs["ratio_export_vs_genai"]["median"],
        "ratio_export_vs_genai_ci95": vs["ratio_export_vs_genai"]["ci95"],
        "measure_settings": st["measure_default"],
        "roofline_fraction": default["roofline_fraction"],
        "roofline_fraction_ci95": default["roofline_fraction_ci95"],
        "weight_bytes_per_token": wbytes,
        "achieved_gbps": default["achieved_gbps"],
        "mem_bandwidth_gbps": st["bandwidth"]["median_gbps"],
        "lowest_j_per_token_settings": st["lowest_j_per_token"],
        "spinning_on_vs_off": st["spinning_on_vs_off"]["finding"],
        "tracked_ratio": tracked["tracked_ratio"],
        "tracked_ratio_ci95": tracked["tracked_ratio_ci95"],
        "tracked_ratio_cost": tracked["tracked_ratio_cost"],
        "tracked_ms_per_token": tracked["tracked_ms_per_token"],
        "untracked_ms_per_token": tracked["untracked_ms_per_token"],
        "tracked_pairs": len(tracked["pairs"]),
        "targets": {"ratio_vs_genai_max": TARGET_RATIO_VS_GENAI, "roofline_fraction_min": TARGET_ROOFLINE,
                    "tracked_ratio_min": TARGET_TRACKED},
        "verdicts": verdicts,
        "meets_all": all(v == MEETS for v in verdicts.values()),
        "vs_genai": vs,
        "settings": st,
        "op_profile": prof,
        "tracked": tracked,
        "fused_attention": fused,
        "build": prep["build"],
        "versions": versions(),
        "machine": {**machine_info(), "loadavg_1m_before": load_before, "loadavg_1m_after": load_after},
        "duration_s": time.perf_counter() - t_start,
        "notes": notes,
        "details": {
            "graph": {"ours": ours_facts, "genai": genai_facts},
            "kv_bytes_read_per_token_avg": kv_read_avg,
        },
    }


def _notes(cfg: dict[str, Any], threads: int, quick: bool, wbytes: int, ours_facts: dict[str, Any],
           genai_facts: dict[str, Any], vs: dict[str, Any], st: dict[str, Any], tracked: dict[str, Any],
           fused: dict[str, Any] | None, kv_read_avg: float, load_before: float | None,
           load_after: float | None, prof: dict[str, Any]) -> list[str]:
    """Everything a reader needs to judge the figures; the summary prints every one."""
    P, N = cfg["prompt_tokens"], cfg["new_tokens"]
    bw = st["bandwidth"]
    notes = [
        f"ratio_vs_genai: greenprof's generate() on its built-in model over {vs['genai_runtime']} on "
        f"onnxruntime-genai's export of the same shape, {threads} threads, spinning off, prompt {P} + {N} "
        f"new tokens; the median of {vs['rounds']} interleaved per-round ratios (ratio of medians "
        f"{vs['ratio_vs_genai']['ratio_of_medians']:.3f}).",
        f"ratio_export_vs_genai: greenprof's generate() on onnxruntime-genai's export itself over "
        f"{vs['genai_runtime']} ({_ci_text(vs['ratio_export_vs_genai']['ci95'])}); shared KV buffer used: "
        f"{vs['shared_kv'].get('ours_on_genai_export')}.",
        f"hand-written session.run loop over the genai export (grows and copies its cache every step): "
        f"{vs['ms_per_token']['hand_loop']:.2f} ms/token; ours / it = {vs['ratio_vs_hand_loop']['median']:.3f} "
        "(a detail, not the peer).",
        f"weight_bytes_per_token = initializer bytes one decode step reads, from ours' ONNX graph: every MatMul "
        f"weight (the tied LM head once, through its Transpose) + one embedding row + the RMSNorm weights = "
        f"{wbytes / 1e6:.2f} MB (" + ", ".join(f"{k} {v / 1e6:.3f} MB" for k, v in
                                              sorted(ours_facts["weight_bytes_by_kind"].items()))
        + f"). Not counted: the KV cache (~{kv_read_avg / 1e6:.2f} MB read per step on average) and the "
        "rotary cos/sin rows.",
        f"roofline_fraction: at measure's default settings ({st['measure_default']}), median achieved "
        f"{st['settings'][st['measure_default']]['achieved_gbps']:.2f} GB/s over the median "
        f"{bw['median_gbps']:.2f} GB/s of {len(bw['samples_gbps'])} probes of the {bw['kernel']} kernel "
        f"(best probe {bw['best_gbps']:.2f} GB/s) on a {cfg['bw_mib']} MiB float32 array; median vs median.",
        "settings (J/token incl. the 0.2 s after the last token, "
        f"{'/'.join(st['energy_methods'])} over {', '.join(st['energy_domains'])}; ms/token; CPU ms per "
        "token with a 0.2 s settle; roofline): "
        + "; ".join(f"{k} {v['j_per_token']:.4g} J, {v['ms_per_token']:.2f} ms, {v['cpu_ms_per_token']:.2f} cpu-ms, "
                    f"{v['roofline_fraction']:.3f}" for k, v in st["settings"].items())
        + f". Lowest J/token: {st['lowest_j_per_token']} (over measure's default: x"
        f"{st['lowest_vs_default_j_per_token']['median']:.3f}, "
        f"{_ci_text(st['lowest_vs_default_j_per_token']['ci95'])}).",
        f"spinning on vs off at measure's default threads: J/token x"
        f"{st['spinning_on_vs_off']['j_per_token_ratio']['median']:.3f} "
        f"({_ci_text(st['spinning_on_vs_off']['j_per_token_ratio']['ci95'])}), tokens/s x"
        f"{st['spinning_on_vs_off']['speed_ratio_on_over_off']:.3f}: {st['spinning_on_vs_off']['finding']}.",
        f"tracked_ratio: median over {len(tracked['pairs'])} adjacent (untracked, tracked) pairs "
        f"({_ci_text(tracked['tracked_ratio_ci95'])}); the meter's own measured cost gives "
        f"{tracked['tracked_ratio_cost']:.5f} (a detail, never a verdict).",
    ]
    ops = prof["ops"]
    big = [op for op in ops if op != "MatMul"][:3]
    other_ms = sum(v["ms_per_token"] for op, v in ops.items() if op != "MatMul" and op not in big)
    notes.append(
        f"op_profile: where a decode step goes at {prof['settings']} (onnxruntime's profiler, which slows each "
        f"node, over {prof['decode_steps']} steps): {prof['run_ms_per_token']:.2f} ms a step; MatMul "
        f"{ops.get('MatMul', {}).get('ms_per_token', 0.0):.2f} ms"
        + (f" ({prof['matmul_gbps']:.2f} GB/s over its weights, {prof['matmul_gbps_over_probe']:.3f} of the probe's "
           "median)" if prof["matmul_gbps"] and prof["matmul_gbps_over_probe"] else "")
        + "".join(f", {op} {ops[op]['ms_per_token']:.2f} ms (x{ops[op]['calls_per_token']:g})" for op in big)
        + f", other kernels {other_ms:.2f} ms, outside any kernel {prof['outside_kernels_ms_per_token']:.2f} ms.")
    if ours_facts["weight_bytes_per_token"] != genai_facts["weight_bytes_per_token"]:
        notes.append(f"genai's graph reads {genai_facts['weight_bytes_per_token'] / 1e6:.2f} MB of weights per token "
                     f"vs ours {wbytes / 1e6:.2f} MB")
    op_diff = {op: (ours_facts["ops"].get(op, 0), genai_facts["ops"].get(op, 0))
               for op in sorted(set(ours_facts["ops"]) | set(genai_facts["ops"]))
               if ours_facts["ops"].get(op, 0) != genai_facts["ops"].get(op, 0)}
    if op_diff:
        notes.append("op counts that differ (ours, genai) before onnxruntime's load-time fusions: "
                     + ", ".join(f"{op} {a}/{b}" for op, (a, b) in op_diff.items()))
    for what, pairs in (("ours/genai", vs["ratio_vs_genai"]["per_round"]), ("untracked/tracked", tracked["pairs"])):
        if len(pairs) >= 4:
            q = statistics.quantiles(pairs, n=4)
            notes.append(f"{what} per-round ratios: interquartile {q[0]:.3f}..{q[2]:.3f} over {len(pairs)} rounds: "
                         "a difference inside that spread is noise, not a result")
    busy = max(x for x in (load_before, load_after, 0.0) if x is not None)
    if busy > 0.5:
        notes.append(f"load average was {load_before} before and {load_after} after the run (this run adds up to "
                     f"~{threads}): other work shared these {os.cpu_count()} CPUs, so wall-clock figures are noisy")
    if quick:
        notes.append(f"quick run: the {cfg['model']!r} shape, {cfg['rounds']} rounds, a {cfg['bw_mib']} MiB bandwidth "
                     "array: a smoke test, not a measurement")
    if fused is not None:
        fa = fused
        notes.append(
            f"fused_attention: GroupQueryAttention (gqa) vs the attention in standard ONNX ops (plain), "
            f"{fa['rounds']} interleaved rounds: decode {fa['gqa_decode_ms_per_token']:.2f} vs "
            f"{fa['plain_decode_ms_per_token']:.2f} ms/token ({fa['decode_ratio']:.3f}), prefill {P} tokens "
            f"{fa['gqa_prefill_ms']:.1f} vs {fa['plain_prefill_ms']:.1f} ms ({fa['prefill_ratio']:.3f}), prefill "
            f"{fa['long_prompt_tokens']} tokens {fa['gqa_prefill_long_ms']:.1f} vs {fa['plain_prefill_long_ms']:.1f} "
            f"ms ({fa['prefill_long_ratio']:.3f}); ratios are gqa / plain, below 1 = the fused op is faster")
    if not all(m == N for m in tracked["marks_seen"]):
        notes.append(f"tracked generations recorded {tracked['marks_seen']} token marks (expected {N} each)")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="runner_speed.py",
        description="Decode speed of greenprof's runner vs onnxruntime-genai's own runtime (onnxruntime_genai."
                    "Generator) on the same shape (target ratio <= 1.00), the measuring settings compared on J per "
                    "token, the roofline fraction at measure's default settings (target >= 0.8), and the cost of "
                    f"a meter mark per token (target >= 0.99). Needs the bench extra: {INSTALL_HINT}. A human "
                    "summary goes to stderr.",
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON object with every figure on stdout")
    parser.add_argument("--save", action="store_true",
                        help="also write the JSON to benchmarks/results/runner_speed-<date>.json")
    parser.add_argument("--quick", action="store_true",
                        help="short smoke run on the 'tiny' shape (prompt 16 + 8 tokens, 2 rounds)")
    parser.add_argument("--model", default=None, help="built-in shape (default smollm-135m; tiny with --quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"interleaved rounds against onnxruntime-genai (default {FULL['rounds']})")
    parser.add_argument("--settings-rounds", type=int, default=None,
                        help=f"interleaved rounds of the measuring settings (default {FULL['settings_rounds']})")
    parser.add_argument("--tracked-pairs", type=int, default=None,
                        help=f"adjacent (untracked, tracked) pairs for tracked_ratio (default {FULL['tracked_pairs']}, "
                             f"{QUICK['tracked_pairs']} with --quick)")
    parser.add_argument("--fused-rounds", type=int, default=None,
                        help="interleaved rounds of the fused (GroupQueryAttention) vs plain-ops attention "
                             f"comparison (default {FULL['fused_rounds']}, {QUICK['fused_rounds']} with --quick; "
                             "0 skips it)")
    parser.add_argument("--long-prompt-tokens", type=int, default=None,
                        help=f"prompt of the long prefill in that comparison (default {FULL['long_prompt_tokens']}, "
                             f"{QUICK['long_prompt_tokens']} with --quick)")
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op threads of both runtimes in the comparison (default 2)")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="prompt length (default 128)")
    parser.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default 64)")
    parser.add_argument("--cache-dir", default=None,
                        help="model cache (default $GREENPROF_CACHE or ~/.cache/greenprof/models); the genai "
                             "export is cached there too")
    parser.add_argument("--rebuild-genai", action="store_true", help="re-export the genai model even if cached")
    args = parser.parse_args(argv)

    cfg = dict(QUICK if args.quick else FULL)
    for key in ("model", "rounds", "prompt_tokens", "new_tokens", "fused_rounds", "long_prompt_tokens",
                "tracked_pairs", "settings_rounds"):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    for key in ("rounds", "prompt_tokens", "new_tokens", "long_prompt_tokens", "tracked_pairs", "settings_rounds"):
        if cfg[key] < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    if cfg["fused_rounds"] < 0:
        parser.error("--fused-rounds must be >= 0")
    if args.threads < 1:
        parser.error("--threads must be >= 1")

    missing = missing_bench_deps()
    if missing:
        log(f"runner_speed: missing the benchmark's dependencies ({', '.join(missing)}): install them with "
            f"`{INSTALL_HINT}`")
        return 2

    result = run(cfg, args.threads, args.cache_dir, args.rebuild_genai, args.quick)
    v = result["verdicts"]
    log(f"  decode: greenprof {result['decode_ms_per_token']:.2f} ms/token, {result['genai_runtime']} "
        f"{result['genai_decode_ms_per_token']:.2f} ms/token: ratio_vs_genai {result['ratio_vs_genai']:.3f} "
        f"({_ci_text(result['ratio_vs_genai_ci95'])}): {shout(v['ratio_vs_genai'])} (target <= "
        f"{TARGET_RATIO_VS_GENAI:.2f})")
    log(f"  greenprof on the genai export: {result['export_decode_ms_per_token']:.2f} ms/token: ratio "
        f"{result['ratio_export_vs_genai']:.3f} ({_ci_text(result['ratio_export_vs_genai_ci95'])})")
    log(f"  roofline at measure's default settings ({result['measure_settings']}): {result['achieved_gbps']:.2f} GB/s "
        f"achieved vs {result['mem_bandwidth_gbps']:.2f} GB/s measured (medians): {result['roofline_fraction']:.3f} "
        f"({_ci_text(result['roofline_fraction_ci95'])}): {shout(v['roofline_fraction'])} (target >= {TARGET_ROOFLINE})")
    log(f"  settings: lowest J/token {result['lowest_j_per_token_settings']}; spinning on vs off: "
        f"{result['spinning_on_vs_off']}")
    log(f"  meter: tracked {result['tracked_ms_per_token']:.2f} vs untracked {result['untracked_ms_per_token']:.2f}"
        f" ms/token: tracked_ratio {result['tracked_ratio']:.4f} ({_ci_text(result['tracked_ratio_ci95'])}): "
        f"{shout(v['tracked_ratio'])} (target >= {TARGET_TRACKED})")
    for note in result["notes"]:
        log(f"  note: {note}")
    log(f"  took {result['duration_s']:.1f} s")
    emit("runner_speed", round_floats(result, 5), save=args.save, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
