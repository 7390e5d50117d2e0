"""Where a run's body executes: the one interface the run coordinator hands attempts to.

`InlineBackend` calls the body on the service's own event loop (trusted, very light jobs;
the benchmarks). `worker_pool.ProcessBackend` sends it to a supervised worker process (the
default); `celery_backend.CeleryBackend` to a Celery worker on any machine. All return a
`BodyResult`; the coordinator keeps the gates, the slots, the retries and the history,
whichever runs the body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .base import JobContext
from .invoke import acquire_requirements, invoke, with_validated_params
from .job_config import ResolvedJob
from .params import ParamsProblem, validate_params
from .records import BodyResult, ClusterStatus, WorkerStatus
from .registry import JobRegistry


class ExecutionBackend(Protocol):
    async def start(self) -> None:
        """Be ready to execute (start worker processes, ...)."""

    async def execute(self, job: ResolvedJob, context: JobContext) -> BodyResult:
        """Run one attempt's body: its requirements, then the body within its timeout."""

    def reload(self, task_files: Sequence[str], jobs: Mapping[str, ResolvedJob]) -> None:
        """The task files changed: run later attempts on their new code (`task_files`: those
        that imported cleanly); attempts in progress end on the code they started with."""

    async def validate_params(
        self, job: ResolvedJob, params: Mapping[str, Any]
    ) -> ParamsProblem | None:
        """Why `params` do not validate against the job's model (where its task class is:
        a worker process), or None if they do."""

    async def stop(self, grace_seconds: float) -> None:
        """Let bodies in progress end for up to `grace_seconds`, then end them."""

    def statuses(self) -> list[WorkerStatus]:
        """The worker processes, for the API and the metrics (none inline)."""

    def cancel(self, run_id: str) -> bool:
        """An operator cancels the attempt of `run_id` in progress: its `execute` returns a
        `cancelled` result once the body has stopped (or was made to). False if this backend
        is not executing that run."""

    def worker_pid(self, run_id: str) -> int | None:
        """The process executing the attempt of `run_id`, when known (never inline)."""

    def cluster(self) -> ClusterStatus | None:
        """The queue and the remote workers, for the metrics (None: no remote workers)."""

    def orphaned(self, attempts: Sequence[tuple[str, int, str]]) -> None:
        """Attempts (run id, attempt, job type) a previous term left `running`, now closed:
        make sure none of them starts or runs on beside a later attempt of its job (remote
        workers outlive a scheduler; local ones die with it)."""


class InlineBackend:
    """Bodies run as tasks on this process's loop, from this process's registry."""

    def __init__(self, kill_grace_seconds: float) -> None:
        self._kill_grace_seconds = kill_grace_seconds
        #: run id -> the future that cancels its attempt's body (see invoke).
        self._cancels: dict[str, asyncio.Future[None]] = {}

    async def start(self) -> None:
        pass

    async def execute(self, job: ResolvedJob, context: JobContext) -> BodyResult:
        meta = job.metadata
        cancel = self._cancels[context.run_id] = asyncio.get_running_loop().create_future()
        try:
            checked = with_validated_params(context)
            if isinstance(checked, BodyResult):
                return checked
            context = checked
            resources = await acquire_requirements(meta.requirements)
            if isinstance(resources, BodyResult):
                return resources
            if resources:
                context = context.with_resources(resources)
            return await invoke(
                JobRegistry.get_task_class(job.job_type),
                context,
                job.config.timeout_seconds,
                abandon_after_seconds=self._kill_grace_seconds,
                synchronous=meta.synchronous,
                cancel=cancel,
            )
        finally:
            if self._cancels.get(context.run_id) is cancel:
                del self._cancels[context.run_id]

    def cancel(self, run_id: str) -> bool:
        cancel = self._cancels.get(run_id)
        if cancel is None:
            return False
        if not cancel.done():
            cancel.set_result(None)
        return True

    def worker_pid(self, run_id: str) -> int | None:
        return None

    def cluster(self) -> ClusterStatus | None:
        return None

    def orphaned(self, attempts: Sequence[tuple[str, int, str]]) -> None:
        pass  # they ran on the loop of a process that is gone

    def reload(self, task_files: Sequence[str], jobs: Mapping[str, ResolvedJob]) -> None:
        pass  # the reload imported the new code into this process's registry

    async def validate_params(
        self, job: ResolvedJob, params: Mapping[str, Any]
    ) -> ParamsProblem | None:
        model = JobRegistry.get_params_model(job.job_type)
        if model is None:
            return None
        validated = validate_params(model, params)
        return validated if isinstance(validated, ParamsProblem) else None

    async def stop(self, grace_seconds: float) -> None:
        pass

    def statuses(self) -> list[WorkerStatus]:
        return []
