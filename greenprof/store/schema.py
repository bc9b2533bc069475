"""The store's tables (SQLAlchemy 2 Core) and the SQL-side power timeline query.

These definitions describe the schema at :data:`SCHEMA_REVISION`, the head of the Alembic
migrations in ``greenprof/store/migrations/versions``. They are what the code reads and writes
with; the database itself is only ever created and changed by the migrations (a test checks that
the two agree). To change the schema: edit this file, add a migration, bump ``SCHEMA_REVISION``.

Units are in the column names. Times are UTC, stored without a zone (``started_at``,
``ended_at``); ``t_s``/``start_s`` are seconds since the meter started (negative during the idle
baseline window).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    cast,
    func,
    select,
)

#: Head revision of the migrations; the version a database is at after ``open_store``.
SCHEMA_REVISION = "0004"

#: Alembic's bookkeeping table. Not the default ``alembic_version``, so that a PostgreSQL database
#: shared with an application that has its own Alembic history does not collide with ours.
VERSION_TABLE = "greenprof_alembic_version"

RUN_STATUSES = ("running", "completed", "failed", "interrupted")
RUN_KINDS = ("measure", "track", "serve")
#: setup (before the first prefill/token segment), prefill, decode (token-N), teardown (after the
#: last), other (between them, or every segment of a run without phase marks)
SEGMENT_KINDS = ("setup", "prefill", "decode", "teardown", "other")

# Deterministic constraint names, so batch-mode (SQLite) migrations can find them later.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

runs = Table(
    "runs",
    metadata,
    # sqlite_autoincrement: a RUN_ID is never reused, even after the newest run is deleted
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("batch_id", String(36), nullable=True),  # uuid4 shared by the R repeats of one `measure`
    Column("kind", String(16), nullable=False, server_default="measure"),
    Column("status", String(16), nullable=False, server_default="running"),
    Column("started_at", DateTime(), nullable=False),  # UTC
    Column("ended_at", DateTime(), nullable=True),  # UTC
    Column("pid", Integer, nullable=True),
    Column("host", String(255), nullable=True),
    Column("hardware", JSON, nullable=True),  # cpu model, cores, memory, gpus
    Column("hardware_fingerprint", String(16), nullable=True),  # sha256 of canonical hardware JSON
    Column("software", JSON, nullable=True),  # greenprof, python, onnxruntime, os versions
    Column("model_name", String(255), nullable=True),
    Column("model_shape", String(255), nullable=True),
    Column("param_count", BigInteger, nullable=True),
    Column("precision", String(16), nullable=True),
    Column("model_file_hash", String(64), nullable=True),
    Column("provider", String(64), nullable=True),
    Column("threads", Integer, nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("new_tokens", Integer, nullable=True),
    Column("batch_size", Integer, nullable=True),  # sequences generated together (0002)
    Column("collectors", String(255), nullable=True),  # the domains asked for: "auto", "cpu", a list (0003)
    Column("process_cpu_s", Float, nullable=True),  # this process's CPU seconds over the run (0003)
    Column("machine_busy_cpu_s", Float, nullable=True),  # every CPU's busy seconds over the run (0003)
    Column("other_cpu_share", Float, nullable=True),  # other processes' share of the busy time (0003)
    Column("concurrent_windows", Integer, nullable=True),  # windows it split energy with (0003)
    # the run whose window this one was nested in (a track block inside another): its energy is
    # part of that run's, so a sum over runs counts it once only without it (0004)
    Column("parent_run_id", Integer, ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
    Column("region", String(64), nullable=True),
    Column("intensity_g_per_kwh", Float, nullable=True),
    Column("intensity_source", String(255), nullable=True),
    Column("intensity_year", Integer, nullable=True),
    Column("pue", Float, nullable=True),
    Column("price_usd_per_kwh", Float, nullable=True),
    Column("duration_s", Float, nullable=True),
    Column("sample_hz", Float, nullable=True),
    Column("idle_window_s", Float, nullable=True),
    Column("error", Text, nullable=True),  # why it failed / was interrupted
    Column("warnings", JSON, nullable=True),  # the measurement's warnings (list of strings)
    Column("extra", JSON, nullable=True),
    CheckConstraint("status IN ('running', 'completed', 'failed', 'interrupted')", name="status"),
    CheckConstraint("kind IN ('measure', 'track', 'serve')", name="kind"),
    Index("ix_runs_batch_id", "batch_id"),
    Index("ix_runs_started_at", "started_at"),
    Index("ix_runs_status", "status"),
    sqlite_autoincrement=True,
)

run_domains = Table(
    "run_domains",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("domain", String(64), primary_key=True),
    Column("method", String(16), nullable=True),  # measured | estimated | replayed (null if lost early)
    Column("source", String(255), nullable=True),
    Column("energy_j", Float, nullable=True),  # gross; partial (until the loss) when lost_reason is set
    Column("idle_power_w", Float, nullable=True),  # null without an idle baseline
    Column("dynamic_energy_j", Float, nullable=True),  # gross - idle_power_w x duration
    Column("resolution_s", Float, nullable=True),  # how often the source's counter updates
    Column("lost_reason", Text, nullable=True),  # null unless the sensor was lost mid-run
    # 0003: this run's share; null for runs stored before 0003 (charged the whole counter)
    Column("attributed_energy_j", Float, nullable=True),
    Column("share", Float, nullable=True),  # attributed / gross
    Column("scope", String(16), nullable=True),  # process | machine | gpu: what the counter sees
    Column("uncertain_reason", Text, nullable=True),  # why the figure may be wrong (a missed wrap)
    Column("share_note", Text, nullable=True),  # how the share was found ("not shared-checked")
)

segments = Table(
    "segments",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True),  # 0-based order within the run
    Column("label", String(255), nullable=False),  # "prefill", "token-1", ...
    Column("kind", String(16), nullable=False),  # prefill | decode | other
    Column("start_s", Float, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("tokens", Integer, nullable=True),
)

segment_energy = Table(
    "segment_energy",
    metadata,
    Column("run_id", Integer, primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("domain", String(64), primary_key=True),
    Column("energy_j", Float, nullable=True),
    Column("dynamic_energy_j", Float, nullable=True),
    Column("attributed_energy_j", Float, nullable=True),  # 0003
    ForeignKeyConstraint(["run_id", "idx"], ["segments.run_id", "segments.idx"], ondelete="CASCADE"),
)

samples = Table(
    "samples",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("t_s", Float, nullable=False),
    Column("domain", String(64), nullable=False),
    Column("power_w", Float, nullable=True),  # null for a non-finite reading
    Index("ix_samples_run_id_t_s", "run_id", "t_s"),
)

#: Every greenprof table, in creation order.
TABLES = (runs, run_domains, segments, segment_energy, samples)


def segment_kinds(labels: list[str]) -> list[str]:
    """Each segment's kind by label and position (see greenprof.accounting.segment_phases)."""
    from greenprof.accounting import segment_phases

    return segment_phases(labels)


