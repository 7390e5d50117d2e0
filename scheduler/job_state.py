"""What the service knows about each job between runs: the basis of the dependency gate."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from .history import JobHistorySummary
from .records import Outcome


@dataclass(frozen=True)
class Skip:
    reason: str
    why: str
    at: datetime


@dataclass
class JobState:
    running: int = 0
    last_outcome: str | None = None
    last_success_at: datetime | None = None
    last_finished_at: datetime | None = None
    last_error: str | None = None
    last_skip: Skip | None = None

    @property
    def blocked_by(self) -> Skip | None:
        """The latest skip, if nothing ran since (the job is blocked by that, for now)."""
        skip = self.last_skip
        if skip is None or skip.reason in ("max_instances", "misfire"):
            return None
        if self.last_finished_at is not None and self.last_finished_at > skip.at:
            return None
        return skip


class JobStates:
    """Per-job run state, seeded from the run history and kept current by the runs."""

    def __init__(self, history: Mapping[str, JobHistorySummary] | None = None) -> None:
        self._states: dict[str, JobState] = {}
        for job_type, summary in (history or {}).items():
            self._states[job_type] = JobState(
                0,
                summary.last_outcome,
                summary.last_success_at,
                last_finished_at=summary.last_finished_at,
                last_error=summary.last_error,
            )

    def get(self, job_type: str) -> JobState:
        return self._states.setdefault(job_type, JobState())

    def started(self, job_type: str) -> None:
        self.get(job_type).running += 1

    def finished(self, job_type: str, outcome: str, at: datetime, error: str | None = None) -> None:
        state = self.get(job_type)
        state.running -= 1
        state.last_outcome = outcome
        state.last_finished_at = at
        state.last_error = error
        if outcome == Outcome.SUCCESS:
            state.last_success_at = at

    def not_started(self, job_type: str) -> None:
        """A run counted as started whose body did not start after all (a requirement)."""
        self.get(job_type).running -= 1

    def skipped(self, job_type: str, reason: str, why: str, at: datetime) -> None:
        self.get(job_type).last_skip = Skip(reason, why, at)

    def dependency_blocker(self, dependencies: Iterable[str]) -> str | None:
        """Why a job with these dependencies may not run now, or None when it may."""
        for dependency in dependencies:
            state = self.get(dependency)
            if state.running:
                return f"dependency {dependency!r} is running"
            if state.last_success_at is None:
                return f"dependency {dependency!r} has never succeeded"
            if state.last_outcome != Outcome.SUCCESS:
                return (
                    f"dependency {dependency!r} ended with {state.last_outcome} in its latest run"
                )
        return None
