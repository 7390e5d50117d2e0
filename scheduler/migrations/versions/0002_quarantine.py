"""Quarantine: jobs taken out of the schedule because their runs kept killing their worker.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scheduler_quarantine",
        sa.Column("job_type", sa.String(191), primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("task_file_digest", sa.String(64), nullable=False),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lifted_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("scheduler_quarantine")
