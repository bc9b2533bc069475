"""The node's energy over a server's life, and the Prometheus metrics `serve` and `exporter` share.

:class:`NodeMeter` keeps one long-lived, non-split :class:`greenprof.Meter` window open on the
process-wide hub (the one the served requests' ``split=True`` windows share), so it sees the
process's whole energy, idle or busy. A window that stayed open for days would keep every
sampler row, so the window is *renewed*: every ``roll_s`` seconds and at each scrape (at most
every ``min_roll_s``), the new window is started and the old one is cut with a mark at that same
reading (one ends exactly where the other begins: no joule is counted in neither, or in both),
and the old one is stopped; its segments are added to running totals. A scrape within ``min_roll_s`` (20 ms) of the
last renewal reads the totals as of that renewal.

While serving, the window is also marked at every change between *idle* (no request in flight)
and *busy* (at least one): the mark ``idle`` closes an idle span when the first request starts,
``busy`` closes a busy span when the last one ends. So

* **idle energy** = the server's energy over the spans with no request in flight, and
* the requests' energies (their split windows) add up to at most the busy spans' energy.

Both on the *attributed* basis (this process's share of a machine-wide counter, see
``greenprof.meter``); the node counters (``greenprof_energy_joules_total``) are *gross*: what
the counters saw.

Metric names follow Prometheus and Kepler: base units, ``_total`` for counters. This module
imports prometheus-client only inside the functions that build metrics.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

#: Buckets of ``greenprof_request_energy_joules``: 1 mJ (a short request on a small model) to
#: 10 kJ (a long one on a GPU server), about three per decade.
ENERGY_BUCKETS_J = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0,
                    1000.0, 3000.0, 10000.0)
#: Buckets of ``greenprof_time_to_first_token_seconds``.
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class NodeTotals:
    """What a :class:`NodeMeter` has counted since it started (a copy; safe to keep)."""

    gross_j: dict[str, float] = field(default_factory=dict)  # per domain, what the counters saw
    attributed_j: dict[str, float] = field(default_factory=dict)  # this process's share
    idle_gross_j: dict[str, float] = field(default_factory=dict)  # over the idle spans
    idle_attributed_j: dict[str, float] = field(default_factory=dict)
    idle_s: float = 0.0
    busy_s: float = 0.0
    method: dict[str, str] = field(default_factory=dict)
    scope: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    power_w: dict[str, float] = field(default_factory=dict)  # over the last renewed window
    lost: dict[str, str] = field(default_factory=dict)
    uncertain: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: {domain: reason} flagged uncertain / lost in the last renewed window (the gauges' state)
    last_uncertain: dict[str, str] = field(default_factory=dict)
    last_lost: dict[str, str] = field(default_factory=dict)


def _add(into: dict[str, float], more: dict[str, float]) -> None:
    for d, v in more.items():
        if v is not None and math.isfinite(v):
            into[d] = into.get(d, 0.0) + v


#: distinct warnings the node totals keep (the first ones; each also reaches the requests' runs)
MAX_NODE_WARNINGS = 50


class NodeMeter:
    """The node's energy, counted by a renewed non-split window (see the module docs).

    ``collectors`` and ``sample_hz`` must be the ones the served requests' Meters use, so all of
    them share one hub. Thread-safe: requests, scrapes and the renewal thread may call it at once.
    """

    def __init__(self, collectors: "str | Sequence" = "auto", sample_hz: float = 10.0, *,
                 roll_s: float = 5.0, min_roll_s: float = 0.02,
                 clock: Callable[[], float] = time.monotonic,
                 on_warning: Callable[[str], None] | None = None) -> None:
        self.collectors = collectors
        #: told, once each, what an operator must know as it happens (a domain lost, reading
        #: again, the sampler stopped): requests carry it in their runs, the server's log did not
        self.on_warning = on_warning
        self._told_lost: set[str] = set()  # domains on_warning was told are lost (until they read again)
        self.sample_hz = sample_hz
        self.roll_s = roll_s
        self.min_roll_s = min_roll_s
        self._clock = clock
        self._lock = threading.Lock()
        self._meter: Any = None
        self._ctx: contextvars.Context | None = None
        self._last_roll = 0.0
        self._inflight = 0
        self._totals = NodeTotals()
        self._period = NodeTotals()  # since the last take_period()
        self._period_start = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life --------------------------------------------------------------------------------
    def start(self) -> "NodeMeter":
        with self._lock:
            self._meter, self._ctx = self._open()
            self._last_roll = self._clock()
            self._period_start = time.time()
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="greenprof-node", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._meter is not None

    @property
    def domains(self) -> list[str]:
        m = self._meter
        return list(m.domains) if m is not None else list(self._totals.method)

    def close(self) -> NodeTotals:
        """Stop the window (its last span is counted) and the renewal thread; the totals."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        with self._lock:
            if self._meter is not None:
                old, ctx = self._meter, self._ctx
                self._meter = self._ctx = None
                old.mark(self._state())
                self._account(ctx.run(old.stop))
        return self.totals()

    def _open(self, cut: "tuple[Any, str] | None" = None) -> tuple[Any, contextvars.Context]:
        from greenprof.meter import Meter

        m = Meter(collectors=self.collectors, sample_hz=self.sample_hz, split=False)
        # started in a context of its own: it is never the current window of a request's
        # context, so no request window takes it as its parent
        ctx = contextvars.Context()
        ctx.run(m.start, _cut=cut)
        return m, ctx

    def _renew_loop(self) -> None:
        while not self._stop.wait(max(0.05, self.roll_s / 4)):
            if self._clock() - self._last_roll >= self.roll_s:
                try:
                    self.renew(force=True)
                except Exception as e:  # never take the server down; say it once
                    msg = f"node energy window could not be renewed: {type(e).__name__}: {e}"
                    with self._lock:
                        if msg not in self._totals.warnings:
                            self._totals.warnings.append(msg)

    def _state(self) -> str:
        return "busy" if self._inflight else "idle"

    # -- requests ---------------------------------------------------------------------------
    def request_started(self) -> None:
        """Call before a request's window starts: the first one closes an idle span."""
        with self._lock:
            if self._inflight == 0 and self._meter is not None:
                self._meter.mark("idle")
            self._inflight += 1

    def request_finished(self) -> None:
        """Call after a request's window stopped: the last one closes a busy span."""
        with self._lock:
            self._inflight = max(0, self._inflight - 1)
            if self._inflight == 0 and self._meter is not None:
                self._meter.mark("busy")

    @property
    def in_flight(self) -> int:
        return self._inflight

    # -- counting ---------------------------------------------------------------------------
    def renew(self, force: bool = False) -> None:
        """Cut the window, count it and start the next (unless one was renewed less than
        ``min_roll_s`` ago and ``force`` is False)."""
        with self._lock:
            if self._meter is None:
                return
            if not force and self._clock() - self._last_roll < self.min_roll_s and self._totals.method:
                return  # renewed a moment ago (a second scraper): the totals are 20 ms old at most
            old, old_ctx = self._meter, self._ctx
            # the cut: `old` is marked at the new window's first reading, so the two meet
            # exactly (what follows the cut in `old` is not counted; the new window counts it)
            self._meter, self._ctx = self._open(cut=(old, self._state()))
            self._last_roll = self._clock()
            m = old_ctx.run(old.stop)
            self._account(m)

    def _account(self, m: Any) -> None:
        """Add a stopped window's segments (lock held). Its last segment, from the cut to its
        stop, is left out: the next window already counts from its own start."""
        segs = [s for s in m.segments if s.label != "end"]
        news = [w for w in dict.fromkeys(m.warnings) if w not in self._totals.warnings and _operator_news(w)]
        for t in (self._totals, self._period):
            for s in segs:
                _add(t.gross_j, s.energy_j)
                _add(t.attributed_j, s.attributed_energy_j)
                if s.label == "idle":
                    _add(t.idle_gross_j, s.energy_j)
                    _add(t.idle_attributed_j, s.attributed_energy_j)
                    t.idle_s += s.duration_s
                elif s.label == "busy":
                    t.busy_s += s.duration_s
            t.method.update(m.method)
            t.scope.update(m.scope)
            t.sources.update(m.sources)
            t.lost.update(m.lost)
            t.uncertain.update(m.uncertain)
            for w in m.warnings:
                # a server runs for months and a window's warning may carry its own figure
                # (an unchecked share's percentage): the first ones are kept, not all
                if (len(t.warnings) < MAX_NODE_WARNINGS and w not in t.warnings
                        and not w.startswith("other processes used")):
                    t.warnings.append(w)
        if self.on_warning is not None:
            for w in news:
                dom = w.split(" ", 1)[0]
                if w.startswith(f"{dom} reads again"):
                    self._told_lost.discard(dom)
                elif w.startswith(f"{dom} lost"):  # each window opened meanwhile says so again: once per loss
                    if dom in self._told_lost:
                        continue
                    self._told_lost.add(dom)
                try:
                    self.on_warning(w)
                except Exception:  # a log that cannot be written must not stop the counting
                    pass
        dur = math.fsum(s.duration_s for s in segs)
        if dur > 0:
            power: dict[str, float] = {}
            for s in segs:
                _add(power, s.energy_j)
            self._totals.power_w = {d: e / dur for d, e in power.items()}
        self._totals.last_uncertain = dict(m.uncertain)
        self._totals.last_lost = dict(m.lost)

    def totals(self, renew: bool = False) -> NodeTotals:
        """A copy of the totals; ``renew=True`` counts the open window first (a scrape)."""
        if renew:
            self.renew()
        with self._lock:
            return _copy(self._totals)

    def take_period(self) -> tuple[NodeTotals, float, float]:
        """(totals since the last call, its start and end as UNIX times), and start a new period.
        The open window is counted first."""
        self.renew(force=True)
        with self._lock:
            period, self._period = self._period, NodeTotals()
            t0, t1 = self._period_start, time.time()
            self._period_start = t1
        return period, t0, t1