@dataclass
class Timeline:
    """One domain's power over time, averaged per bucket (``min_w``/``max_w`` keep the spikes)."""

    domain: str
    t_s: list[float] = field(default_factory=list)  # mean sample time of each bucket
    power_w: list[float] = field(default_factory=list)  # mean power of each bucket
    min_w: list[float] = field(default_factory=list)
    max_w: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)  # raw samples per bucket


def _dialect_name(session: Any) -> str:
    bind = session.get_bind() if hasattr(session, "get_bind") else session
    return str(bind.dialect.name)


def power_timeline(session: Any, run_id: int, max_points: int = 1000) -> dict[str, Timeline]:
    """At most ``max_points`` points per domain of a run's power timeline, downsampled in SQL.

    ``session`` is a SQLAlchemy ``Session`` or ``Connection``. The run's time span is cut into
    ``max_points`` equal buckets; each bucket yields its mean time and mean/min/max power, grouped
    by the integer bucket number on the database side, so a million-row run sends back at most
    ``max_points`` rows per domain. Buckets with no sample are absent (the line has a gap).
    """
    if max_points < 1:
        raise ValueError("max_points must be >= 1")
    t_min, t_max = session.execute(
        select(func.min(samples.c.t_s), func.max(samples.c.t_s)).where(samples.c.run_id == run_id)
    ).one()
    if t_min is None:
        return {}
    span = float(t_max) - float(t_min)
    # Slightly wider buckets so the last sample (t == t_max) falls in bucket max_points - 1.
    width = span / max_points * (1 + 1e-9) if span > 0 else 1.0
    offset = (samples.c.t_s - float(t_min)) / width  # >= 0
    if _dialect_name(session) == "sqlite":
        # SQLite's CAST truncates, which is floor for x >= 0 (floor() itself is optional there)
        bucket = cast(offset, Integer).label("bucket")
    else:
        # PostgreSQL's CAST rounds, so floor explicitly
        bucket = cast(func.floor(offset), Integer).label("bucket")
    inner = (
        select(samples.c.domain, samples.c.t_s, samples.c.power_w, bucket)
        .where(samples.c.run_id == run_id)
        .subquery()
    )
    stmt = (
        select(
            inner.c.domain,
            inner.c.bucket,
            func.avg(inner.c.t_s),
            func.avg(inner.c.power_w),
            func.min(inner.c.power_w),
            func.max(inner.c.power_w),
            func.count(),
        )
        .group_by(inner.c.domain, inner.c.bucket)
        .order_by(inner.c.domain, inner.c.bucket)
    )
    out: dict[str, Timeline] = {}
    for domain, _b, t, p, lo, hi, n in session.execute(stmt):
        line = out.get(domain)
        if line is None:
            line = out[domain] = Timeline(domain)
        line.t_s.append(float(t))
        line.power_w.append(float(p) if p is not None else float("nan"))
        line.min_w.append(float(lo) if lo is not None else float("nan"))
        line.max_w.append(float(hi) if hi is not None else float("nan"))
        line.samples.append(int(n))
    return out
