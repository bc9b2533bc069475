"""Who measured, on what: host, hardware fingerprint and software versions for every run row."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from datetime import datetime, timezone
from functools import lru_cache


@lru_cache(maxsize=1)
def hardware() -> dict:
    """CPU model, core counts, memory and visible GPUs (names only; no NVML init if absent)."""
    import psutil

    from greenprof.collectors.cpu_estimate import cpu_model_name

    info = {
        "cpu_model": cpu_model_name(),
        "cpu_logical": psutil.cpu_count(logical=True),
        "cpu_physical": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "machine": platform.machine(),
        "gpus": _gpu_names(),
    }
    return info


def _gpu_names() -> list[str]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            n = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(n.decode() if isinstance(n, bytes) else str(n))
        return names
    except Exception:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def fingerprint(hw: dict | None = None) -> str:
    """Short stable hash of the hardware description: runs on the same box compare."""
    if hw is None or hw is hardware():  # this machine's, hashed once
        return _own_fingerprint()
    return _hash(hw)


def _hash(hw: dict) -> str:
    blob = json.dumps(hw, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@lru_cache(maxsize=1)
def _own_fingerprint() -> str:
    return _hash(hardware())


def software() -> dict:
    """Versions of greenprof, Python, the OS and the packages its figures depend on. Read once
    per process (package metadata costs milliseconds; what this process imported stays put)."""
    return dict(_software())


@lru_cache(maxsize=1)
def _software() -> dict:
    from importlib import metadata

    from greenprof import __version__

    out = {"greenprof": __version__, "python": platform.python_version(),
           "os": f"{platform.system()} {platform.release()}"}
    for dist in ("onnxruntime", "onnxruntime-gpu", "numpy", "sqlalchemy", "nvidia-ml-py", "codecarbon"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


#: Set to name this machine in a shared database (several hosts writing to one PostgreSQL).
HOST_ID_ENV = "GREENPROF_HOST_ID"
MACHINE_ID_PATHS = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def host() -> str:
    """This machine's stable id, stored with every run: ``GREENPROF_HOST_ID`` when set, else the
    host name plus a short hash of the OS's machine id (/etc/machine-id), so two containers or
    VMs that share a host name ("localhost") are still told apart, and a renamed host is not
    (the hash is of the id, never the id itself)."""
    env = os.environ.get(HOST_ID_ENV, "").strip()
    if env:
        return env[:255]
    return _default_host_id()


@lru_cache(maxsize=1)
def _default_host_id() -> str:
    name = socket.gethostname() or os.uname().nodename or "host"
    for path in MACHINE_ID_PATHS:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                mid = f.read().strip()
        except OSError:
            continue
        if mid:
            return f"{name}-{hashlib.sha256(mid.encode()).hexdigest()[:8]}"
    return name


def pid_alive(pid: int | None, started_at: datetime | None = None) -> bool:
    """Is process ``pid`` still there? Unknown counts as alive; so does this process.

    A zombie counts as gone. With ``started_at`` (naive UTC: when the process's work began), a
    process created more than a second after it is another program that reused the pid."""
    if pid is None:
        return True
    if pid == os.getpid():
        return True
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if started_at is not None:
            started = started_at.replace(tzinfo=timezone.utc).timestamp()
            if proc.create_time() > started + 1.0:
                return False
        return True
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
