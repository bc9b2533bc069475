"""`greenprof serve` and `greenprof exporter`: the commands, and a server object tests can run.

    greenprof serve tiny --port 8000 --db serve.db
    greenprof exporter --port 9464

:class:`Server` prepares everything a user can get wrong before it listens (settings, the
database, the port, the model, its tokenizer), then runs uvicorn over the app of
:mod:`greenprof.serve_app` and the engine of :mod:`greenprof.serve_engine`. SIGTERM or Ctrl-C
stop it gracefully: new connections are refused, requests in flight get ``--graceful-timeout``
seconds to finish, then the rest are interrupted (stored as ``interrupted``), the last idle
period and every queued run are written, and the process exits 0.

This module imports only typer at import time: the CLI stays fast.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import typer

from greenprof.errors import GreenprofError, UsageError


def _say(msg: str) -> None:
    sys.stderr.write(f"greenprof serve: {msg}\n")
    sys.stderr.flush()


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class ServeOptions:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int | None = None
    db: str | None = None
    precision: str | None = None  # built-in models: fp32 unless given
    threads: int | None = None
    provider: str = "cpu"
    collectors: str | None = None
    region: str | None = None
    intensity: float | None = None
    pue: float | None = None
    price_kwh: float | None = None
    sample_hz: float | None = None
    idle_run_s: float = 300.0
    graceful_timeout_s: float = 10.0
    otlp_endpoint: str | None = None
    access_log: bool = False
    bench_toggle: bool = False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a GreenprofError that says what to do."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0..65535 (got {port!r})")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host!r} is not an address of this machine ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        hint = "pick another --port" if e.errno in (98, 48) else "check --host/--port"
        raise GreenprofError(f"cannot listen on {host}:{port}: {e.strerror or e}; {hint}") from None
    sock.set_inheritable(True)
    return sock


class _DropLostConnectionWrites:
    """asyncio logs "socket.send() raised exception." for writes to a connection its client has
    closed: a stream whose client hung up printed it a few times, with nothing to act on (the
    request is stored as interrupted, with the reason)."""

    def filter(self, record: Any) -> bool:
        return record.getMessage() != "socket.send() raised exception."


def _quiet_lost_connections() -> None:
    import logging

    log = logging.getLogger("asyncio")
    if not any(isinstance(f, _DropLostConnectionWrites) for f in log.filters):
        log.addFilter(_DropLostConnectionWrites())


def _store_opener(settings: Any) -> Callable[[], Any]:
    """Check the store named by --db, GREENPROF_DB or [tool.greenprof] db now (nothing is
    written); the returned function opens it (creating or migrating it) once the model loaded."""
    from greenprof.store import open_store, preflight

    origin = settings.origin.get("db", "default")
    if settings.db is None or origin.startswith("env:"):
        preflight(None, keep=True)
        return lambda: open_store(None)
    setting = "--db" if origin == "flag" else f"{settings.pyproject} [tool.greenprof] db"
    preflight(settings.db, setting=setting, keep=True)
    return lambda: open_store(settings.db, setting=setting)


class Server:
    """One model served over HTTP. ``prepare()`` checks and loads everything; ``run()`` serves
    in this (main) thread until SIGTERM/SIGINT; ``start()``/``stop()`` serve from a background
    thread (tests, benchmarks)."""

    def __init__(self, opts: ServeOptions, *, say: Callable[[str], None] = _say, otel: Any = None) -> None:
        self.opts = opts
        self.say = say
        self.otel = otel
        self.engine: Any = None
        self.app: Any = None
        self.sock: socket.socket | None = None
        self.uvicorn: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1] if self.sock is not None else self.opts.port

    @property
    def url(self) -> str:
        host = self.opts.host if ":" not in self.opts.host else f"[{self.opts.host}]"
        return f"http://{host}:{self.port}"

    def prepare(self) -> "Server":
        from greenprof import carbon
        from greenprof.config import CLI_FLAGS, load_settings, resolve_intensity
        from greenprof.measure import check_model_spec, collectors_for_device, resolve_model, uncounted_parts
        from greenprof.metrics import serve_registry
        from greenprof.models import builder
        from greenprof.models.loader import load
        from greenprof.serve_app import build_app
        from greenprof.serve_engine import Costing, Engine, ModelInfo

        o = self.opts
        settings = load_settings({"db": o.db, "region": o.region, "intensity_g_per_kwh": o.intensity,
                                  "pue": o.pue, "price_usd_per_kwh": o.price_kwh, "threads": o.threads,
                                  "sample_hz": o.sample_hz}, names=CLI_FLAGS)
        grid, note = resolve_intensity(settings)
        price = settings.price_usd_per_kwh if settings.price_usd_per_kwh is not None \
            else carbon.DEFAULT_PRICE_USD_PER_KWH
        carbon.check_pue(settings.pue)
        carbon.check_price(price)
        target = check_model_spec(o.model)
        if isinstance(target, Path):  # an export
            if o.precision is not None:
                raise UsageError(f"--precision applies to built-in models; {o.model} is an export and runs at "
                                 "its own precision: drop --precision")
            precision = None
        else:
            precision = builder.check_precision(o.precision or "fp32")
        cpus = cpu_count()
        max_batch = o.max_batch if o.max_batch is not None else cpus
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise UsageError(f"--max-batch must be a whole number >= 1 (got {max_batch!r})")
        threads = settings.threads if settings.threads is not None else max(1, cpus // max_batch)
        for name, v in (("--idle-run-s", o.idle_run_s), ("--graceful-timeout", o.graceful_timeout_s)):
            if not (isinstance(v, (int, float)) and v >= 0):
                raise UsageError(f"{name} must be a number of seconds >= 0 (got {v!r})")
        if o.otlp_endpoint and self.otel is None:
            from greenprof.otel import Otel

            self.otel = Otel.from_endpoint(o.otlp_endpoint)  # UsageError without the otel extra
        elif self.otel is None and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
            from greenprof.otel import Otel

            try:
                self.otel = Otel.from_endpoint(None)
            except UsageError as e:
                self.say(f"OTEL_EXPORTER_OTLP_ENDPOINT is set but {e}: serving without OpenTelemetry")
        opener = _store_opener(settings)
        store = None
        try:
            self.sock = bind(o.host, o.port)
            rm = resolve_model(o.model, precision, self._build_progress)
            model = load(rm.path, threads=threads, providers=o.provider)
            if model.tokenizer is None:
                raise UsageError(f"{rm.path} has no tokenizer.json: greenprof serve turns text into tokens with "
                                 "it; put the model's tokenizer.json beside the .onnx file")
            meta = model.metadata or {}
            if o.collectors in (None, "auto"):
                collectors: Any = collectors_for_device(model.device, model.device_id)
                label = f"{model.device} (auto)"
            else:
                collectors = [c.strip() for c in o.collectors.split(",") if c.strip()]
                label = ",".join(collectors)
                try:
                    left_out = uncounted_parts(collectors_for_device(model.device, model.device_id), collectors)
                except Exception:  # no default to compare with: nothing to say
                    left_out = []
                if left_out:
                    self.say(f"note: the model runs on {model.device} but --collectors {label} counts no energy "
                             f"of {' or '.join(left_out)}, which a request there is charged by default: it is "
                             "not in the requests' figures")
            file_hash = rm.file_hash
            if file_hash is None:
                try:
                    file_hash = builder.file_hash(model.path)
                except OSError:
                    file_hash = None
            info = ModelInfo(name=rm.name, precision=precision or meta.get("precision") or "unknown",
                             shape=rm.shape, params=rm.params or meta.get("param_count"), file_hash=file_hash,
                             provider=model.provider, threads=threads, context_length=model.context_length,
                             eos_token_ids=tuple(model.eos_token_ids), collectors_label=label)
            costing = Costing(region=grid.region, intensity_g_per_kwh=grid.intensity_g_per_kwh,
                              intensity_source=grid.source, intensity_year=grid.year, pue=settings.pue,
                              price_usd_per_kwh=price)
            store = opener()
            engine_box: list = []
            registry, metrics = serve_registry(lambda: engine_box[0].node if engine_box else None,
                                               info.name, info.precision)
            self.engine = Engine(model, info, costing, collectors=collectors, sample_hz=settings.sample_hz,
                                 max_batch=max_batch, store=store, metrics=metrics, otel=self.otel,
                                 idle_run_s=o.idle_run_s, warn=self.say)
            engine_box.append(self.engine)
            if self.otel is not None:
                self.otel.watch_node(lambda: self.engine.node if self.engine is not None else None)
            self.engine.stopping = self._stopping
            self.app = build_app(self.engine, registry=registry, stopping=self._stopping,
                                 bench_toggle=o.bench_toggle, warn=self.say)
        except BaseException:
            if self.engine is None and store is not None:
                store.close()
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            raise
        self.engine.start()
        self._uvicorn_server()
        if note:
            self.say(note)
        self.say(f"serving {info.name} ({info.precision}, {max_batch} worker{'s' if max_batch > 1 else ''} x "
                 f"{threads} thread{'s' if threads > 1 else ''}) on {self.url}/v1; energy: "
                 f"{', '.join(collectors) if isinstance(collectors, list) else collectors}; runs -> {store.url}")
        return self

    @staticmethod
    def _build_progress(name: str, done: int, total: int) -> None:
        if done >= total:
            _say(f"built {name}")

    def _stopping(self) -> bool:
        return bool(self.uvicorn is not None and self.uvicorn.should_exit)

    def _uvicorn_server(self) -> None:
        import copy

        import uvicorn
        from uvicorn.config import LOGGING_CONFIG

        log = copy.deepcopy(LOGGING_CONFIG)
        for h in log["handlers"].values():  # stdout is for data: every log line goes to stderr
            h["stream"] = "ext://sys.stderr"
        _quiet_lost_connections()
        config = uvicorn.Config(self.app, log_config=log, log_level="warning", access_log=self.opts.access_log,
                                lifespan="off", timeout_graceful_shutdown=self.opts.graceful_timeout_s,
                                server_header=False)
        self.uvicorn = uvicorn.Server(config)

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT (main thread), then shut down cleanly."""
        got: list[int] = []

        def note(signum, frame):  # noqa: ARG001 - uvicorn re-raises the signal it caught: keep it
            got.append(signum)

        old = {s: signal.signal(s, note) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.uvicorn.run(sockets=[self.sock])
        finally:
            try:
                # a second SIGTERM (a supervisor's, `timeout`'s to the process group) must not
                # kill the process while the last runs are written: handlers go back after
                signal.signal(signal.SIGTERM, note)
                signal.signal(signal.SIGINT, note)
                self.close()
            finally:
                # after a signal the process is exiting, and all is written: one more in the
                # 0.5-1 s of interpreter shutdown left must not turn exit 0 into "killed by
                # SIGTERM". Ignored, not handled: shutdown resets a Python handler to the
                # default action, but leaves an ignored signal ignored
                for s, h in old.items():
                    signal.signal(s, signal.SIG_IGN if got else h)

    def start(self) -> "Server":
        """Serve from a background thread (no signal handling); :meth:`stop` ends it."""
        self._thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]},
                                        name="greenprof-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.uvicorn is not None:
            self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.close()

    def close(self) -> None:
        if self.engine is not None and not self.engine.closed:
            self.engine.close()
            if self.otel is not None:
                if not self.otel.shutdown():
                    self.say("OpenTelemetry: the last spans and metrics could not be sent in time; dropped")
            self.say("stopped")
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# -- commands -----------------------------------------------------------------------------------
_DB_HELP = ("Database for the runs: SQLAlchemy URL or SQLite path (default: GREENPROF_DB, \\[tool.greenprof] db, "
            "./greenprof.db).")


