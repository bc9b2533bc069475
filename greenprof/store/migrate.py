"""Alembic migrations of the store, run programmatically: where the database stands, whether it
needs an upgrade (or is too new), and the configuration that runs them."""


from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from sqlalchemy import (
    inspect,
)
from sqlalchemy.engine import URL, Connection


from . import schema as S
from .engine import BUSY_TIMEOUT_S
from .errors import (
    NotAGreenprofDatabase,
    SchemaTooNew,
    StoreNotWritable,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from alembic.config import Config




# -- migrations ---------------------------------------------------------------------------------
def alembic_config(url: str | URL | None = None, connection: Connection | None = None) -> "Config":
    """An Alembic ``Config`` for the packaged migrations; no alembic.ini is needed.

    Pass ``connection`` to migrate inside a transaction you hold (what :func:`open_store` does),
    or ``url`` for development commands (``command.revision(..., autogenerate=True)``).
    """
    from importlib.resources import files

    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("greenprof.store.migrations")))
    if url is not None:
        # ConfigParser interpolation: a literal % must be doubled
        text = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)
        cfg.set_main_option("sqlalchemy.url", text.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def known_revisions() -> set[str]:
    """Every schema revision this greenprof knows (from the packaged migration scripts)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


def _stamped(conn: Connection) -> tuple[tuple[str, ...], list[str]]:
    """(revisions in greenprof's version table, every table name) of the database."""
    names = inspect(conn).get_table_names()
    if S.VERSION_TABLE not in names:
        return (), names
    rows = conn.exec_driver_sql(f"SELECT version_num FROM {S.VERSION_TABLE}").all()
    return tuple(sorted(r[0] for r in rows)), names


def _needs_upgrade(revs: tuple[str, ...], tables: Sequence[str], dialect: str, where: str,
                   origin: str) -> bool:
    """False when the database is at head; True when it is new or older; else a typed refusal."""
    if revs == (S.SCHEMA_REVISION,):
        return False  # the common case: no Alembic import at all
    if not revs:
        ours = {t.name for t in S.TABLES}
        foreign = [t for t in tables if not t.startswith("sqlite_")]
        if dialect != "sqlite":  # a shared server database may hold other applications' tables
            foreign = [t for t in foreign if t in ours]
        if foreign:
            raise NotAGreenprofDatabase(
                f"{where} is not a greenprof database (it has tables {', '.join(sorted(foreign)[:5])}); "
                f"point {origin} at a new or a greenprof database")
        return True
    known = known_revisions()
    unknown = [r for r in revs if r not in known]
    if unknown:
        raise SchemaTooNew(f"{where} was written by a newer greenprof (schema {', '.join(unknown)}); "
                           f"upgrade greenprof (this one knows schemas up to {S.SCHEMA_REVISION})")
    return True


def _peek_sqlite(path: Path, origin: str) -> tuple[tuple[str, ...], list[str]]:
    """Check an existing SQLite file through a read-only connection, before the engine sets WAL
    (which rewrites the header): a file greenprof refuses is left byte for byte as it was."""
    import sqlite3

    if not path.exists() or path.stat().st_size == 0:
        return (), []
    # a directory nobody may write in (a read-only mount) has no -shm file to share: read the
    # file as immutable there, as the reading commands do
    immutable = "" if os.access(path.parent, os.W_OK) else "&immutable=1"
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro{immutable}", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as e:
        raise StoreNotWritable(f"cannot open the database {path}: {e}") from None
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        revs: tuple[str, ...] = ()
        if S.VERSION_TABLE in tables:
            revs = tuple(sorted(r[0] for r in conn.execute(f"SELECT version_num FROM {S.VERSION_TABLE}")))
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e) or "encrypted" in str(e):
            raise NotAGreenprofDatabase(f"{path} is not a greenprof database (not SQLite); "
                                        f"point {origin} at a new or a greenprof .db file") from None
        raise StoreUnavailable(f"cannot read the database {path}: {e}") from None
    finally:
        conn.close()
    _needs_upgrade(revs, tables, "sqlite", str(path), origin)
    return revs, tables
