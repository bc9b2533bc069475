"""SQLAlchemy engines for the store: SQLite tuned for several writers (WAL, busy timeout,
BEGIN IMMEDIATE writes, a WAL switch that retries instead of failing on a fresh file), database
servers with a bounded connect timeout, and driver errors mapped to one-line store errors."""


from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import (
    Engine,
    create_engine,
    event,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection
from sqlalchemy.pool import StaticPool


from .urls import CONNECT_TIMEOUT_ENV, URL_HINT, sqlite_path, connect_timeout_s
from .errors import (
    BadStoreUrl,
    NotAGreenprofDatabase,
    StoreNotWritable,
    StoreUnavailable,
)

if TYPE_CHECKING:
    pass


BUSY_TIMEOUT_S = 30.0
_WRITE = "greenprof_write"  # execution option: this transaction starts with BEGIN IMMEDIATE

# -- engine -------------------------------------------------------------------------------------
_LOCKED = ("database is locked", "database is busy", "database table is locked")


def _use_wal(cur: Any) -> None:
    """Put the database in WAL mode unless it already is (the mode is stored in the file).

    Switching needs an exclusive lock, and SQLite answers "database is locked" at once, without
    waiting for ``busy_timeout``, when waiting could deadlock: two connections opening a fresh
    file together both hold a read lock and both want to switch. Reading the mode takes no
    such lock, so every connection after the first one skips the switch; the first ones retry
    (:func:`_retry_locked`). A file system that cannot do WAL keeps its mode, as before."""
    mode = cur.execute("PRAGMA journal_mode").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        cur.execute("PRAGMA journal_mode = WAL").fetchall()


def _retry_locked(op: Callable[[], Any]) -> Any:
    """Run connection set-up ``op``, retrying "database is locked" with a short backoff (1 ms
    doubling to 50 ms, jittered) for up to :data:`BUSY_TIMEOUT_S`, as ``busy_timeout`` would
    wait. Past that the driver's error is raised (the error map says it stayed locked)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.001
    while True:
        try:
            return op()
        except Exception as e:
            left = deadline - time.monotonic()
            if left <= 0 or not any(s in str(e).lower() for s in _LOCKED):
                raise
        time.sleep(min(delay * random.uniform(0.5, 1.5), left))
        delay = min(delay * 2, 0.05)


def _sqlite_engine(u: URL, readonly: bool = False, immutable: bool = False) -> Engine:
    """The engine of a SQLite database. ``readonly``: nothing is ever written (``PRAGMA
    query_only``, no WAL switch, the file is never created); ``immutable`` when the directory
    cannot be written (a read-only mount: ``mode=ro&immutable=1``, SQLite then needs no -shm file
    and takes no lock). Otherwise a reading connection opens the file read-write (``mode=rw``,
    which SQLite opens read-only where the file is write-protected): a ``mode=ro`` connection
    never removes the -wal and -shm files it makes, so every `greenprof runs` left them beside
    the database; the last read-write connection to close checkpoints and removes them."""
    memory = sqlite_path(u) is None
    kw: dict[str, Any] = {"connect_args": {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}}
    if memory:
        kw["poolclass"] = StaticPool  # one shared connection, or each would see its own database
    if readonly:
        import sqlite3

        from sqlalchemy.pool import QueuePool

        path = sqlite_path(u)
        assert path is not None
        uri = f"{path.as_uri()}?mode=ro&immutable=1" if immutable else f"{path.as_uri()}?mode=rw"
        engine = create_engine("sqlite://", poolclass=QueuePool, creator=lambda: sqlite3.connect(
            uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False))
    else:
        engine = create_engine(u, **kw)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # SQLAlchemy's pysqlite recipe: the driver stops issuing BEGIN itself (isolation_level
        # None); the "begin" hook below issues it, so we choose DEFERRED or IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if readonly:
                cur.execute("PRAGMA query_only = ON")
            elif not memory:
                _retry_locked(lambda: _use_wal(cur))
                cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock at BEGIN (waiting up to busy_timeout for it). A deferred
        # transaction that later writes can fail at once with SQLITE_BUSY instead of waiting.
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _one_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


class _ErrorMap:
    """Turns driver errors into typed greenprof errors with one line."""

    def __init__(self, where: str, origin: str, url: Any = None) -> None:
        self.where, self.origin = where, origin
        given = url.query.get("connect_timeout") if url is not None else None
        self.timeout_note = (f"{given} s, the URL's connect_timeout" if given
                             else f"{connect_timeout_s()} s, {CONNECT_TIMEOUT_ENV}")

    def __call__(self, e: BaseException) -> BaseException:
        msg = _one_line(e)
        low = msg.lower()
        if "file is not a database" in low or "file is encrypted" in low:
            return NotAGreenprofDatabase(f"{self.where} is not a greenprof database (not SQLite); "
                                         f"point {self.origin} at a new or a greenprof .db file")
        if "readonly database" in low or "unable to open database file" in low:
            return StoreNotWritable(f"cannot write the database {self.where} ({msg}): "
                                    f"fix the permissions or point {self.origin} elsewhere")
        if "timeout expired" in low or "timed out" in low:
            return StoreUnavailable(
                f"no answer from the database server {self.where} within its connect timeout "
                f"({self.timeout_note}): check that the server is up and "
                f"reachable, or point {self.origin} elsewhere")
        if "database is locked" in low or "database is busy" in low:
            return StoreUnavailable(f"the database {self.where} stayed locked by another process for "
                                    f"more than {BUSY_TIMEOUT_S:g} s; try again")
        return StoreUnavailable(f"cannot use the database {self.where}: {msg}")



def _server_engine(u: URL, origin: str, **kw: Any) -> Engine:
    """The engine of a database server, with a bounded connect timeout (PostgreSQL: libpq's
    ``connect_timeout``, unless the URL sets one)."""
    connect_args: dict[str, Any] = {}
    if u.get_backend_name() == "postgresql" and "connect_timeout" not in u.query:
        connect_args["connect_timeout"] = connect_timeout_s()
    try:
        return create_engine(u, pool_pre_ping=True, connect_args=connect_args, **kw)
    except (sa_exc.ArgumentError, TypeError, ValueError) as e:
        raise BadStoreUrl(f"{origin} must be {URL_HINT} ({_one_line(e)})") from None
