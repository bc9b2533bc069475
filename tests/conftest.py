"""Session-wide isolation: built models go to a per-session cache (tiny is built once), and no
test reads the developer's own greenprof settings. Also the PostgreSQL fixture that the store
and dashboard tests share."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in ("GREENPROF_CACHE", "GREENPROF_DB", "GREENPROF_REGION",
                                            "GREENPROF_REPLAY", "GREENPROF_INTENSITY", "GREENPROF_PUE",
                                            "GREENPROF_PRICE_KWH", "GREENPROF_THREADS")}
    for k in saved:
        os.environ.pop(k, None)
    os.environ["GREENPROF_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# -- PostgreSQL -------------------------------------------------------------------------------------
def _pg_bin() -> Path | None:
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on a unix socket in a temp dir, or a skip saying why not."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
        driver = "psycopg"
    except ImportError:
        try:
            import psycopg2  # noqa: F401
            driver = "psycopg2"
        except ImportError:
            pytest.skip("no PostgreSQL driver: pip install 'psycopg[binary]'")
    user: str | None = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
                user = name
                break
            except KeyError:
                pass
        if user is None:
            pytest.skip("running as root and no unprivileged user to run PostgreSQL as")
    base = Path(tempfile.mkdtemp(prefix="gp-pg-"))  # short: a socket path must stay < 108 bytes
    if user is not None:
        shutil.chown(base, user)
    data, log = base / "data", base / "log"
    run = dict(user=user, capture_output=True, text=True, timeout=120, cwd=base)
    started = False
    try:
        r = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "greenprof", "--auth=trust",
                            "-E", "UTF8", "--no-sync"], **run)
        if r.returncode != 0:
            pytest.skip(f"initdb failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
        r = subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                            "-o", f"-k {base} -c listen_addresses='' -F", "start"], **run)
        if r.returncode != 0:
            pytest.skip(f"PostgreSQL did not start: {log.read_text()[-300:] if log.exists() else r.stderr}")
        started = True
        yield f"postgresql+{driver}://greenprof@/postgres?host={base}"
    finally:
        if started:
            subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], **run)
        shutil.rmtree(base, ignore_errors=True)
