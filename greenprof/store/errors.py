"""Typed errors of the run store. Every message is one line that says what is wrong and what to do.

:class:`StoreError` and its subclasses are usage errors (exit code 2): the ``--db`` / ``GREENPROF_DB``
value points at something greenprof cannot use. :class:`StoreUnavailable` is a runtime error
(exit code 1): the database is right but cannot be reached or written just now.
"""

from __future__ import annotations

from greenprof.errors import GreenprofError, UsageError


class StoreError(UsageError):
    """The database named by ``--db`` / ``GREENPROF_DB`` cannot be used as a greenprof store."""


class BadStoreUrl(StoreError):
    """The value is not a SQLAlchemy URL (or names a database kind / driver that is not available)."""


class StoreNotWritable(StoreError):
    """The database file, or the directory it would be created in, cannot be written."""


class NoDatabase(StoreError):
    """A reading command names a database that does not exist (nothing is created for it)."""


class StoreNotReadable(StoreError):
    """The database file cannot be read by this user."""


class NotAGreenprofDatabase(StoreError):
    """The file is not SQLite, or the database holds tables that are not greenprof's."""


class SchemaTooNew(StoreError):
    """The database was written by a newer greenprof whose schema this version does not know."""


class RunNotFound(StoreError):
    """No run has the requested id."""


class StoreUnavailable(GreenprofError):
    """The database server cannot be reached, or the database stayed locked past the timeout."""
