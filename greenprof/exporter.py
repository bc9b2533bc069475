"""`greenprof exporter`: this machine's energy counters for Prometheus, without serving a model.

For machines that run their own inference code (or none): a :class:`greenprof.metrics.NodeMeter`
keeps reading the collectors (the same meter, wrap tracking and sampler as every measurement)
and prometheus-client's own HTTP server answers ``GET /metrics``:

* ``greenprof_energy_joules_total{domain,method}``: what each counter saw (gross), in joules; on a
  machine with no measured source (a VM), ``cpu-estimate-machine``: every process's busy CPU time
  (/proc/stat) x the estimate's power per busy thread, labelled ``estimated``;
* ``greenprof_power_watts{domain}``: average power over the last few seconds.

Each scrape renews the node window, so the counters are exact as of the scrape. No ``host``
label: Prometheus's own ``instance`` label tells machines apart.
"""

from __future__ import annotations

import signal
import sys
import threading

from greenprof.errors import GreenprofError, UsageError


def _say(msg: str) -> None:
    sys.stderr.write(f"greenprof exporter: {msg}\n")
    sys.stderr.flush()


def _node_collectors(spec):
    """The exporter's collectors: the measured sources of ``spec``, and where the CPU has none
    (a VM, with or without GPUs), the machine-wide CPU estimate (every process's busy CPU time)
    instead of the per-process one, which would count only the exporter's own CPU time."""
    from greenprof.collectors import select
    from greenprof.collectors.cpu_estimate import DOMAIN, MACHINE_DOMAIN, machine_estimate

    if spec == "auto":
        chosen = select("auto")
        own = [c for c in chosen if c.domain == DOMAIN]
        if not own:
            return chosen
        for c in own:
            c.close()
        return [c for c in chosen if c.domain != DOMAIN] + [machine_estimate()]
    if DOMAIN in spec:
        raise UsageError(f"--collectors {DOMAIN} would export this exporter's own CPU time, not the machine's: "
                         f"use {MACHINE_DOMAIN} (every process's busy CPU time x the same W per thread)")
    objects = [machine_estimate()] if MACHINE_DOMAIN in spec else []
    names = [n for n in spec if n != MACHINE_DOMAIN]
    try:
        return (select(names) if names else []) + objects
    except UsageError as e:
        for c in objects:
            c.close()
        raise UsageError(f"--collectors: {e}") from None


def start_exporter(host: str = "127.0.0.1", port: int = 9464, collectors: str = "auto",
                   sample_hz: float | None = None):
    """Start the node window and the HTTP server (a daemon thread). Returns (httpd, node)."""
    from greenprof.config import CLI_FLAGS, load_settings
    from greenprof.metrics import NodeMeter, node_registry

    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0..65535 (got {port!r})")
    settings = load_settings({"sample_hz": sample_hz}, names=CLI_FLAGS)
    spec = collectors if collectors in (None, "auto") else [c.strip() for c in collectors.split(",") if c.strip()]
    node = NodeMeter(_node_collectors(spec or "auto"), settings.sample_hz, on_warning=_say).start()
    try:
        from prometheus_client import start_http_server

        try:
            httpd, _thread = start_http_server(port, addr=host, registry=node_registry(node))
        except OSError as e:
            hint = "pick another --port" if e.errno in (98, 48) else "check --host/--port"
            raise GreenprofError(f"cannot listen on {host}:{port}: {e.strerror or e}; {hint}") from None
    except BaseException:
        node.close()
        raise
    return httpd, node


def run_exporter(host: str = "127.0.0.1", port: int = 9464, collectors: str = "auto",
                 sample_hz: float | None = None) -> None:
    """Export until SIGTERM or SIGINT, then exit cleanly (exit code 0)."""
    httpd, node = start_exporter(host, port, collectors, sample_hz)
    stop = threading.Event()

    def handler(signum, frame):  # noqa: ARG001
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        bound = httpd.server_address[1]
        shown = host if ":" not in host else f"[{host}]"
        methods = node.totals().method or {}
        doms = ", ".join(node.domains) or "none"
        _say(f"exporting {doms} on http://{shown}:{bound}/metrics"
             + (f" ({', '.join(sorted(set(methods.values())))})" if methods else ""))
        while not stop.wait(0.5):
            pass
    finally:
        try:  # a second signal while stopping is the same request: the handlers go back after
            httpd.shutdown()
            httpd.server_close()
            node.close()
            _say("stopped")
        finally:
            # stopped by a signal: the process is exiting, and another one in its last moments
            # must not make the exit "killed by SIGTERM" (shutdown resets a Python handler to
            # the default action, but leaves an ignored signal ignored)
            for s, h in old.items():
                signal.signal(s, signal.SIG_IGN if stop.is_set() else h)


__all__ = ["run_exporter", "start_exporter"]
