"""Guarantees under faults: a job store of JSON, leadership terms, one run per slot.

- `scheduler_jobs` (created here if APScheduler has not yet) holds JSON, not pickles: each
  pickle is read through an allow-list (job_codec.legacy_state) and rewritten; a row that
  cannot be read is moved to `scheduler_jobs_set_aside` with why, never deleted.
- `scheduler_leadership`: the term's epoch and lease (leadership.py), one row.
- `scheduler_runs.rerun_pending`: runs cut off at shutdown that the next start runs again.
- A unique index on the first attempt of each scheduled slot. Slots that already ran twice
  (a restart before this revision could re-run one) keep their first run; the others are
  relabelled `recovery`, which is what they were.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from scheduler import job_codec
from scheduler.errors import StoredJobError

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SLOT_PREDICATE = "attempt = 1 AND \"trigger\" = 'schedule' AND outcome <> 'skipped'"


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if not inspector.has_table("scheduler_jobs"):
        op.create_table(
            "scheduler_jobs",
            sa.Column("id", sa.Unicode(191), primary_key=True),
            sa.Column("next_run_time", sa.Float(25), index=True),
            sa.Column("job_state", sa.LargeBinary, nullable=False),
        )
    set_aside = op.create_table(
        "scheduler_jobs_set_aside",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(191), nullable=False),
        sa.Column("next_run_time", sa.String(64), nullable=True),
        sa.Column("job_state", sa.LargeBinary, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("set_aside_at", sa.DateTime(timezone=True), nullable=False),
    )
    _rewrite_pickles(bind, set_aside)
    leadership = op.create_table(
        "scheduler_leadership",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("beat", sa.BigInteger, nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("holds_lock", sa.Boolean, nullable=False),
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.bulk_insert(
        leadership, [{"id": 1, "epoch": 0, "beat": 0, "holder": "", "holds_lock": False}]
    )
    with op.batch_alter_table("scheduler_runs") as batch:
        batch.add_column(
            sa.Column("rerun_pending", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.execute(
        "UPDATE scheduler_runs SET \"trigger\" = 'recovery' WHERE id IN ("
        f"SELECT r.id FROM scheduler_runs r WHERE {SLOT_PREDICATE.replace('attempt', 'r.attempt')}"
        " AND EXISTS (SELECT 1 FROM scheduler_runs f WHERE f.job_type = r.job_type"
        " AND f.scheduled_at = r.scheduled_at AND f.attempt = 1 AND f.\"trigger\" = 'schedule'"
        " AND f.outcome <> 'skipped' AND f.id < r.id))"
    )
    op.create_index(
        "uq_scheduler_runs_slot",
        "scheduler_runs",
        ["job_type", "scheduled_at"],
        unique=True,
        sqlite_where=sa.text(SLOT_PREDICATE),
        postgresql_where=sa.text(SLOT_PREDICATE),
    )


def _rewrite_pickles(bind: sa.Connection, set_aside: sa.Table) -> None:
    jobs = sa.table(
        "scheduler_jobs",
        sa.column("id", sa.Unicode),
        sa.column("next_run_time", sa.Float),
        sa.column("job_state", sa.LargeBinary),
    )
    now = datetime.now(UTC)
    for job_id, next_time, state in bind.execute(sa.select(jobs)).all():
        data = bytes(state)
        if data.startswith(b"{"):
            continue
        try:
            document = job_codec.encode(job_codec.legacy_state(data, job_id))
        except StoredJobError as error:
            bind.execute(
                set_aside.insert().values(
                    job_id=job_id,
                    next_run_time=None if next_time is None else repr(next_time),
                    job_state=data,
                    reason=str(error),
                    set_aside_at=now,
                )
            )
            bind.execute(sa.delete(jobs).where(jobs.c.id == job_id))
            continue
        bind.execute(sa.update(jobs).where(jobs.c.id == job_id).values(job_state=document))


def downgrade() -> None:
    op.drop_index("uq_scheduler_runs_slot", "scheduler_runs")
    with op.batch_alter_table("scheduler_runs") as batch:
        batch.drop_column("rerun_pending")
    op.drop_table("scheduler_leadership")
    op.drop_table("scheduler_jobs_set_aside")
