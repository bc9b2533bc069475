"""Alembic environment of the greenprof store.

``greenprof.store.db`` runs it with an open connection in ``config.attributes["connection"]``,
already inside the write transaction (SQLite: ``BEGIN IMMEDIATE`` with foreign keys off), so
that two processes opening a fresh database at once migrate it once, one after the other.
Used without a connection (Alembic's command line, for development), it connects to
``sqlalchemy.url`` itself.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine

from greenprof.store.schema import VERSION_TABLE, metadata

config = context.config

def configure(**kw: Any) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things: recreate-and-copy instead
        compare_type=True,
        **kw,
    )


def run_offline() -> None:
    configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise SystemExit("greenprof migrations: set sqlalchemy.url (see greenprof.store.migrate.alembic_config)")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
