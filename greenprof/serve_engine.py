"""The engine behind `greenprof serve`: a queue of requests, N worker threads, one measured
window per request, every request stored as a run.

Concurrency (why a queue and not batching): a request is one ``generate()`` call on the one
shared onnxruntime session (``InferenceSession.run`` is thread-safe; each call has its own KV
buffers). ``max_batch`` worker threads take requests from a FIFO queue, each generating one at
a time, with ``threads`` intra-op threads per call (by default the cores divided among the
workers, so N requests run on N cores side by side). Every request is then its own window on
the shared meter (``Meter(split=True)`` in its worker thread), which splits each interval's
energy among the requests by their threads' CPU time, and its phases (setup, prefill, every
token) stay its own. True batching (several requests in one forward pass) would need one
padded, growing batch in the runner and a rule to divide each pass's joules among its rows by
tokens; on CPUs, where a pass is compute-bound, it gains little over one request per core.

The run store is written by one writer thread in request order, off the request path: a slow
or failing database never delays or fails a response (it warns once on stderr).
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

#: The status of a request that ended before it was answered in full.
INTERRUPTED_CLIENT = "the client disconnected mid-stream"
INTERRUPTED_SERVER = "the server was stopping"


class ClientGone(Exception):
    """Raised inside generation when a request was cancelled (client gone, server stopping)."""


@dataclass
class ModelInfo:
    """What the server serves, as stored with every run."""

    name: str  # the id clients send as "model"
    precision: str
    shape: str | None
    params: int | None
    file_hash: str | None
    provider: str
    threads: int | None
    context_length: int | None
    eos_token_ids: tuple[int, ...] = ()
    collectors_label: str = ""


@dataclass
class Costing:
    region: str | None
    intensity_g_per_kwh: float
    intensity_source: str | None
    intensity_year: int | None
    pue: float
    price_usd_per_kwh: float


@dataclass
class Job:
    """One admitted request (already validated and tokenized)."""

    request_id: str
    endpoint: str  # "chat.completions" | "completions"
    prompt: str
    prompt_tokens: int
    max_tokens: int
    temperature: float  # 0: greedy
    seed: int
    stop_at_eos: bool
    stream: bool = False
    include_usage: bool = False  # a stream ends with a usage chunk (stream_options.include_usage)
    #: called from the worker with (i, token id) as each token is chosen (streaming)
    sink: Callable[[int, int], None] | None = None
    trace_context: Any = None  # an OpenTelemetry context extracted from the request headers
    arrived_s: float = field(default_factory=time.perf_counter)
    arrived_ns: int = field(default_factory=time.time_ns)
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = INTERRUPTED_CLIENT

    def cancel(self, reason: str = INTERRUPTED_CLIENT) -> None:
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()


@dataclass
class Energy:
    """A request's energy figures, from greenprof.accounting (the same definitions as measure)."""

    energy_j: float | None
    co2e_g: float | None
    cost_usd: float | None
    method: str
    basis: str
    phase_energy_j: dict[str, float]
    gross_energy_j: float
    j_per_token: float | None
    #: a counter may have missed a wrap or did not update within the request (see `greenprof show`)
    uncertain: bool = False
    #: a domain was lost mid-request: its energy until then is counted, the rest is missing
    partial: bool = False

    def usage_fields(self) -> dict[str, Any]:
        return {"energy_j": self.energy_j, "co2e_g": self.co2e_g, "cost_usd": self.cost_usd,
                "energy_method": self.method, "energy_basis": self.basis,
                "energy_uncertain": self.uncertain, "energy_partial": self.partial}


@dataclass
class Outcome:
    status: str  # completed | failed | interrupted
    token_ids: list[int]
    finish_reason: str | None  # "stop" (EOS) | "length" | None (not completed)
    started: bool = False  # a worker took it (else it was cancelled while queued)
    error: str | None = None
    ttft_s: float | None = None
    queue_s: float | None = None
    duration_s: float | None = None
    energy: Energy | None = None
    end_ns: int = 0


