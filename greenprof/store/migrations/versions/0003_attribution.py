"""Attribution: gross and attributed energy side by side, the process's CPU share, uncertain and
partial domains, phases named setup/prefill/decode/teardown, and `serve` runs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

What a counter saw (gross) stays in ``energy_j``; what this run is charged (its share of the
process, and the process's share of a machine-wide counter) goes in the new
``attributed_energy_j`` columns. Runs stored before 0003 were charged the whole counter: their
attributed columns stay NULL and every surface shows them as ``gross`` (nothing is invented).
Segments that are neither prefill nor a token are told apart by position: ``setup`` before the
first prefill/token segment, ``teardown`` after the last, ``other`` in between or in runs with
no phase marks.
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # the copy SQLite's batch mode makes must keep AUTOINCREMENT (a RUN_ID is never reused)
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("collectors", sa.String(255), nullable=True))
        batch.add_column(sa.Column("process_cpu_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("machine_busy_cpu_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("other_cpu_share", sa.Float(), nullable=True))
        batch.add_column(sa.Column("concurrent_windows", sa.Integer(), nullable=True))
        batch.drop_constraint(op.f("ck_runs_kind"), type_="check")
        batch.create_check_constraint("kind", "kind IN ('measure', 'track', 'serve')")
    with op.batch_alter_table("run_domains") as batch:
        batch.add_column(sa.Column("attributed_energy_j", sa.Float(), nullable=True))
        batch.add_column(sa.Column("share", sa.Float(), nullable=True))
        batch.add_column(sa.Column("scope", sa.String(16), nullable=True))
        batch.add_column(sa.Column("uncertain_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("share_note", sa.Text(), nullable=True))
    with op.batch_alter_table("segment_energy") as batch:
        batch.add_column(sa.Column("attributed_energy_j", sa.Float(), nullable=True))
    op.execute(
        "UPDATE segments SET kind = 'setup' WHERE kind = 'other' AND idx < "
        "(SELECT MIN(s2.idx) FROM segments s2 WHERE s2.run_id = segments.run_id "
        "AND s2.kind IN ('prefill', 'decode'))")
    op.execute(
        "UPDATE segments SET kind = 'teardown' WHERE kind = 'other' AND idx > "
        "(SELECT MAX(s2.idx) FROM segments s2 WHERE s2.run_id = segments.run_id "
        "AND s2.kind IN ('prefill', 'decode'))")


def downgrade() -> None:
    op.execute("UPDATE segments SET kind = 'other' WHERE kind IN ('setup', 'teardown')")
    op.execute("DELETE FROM runs WHERE kind = 'serve'")
    with op.batch_alter_table("segment_energy") as batch:
        batch.drop_column("attributed_energy_j")
    with op.batch_alter_table("run_domains") as batch:
        for c in ("share_note", "uncertain_reason", "scope", "share", "attributed_energy_j"):
            batch.drop_column(c)
    # the copy SQLite's batch mode makes must keep AUTOINCREMENT (a RUN_ID is never reused)
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint(op.f("ck_runs_kind"), type_="check")
        batch.create_check_constraint("kind", "kind IN ('measure', 'track')")
        for c in ("concurrent_windows", "other_cpu_share", "machine_busy_cpu_s", "process_cpu_s", "collectors"):
            batch.drop_column(c)
