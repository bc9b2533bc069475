"""runs.parent_run_id: the run a nested one ran inside.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

A `track` block inside another stores a run of its own whose energy is part of the outer run's
(the outer window sees everything its nested windows do). Without a link, a sum over runs
counted those joules twice. Runs stored before 0004 keep NULL: whether they were nested is not
known (nothing is invented).
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # the copy SQLite's batch mode makes must keep AUTOINCREMENT (a RUN_ID is never reused)
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("parent_run_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f("fk_runs_parent_run_id_runs"), "runs", ["parent_run_id"], ["id"],
                                 ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint(op.f("fk_runs_parent_run_id_runs"), type_="foreignkey")
        batch.drop_column("parent_run_id")
