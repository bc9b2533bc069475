"""Start `greenprof serve` / `greenprof exporter` as real subprocesses on 127.0.0.1, for the
serve and Prometheus tests. Every process is ended by the test that started it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | str | None = None, timeout: float = 30.0):
    """(status, parsed JSON or text, headers) of one request; never raises for an HTTP status."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw, headers = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), e.headers
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw.decode(errors="replace"), headers


class Proc:
    """A greenprof subprocess; its stderr goes to a file read by :meth:`stderr`."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "greenprof.cli", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=self._fh)

    def stderr(self) -> str:
        if not self._fh.closed:
            self._fh.flush()
        return self.log.read_text(errors="replace")

    def wait_http(self, url: str, timeout_s: float = 120.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited ({self.proc.returncode}) before answering:\n{self.stderr()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"{url} did not answer within {timeout_s} s:\n{self.stderr()}")

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait; SIGKILL only if it hangs (and fail the caller's check then)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._fh.close()
        return self.proc.returncode


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def serve_runs(db: str, *, idle: bool = False):
    """Every stored serve run (requests, or the idle runs with ``idle=True``)."""
    from greenprof.store import open_store

    with open_store(db) as store:
        runs = store.list_runs(kind="serve", limit=None)
    return [r for r in runs if (r.model_name == "(idle)") == idle]


def settled_serve_runs(db: str, quiet_s: float = 0.6, timeout_s: float = 20.0):
    """The stored serve runs once none has been added for ``quiet_s`` (the server writes a
    finished request's run up to 0.25 s later, batched with the others)."""
    end = time.monotonic() + timeout_s
    runs = serve_runs(db)
    while True:
        time.sleep(quiet_s)
        again = serve_runs(db)
        if len(again) == len(runs) or time.monotonic() > end:
            return again
        runs = again


def run_of(db: str, request_id: str, timeout_s: float = 20.0, done: bool = True):
    """The stored run of a request (its id is in extra.serve.request_id), once it is finished."""
    from greenprof.store import open_store

    end = time.monotonic() + timeout_s
    while True:
        with open_store(db) as store:
            for r in store.list_runs(kind="serve", limit=None):
                if ((r.extra or {}).get("serve") or {}).get("request_id") == request_id:
                    if not done or r.status != "running":
                        return store.get_run(r.id)
        if time.monotonic() > end:
            raise AssertionError(f"no finished run for request {request_id} in {db}")
        time.sleep(0.1)