def _operator_news(warning: str) -> bool:
    """A node window's warning that an operator must see as it happens (see NodeMeter.on_warning)."""
    dom = warning.split(" ", 1)[0]
    return warning.startswith((f"{dom} lost", f"{dom} reads again")) or "sampler stopped" in warning


def _copy(t: NodeTotals) -> NodeTotals:
    return NodeTotals(dict(t.gross_j), dict(t.attributed_j), dict(t.idle_gross_j),
                      dict(t.idle_attributed_j), t.idle_s, t.busy_s, dict(t.method), dict(t.scope),
                      dict(t.sources), dict(t.power_w), dict(t.lost), dict(t.uncertain), list(t.warnings),
                      dict(t.last_uncertain), dict(t.last_lost))


# --------------------------------------------------------------------------------------------
# Prometheus


class NodeCollector:
    """A prometheus-client collector of a :class:`NodeMeter`: each scrape renews its window, so
    the counters are exact as of the scrape.

    * ``greenprof_energy_joules_total{domain,method}``: gross, what the counters saw;
    * ``greenprof_power_watts{domain}``: average power over the last renewed window;
    * with ``serving=True`` also ``greenprof_process_energy_joules_total{domain,method}`` (this
      process's attributed share) and ``greenprof_idle_energy_joules_total`` (attributed, the
      spans with no request in flight, summed over domains).
    """

    def __init__(self, node: "NodeMeter | Callable[[], NodeMeter | None]", serving: bool = False) -> None:
        self._node = node if callable(node) and not isinstance(node, NodeMeter) else (lambda: node)
        self.serving = serving
        self._last: NodeTotals | None = None

    def describe(self):  # registering must not scrape
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        node = self._node()
        if node is not None and node.running:
            t = node.totals(renew=True)
            self._last = t
        else:  # accounting switched off (benchmark): the last totals, counters never go back
            t = self._last or NodeTotals()
        energy = CounterMetricFamily("greenprof_energy_joules", "Energy the counters saw per domain "
                                     "(gross: the whole device, every process; cpu-estimate, the CPU "
                                     "time estimate of this process alone), in joules.",
                                     labels=["domain", "method"])
        for d, j in sorted(t.gross_j.items()):
            energy.add_metric([d, t.method.get(d, "unknown")], j)
        yield energy
        power = GaugeMetricFamily("greenprof_power_watts", "Average power per domain over the last "
                                  "renewal of the node window (at most a few seconds), in watts.",
                                  labels=["domain"])
        for d, w in sorted(t.power_w.items()):
            power.add_metric([d], w)
        yield power
        # what the figures above are worth, as the runs say it: 1 while the last renewed window
        # flagged the domain (a share charged whole, a missed wrap, a stalled counter; a lost one)
        doubt = GaugeMetricFamily("greenprof_energy_uncertain", "1 when the last renewal of the node "
                                  "window flagged this domain's energy uncertain (see the server's runs "
                                  "for the reason), else 0.", labels=["domain"])
        lost = GaugeMetricFamily("greenprof_energy_partial", "1 when this domain's counter was lost in "
                                 "the last renewal of the node window (its energy since is missing), else 0.",
                                 labels=["domain"])
        for d in sorted(t.gross_j):
            doubt.add_metric([d], 1.0 if d in t.last_uncertain else 0.0)
            lost.add_metric([d], 1.0 if d in t.last_lost else 0.0)
        yield doubt
        yield lost
        if self.serving:
            proc = CounterMetricFamily("greenprof_process_energy_joules", "This server process's "
                                       "attributed share of each domain, in joules.",
                                       labels=["domain", "method"])
            for d, j in sorted(t.attributed_j.items()):
                proc.add_metric([d, t.method.get(d, "unknown")], j)
            yield proc
            idle = CounterMetricFamily("greenprof_idle_energy_joules", "This server's attributed "
                                       "energy while no request was in flight, summed over domains, "
                                       "in joules.")
            idle.add_metric([], math.fsum(t.idle_attributed_j.values()))
            yield idle


