"""The scheduler's tables, all in one `metadata` (which the migrations must match): the run
history, quarantines, the leadership term, and the job store with its set-aside rows.

The job store's own table (`scheduler_jobs`) is APScheduler's; it is described here as the
migrations create it, so that a test can hold the migrations to what the code uses.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    Unicode,
    UniqueConstraint,
    false,
    text,
)

VERSION_TABLE = "scheduler_alembic_version"
JOBS_TABLE = "scheduler_jobs"

metadata = MetaData()
SLOT_PREDICATE = "attempt = 1 AND \"trigger\" = 'schedule' AND outcome <> 'skipped'"
runs = Table(
    "scheduler_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("job_type", String(191), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("scheduled_at", DateTime(timezone=True), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("skip_reason", String(32), nullable=True),
    Column("error", Text, nullable=True),
    Column("items_succeeded", Integer, nullable=False, server_default="0"),
    Column("items_failed", Integer, nullable=False, server_default="0"),
    Column("dead_letter", Boolean, nullable=False, server_default=false()),
    Column("instance", String(255), nullable=False),
    Column("rerun_pending", Boolean, nullable=False, server_default=false()),
    Column("params", Text, nullable=True),  # migration 0004
    Column("traceback", Text, nullable=True),  # migration 0005
    UniqueConstraint("run_id", "attempt", name="uq_scheduler_runs_run_attempt"),
    Index("ix_scheduler_runs_job_type_id", "job_type", "id"),
    Index("ix_scheduler_runs_outcome", "outcome"),
    Index("ix_scheduler_runs_started_at", "started_at"),
    # One first attempt per scheduled slot (migration 0003): a re-fired slot is refused.
    Index(
        "uq_scheduler_runs_slot",
        "job_type",
        "scheduled_at",
        unique=True,
        sqlite_where=text(SLOT_PREDICATE),
        postgresql_where=text(SLOT_PREDICATE),
    ),
)

#: Delayed runs asked for by an operator (`POST /api/jobs/{job_type}/run` with `at`), until
#: they start: the transaction that writes a run's first history row deletes its row here.
pending_runs = Table(
    "scheduler_pending_runs",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("job_type", String(191), nullable=False),
    Column("run_at", DateTime(timezone=True), nullable=False),
    Column("params", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_scheduler_pending_runs_run_at", "run_at"),
)

#: Jobs taken out of the schedule because their runs kept killing their worker (quarantine.py).
#: A row stays when lifted (`lifted_at`): crash streaks count only attempts after it.
quarantines = Table(
    "scheduler_quarantine",
    metadata,
    Column("job_type", String(191), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("task_file_digest", String(64), nullable=False),
    Column("quarantined_at", DateTime(timezone=True), nullable=False),
    Column("lifted_at", DateTime(timezone=True), nullable=True),
)


jobs = Table(
    JOBS_TABLE,
    metadata,
    Column("id", Unicode(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)

#: Rows of the job store that could not be read, kept for an operator to inspect.
set_aside_jobs = Table(
    "scheduler_jobs_set_aside",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(191), nullable=False),
    Column("next_run_time", String(64), nullable=True),
    Column("job_state", LargeBinary, nullable=False),
    Column("reason", Text, nullable=False),
    Column("set_aside_at", DateTime(timezone=True), nullable=False),
)


#: The one row (id 1) of the leadership table: the current term and its lease.
leadership = Table(
    "scheduler_leadership",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("beat", BigInteger, nullable=False),
    Column("holder", String(255), nullable=False),
    Column("holds_lock", Boolean, nullable=False),
    Column("renewed_at", DateTime(timezone=True), nullable=True),
)
