"""The one error hierarchy of the scheduler: catch `SchedulerError` to catch them all."""

from __future__ import annotations

from collections.abc import Iterable


class SchedulerError(Exception):
    """Base class of every error the scheduler raises on purpose."""


class NonRetryableError(SchedulerError):
    """Raise it from a task when the run failed and trying again cannot help (bad input)."""


class WorkerError(SchedulerError):
    """A worker process could not be started or spoke out of turn."""


class JobDefinitionError(SchedulerError):
    """A `@job` declaration is wrong: an unknown option, a bad value, a class that cannot run."""


class DuplicateJobError(JobDefinitionError):
    """Two classes claim the same job type."""


class UnknownJobTypeError(SchedulerError, ValueError):
    """A job type was looked up that no discovered task registered."""


class UnknownJobTypeAttributeError(SchedulerError, AttributeError):
    """`JobType.SOME_NAME` was read, and no job type has that member name."""


class UnknownJobTypeNameError(SchedulerError, KeyError):
    """`JobType["SOME_NAME"]` was looked up, and no job type has that member name."""

    def __str__(self) -> str:  # KeyError's own would quote the whole message
        return str(self.args[0]) if self.args else ""


class ConfigurationError(SchedulerError):
    """Configuration is invalid; `problems` lists every problem, each naming where it came from."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{len(self.problems)} configuration problem(s):\n{lines}")


class NotActiveError(SchedulerError):
    """An operator action that only the active instance can carry out reached a standby."""


class DiscoveryError(SchedulerError):
    """The tasks folder itself cannot be used (missing, not a directory)."""


class StoredJobError(SchedulerError):
    """A row of the job store is not a job this service wrote: unreadable, foreign or tampered."""


class StaleLeadershipError(SchedulerError):
    """This instance's leadership term has ended: another instance took over (fencing)."""


class ParamsRejected(SchedulerError):
    """A run's params do not validate against the model its job declares."""

    def __init__(self, model: str, errors: Iterable[dict[str, object]], text: str) -> None:
        super().__init__(text)
        self.model = model
        self.errors: tuple[dict[str, object], ...] = tuple(errors)


class ParamsUnverifiable(SchedulerError):
    """A run's params could not be checked (no worker process answered in time)."""


class UnknownRunError(SchedulerError):
    """No pending (delayed) run has this run id."""


class RunAlreadyStartedError(SchedulerError):
    """A delayed run fell due and started: too late to cancel it."""


class RunNotInProgressError(SchedulerError, LookupError):
    """An operator named a run (or a prefix of its id) that is not in progress here."""


class AmbiguousRunError(SchedulerError, LookupError):
    """A prefix of a run id matches more than one run in progress."""
