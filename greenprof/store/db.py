"""Open, migrate, write and read the run store.

    store = open_store()                     # --db / GREENPROF_DB / ./greenprof.db
    run_id = store.start_run(model_name="SmolLM-135M", precision="fp32", prompt_tokens=32)
    ...                                      # measure
    store.finish_run(run_id, meter.measurement)
    store.get_run(run_id)

Any SQLAlchemy URL works; SQLite is the default and the tuned case: WAL journal (readers never
block the writer), ``busy_timeout`` of 30 s (writers queue instead of failing), foreign keys on,
``synchronous=NORMAL`` (a power cut may drop the last commits but never corrupts), and short write
transactions opened with ``BEGIN IMMEDIATE`` so a writer takes the lock up front instead of
failing halfway when it upgrades a read lock. Samples go in by executemany, in chunks of
:data:`SAMPLE_CHUNK` rows, one transaction each, so concurrent writers interleave.

The schema is created and upgraded only by the Alembic migrations in ``migrations/``.
"""

from __future__ import annotations

import math
import operator
import os
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from sqlalchemy import (
    Engine,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection

from greenprof.errors import UsageError
from greenprof.hostinfo import pid_alive

from . import schema as S
from .errors import (
    NoDatabase,
    RunNotFound,
    StoreError,
    StoreNotWritable,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from greenprof.meter import Measurement, PowerSample

# The store's parts, one concern a module: where it lives (urls), how it connects (engine), its
# schema's history (migrate), what its read API returns (records). Store and open_store are here.
from .engine import _WRITE, _ErrorMap, _server_engine, _sqlite_engine
from .migrate import _needs_upgrade, _peek_sqlite, _stamped, alembic_config
from .records import DomainRecord, PhaseSummary, RunRecord, SegmentRecord
from .urls import _can_write, _check_sqlite_file, _check_sqlite_readable, _no_database, resolve_url, sqlite_path

SAMPLE_CHUNK = 5000  # sample rows per write transaction
STALE_NOTE = "process ended without closing the run (killed?)"

# Postgres advisory lock key held while migrating, so concurrent first opens migrate once.
_PG_MIGRATION_LOCK = 0x67726E70  # "grnp"

# Columns a caller may set in start_run; the store owns id, status, ended_at and the results.
#: Ids and counts fit a signed 64-bit integer (SQLite's INTEGER, PostgreSQL's BIGINT).
_MAX_ID = 2 ** 63
_STORE_OWNED = {"id", "status", "ended_at", "duration_s", "sample_hz", "idle_window_s", "warnings",
                "process_cpu_s", "machine_busy_cpu_s", "other_cpu_share", "concurrent_windows"}
RUN_FIELDS = tuple(c.name for c in S.runs.c if c.name not in _STORE_OWNED)



# -- helpers ------------------------------------------------------------------------------------
def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _to_utc_naive(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value  # taken as UTC already
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _as_utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None else None


def _num(x: Any) -> float | None:
    """A float for the database; NaN and infinities become NULL (SQLite would store NaN as NULL
    anyway, and a NOT NULL column would then reject the whole batch)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _check_finished(status: str) -> None:
    if status not in S.RUN_STATUSES or status == "running":
        raise UsageError(f"a finished run's status must be completed, failed or interrupted (got {status!r})")


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


# -- the store ----------------------------------------------------------------------------------
class Store:
    """A migrated greenprof database. Create with :func:`open_store`; safe to share across
    threads; after ``fork`` the child drops the parent's connections and opens its own."""

    def __init__(self, engine: Engine, url: URL, origin: str, readonly: bool = False) -> None:
        #: opened for reading only (the reading commands): nothing is written through it
        self.readonly = readonly
        #: runs left 'running' by a process that is gone, which a read-only store could not mark
        self.stale_unmarked: list[int] = []
        self._engine = engine
        self._write_engine = engine.execution_options(**{_WRITE: True})
        self._url = url
        self._origin = origin
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._insert_sql: dict[tuple, tuple[str, tuple[str, ...] | None]] = {}
        self._bind_procs: dict[tuple, list[Any]] = {}
        self.path = sqlite_path(url) if url.get_backend_name() == "sqlite" else None
        where = str(self.path) if self.path else url.render_as_string(hide_password=True)
        self._errors = _ErrorMap(where, origin, url)

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return self._url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        return str(self._engine.dialect.name)

    @property
    def engine(self) -> Engine:
        self._after_fork()
        return self._engine

    def _after_fork(self) -> None:
        # Pooled connections must not be shared between processes: a forked child gets fresh ones
        # (close=False leaves the parent's connections alone).
        if os.getpid() != self._pid:
            with self._lock:
                if os.getpid() != self._pid:
                    self._engine.dispose(close=False)
                    self._pid = os.getpid()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One short write transaction (BEGIN IMMEDIATE on SQLite)."""
        if self.readonly:
            raise StoreNotWritable(f"the database {self._errors.where} was opened read-only: open it "
                                   "with open_store(..., readonly=False) to write")
        self._after_fork()
        try:
            with self._write_engine.begin() as conn:
                yield conn
        except sa_exc.OperationalError as e:
            raise self._errors(e) from e

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        self._after_fork()
        try:
            with self._engine.connect() as conn:
                yield conn
        except sa_exc.OperationalError as e:
            raise self._errors(e) from e

    def close(self) -> None:
        """Close every pooled connection (on SQLite the last close checkpoints the WAL)."""
        self._engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def revision(self) -> str | None:
        """The schema revision the database is stamped with."""
        with self._read() as conn:
            revs, _ = _stamped(conn)
        return ",".join(revs) or None

    def _migrate(self) -> None:
        """Bring the database to :data:`SCHEMA_REVISION`, or refuse it. Keeps every row."""
        with self._read() as conn:
            revs, tables = _stamped(conn)
        if not _needs_upgrade(revs, tables, self.dialect, self._errors.where, self._origin):
            return
        self._upgrade()
        with self._read() as conn:
            revs, _ = _stamped(conn)
        if revs != (S.SCHEMA_REVISION,):  # a packaging mistake, not a user one
            raise StoreError(f"{self._errors.where}: migrations ended at schema {revs}, expected "
                             f"{S.SCHEMA_REVISION}; reinstall greenprof")

    def _upgrade(self) -> None:
        from alembic import command

        self._after_fork()
        sqlite = self.dialect == "sqlite"
        try:
            with self._write_engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                assert raw is not None
                if sqlite:
                    # Batch migrations copy a table, drop the old one and rename the copy; with
                    # foreign keys on, the DROP would cascade-delete every child row. The pragma is
                    # a no-op inside a transaction, so it is set before BEGIN, on the raw driver
                    # connection (SQLAlchemy would autobegin), and checked before COMMIT instead.
                    raw.execute("PRAGMA foreign_keys = OFF")
                try:
                    with conn.begin():  # BEGIN IMMEDIATE: concurrent openers migrate one by one
                        if self.dialect == "postgresql":
                            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
                        command.upgrade(alembic_config(connection=conn), "head")
                        if sqlite:
                            bad = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                            if bad:
                                raise StoreError(f"{self._errors.where}: migration broke {len(bad)} "
                                                 f"foreign key(s) (first: {tuple(bad[0])}); nothing was changed")
                finally:
                    if sqlite:
                        raw.execute("PRAGMA foreign_keys = ON")
        except sa_exc.OperationalError as e:
            raise self._errors(e) from e

    # -- writing --------------------------------------------------------------------------------
    def start_run(self, **fields: Any) -> int:
        """Insert a run with status ``running`` and return its id (the RUN_ID users type).

        Any column of ``runs`` except the ones the store owns may be given (``model_name``,
        ``precision``, ``prompt_tokens``, ``region``, ``extra``, ...). Filled in when absent:
        ``kind="measure"``, a new ``batch_id``, ``started_at`` (now, UTC), ``pid``, and from
        :mod:`greenprof.hostinfo`: ``host``, ``hardware``, its ``hardware_fingerprint`` and
        ``software``.
        """
        row = self._run_row(fields)
        row["status"] = "running"
        with self._write() as conn:
            pk = conn.execute(insert(S.runs), row).inserted_primary_key
            assert pk is not None
            return int(pk[0])

    def _run_row(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """A new run's row from caller fields: checked, with the defaults start_run documents."""
        unknown = sorted(set(fields) - set(RUN_FIELDS))
        if unknown:
            raise UsageError(f"unknown run field(s) {', '.join(unknown)}; known: {', '.join(RUN_FIELDS)}")
        row = dict(fields)
        row.setdefault("kind", "measure")
        if row["kind"] not in S.RUN_KINDS:
            raise UsageError(f"run kind must be one of {', '.join(S.RUN_KINDS)} (got {row['kind']!r})")
        if row.get("batch_id") is None:
            row["batch_id"] = str(uuid.uuid4())
        row["started_at"] = _to_utc_naive(row.get("started_at") or datetime.now(timezone.utc))
        row.setdefault("pid", os.getpid())
        if row.get("host") is None or row.get("hardware") is None or row.get("software") is None:
            from greenprof import hostinfo

            row["host"] = row.get("host") or hostinfo.host()
            if row.get("hardware") is None:
                row["hardware"] = hostinfo.hardware()
            if row.get("software") is None:
                row["software"] = hostinfo.software()
        if row.get("hardware_fingerprint") is None:
            from greenprof.hostinfo import fingerprint

            row["hardware_fingerprint"] = fingerprint(row["hardware"])
        return row

    def record_runs(self, runs: Sequence[tuple[Any, ...]]) -> list[int]:
        """Store whole finished runs in one transaction: each item is ``(fields, measurement,
        status, error)`` or ``(fields, measurement, status, error, ended_at)``, ``fields`` as for
        :meth:`start_run`; ``ended_at`` (an aware datetime) is when the run's work ended, which
        defaults to now (the write). Returns their ids in order.

        For work that is stored once it has ended (``greenprof serve``'s requests, written in
        batches): all of a batch is there or none of it, and no run is ever seen ``running``.
        """
        for r in runs:
            _check_finished(r[2])
        rows = [self._run_row(r[0]) for r in runs]
        now = _utcnow()
        children: tuple[list, list, list] = ([], [], [])
        samples: list[Any] = []
        sql, order = self._samples_insert()
        for row, r in zip(rows, runs):
            ended = _to_utc_naive(r[4]) if len(r) > 4 and r[4] is not None else now
            row.update(self._finish_values(r[1], r[2], r[3], ended))
        with self._write() as conn:
            ids = self._insert_runs(conn, rows)  # one INSERT for the batch, ids in the rows' order
            for rid, row, (_, m, *_rest) in zip(ids, rows, runs):
                if m is not None:
                    for into, more in zip(children, self._result_rows(rid, m, {}, row.get("prompt_tokens"))):
                        into.extend(more)
                    samples.extend(self._sample_rows(rid, m.samples, order))
            for table, rows_ in zip((S.run_domains, S.segments, S.segment_energy), children):
                self._bulk(conn, table, rows_)
            for chunk in _chunks(samples, SAMPLE_CHUNK):
                conn.exec_driver_sql(sql, chunk)
        return ids

    def _insert_runs(self, conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
        """Insert whole run rows (write transaction open) and return their ids in order; a
        column some rows lack is NULL in those.

        SQLite: one ``executemany`` of tuples converted by the columns' own bind processors
        (the conversions Core applies), then the newest ``len(rows)`` ids. That is exact
        because the write transaction (BEGIN IMMEDIATE) holds the database's only write lock and
        ``runs`` is AUTOINCREMENT, so ids only grow. SQLAlchemy would run one INSERT ... RETURNING
        per row here (SQLite does not promise RETURNING's order for several rows): on 60 served
        runs in batches of 30, record_runs took 0.22-0.28 ms a run that way and 0.17-0.18 ms
        this way. Other databases: one INSERT ... RETURNING for the batch, ids in parameter order.
        """
        if not rows:
            return []
        cols = tuple(sorted(set().union(*rows)))
        if self._engine.dialect.name != "sqlite":
            stmt = insert(S.runs).returning(S.runs.c.id, sort_by_parameter_order=True)
            params = [{c: row.get(c) for c in cols} for row in rows]
            return [int(x) for x in conn.execute(stmt, params).scalars().all()]
        sql, order = self._driver_insert(S.runs, cols)
        order = order or cols
        procs = self._bind_processors(S.runs, order)
        conn.exec_driver_sql(sql, [tuple(row.get(c) if p is None else p(row.get(c)) for c, p in zip(order, procs))
                                   for row in rows])
        got = conn.exec_driver_sql("SELECT id FROM runs ORDER BY id DESC LIMIT ?", (len(rows),)).all()
        return [int(r[0]) for r in reversed(got)]

    def _bind_processors(self, table: Any, cols: tuple[str, ...]) -> list[Any]:
        """Each column's conversion of a Python value for the driver (None: none needed)."""
        key = (table.name, cols)
        hit = self._bind_procs.get(key)
        if hit is None:
            dialect = self._engine.dialect
            hit = self._bind_procs[key] = [table.c[c].type.dialect_impl(dialect).bind_processor(dialect)
                                           for c in cols]
        return hit

    @staticmethod
    def _finish_values(m: "Measurement | None", status: str, error: str | None,
                       ended: datetime) -> dict[str, Any]:
        values: dict[str, Any] = {"status": status, "error": error, "ended_at": ended}
        if m is not None:
            values.update(duration_s=_num(m.duration_s), sample_hz=m.sample_hz,
                          idle_window_s=m.idle_window_s,
                          warnings=list(m.warnings) or None,
                          process_cpu_s=_num(getattr(m, "process_cpu_s", None)),
                          machine_busy_cpu_s=_num(getattr(m, "machine_busy_cpu_s", None)),
                          other_cpu_share=_num(getattr(m, "other_cpu_share", None)),
                          concurrent_windows=getattr(m, "concurrent_windows", None))
        return values

    #: Run columns a caller may still change while the run is ``running`` (e.g. the token count
    #: a ``track`` block learns only at its end).
    UPDATABLE = ("new_tokens", "prompt_tokens", "model_name", "param_count", "precision", "extra")

    def update_run(self, run_id: int, **fields: Any) -> None:
        """Change descriptive columns of a running run (see :attr:`UPDATABLE`)."""
        bad = sorted(set(fields) - set(self.UPDATABLE))
        if bad:
            raise UsageError(f"cannot update {', '.join(bad)}; updatable: {', '.join(self.UPDATABLE)}")
        if not fields:
            return
        with self._write() as conn:
            res = conn.execute(update(S.runs).where(S.runs.c.id == run_id, S.runs.c.status == "running")
                               .values(**fields))
            if res.rowcount == 0:
                raise RunNotFound(f"no running run {run_id} in {self._errors.where}")

    def finish_run(self, run_id: int, measurement: "Measurement | None", status: str | None = None,
                   tokens: Mapping[str | int, int | None] | None = None, error: str | None = None) -> None:
        """Save a measurement under a running run and close it.

        ``status`` defaults to ``measurement.status`` (``failed`` when there is no measurement).
        ``tokens`` maps a segment label or index to its token count; by default ``prefill``
        carries the run's ``prompt_tokens``, each ``token-N`` one token, anything else none.
        The results go in a few short transactions (samples in chunks of :data:`SAMPLE_CHUNK`)
        and the status is set last, so a run reads ``completed`` only once all of it is there;
        a process killed halfway leaves it ``running``, which :meth:`mark_stale_runs` reports.
        """
        with self._read() as conn:
            run = conn.execute(select(S.runs.c.status, S.runs.c.prompt_tokens)
                               .where(S.runs.c.id == run_id)).first()
        if run is None:
            raise RunNotFound(f"no run {run_id} in {self._errors.where}")
        if run.status != "running":
            raise UsageError(f"run {run_id} is already {run.status}: a run is finished once")
        if status is None:
            status = measurement.status if measurement is not None else "failed"
        _check_finished(status)
        try:
            if measurement is not None:
                self._write_results(run_id, measurement, tokens or {}, run.prompt_tokens)
            values = self._finish_values(measurement, status, error, _utcnow())
            with self._write() as conn:
                conn.execute(update(S.runs).where(S.runs.c.id == run_id).values(**values))
        except BaseException as e:
            # best effort: say why the run has partial results instead of leaving it "running"
            why = "failed" if isinstance(e, Exception) else "interrupted"  # Ctrl-C, SIGTERM
            try:
                with self._write() as conn:
                    conn.execute(update(S.runs).where(S.runs.c.id == run_id, S.runs.c.status == "running")
                                 .values(status=why, ended_at=_utcnow(),
                                         error=f"could not save the measurement: {type(e).__name__}: {e}"))
            except Exception:
                pass
            raise

    def _write_results(self, run_id: int, m: "Measurement", tokens: Mapping[str | int, int | None],
                       prompt_tokens: int | None) -> None:
        domains, segs, seg_energy = self._result_rows(run_id, m, tokens, prompt_tokens)
        with self._write() as conn:
            for table, rows in ((S.run_domains, domains), (S.segments, segs), (S.segment_energy, seg_energy)):
                self._bulk(conn, table, rows)
        self.add_samples(run_id, m.samples)

    def _result_rows(self, run_id: int, m: "Measurement", tokens: Mapping[str | int, int | None],
                     prompt_tokens: int | None) -> tuple[list[dict], list[dict], list[dict]]:
        """The run_domains, segments and segment_energy rows of one measurement."""
        attributed = getattr(m, "attributed_energy_j", None) or {}
        scope = getattr(m, "scope", None) or {}
        uncertain = getattr(m, "uncertain", None) or {}
        share_notes = getattr(m, "share_notes", None) or {}
        domains = [
            {"run_id": run_id, "domain": d, "method": m.method.get(d), "source": m.sources.get(d),
             "energy_j": _num(e), "idle_power_w": _num(m.idle_power_w.get(d)),
             # gross above the idle baseline; none without one (it is not the gross again)
             "dynamic_energy_j": _num(e - m.idle_power_w[d] * m.duration_s) if d in m.idle_power_w else None,
             "resolution_s": _num(m.resolution_s.get(d)), "lost_reason": m.lost.get(d),
             "attributed_energy_j": _num(attributed.get(d)),
             "share": _num(attributed[d] / e) if d in attributed and e and e > 0 else None,
             "scope": scope.get(d), "uncertain_reason": uncertain.get(d), "share_note": share_notes.get(d)}
            for d, e in m.energy_j.items()
        ]
        domains += [
            {"run_id": run_id, "domain": d, "method": m.method.get(d), "source": m.sources.get(d),
             "energy_j": None, "idle_power_w": None, "dynamic_energy_j": None, "resolution_s": None,
             "lost_reason": reason, "attributed_energy_j": None, "share": None, "scope": scope.get(d),
             "uncertain_reason": uncertain.get(d), "share_note": None}
            for d, reason in m.lost.items() if d not in m.energy_j
        ]
        segs, seg_energy = [], []
        kinds = S.segment_kinds([s.label for s in m.segments])
        for idx, s in enumerate(m.segments):
            kind = kinds[idx]
            if idx in tokens:
                n = tokens[idx]
            elif s.label in tokens:
                n = tokens[s.label]
            elif getattr(s, "tokens", None) is not None:  # a merged decode segment
                n = s.tokens
            else:
                n = prompt_tokens if kind == "prefill" else 1 if kind == "decode" else None
            segs.append({"run_id": run_id, "idx": idx, "label": s.label, "kind": kind,
                         "start_s": s.start_s, "duration_s": s.duration_s, "tokens": n})
            dyn = s.dynamic_energy_j
            att = getattr(s, "attributed_energy_j", None) or {}
            seg_energy += [{"run_id": run_id, "idx": idx, "domain": d, "energy_j": _num(e),
                            "dynamic_energy_j": _num(dyn.get(d)) if d in m.idle_power_w else None,
                            "attributed_energy_j": _num(att.get(d))} for d, e in s.energy_j.items()]
        return domains, segs, seg_energy

    def add_samples(self, run_id: int, samples: Sequence["PowerSample"]) -> int:
        """Bulk-insert power samples (executemany, :data:`SAMPLE_CHUNK` rows per transaction)."""
        sql, order = self._samples_insert()
        rows = self._sample_rows(run_id, samples, order)
        for chunk in _chunks(rows, SAMPLE_CHUNK):
            with self._write() as conn:
                conn.exec_driver_sql(sql, chunk)  # straight to cursor.executemany
        return len(rows)

    @staticmethod
    def _sample_rows(run_id: int, samples: Sequence["PowerSample"], order: tuple[str, ...] | None) -> list[Any]:
        if order is None:  # named parameters (psycopg: %(name)s)
            return [{"run_id": run_id, "t_s": s.t_s, "domain": s.domain, "power_w": _num(s.power_w)}
                    for s in samples]
        return [(run_id, s.t_s, s.domain, _num(s.power_w)) for s in samples]

    _SAMPLE_COLS = ("run_id", "t_s", "domain", "power_w")

    def _samples_insert(self) -> tuple[str, tuple[str, ...] | None]:
        sql, order = self._driver_insert(S.samples, self._SAMPLE_COLS)
        if order not in (None, self._SAMPLE_COLS):  # _sample_rows builds tuples in that order
            raise StoreError(f"unexpected parameter order {order} for the samples insert")
        return sql, order

    def _driver_insert(self, table: Any, cols: tuple[str, ...]) -> tuple[str, tuple[str, ...] | None]:
        """``table``'s INSERT of ``cols`` in this driver's parameter style, compiled once, and
        the column order of its positional parameters (None: named). Sending plain tuples to
        ``executemany`` is several times faster than Core's per-row parameter processing; the
        columns it is used for are plain numbers and text, which need none."""
        key = (table.name, cols)
        hit = self._insert_sql.get(key)
        if hit is None:
            compiled = insert(table).compile(dialect=self._engine.dialect, column_keys=list(cols))
            order = tuple(compiled.positiontup or ()) if compiled.positional else None
            if order is not None and set(order) != set(cols):  # never expected
                raise StoreError(f"unexpected parameters {order} for the {table.name} insert")
            hit = self._insert_sql[key] = (str(compiled), order)
        return hit

    def _bulk(self, conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` (dicts with the same keys) into ``table`` with one executemany."""
        if not rows:
            return
        sql, order = self._driver_insert(table, tuple(rows[0]))
        conn.exec_driver_sql(sql, rows if order is None else [tuple(r[c] for c in order) for r in rows])

    def mark_stale_runs(self) -> list[int]:
        """Report as ``interrupted`` the runs still ``running`` whose process on this host is gone.

        Runs of other hosts are left alone (their processes cannot be checked from here). A pid
        now used by a process younger than the run counts as gone. Returns the ids updated.
        """
        from greenprof.hostinfo import host as this_host

        host = this_host()
        with self._read() as conn:
            rows = conn.execute(select(S.runs.c.id, S.runs.c.pid, S.runs.c.started_at, S.runs.c.new_tokens,
                                       S.runs.c.extra)
                                .where(S.runs.c.status == "running", S.runs.c.host == host)).all()
        dead = [r.id for r in rows if not pid_alive(r.pid, r.started_at)]
        if not dead:
            return []
        if self.readonly:  # mark them through a writable connection where the database allows one
            try:
                writer = open_store(self._url.render_as_string(hide_password=False), setting=self._origin)
            except (StoreError, StoreUnavailable):
                self.stale_unmarked = dead
                return []
            with writer:
                return writer.mark_stale_runs()
        updated: list[int] = []
        with self._write() as conn:
            for r in rows:
                if r.id not in dead:
                    continue
                # a run is stored with the tokens it was asked for; how many it generated before its
                # process died is not known: unknown, not the request (which stays in extra)
                extra = dict(r.extra or {})
                if r.new_tokens is not None:
                    extra.setdefault("requested_new_tokens", r.new_tokens)
                res = conn.execute(
                    update(S.runs).where(S.runs.c.id == r.id, S.runs.c.status == "running")
                    .values(status="interrupted", error=f"{STALE_NOTE} (pid {r.pid} on {host})",
                            new_tokens=None, extra=extra or None))
                if res.rowcount:
                    updated.append(r.id)
        return updated

    def delete_run(self, run_id: int) -> None:
        """Delete a run and, by cascade, everything recorded under it."""
        with self._write() as conn:
            if conn.execute(delete(S.runs).where(S.runs.c.id == run_id)).rowcount == 0:
                raise RunNotFound(f"no run {run_id} in {self._errors.where}")

    # -- reading --------------------------------------------------------------------------------
    def list_runs(self, *, limit: int | None = 50, status: str | None = None, kind: str | None = None,
                  model_name: str | None = None, batch_id: str | None = None,
                  since: datetime | None = None, host: str | None = None) -> list[RunRecord]:
        """Runs, newest first, with their domains and phase summaries (not their segments).
        ``host``: only runs of that host id (see greenprof.hostinfo.host)."""
        q = self._runs_where(select(S.runs).order_by(S.runs.c.id.desc()), status=status, kind=kind,
                             model_name=model_name, batch_id=batch_id, since=since, host=host)
        if limit is not None and limit < _MAX_ID:  # beyond a 64-bit count is every run
            q = q.limit(limit)
        with self._read() as conn:
            records = [self._record(r) for r in conn.execute(q).mappings()]
            self._attach_details(conn, records)
        return records

    def count_runs(self, *, status: str | None = None, kind: str | None = None, model_name: str | None = None,
                   batch_id: str | None = None, since: datetime | None = None, host: str | None = None) -> int:
        """How many runs :meth:`list_runs` would list with no limit (the same filters)."""
        q = self._runs_where(select(func.count()).select_from(S.runs), status=status, kind=kind,
                             model_name=model_name, batch_id=batch_id, since=since, host=host)
        with self._read() as conn:
            return int(conn.execute(q).scalar() or 0)

    @staticmethod
    def _runs_where(q: Any, *, status: str | None, kind: str | None, model_name: str | None,
                    batch_id: str | None, since: datetime | None, host: str | None) -> Any:
        for col, v in (("host", host), ("status", status), ("kind", kind), ("model_name", model_name),
                       ("batch_id", batch_id)):
            if v is not None:
                q = q.where(S.runs.c[col] == v)
        if since is not None:
            q = q.where(S.runs.c.started_at >= _to_utc_naive(since))
        return q

    def get_run(self, run_id: int) -> RunRecord:
        """One run with its domains, phase summaries and every segment."""
        try:
            valid = 0 < operator.index(run_id) < _MAX_ID
        except TypeError:
            valid = False
        if not valid:  # no such row can exist
            raise RunNotFound(f"no run {run_id} in {self._errors.where}: run ids are whole numbers from 1 "
                              "(see `greenprof runs`)")
        with self._read() as conn:
            row = conn.execute(select(S.runs).where(S.runs.c.id == run_id)).mappings().first()
            if row is None:
                raise RunNotFound(f"no run {run_id} in {self._errors.where}: see `greenprof runs`")
            rec = self._record(row)
            self._attach_details(conn, [rec])
            by_idx: dict[int, SegmentRecord] = {}
            for s in conn.execute(select(S.segments).where(S.segments.c.run_id == run_id)
                                  .order_by(S.segments.c.idx)):
                by_idx[s.idx] = SegmentRecord(s.idx, s.label, s.kind, s.start_s, s.duration_s, s.tokens)
            for e in conn.execute(select(S.segment_energy).where(S.segment_energy.c.run_id == run_id)):
                seg = by_idx.get(e.idx)
                if seg is not None:
                    seg.energy_j[e.domain] = e.energy_j
                    seg.attributed_energy_j[e.domain] = e.attributed_energy_j
                    seg.dynamic_energy_j[e.domain] = e.dynamic_energy_j if rec.idle_window_s else None
            rec.segments = list(by_idx.values())
        return rec

    def samples(self, run_id: int, domain: str | None = None) -> list["PowerSample"]:
        """The run's power samples in time order (``power_w`` NaN where it was not finite)."""
        from greenprof.meter import PowerSample

        q = select(S.samples.c.t_s, S.samples.c.domain, S.samples.c.power_w) \
            .where(S.samples.c.run_id == run_id)
        if domain is not None:
            q = q.where(S.samples.c.domain == domain)
        q = q.order_by(S.samples.c.t_s, S.samples.c.domain)
        nan = float("nan")
        with self._read() as conn:
            return [PowerSample(t, d, p if p is not None else nan) for t, d, p in conn.execute(q)]

    def power_timeline(self, run_id: int, max_points: int = 1000) -> dict[str, S.Timeline]:
        """At most ``max_points`` points per domain, averaged on the database side."""
        with self._read() as conn:
            return S.power_timeline(conn, run_id, max_points)

    def count_samples(self, run_id: int | None = None) -> int:
        q = select(func.count()).select_from(S.samples)
        if run_id is not None:
            q = q.where(S.samples.c.run_id == run_id)
        with self._read() as conn:
            return int(conn.execute(q).scalar_one())

    def integrity_check(self) -> str:
        """``"ok"``, or what SQLite's ``PRAGMA integrity_check`` found. Other databases keep
        their own integrity (and have no such check): ``"ok"`` once a query goes through."""
        with self._read() as conn:
            if self.dialect != "sqlite":
                conn.exec_driver_sql("SELECT 1").all()
                return "ok"
            rows = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check").all()]
            bad_fk = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        result = "; ".join(rows)
        if bad_fk:
            extra = f"{len(bad_fk)} row(s) break a foreign key (first: {tuple(bad_fk[0])})"
            result = extra if result == "ok" else f"{result}; {extra}"
        return result

    # -- internals ------------------------------------------------------------------------------
    @staticmethod
    def _record(row: Any) -> RunRecord:
        values = {c.name: row[c.name] for c in S.runs.c}
        values["started_at"] = _as_utc(values["started_at"])
        values["ended_at"] = _as_utc(values["ended_at"])
        return RunRecord(**values)

    @staticmethod
    def _attach_details(conn: Connection, records: list[RunRecord]) -> None:
        """Fill ``domains`` and ``phases`` of the records (a few grouped queries, not one per run).

        Dynamic energy (gross above the idle baseline) is None for a run without a baseline: runs
        stored before that rule hold the gross there, which is not dynamic (get_run's segments
        follow the same rule)."""
        by_id = {r.id: r for r in records}
        for ids in _chunks(list(by_id), 500):
            for d in conn.execute(select(S.run_domains).where(S.run_domains.c.run_id.in_(ids))
                                  .order_by(S.run_domains.c.run_id, S.run_domains.c.domain)):
                rec = by_id[d.run_id]
                rec.domains[d.domain] = DomainRecord(
                    d.domain, d.method, d.source, d.energy_j, d.idle_power_w,
                    d.dynamic_energy_j if rec.idle_window_s else None,
                    d.resolution_s, d.lost_reason, d.attributed_energy_j, d.share, d.scope,
                    d.uncertain_reason, d.share_note)
            seg = S.segments
            for run_id, kind, n, dur, tok in conn.execute(
                    select(seg.c.run_id, seg.c.kind, func.count(), func.sum(seg.c.duration_s),
                           func.sum(seg.c.tokens))
                    .where(seg.c.run_id.in_(ids)).group_by(seg.c.run_id, seg.c.kind)):
                by_id[run_id].phases[kind] = PhaseSummary(kind, int(n), float(dur or 0.0),
                                                          int(tok) if tok is not None else None)
            se = S.segment_energy
            for run_id, kind, domain, e, dyn, att in conn.execute(
                    select(seg.c.run_id, seg.c.kind, se.c.domain, func.sum(se.c.energy_j),
                           func.sum(se.c.dynamic_energy_j), func.sum(se.c.attributed_energy_j))
                    .join(seg, (seg.c.run_id == se.c.run_id) & (seg.c.idx == se.c.idx))
                    .where(se.c.run_id.in_(ids)).group_by(seg.c.run_id, seg.c.kind, se.c.domain)):
                phase = by_id[run_id].phases.get(kind)
                if phase is not None:
                    phase.energy_j[domain] = float(e) if e is not None else None
                    phase.dynamic_energy_j[domain] = (float(dyn) if dyn is not None and by_id[run_id].idle_window_s
                                                      else None)
                    phase.attributed_energy_j[domain] = float(att) if att is not None else None


def _memory_refused(origin: str, reading: bool) -> StoreError:
    if reading:
        return NoDatabase(f"an in-memory database ({origin} :memory:) holds no runs: point {origin} at a "
                          "database file")
    return StoreError(f"an in-memory database ({origin} :memory:) keeps nothing once greenprof exits: "
                      f"point {origin} at a database file")


def preflight(url: str | os.PathLike | None = None, *, setting: str = "--db", keep: bool = False) -> str:
    """Every check :func:`open_store` makes before writing, and nothing else: a command can
    refuse a bad ``--db`` before long work, and still create the database only when it has
    something to store. A SQLite location is probed for writing (a file is created and removed
    beside it); a server is connected to (bounded by :func:`connect_timeout_s`) and its schema
    checked, creating nothing. ``keep``: refuse an in-memory database (its runs would vanish).
    Returns the resolved URL (password redacted)."""
    u, origin = resolve_url(url, setting)
    if u.get_backend_name() == "sqlite":
        path = sqlite_path(u)
        if path is None:
            if keep:
                raise _memory_refused(origin, reading=False)
        else:
            _check_sqlite_file(path, origin)
            _peek_sqlite(path, origin)
    else:
        from sqlalchemy.pool import NullPool

        engine = _server_engine(u, origin, poolclass=NullPool)
        errors = _ErrorMap(u.render_as_string(hide_password=True), origin, u)
        try:
            with engine.connect() as conn:
                revs, tables = _stamped(conn)
            _needs_upgrade(revs, tables, engine.dialect.name, errors.where, origin)
        except sa_exc.DBAPIError as e:
            raise errors(e) from None
        finally:
            engine.dispose()
    return u.render_as_string(hide_password=True)


_SHARED: dict[str, tuple[Store, tuple[int, int] | None]] = {}
_SHARED_LOCK = threading.Lock()


def _file_id(path: Any) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def shared_store(url: str | os.PathLike | None = None, *, setting: str = "--db") -> Store:
    """A writable store for ``url`` that this process keeps open and reuses (``track`` blocks,
    which may open and close thousands of runs): opening, migrating and compiling its statements
    happen once, not per block. Opened again when the SQLite file was replaced or removed since.
    Never close it; it is closed when the process exits."""
    u, _origin = resolve_url(url, setting)
    key = u.render_as_string(hide_password=False)
    with _SHARED_LOCK:
        hit = _SHARED.get(key)
        if hit is not None:
            store, fid = hit
            if store.path is None or _file_id(store.path) == fid:
                return store
            del _SHARED[key]
            store.close()
        store = open_store(url, setting=setting)
        _SHARED[key] = (store, _file_id(store.path) if store.path is not None else None)
        if len(_SHARED) == 1:
            import atexit

            atexit.register(_close_shared)
        return store


def _close_shared() -> None:
    with _SHARED_LOCK:
        stores = [s for s, _ in _SHARED.values()]
        _SHARED.clear()
    for s in stores:
        try:
            s.close()
        except Exception:
            pass


def open_store(url: str | os.PathLike | None = None, *, setting: str = "--db", readonly: bool = False) -> Store:
    """Open (creating or migrating as needed) the greenprof database at ``url``.

    ``url``: a SQLAlchemy URL or a file path; else ``$GREENPROF_DB``; else ``./greenprof.db``.
    ``setting`` is how messages name an explicit ``url`` (``--db``, ``track(db=...)``).
    Raises :class:`~greenprof.store.errors.StoreError` subclasses (usage errors) for a malformed
    URL, an unwritable location, a file that is not a greenprof database or a database written
    by a newer greenprof, each before anything is written; :class:`StoreUnavailable` when the
    server cannot be reached (within :func:`connect_timeout_s`) or the file stays locked.

    ``readonly=True`` (the reading commands): nothing is created or written. A database that
    does not exist is :class:`NoDatabase`; a SQLite file is opened with ``mode=ro`` (and
    ``immutable`` when its directory cannot be written, e.g. a read-only mount), so a read-only
    database reads. A database at an older schema is upgraded only where it can be written;
    else one line says to upgrade it with write access.
    """
    u, origin = resolve_url(url, setting)
    path = sqlite_path(u) if u.get_backend_name() == "sqlite" else None
    if readonly and u.get_backend_name() == "sqlite":
        if path is None:
            raise _memory_refused(origin, reading=True)
        _check_sqlite_readable(path, origin)
        revs, tables = _peek_sqlite(path, origin)
        if not revs and not [t for t in tables if not t.startswith("sqlite_")]:
            raise NoDatabase(f"{path} holds no greenprof runs yet (an empty database); `greenprof measure` "
                             "records some")
        if revs != (S.SCHEMA_REVISION,):
            if not _can_write(path):
                raise StoreNotWritable(
                    f"{path} was written by an older greenprof (schema {', '.join(revs)}; this one reads "
                    f"{S.SCHEMA_REVISION}) and cannot be upgraded here (read-only): run a greenprof "
                    "command that stores runs (`greenprof measure`) once where it is writable, or read "
                    "a writable copy")
            readonly = False  # upgrade it in place, as a writing command would
    if not readonly and path is not None:
        _check_sqlite_file(path, origin)
        _peek_sqlite(path, origin)
    if u.get_backend_name() == "sqlite":
        # a directory nobody may write in (a read-only mount) cannot hold the -shm file readers
        # of a WAL database share: read the file as immutable there (no lock, no -shm)
        immutable = readonly and path is not None and not os.access(path.parent, os.W_OK)
        engine = _sqlite_engine(u, readonly=readonly, immutable=immutable)
    else:
        engine = _server_engine(u, origin)
    store = Store(engine, u, origin, readonly=readonly)
    try:
        if readonly and u.get_backend_name() != "sqlite":
            with store._read() as conn:
                revs, tables = _stamped(conn)
            if not revs and not [t for t in tables if t in {t.name for t in S.TABLES}]:
                raise _no_database(store._errors.where, origin)
            if revs != (S.SCHEMA_REVISION,):
                store._migrate()
        elif not readonly:
            store._migrate()
        else:
            with store._read() as conn:  # fail here, in one line, if SQLite cannot read it
                conn.exec_driver_sql("SELECT 1 FROM runs LIMIT 1").all()
    except sa_exc.DBAPIError as e:
        engine.dispose()
        raise store._errors(e) from None
    except BaseException:
        engine.dispose()
        raise
    return store