@dataclass
class ServeMetrics:
    """The per-request metrics of ``greenprof serve`` (prometheus-client objects)."""

    model_energy: Any
    model_tokens: Any
    requests: Any
    request_energy: Any
    ttft: Any
    in_flight: Any
    #: each metric's child per label values, looked up once (``labels()`` builds and locks each
    #: time; a server sees the same few label sets on every request)
    _children: dict = field(default_factory=dict, repr=False)

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)`` (values in the metric's label order), cached."""
        key = (id(metric), values)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*values)
        return c

    def observe(self, *, model: str, precision: str, status: str, phase_energy_j: dict[str, float] | None,
                energy_j: float | None, prompt_tokens: int, completion_tokens: int,
                ttft_s: float | None) -> None:
        """One finished request (any status). Energy only when it was measured."""
        child = self.child
        child(self.requests, model, status).inc()
        if prompt_tokens:
            child(self.model_tokens, model, precision, "input").inc(prompt_tokens)
        if completion_tokens:
            child(self.model_tokens, model, precision, "output").inc(completion_tokens)
        for phase, j in (phase_energy_j or {}).items():
            if j is not None and math.isfinite(j) and j > 0:
                child(self.model_energy, model, precision, phase).inc(j)
        if energy_j is not None and math.isfinite(energy_j) and energy_j >= 0:
            child(self.request_energy, model, precision).observe(energy_j)
        if ttft_s is not None:
            child(self.ttft, model, precision).observe(ttft_s)


