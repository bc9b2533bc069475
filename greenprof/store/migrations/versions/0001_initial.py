"""First released schema: runs, run_domains, segments, segment_energy, samples.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written out in full (it does not import greenprof.store.schema), with final names (``op.f``),
so it keeps creating exactly this schema whatever the models and naming convention become.
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=True),
        sa.Column("kind", sa.String(length=16), server_default="measure", nullable=False),
        sa.Column("status", sa.String(length=16), server_default="running", nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("hardware", sa.JSON(), nullable=True),
        sa.Column("hardware_fingerprint", sa.String(length=16), nullable=True),
        sa.Column("software", sa.JSON(), nullable=True),
        sa.Column("model_name", sa.String(length=255), nullable=True),
        sa.Column("model_shape", sa.String(length=255), nullable=True),
        sa.Column("param_count", sa.BigInteger(), nullable=True),
        sa.Column("precision", sa.String(length=16), nullable=True),
        sa.Column("model_file_hash", sa.String(length=64), nullable=True),
        sa.Column("provider", sa.String(length=64), nullable=True),
        sa.Column("threads", sa.Integer(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("new_tokens", sa.Integer(), nullable=True),
        sa.Column("region", sa.String(length=64), nullable=True),
        sa.Column("intensity_g_per_kwh", sa.Float(), nullable=True),
        sa.Column("intensity_source", sa.String(length=255), nullable=True),
        sa.Column("intensity_year", sa.Integer(), nullable=True),
        sa.Column("pue", sa.Float(), nullable=True),
        sa.Column("price_usd_per_kwh", sa.Float(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("sample_hz", sa.Float(), nullable=True),
        sa.Column("idle_window_s", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("warnings", sa.JSON(), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.CheckConstraint("status IN ('running', 'completed', 'failed', 'interrupted')",
                           name=op.f("ck_runs_status")),
        sa.CheckConstraint("kind IN ('measure', 'track')", name=op.f("ck_runs_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_runs_batch_id"), "runs", ["batch_id"])
    op.create_index(op.f("ix_runs_started_at"), "runs", ["started_at"])
    op.create_index(op.f("ix_runs_status"), "runs", ["status"])

    op.create_table(
        "run_domains",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=True),
        sa.Column("source", sa.String(length=255), nullable=True),
        sa.Column("energy_j", sa.Float(), nullable=True),
        sa.Column("idle_power_w", sa.Float(), nullable=True),
        sa.Column("dynamic_energy_j", sa.Float(), nullable=True),
        sa.Column("resolution_s", sa.Float(), nullable=True),
        sa.Column("lost_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_domains_run_id_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "domain", name=op.f("pk_run_domains")),
    )

    op.create_table(
        "segments",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_segments_run_id_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "idx", name=op.f("pk_segments")),
    )

    op.create_table(
        "segment_energy",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(length=64), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=True),
        sa.Column("dynamic_energy_j", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["run_id", "idx"], ["segments.run_id", "segments.idx"],
                                name=op.f("fk_segment_energy_run_id_idx_segments"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "idx", "domain", name=op.f("pk_segment_energy")),
    )

    op.create_table(
        "samples",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("t_s", sa.Float(), nullable=False),
        sa.Column("domain", sa.String(length=64), nullable=False),
        sa.Column("power_w", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_samples_run_id_runs"),
                                ondelete="CASCADE"),
    )
    op.create_index(op.f("ix_samples_run_id_t_s"), "samples", ["run_id", "t_s"])


def downgrade() -> None:
    op.drop_index(op.f("ix_samples_run_id_t_s"), table_name="samples")
    op.drop_table("samples")
    op.drop_table("segment_energy")
    op.drop_table("segments")
    op.drop_table("run_domains")
    op.drop_index(op.f("ix_runs_status"), table_name="runs")
    op.drop_index(op.f("ix_runs_started_at"), table_name="runs")
    op.drop_index(op.f("ix_runs_batch_id"), table_name="runs")
    op.drop_table("runs")
