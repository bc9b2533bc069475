"""OpenTelemetry for `greenprof serve` (the ``otel`` extra: ``pip install 'greenprof[otel]'``).

* **A span per request**, named ``"{gen_ai.operation.name} {gen_ai.request.model}"`` (``chat
  tiny``, ``text_completion tiny``), kind SERVER, from the request's arrival to its end, child of
  the caller's trace when the request carries a W3C ``traceparent``. Attributes: the GenAI
  semantic conventions (``gen_ai.operation.name``, ``gen_ai.provider.name`` = ``greenprof``,
  ``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.response.id``,
  ``gen_ai.request.max_tokens``, ``gen_ai.request.temperature``, ``gen_ai.request.seed``,
  ``gen_ai.response.finish_reasons``, ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens``) plus greenprof's: ``greenprof.energy_j``, ``greenprof.co2e_g``,
  ``greenprof.cost_usd``, ``greenprof.energy_method``, ``greenprof.energy_basis``,
  ``greenprof.energy_uncertain``, ``greenprof.energy_partial``, ``greenprof.status``,
  ``greenprof.ttft_s``. A failed request sets ``error.type`` and the span status ERROR.
* **Node energy** as the hardware semantic conventions' ``hw.energy`` counter (unit ``J``,
  cumulative; attributes ``hw.id`` = the domain, ``hw.type`` = ``cpu`` / ``memory`` / ``gpu`` /
  ``enclosure`` (psys), ``greenprof.energy_method``) and ``hw.power`` (gauge, ``W``); plus the
  GenAI server histograms ``gen_ai.server.request.duration`` and
  ``gen_ai.server.time_to_first_token`` (seconds).

:meth:`Otel.from_endpoint` exports over OTLP/HTTP to ``--otlp-endpoint`` (a base URL such as
``http://collector:4318``, as ``OTEL_EXPORTER_OTLP_ENDPOINT``); tests pass their own SDK
providers with in-memory exporters. Nothing here runs unless asked: importing this module
imports no OpenTelemetry package.
"""

from __future__ import annotations

from typing import Any, Callable

from greenprof.errors import UsageError

_EXTRA_HINT = "pip install 'greenprof[otel]' (opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http)"


def hw_type(domain: str) -> str:
    """The hardware semantic conventions' ``hw.type`` of a greenprof domain."""
    if domain.startswith("gpu"):
        return "gpu"
    if domain.startswith("dram"):
        return "memory"
    if domain == "psys":
        return "enclosure"
    return "cpu"  # packages, core, uncore, the CPU estimate


#: One OTLP export's time limit (the SDK's default is 10 s per try, retried for 30 s or more).
EXPORT_TIMEOUT_S = 2.0
#: The most a stopping server waits for the last spans and metrics to go out.
SHUTDOWN_TIMEOUT_S = 3.0


def _operation(endpoint: str) -> str:
    """The GenAI ``gen_ai.operation.name`` of a serve endpoint."""
    return "chat" if endpoint == "chat.completions" else "text_completion"


