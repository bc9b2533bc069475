"""The run store: every measurement, its segments and power samples, in SQLite or any
SQLAlchemy database, with Alembic migrations so an old database opens in a new greenprof.

Importing this package is cheap: SQLAlchemy and Alembic load on first use of a name below.

    from greenprof.store import open_store
    store = open_store()                 # --db / GREENPROF_DB / ./greenprof.db
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    BadStoreUrl,
    NoDatabase,
    NotAGreenprofDatabase,
    RunNotFound,
    SchemaTooNew,
    StoreError,
    StoreNotReadable,
    StoreNotWritable,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from .db import Store, open_store, preflight, shared_store
    from .records import DomainRecord, PhaseSummary, RunRecord, SegmentRecord
    from .urls import connect_timeout_s, resolve_url
    from .schema import Timeline, power_timeline

__all__ = [
    "open_store", "preflight", "shared_store", "resolve_url", "Store", "RunRecord", "DomainRecord", "SegmentRecord", "PhaseSummary",
    "Timeline", "power_timeline",
    "StoreError", "BadStoreUrl", "StoreNotWritable", "StoreNotReadable", "NotAGreenprofDatabase",
    "NoDatabase", "SchemaTooNew", "RunNotFound", "StoreUnavailable", "connect_timeout_s",
]

_LAZY = {
    "open_store": "greenprof.store.db",
    "shared_store": "greenprof.store.db",
    "preflight": "greenprof.store.db",
    "connect_timeout_s": "greenprof.store.urls",
    "resolve_url": "greenprof.store.urls",
    "Store": "greenprof.store.db",
    "RunRecord": "greenprof.store.records",
    "DomainRecord": "greenprof.store.records",
    "SegmentRecord": "greenprof.store.records",
    "PhaseSummary": "greenprof.store.records",
    "Timeline": "greenprof.store.schema",
    "power_timeline": "greenprof.store.schema",
}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'greenprof.store' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