def serve_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="A built-in name (built on first use) or a path to an "
                                "ONNX export with its tokenizer.json."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0: any free port)."),
    max_batch: int = typer.Option(None, "--max-batch", help="Requests generated at once, one per worker thread "
                                  "(default: one per CPU core); more wait in a FIFO queue."),
    db: str = typer.Option(None, "--db", help=_DB_HELP),
    precision: str = typer.Option(None, "--precision", help="fp32 (default), int8 or int4: built-in models only."),
    threads: int = typer.Option(None, "--threads", help="onnxruntime intra-op threads per request "
                                "(default: the cores divided among the workers)."),
    provider: str = typer.Option("cpu", "--provider", help="onnxruntime execution provider: cpu, cuda or cuda:N."),
    collectors: str = typer.Option(None, "--collectors", help="Energy domains to charge, comma-separated "
                                   "(default: those of the device the model runs on; see `greenprof sensors`)."),
    region: str = typer.Option(None, "--region", help="Grid region for CO2e (ISO3, ISO2, name, USA/CA)."),
    intensity: float = typer.Option(None, "--intensity", help="Grid intensity in g CO2e/kWh; overrides --region."),
    pue: float = typer.Option(None, "--pue", help="Data-centre PUE (default 1.0)."),
    price_kwh: float = typer.Option(None, "--price-kwh", help="Electricity price in USD/kWh."),
    idle_run_s: float = typer.Option(300.0, "--idle-run-s", help="Store the energy used while no request was in "
                                     "flight as one run (model '(idle)') every S seconds and at exit (0: at exit only)."),
    graceful_timeout: float = typer.Option(10.0, "--graceful-timeout", help="On SIGTERM/Ctrl-C, seconds requests "
                                           "in flight get to finish before they are interrupted."),
    otlp_endpoint: str = typer.Option(None, "--otlp-endpoint", help="Send a span per request and the node's "
                                      "hw.energy to this OTLP/HTTP endpoint (needs greenprof\\[otel]; default "
                                      "OTEL_EXPORTER_OTLP_ENDPOINT)."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every HTTP request on stderr."),
    bench_toggle: bool = typer.Option(False, "--bench-toggle", hidden=True,
                                      help="Allow POST /greenprof/bench/accounting (benchmarks/serve_speed.py)."),
) -> None:
    """Serve a model over an OpenAI-compatible API, with every request's energy in its answer.

    Routes: POST /v1/chat/completions, /v1/completions (streamed too); GET /v1/models, /health, /metrics.

    Each request is measured token by token and stored as a run (kind serve); its usage carries
    energy_j, co2e_g, cost_usd, energy_method and energy_basis.
    """
    opts = ServeOptions(model=model, host=host, port=port, max_batch=max_batch, db=db, precision=precision,
                        threads=threads, provider=provider, collectors=collectors, region=region,
                        intensity=intensity, pue=pue, price_kwh=price_kwh, idle_run_s=idle_run_s,
                        graceful_timeout_s=graceful_timeout, otlp_endpoint=otlp_endpoint, access_log=access_log,
                        bench_toggle=bench_toggle)
    Server(opts).prepare().run()


def exporter_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(9464, "--port", help="Port to listen on (0: any free port)."),
    collectors: str = typer.Option("auto", "--collectors", help="Energy domains to export, comma-separated "
                                   "(default: every measured source here, else cpu-estimate-machine: every "
                                   "process's busy CPU time x the estimate's W per thread)."),
    sample_hz: float = typer.Option(None, "--sample-hz", help="Sampler rate (default 10, or GREENPROF_SAMPLE_HZ)."),
) -> None:
    """Export this machine's energy counters to Prometheus at GET /metrics.

    For machines that run their own inference code: greenprof_energy_joules_total{domain,method}
    (gross, what the counters saw) and greenprof_power_watts{domain}.
    """
    from greenprof.exporter import run_exporter

    run_exporter(host=host, port=port, collectors=collectors, sample_hz=sample_hz)


def register_serve(app: typer.Typer) -> None:
    """Add `serve` and `exporter` to the greenprof CLI."""
    app.command("serve")(serve_cmd)
    app.command("exporter")(exporter_cmd)


__all__ = ["Server", "ServeOptions", "bind", "register_serve"]
