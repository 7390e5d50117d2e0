"""Crash-loop protection: a job whose runs keep killing their worker stops being scheduled.

Each job's streak counts its consecutive attempts that ended their worker process (it died
under them, or was killed because of them); any other ending resets it. At
`SCHEDULER_QUARANTINE_AFTER` in a row the job is quarantined until an operator resumes it or
its task file changes. Streaks are seeded from the run history when leadership is won, so
runs cut off by a dead scheduler (kill -9, or a task that ended the process in inline mode)
count too: nothing can crash-loop the service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog

from .records import BodyResult

log = structlog.get_logger(__name__)

#: Told (job type, reason) when a job is quarantined.
OnQuarantine = Callable[[str, str], None]


class Quarantine:
    def __init__(
        self,
        after: int = 3,
        *,
        streaks: Mapping[str, int] | None = None,
        quarantined: Mapping[str, str] | None = None,
    ) -> None:
        if after < 1:
            raise ValueError(f"quarantine needs at least one crash, got {after}")
        self.after = after
        self._streaks = dict(streaks or {})
        self._reasons = dict(quarantined or {})
        self._listeners: list[OnQuarantine] = []

    def add_listener(self, listener: OnQuarantine) -> None:
        self._listeners.append(listener)

    @property
    def quarantined(self) -> Mapping[str, str]:
        """Quarantined job types, with why."""
        return self._reasons

    def reason(self, job_type: str) -> str | None:
        return self._reasons.get(job_type)

    def attempt_ended(self, job_type: str, result: BodyResult) -> None:
        if not result.killed_worker:
            if self._streaks.get(job_type):
                self._streaks[job_type] = 0
            return
        streak = self._streaks[job_type] = self._streaks.get(job_type, 0) + 1
        if streak >= self.after and job_type not in self._reasons:
            why = f"its last {streak} attempts ended their worker process (latest: {result.error})"
            self.quarantined_now(job_type, why)

    def quarantined_now(self, job_type: str, why: str) -> None:
        why += "; resume it once fixed, or change its task file"
        self._reasons[job_type] = why
        log.error("job quarantined", job_type=job_type, why=why)
        for listener in self._listeners:
            listener(job_type, why)

    def lift(self, job_type: str) -> bool:
        """Take `job_type` out of quarantine (and reset its streak); True if it was in."""
        self._streaks.pop(job_type, None)
        return self._reasons.pop(job_type, None) is not None