def _check_endpoint(base: str, given: str, where: str) -> None:
    """A UsageError unless ``base`` is an http(s) URL with a host and a valid port."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(base)
        ok = u.scheme in ("http", "https") and bool(u.hostname)
        _ = u.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        ok = False
    if not ok:
        raise UsageError(f"{where} must be an http(s) URL such as http://localhost:4318 (got {given!r})")


def _quiet_sdk_logs() -> None:
    """The OTLP exporters log every failed try (retries, timeouts) through ``logging``, which
    prints them bare on stderr: one prefixed line per kind of failure instead, saying that
    serving goes on."""
    import logging
    import sys

    log = logging.getLogger("opentelemetry")
    if any(getattr(h, "greenprof_once", False) for h in log.handlers):
        return

    class Once(logging.Handler):
        greenprof_once = True

        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.seen: set[str] = set()

        def emit(self, record: logging.LogRecord) -> None:
            kind = f"{record.name}:{record.levelno}:{str(record.msg)[:24]}"
            if kind in self.seen:
                return
            self.seen.add(kind)
            try:
                sys.stderr.write(f"greenprof: OpenTelemetry export: {record.getMessage().splitlines()[0][:300]} "
                                 "(serving goes on; repeats are not shown)\n")
            except Exception:
                pass

    log.addHandler(Once())
    log.propagate = False


class Otel:
    """Spans and metrics of one server, on the given SDK providers."""

    def __init__(self, tracer_provider: Any, meter_provider: Any, *, owned: bool = False) -> None:
        from greenprof import __version__

        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.owned = owned
        self.tracer = tracer_provider.get_tracer("greenprof", __version__)
        meter = meter_provider.get_meter("greenprof", __version__)
        self._node: Callable[[], Any] = lambda: None
        self._last: Any = None
        meter.create_observable_counter("hw.energy", callbacks=[self._energy], unit="J",
                                        description="Energy consumed by the component (what the counter saw)")
        meter.create_observable_gauge("hw.power", callbacks=[self._power], unit="W",
                                      description="Average power of the component over the last few seconds")
        self._duration = meter.create_histogram("gen_ai.server.request.duration", unit="s",
                                                description="Generative AI server request duration")
        self._ttft = meter.create_histogram("gen_ai.server.time_to_first_token", unit="s",
                                            description="Time to generate the first token of a request")

    @classmethod
    def from_endpoint(cls, endpoint: str | None) -> "Otel":
        """OTLP/HTTP exporters to ``endpoint`` (a base URL; None: OTEL_EXPORTER_OTLP_ENDPOINT)."""
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise UsageError(f"OpenTelemetry export needs the otel extra: {_EXTRA_HINT}") from None
        import os

        from greenprof import __version__
        from greenprof.hostinfo import host

        where = "--otlp-endpoint"
        if not endpoint and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            endpoint, where = os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"], "OTEL_EXPORTER_OTLP_ENDPOINT"
        base = endpoint.rstrip("/") if endpoint else None
        if base is not None:
            _check_endpoint(base, endpoint, where)
        _quiet_sdk_logs()
        ms = int(EXPORT_TIMEOUT_S * 1000)
        resource = Resource.create({"service.name": "greenprof", "service.version": __version__, "host.id": host()})
        tp = TracerProvider(resource=resource)
        tp.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{base}/v1/traces" if base else None, timeout=EXPORT_TIMEOUT_S),
            export_timeout_millis=ms))
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{base}/v1/metrics" if base else None, timeout=EXPORT_TIMEOUT_S),
            export_timeout_millis=ms)
        mp = MeterProvider(resource=resource, metric_readers=[reader])
        return cls(tp, mp, owned=True)

    # -- node energy ------------------------------------------------------------------------
    def watch_node(self, node: Callable[[], Any]) -> None:
        """Where ``hw.energy`` comes from: a callable returning the server's NodeMeter (or None)."""
        self._node = node

    def _totals(self):
        node = self._node()
        if node is not None and node.running:
            self._last = node.totals(renew=True)
        return self._last  # after the node closed: its final totals (a counter never goes back)

    def _energy(self, options: Any):
        from opentelemetry.metrics import Observation

        t = self._totals()
        if t is None:
            return []
        return [Observation(j, {"hw.id": d, "hw.type": hw_type(d), "greenprof.energy_method": t.method.get(d, "unknown")})
                for d, j in sorted(t.gross_j.items())]

    def _power(self, options: Any):
        from opentelemetry.metrics import Observation

        node = self._node()
        if node is None or not node.running:
            return []
        t = node.totals()
        return [Observation(w, {"hw.id": d, "hw.type": hw_type(d)}) for d, w in sorted(t.power_w.items())]

    # -- requests ---------------------------------------------------------------------------
    @staticmethod
    def context_from(headers: dict | None) -> Any:
        """The caller's trace context (W3C traceparent) from request headers, or None."""
        if not headers:
            return None
        from opentelemetry import propagate

        return propagate.extract(headers)

    def request_rejected(self, endpoint: str, info: Any, status: int, code: str | None, message: str,
                         arrived_ns: int, trace_context: Any = None) -> None:
        """One span, with an error status, for a request refused before it ran (4xx): no tokens,
        no energy of its own."""
        import time

        from opentelemetry.trace import SpanKind, Status, StatusCode

        op = _operation(endpoint)
        attrs = {"gen_ai.operation.name": op, "gen_ai.provider.name": "greenprof",
                 "gen_ai.request.model": info.name, "greenprof.status": "rejected",
                 "error.type": code or str(status), "http.response.status_code": status}
        span = self.tracer.start_span(f"{op} {info.name}", context=trace_context, kind=SpanKind.SERVER,
                                      attributes=attrs, start_time=arrived_ns)
        span.set_status(Status(StatusCode.ERROR, message))
        span.end(end_time=max(time.time_ns(), arrived_ns))

    def request_finished(self, job: Any, out: Any, info: Any) -> None:
        """One span for a request that ran (any status), and its GenAI server metrics."""
        from opentelemetry.trace import SpanKind, Status, StatusCode

        op = _operation(job.endpoint)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": "greenprof",
            "gen_ai.request.model": info.name,
            "gen_ai.response.model": info.name,
            "gen_ai.response.id": job.request_id,
            "gen_ai.request.max_tokens": job.max_tokens,
            "gen_ai.request.temperature": job.temperature,
            "gen_ai.request.seed": job.seed,
            "gen_ai.usage.input_tokens": job.prompt_tokens,
            "gen_ai.usage.output_tokens": len(out.token_ids),
            "greenprof.status": out.status,
            "greenprof.precision": info.precision,
        }
        if out.finish_reason:
            attrs["gen_ai.response.finish_reasons"] = [out.finish_reason]
        if out.ttft_s is not None:
            attrs["greenprof.ttft_s"] = out.ttft_s
        e = out.energy
        if e is not None:
            for k, v in (("greenprof.energy_j", e.energy_j), ("greenprof.co2e_g", e.co2e_g),
                         ("greenprof.cost_usd", e.cost_usd)):
                if v is not None:
                    attrs[k] = float(v)
            attrs["greenprof.energy_method"] = e.method
            attrs["greenprof.energy_basis"] = e.basis
            attrs["greenprof.energy_uncertain"] = e.uncertain
            attrs["greenprof.energy_partial"] = e.partial
        span = self.tracer.start_span(f"{op} {info.name}", context=job.trace_context, kind=SpanKind.SERVER,
                                      attributes=attrs, start_time=job.arrived_ns)
        if out.status == "failed":
            span.set_attribute("error.type", (out.error or "failed").split(":", 1)[0])
            span.set_status(Status(StatusCode.ERROR, out.error))
        span.end(end_time=max(out.end_ns, job.arrived_ns))
        metric_attrs = {"gen_ai.operation.name": op, "gen_ai.request.model": info.name,
                        "gen_ai.provider.name": "greenprof"}
        self._duration.record(max(0.0, (out.end_ns - job.arrived_ns) / 1e9), metric_attrs)
        if out.ttft_s is not None:
            self._ttft.record(out.ttft_s, metric_attrs)

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Flush and stop the providers this object created (not ones passed in), waiting at most
        ``timeout_s`` in all (an unreachable collector must not hold a stopping server); False
        when what was pending could not be sent in time (it is dropped)."""
        if not self.owned:
            return True
        import threading

        def stop(p: Any) -> None:
            try:
                p.shutdown()
            except Exception:
                pass

        threads = [threading.Thread(target=stop, args=(p,), name="greenprof-otel-stop", daemon=True)
                   for p in (self.tracer_provider, self.meter_provider)]
        for t in threads:
            t.start()
        import time

        end = time.monotonic() + timeout_s
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in threads)


__all__ = ["Otel", "hw_type"]
