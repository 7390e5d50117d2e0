"""Delayed runs: `scheduler_pending_runs`, and the params of each run in the history.

- `scheduler_pending_runs`: runs an operator asked for at a later time, until they start (the
  transaction that writes a run's first history row deletes its row here).
- `scheduler_runs.params`: the JSON params a run was given (a re-run after a crash gets them).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scheduler_pending_runs",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("job_type", sa.String(191), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("params", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_scheduler_pending_runs_run_at", "scheduler_pending_runs", ["run_at"])
    with op.batch_alter_table("scheduler_runs") as batch:
        batch.add_column(sa.Column("params", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scheduler_runs") as batch:
        batch.drop_column("params")
    op.drop_table("scheduler_pending_runs")
