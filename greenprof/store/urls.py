"""Where the store lives: database URLs, SQLite file checks (writable, readable, a greenprof
database), the PostgreSQL connect timeout. Nothing here opens a connection."""


from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url


from .errors import (
    BadStoreUrl,
    NoDatabase,
    NotAGreenprofDatabase,
    StoreNotReadable,
    StoreNotWritable,
)

if TYPE_CHECKING:
    pass


ENV_VAR = "GREENPROF_DB"
DEFAULT_URL = "sqlite:///greenprof.db"
URL_HINT = "a SQLAlchemy URL like sqlite:///path.db or postgresql://user@host/db"
SQLITE_MAGIC = b"SQLite format 3\x00"

# -- URL handling -------------------------------------------------------------------------------
def _redact(raw: str) -> str:
    """Hide a password in a URL-ish string, even one SQLAlchemy cannot parse."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", raw)


def resolve_url(url: str | os.PathLike | None = None, setting: str = "--db") -> tuple[URL, str]:
    """The SQLAlchemy URL to open and where it came from (``setting``, ``GREENPROF_DB``, default).

    ``setting`` names an explicit ``url`` in messages: ``--db`` for the CLI, ``track(db=...)``
    for the decorator.

    A value without ``://`` is a file path and becomes a SQLite URL; a relative SQLite path is
    made absolute against the current directory. ``postgres://`` is read as ``postgresql://``.
    """
    if url is not None:
        raw, origin = os.fspath(url), setting
    elif os.environ.get(ENV_VAR, "").strip():
        raw, origin = os.environ[ENV_VAR], ENV_VAR
    else:
        raw, origin = DEFAULT_URL, "the default database"
    raw = raw.strip()
    what = f"{origin} must be {URL_HINT}" if origin != "the default database" else f"the database must be {URL_HINT}"
    if not raw:
        raise BadStoreUrl(f"{what} (got an empty value)")
    if "://" not in raw:
        if raw == ":memory:":
            return make_url("sqlite://"), origin
        path = Path(raw).expanduser().absolute()
        return URL.create("sqlite", database=str(path)), origin
    try:
        u = make_url(raw)
    except (sa_exc.ArgumentError, ValueError) as e:
        raise BadStoreUrl(f"{what} (got {_redact(raw)!r}: {str(e).splitlines()[0]})") from None
    backend, _, driver = u.drivername.partition("+")
    if backend == "postgres":  # the Heroku spelling
        u = u.set(drivername="postgresql" + (f"+{driver}" if driver else ""))
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:") \
            and not u.database.startswith("file:"):
        u = u.set(database=str(Path(u.database).expanduser().absolute()))
    try:
        dialect_cls = u.get_dialect()
    except sa_exc.NoSuchModuleError:
        raise BadStoreUrl(f"{what}: no database kind {u.drivername!r} (got {_redact(raw)!r})") from None
    if u.get_backend_name() == "postgresql" and "+" not in u.drivername:
        u = _pick_postgres_driver(u)
    else:
        try:
            dialect_cls.import_dbapi()
        except ImportError as e:
            raise BadStoreUrl(f"{origin}: the driver for {u.drivername!r} is not installed ({e}); "
                              f"install it with pip") from None
    return u, origin


def _pick_postgres_driver(u: URL) -> URL:
    """``postgresql://`` means psycopg2 to SQLAlchemy; use psycopg (3) when only that is installed."""
    import importlib.util

    if importlib.util.find_spec("psycopg2") is not None:
        return u
    if importlib.util.find_spec("psycopg") is not None:
        return u.set(drivername="postgresql+psycopg")
    raise BadStoreUrl("PostgreSQL needs a driver: pip install 'psycopg[binary]' (or psycopg2-binary)")


def sqlite_path(u: URL) -> Path | None:
    """The database file of a SQLite URL, None for an in-memory database."""
    db = u.database
    if not db or db == ":memory:" or db.startswith("file:") or u.query.get("mode") == "memory":
        return None
    return Path(db)


CONNECT_TIMEOUT_ENV = "GREENPROF_DB_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT_S = 10