def serve_registry(node: "Callable[[], NodeMeter | None]", model: str, precision: str):
    """A fresh prometheus-client registry with the node collector and the request metrics of
    one served model. Returns (registry, ServeMetrics)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

    disable_created_metrics()  # no *_created series: counters start with the process, as Kepler's
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(node, serving=True))
    m = ServeMetrics(
        model_energy=Counter("greenprof_model_energy_joules", "Energy charged to served requests "
                             "(attributed), by phase: setup, prefill, decode, teardown; in joules.",
                             ["model", "precision", "phase"], registry=reg),
        model_tokens=Counter("greenprof_model_tokens", "Tokens of served requests: type=input (prompt) "
                             "or output (generated).", ["model", "precision", "type"], registry=reg),
        requests=Counter("greenprof_requests", "Requests by status: completed, failed, interrupted "
                         "(client gone or server stopping), rejected (4xx).", ["model", "status"], registry=reg),
        request_energy=Histogram("greenprof_request_energy_joules", "Energy charged to one request "
                                 "(attributed, all phases), in joules.", ["model", "precision"],
                                 buckets=ENERGY_BUCKETS_J, registry=reg),
        ttft=Histogram("greenprof_time_to_first_token_seconds", "From a request's arrival to its first "
                       "generated token, in seconds.", ["model", "precision"], buckets=TTFT_BUCKETS_S,
                       registry=reg),
        in_flight=Gauge("greenprof_requests_in_flight", "Requests queued or generating.", ["model"],
                        registry=reg),
    )
    # every series of the served model exists from the start (a counter at 0 rather than absent)
    for status in ("completed", "failed", "interrupted", "rejected"):
        m.requests.labels(model=model, status=status)
    for kind in ("input", "output"):
        m.model_tokens.labels(model=model, precision=precision, type=kind)
    m.in_flight.labels(model=model)
    return reg, m


def node_registry(node: NodeMeter):
    """The exporter's registry: the node collector alone."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(node, serving=False))
    return reg


__all__ = ["ENERGY_BUCKETS_J", "NodeCollector", "NodeMeter", "NodeTotals", "ServeMetrics",
           "node_registry", "serve_registry"]
