"""What the database says of the jobs, read-only: each one's next run, quarantine and latest
outcomes. For those that hold no schedule of their own: the command line (no service need
run) and a standby (whose page must not say "never" of a job the leader runs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine, select

from . import tables
from .history import RunHistory
from .job_state import JobStates


@dataclass(frozen=True)
class StoredJobs:
    #: Each stored job's next run time (None: paused), as the job store has it.
    next_runs: dict[str, datetime | None] = field(default_factory=dict)
    #: Quarantined jobs, with why.
    quarantined: dict[str, str] = field(default_factory=dict)
    #: Latest outcome, error and success of each job, from the run history.
    states: JobStates = field(default_factory=JobStates)


def read_stored_jobs(engine: Engine) -> StoredJobs:
    history = RunHistory(engine)
    with engine.connect() as connection:
        rows = connection.execute(select(tables.jobs.c.id, tables.jobs.c.next_run_time))
        next_runs = {
            job_id: None if moment is None else datetime.fromtimestamp(moment, UTC)
            for job_id, moment in rows
        }
    quarantined = {
        job_type: reason for job_type, (reason, _, _) in history.quarantines().items() if reason
    }
    return StoredJobs(next_runs, quarantined, JobStates(history.summaries()))