def connect_timeout_s(env: Mapping[str, str] | None = None) -> int:
    """Seconds to wait for a database server to answer a connection
    (``GREENPROF_DB_CONNECT_TIMEOUT``, default 10; at least 2, libpq's minimum)."""
    from greenprof.errors import ConfigError

    env = os.environ if env is None else env
    raw = (env.get(CONNECT_TIMEOUT_ENV) or "").strip()
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"{CONNECT_TIMEOUT_ENV}={raw!r} is not a number of seconds > 0: set it like "
                          f"{CONNECT_TIMEOUT_ENV}=10, or unset it (default {DEFAULT_CONNECT_TIMEOUT_S} s)")
    return max(2, math.ceil(v))



def _why_not_writable(e: OSError) -> str:
    """What an OSError from a write attempt means, in words: a read-only file system is not a
    permission problem, and the fix differs."""
    import errno

    if e.errno == errno.EROFS:
        return "it is on a read-only file system"
    if e.errno == errno.ENOENT:  # the directory exists, yet no file can be made in it (/proc, /sys)
        return "this file system does not hold ordinary files"
    if e.errno in (errno.EACCES, errno.EPERM):
        user = ""
        if hasattr(os, "geteuid"):
            try:
                import pwd

                user = f" ({pwd.getpwuid(os.geteuid()).pw_name})"
            except (ImportError, KeyError):
                user = f" (uid {os.geteuid()})"
        return f"permission denied for this user{user}"
    return e.strerror or str(e)


def _probe_dir(parent: Path, origin: str) -> None:
    """Create and remove a file in ``parent``: the only sure test that the database and its
    -wal/-shm files can be written there (``os.access`` says yes to root on a read-only mount
    or in /proc)."""
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=".greenprof-probe-", dir=parent)
    except OSError as e:
        raise StoreNotWritable(f"cannot write in {parent} ({_why_not_writable(e)}; the database and its "
                               f"-wal/-shm files live there): point {origin} elsewhere") from None
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _check_sqlite_file(path: Path, origin: str) -> None:
    """Refuse, before SQLite touches anything, a path greenprof cannot write. Never changes
    the database (a probe file is created and removed beside it)."""
    parent = path.parent
    if not parent.is_dir():
        raise StoreNotWritable(f"cannot create the database {path}: directory {parent} does not exist "
                               f"(create it, or point {origin} elsewhere)")
    if path.is_dir():
        raise NotAGreenprofDatabase(f"{path} is a directory, not a greenprof database")
    if path.exists():
        _check_sqlite_magic(path, origin)
        try:
            fd = os.open(path, os.O_RDWR)  # opening for writing writes nothing
        except OSError as e:
            raise StoreNotWritable(f"the database {path} cannot be written ({_why_not_writable(e)}): "
                                   f"greenprof reads it (runs, show, export, compare, dashboard) but "
                                   f"cannot store runs in it; point {origin} elsewhere") from None
        os.close(fd)
    # WAL needs the -wal and -shm files next to the database, even when the database exists
    _probe_dir(parent, origin)


def _check_sqlite_magic(path: Path, origin: str) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise StoreNotReadable(f"cannot read the database {path}: {e.strerror}") from None
    if head and head != SQLITE_MAGIC:
        raise NotAGreenprofDatabase(f"{path} is not a greenprof database (not SQLite); "
                                    f"point {origin} at a new or a greenprof .db file")


def _no_database(where: str, origin: str) -> NoDatabase:
    elsewhere = f", or point {origin} at an existing one" if origin != "the default database" else \
        " (or give --db / GREENPROF_DB)"
    return NoDatabase(f"no database at {where}; `greenprof measure` creates one{elsewhere}")


def _check_sqlite_readable(path: Path, origin: str) -> None:
    """What a reading command needs: an existing SQLite file it may read. Creates nothing."""
    if path.is_dir():
        raise NotAGreenprofDatabase(f"{path} is a directory, not a greenprof database")
    if not path.exists():
        raise _no_database(str(path), origin)
    _check_sqlite_magic(path, origin)


def _can_write(path: Path) -> bool:
    """Whether a reader could also write the database and its -wal/-shm files (no side effect
    but a probe file created and removed beside it)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    try:
        _probe_dir(path.parent, "--db")
    except StoreNotWritable:
        return False
    return True
