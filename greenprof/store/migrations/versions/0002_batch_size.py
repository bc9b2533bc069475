"""runs.batch_size: sequences generated together, so per-token figures of different batch sizes
are never averaged together.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Every `measure` run recorded under 0001 generated one sequence at a time, so those rows get
batch_size 1; `track` runs do not know their batch and keep NULL.
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("batch_size", sa.Integer(), nullable=True))
    op.execute("UPDATE runs SET batch_size = 1 WHERE kind = 'measure'")


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("batch_size")