def request_energy(m: Any, prompt_tokens: int, costing: Costing) -> Energy:
    """A request's figures from its measurement: every phase, attributed, via accounting."""
    from greenprof import accounting

    basis = accounting.measurement_basis(m)
    phases, marked = accounting.measurement_phases(m, basis)
    generated = accounting.generated_tokens(m.segments)
    fig = accounting.run_figures(phases, basis=basis, phases_marked=marked, prompt_tokens=prompt_tokens,
                                 generated_tokens=generated, requests=1,
                                 intensity_g_per_kwh=costing.intensity_g_per_kwh, pue=costing.pue,
                                 price_usd_per_kwh=costing.price_usd_per_kwh)
    return Energy(energy_j=fig.energy_j, co2e_g=fig.co2e_g, cost_usd=fig.cost_usd,
                  method=accounting.collapse_methods(m.method), basis=basis,
                  phase_energy_j=dict(fig.phase_energy_j), gross_energy_j=m.total_energy_j,
                  j_per_token=fig.j_per_token, uncertain=bool(m.uncertain), partial=bool(m.lost))


class StoreWriter:
    """One thread that stores finished runs in submission order, in batches: the runs that end
    within :attr:`LINGER_S` of the first go in one transaction (at most :attr:`BATCH`), so a busy
    server pays one commit per batch, not several per request. A failure warns once per kind on stderr
    and never reaches the request (one bad run does not lose the rest of its batch)."""

    BATCH = 256
    #: how long the first run of a batch waits for others (a run is in the database at most
    #: this long, plus the write, after its request ended)
    LINGER_S = 0.25

    def __init__(self, store: Any, warn: Callable[[str], None]) -> None:
        self.store = store
        self._warn = warn
        #: (fields, measurement, status, error) per run, as Store.record_runs takes them
        self._q: "queue.Queue[tuple[dict[str, Any], Any, str, str | None] | None]" = queue.Queue()
        self._warned: set[str] = set()
        self.lost = 0  # runs that could not be stored
        self._flush_now = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="greenprof-store", daemon=True)
        self._thread.start()

    def record(self, fields: dict[str, Any], m: Any, status: str, error: str | None,
               ended_at: datetime | None = None) -> None:
        """Queue one finished run, ended at ``ended_at`` (see :meth:`greenprof.store.Store.record_runs`)."""
        self._q.put((fields, m, status, error, ended_at))

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            # let the runs that end meanwhile join this one (close() cuts the wait short)
            self._flush_now.wait(self.LINGER_S)
            batch, stop = [item], False
            while len(batch) < self.BATCH:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._write_batch(batch)
            if stop:
                return

    def _write_batch(self, batch: list[tuple]) -> None:
        try:
            self.store.record_runs(batch)
            return
        except BaseException as e:
            if len(batch) == 1:
                self._failed(e)
                return
        for r in batch:  # one bad run must not lose the others: one transaction each
            try:
                self.store.record_runs([r])
            except BaseException as e:
                self._failed(e)

    def _failed(self, e: BaseException) -> None:
        self.lost += 1
        kind = type(e).__name__
        if kind not in self._warned:
            self._warned.add(kind)
            self._warn(f"could not store a run ({kind}: {str(e).splitlines()[0] if str(e) else kind}); "
                       "serving goes on, the response still carries its energy")

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, then stop."""
        self._flush_now.set()
        self._q.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._warn(f"the store did not finish writing within {timeout_s:g} s: runs still queued are lost")
        if self.lost:
            self._warn(f"{self.lost} run(s) could not be stored in all (see the warning above)")
        try:
            self.store.close()
        except Exception:
            pass


class Engine:
    """Runs admitted requests: worker threads, per-request windows, runs, metrics, spans."""

    def __init__(self, model: Any, info: ModelInfo, costing: Costing, *, collectors: Any,
                 sample_hz: float, max_batch: int, store: Any = None, metrics: Any = None,
                 otel: Any = None, idle_run_s: float = 300.0, warn: Callable[[str], None] | None = None) -> None:
        self.model = model
        self.info = info
        self.costing = costing
        self.collectors = collectors
        self.sample_hz = sample_hz
        self.max_batch = max_batch
        self.metrics = metrics
        self.otel = otel
        self.idle_run_s = idle_run_s
        self._warn = warn or (lambda msg: sys.stderr.write(f"greenprof serve: {msg}\n"))
        self.writer = StoreWriter(store, self._warn) if store is not None else None
        self.node: Any = None
        self._pool = ThreadPoolExecutor(max_workers=max_batch, thread_name_prefix="greenprof-worker")
        self._lock = threading.Lock()
        self._accounting = False
        self._period_requests = 0
        self._stop = threading.Event()
        self._idle_thread: threading.Thread | None = None
        self._in_flight = 0
        self._queued: dict[int, tuple[Future, Job]] = {}  # submitted, not yet taken by a worker
        self._refusing: str | None = None  # set by interrupt_queued(): no queued job starts after it
        #: the server's "stopping" state (SIGTERM): a queued request cancelled then was not the client's doing
        self.stopping: Callable[[], bool] = lambda: False
        self.closed = False

    # -- life -------------------------------------------------------------------------------
    def start(self, accounting: bool = True) -> "Engine":
        self.set_accounting(accounting)
        if self.writer is not None and self.idle_run_s > 0:
            self._idle_thread = threading.Thread(target=self._idle_loop, name="greenprof-idle", daemon=True)
            self._idle_thread.start()
        return self

    @property
    def accounting(self) -> bool:
        return self._accounting

    def set_accounting(self, on: bool) -> None:
        """Energy accounting on (the default) or off (the speed benchmark's reference: no node
        window, no request windows, nothing stored). Switch only with no request in flight."""
        from greenprof.metrics import NodeMeter

        closing = None
        with self._lock:
            if on and self.node is None:
                self.node = NodeMeter(self.collectors, self.sample_hz, on_warning=self._warn).start()
            elif not on and self.node is not None:
                closing, self.node = self.node, None
            self._accounting = on
        if closing is not None:
            self._store_idle_period(closing)
            closing.close()

    def close(self) -> None:
        """Let queued and running requests end (they were finished or cancelled by the HTTP
        layer), store the last idle period, write everything queued, close the store."""
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        self._pool.shutdown(wait=True)
        if self._idle_thread is not None:
            self._idle_thread.join()
        with self._lock:
            node, self.node = self.node, None
            self._accounting = False
        if node is not None:
            self._store_idle_period(node)
            node.close()
        if self.writer is not None:
            self.writer.close()

    def _idle_loop(self) -> None:
        while not self._stop.wait(self.idle_run_s):
            node = self.node
            if node is not None:
                try:
                    self._store_idle_period(node)
                except Exception as e:
                    self._warn(f"could not count the idle energy: {type(e).__name__}: {e}")

    # -- requests ---------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, job: Job) -> Future:
        """Queue a job; the Future's result is its :class:`Outcome`. Cancelling the Future
        (while queued) or the job (any time) ends it as interrupted."""
        with self._lock:
            self._in_flight += 1
        if self.metrics is not None:
            self.metrics.child(self.metrics.in_flight, self.info.name).inc()
        with self._lock:
            fut = self._pool.submit(self._run, job)
            self._queued[id(job)] = (fut, job)
        fut.add_done_callback(lambda f, job=job: self._done(f, job))
        return fut

    def interrupt_queued(self, reason: str = INTERRUPTED_SERVER) -> None:
        """Interrupt every request still waiting for a worker (stored interrupted, with no energy)
        and let no queued one start from now on: at the end of the graceful shutdown, before the
        running ones are interrupted, so a worker they free never starts one that is about to go."""
        with self._lock:
            self._refusing = reason
            queued = list(self._queued.values())
        for fut, job in queued:
            job.cancel(reason)
            fut.cancel()

    def _done(self, fut: Future, job: Job) -> None:
        with self._lock:
            self._in_flight -= 1
            self._queued.pop(id(job), None)
        if fut.cancelled() and not job.cancelled.is_set():  # the future was cancelled, not the job
            job.cancel(INTERRUPTED_SERVER if self.stopping() else INTERRUPTED_CLIENT)
        if self.metrics is not None:
            self.metrics.child(self.metrics.in_flight, self.info.name).dec()
        if fut.cancelled():  # never started
            if self.metrics is not None:
                self.metrics.child(self.metrics.requests, self.info.name, "interrupted").inc()
            self._store_unstarted(job)

    def _store_unstarted(self, job: Job) -> None:
        """A request cancelled while queued: stored as interrupted, with no energy (it used none
        of its own; the queue's time is the other requests' or idle)."""
        if self.writer is None or not self._accounting:
            return
        why = "the client disconnected" if job.cancel_reason == INTERRUPTED_CLIENT else job.cancel_reason
        out = Outcome("interrupted", [], None, error=f"{why} before the request started",
                      queue_s=time.perf_counter() - job.arrived_s, end_ns=time.time_ns())
        self._record(job, out, None, time.time())

    def _run(self, job: Job) -> Outcome:
        started_s = time.perf_counter()
        with self._lock:
            self._queued.pop(id(job), None)
            refusing = self._refusing
        if refusing is not None:
            job.cancel(refusing)
        if job.cancelled.is_set():
            out = Outcome("interrupted", [], None, started=False, error=job.cancel_reason,
                          queue_s=started_s - job.arrived_s, end_ns=time.time_ns())
            self._store_unstarted(job)
            self._observe(job, out)
            return out
        from greenprof.models.runner import generate

        ids: list[int] = []
        first: list[float] = []

        def on_token(i: int, tok: Any) -> None:
            if job.cancelled.is_set():
                raise ClientGone(job.cancel_reason)
            ids.append(int(tok[0]))
            if i == 1:
                first.append(time.perf_counter())
            if job.sink is not None:
                job.sink(i, ids[-1])

        with self._lock:
            node = self.node if self._accounting else None
            if node is not None:
                self._period_requests += 1
        meter = None
        started_wall = time.time()
        if node is not None:
            from greenprof.meter import Meter

            node.request_started()
            # per-token marks that only count: a request is stored by phase (setup, prefill,
            # decode segments with their token counts, end), not one row per token
            meter = Meter(collectors=self.collectors, sample_hz=self.sample_hz, split=True, token_segments=False,
                          cpu_view=False)
            try:
                meter.start()
            except BaseException:
                node.request_finished()
                raise
        status, error, finish = "completed", None, None
        try:
            generate(self.model, prompt=job.prompt, new_tokens=job.max_tokens,
                           greedy=job.temperature == 0, temperature=job.temperature or 1.0, seed=job.seed,
                           stop_at_eos=job.stop_at_eos, meter=meter, on_token=on_token)
            finish = "stop" if job.stop_at_eos and ids and ids[-1] in self.info.eos_token_ids else "length"
        except ClientGone:
            status, error = "interrupted", job.cancel_reason
        except Exception as e:
            status, error = "failed", f"{type(e).__name__}: {e}"
        finally:
            m = None
            if meter is not None:
                try:
                    m = meter.stop(status=status)
                finally:
                    node.request_finished()
        end = time.perf_counter()
        out = Outcome(status, ids, finish if status == "completed" else None, started=True, error=error,
                      ttft_s=(first[0] - job.arrived_s) if first else None,
                      queue_s=started_s - job.arrived_s, duration_s=end - started_s, end_ns=time.time_ns())
        if m is not None:
            try:
                out.energy = request_energy(m, job.prompt_tokens, self.costing)
            except Exception as e:  # figures must never lose the answer
                self._warn(f"could not compute a request's energy: {type(e).__name__}: {e}")
        if node is not None:
            self._record(job, out, m, started_wall)
        self._observe(job, out)
        return out

    def _observe(self, job: Job, out: Outcome) -> None:
        if self.metrics is not None:
            e = out.energy
            self.metrics.observe(model=self.info.name, precision=self.info.precision, status=out.status,
                                 phase_energy_j=e.phase_energy_j if e else None,
                                 energy_j=e.energy_j if e else None,
                                 prompt_tokens=job.prompt_tokens if out.started else 0,
                                 completion_tokens=len(out.token_ids), ttft_s=out.ttft_s)
        if self.otel is not None and out.started:
            try:
                self.otel.request_finished(job, out, self.info)
            except Exception as e:
                self._warn(f"could not export a span: {type(e).__name__}: {e}")

    # -- store ------------------------------------------------------------------------------
    def _run_fields(self) -> dict[str, Any]:
        i, c = self.info, self.costing
        return dict(kind="serve", model_shape=i.shape, param_count=i.params, precision=i.precision,
                    model_file_hash=i.file_hash, provider=i.provider, threads=i.threads, region=c.region,
                    intensity_g_per_kwh=c.intensity_g_per_kwh, intensity_source=c.intensity_source,
                    intensity_year=c.intensity_year, pue=c.pue, price_usd_per_kwh=c.price_usd_per_kwh,
                    collectors=(i.collectors_label or None) and i.collectors_label[:255])

    def _record(self, job: Job, out: Outcome, m: Any, started_wall: float) -> None:
        """Queue the request's run, stored whole once it has ended (in a batch with the others
        that ended meanwhile): a request in flight is not in the database yet, and a server
        that is killed outright (SIGKILL, power loss) loses those, as it loses their answers;
        SIGTERM lets them end and stores them."""
        if self.writer is None:
            return
        from greenprof import accounting

        fields = self._run_fields()
        n = accounting.generated_tokens(m.segments) if m is not None else len(out.token_ids)
        fields.update(model_name=self.info.name, prompt_tokens=job.prompt_tokens, new_tokens=n,
                      batch_size=1, started_at=datetime.fromtimestamp(started_wall, timezone.utc),
                      extra={"serve": self._extra(job, out), "requested_new_tokens": job.max_tokens})
        end = out.end_ns / 1e9 if out.end_ns else time.time()  # when the request ended, not the write
        self.writer.record(fields, m, out.status, out.error, datetime.fromtimestamp(end, timezone.utc))

    @staticmethod
    def _extra(job: Job, out: Outcome | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"request_id": job.request_id, "endpoint": job.endpoint, "stream": job.stream,
                             "max_tokens": job.max_tokens, "temperature": job.temperature}
        if out is not None:
            d.update(ttft_s=out.ttft_s, queue_s=out.queue_s, finish_reason=out.finish_reason,
                     completion_tokens=len(out.token_ids))
        return d

    def _store_idle_period(self, node: Any) -> None:
        """Store the node's idle energy since the last period as one run (model "(idle)")."""
        period, t0, t1 = node.take_period()
        with self._lock:
            requests, self._period_requests = self._period_requests, 0
        if self.writer is None or not period.gross_j:
            return
        from greenprof.meter import Measurement, Segment

        seg = Segment("idle", 0.0, period.idle_s, dict(period.idle_gross_j), {}, dict(period.idle_attributed_j))
        doms = list(period.gross_j)
        m = Measurement(duration_s=period.idle_s, energy_j={d: period.idle_gross_j.get(d, 0.0) for d in doms},
                        method=dict(period.method), segments=[seg], idle_power_w={}, lost=dict(period.lost),
                        samples=[], sample_hz=self.sample_hz, sources=dict(period.sources),
                        warnings=list(period.warnings),
                        attributed_energy_j={d: period.idle_attributed_j.get(d, 0.0) for d in doms},
                        scope=dict(period.scope), uncertain=dict(period.uncertain))
        fields = self._run_fields()
        fields.update(model_name="(idle)", model_shape=None, param_count=None, model_file_hash=None, precision=None,
                      started_at=datetime.fromtimestamp(t0, timezone.utc), batch_size=None,
                      extra={"serve": {"idle": True, "served_model": self.info.name, "period_s": t1 - t0,
                                       "idle_s": period.idle_s, "busy_s": period.busy_s,
                                       "requests": requests,
                                       "busy_gross_energy_j": math.fsum(period.gross_j.values())
                                       - math.fsum(period.idle_gross_j.values())}})
        self.writer.record(fields, m, "completed", None, datetime.fromtimestamp(t1, timezone.utc))


__all__ = ["ClientGone", "Costing", "Energy", "Engine", "Job", "ModelInfo", "Outcome", "StoreWriter",
           "request_energy"]
