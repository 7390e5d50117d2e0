"""`CeleryBackend`: attempts' bodies run on Celery workers (`scheduler worker`), anywhere.

The coordinator above keeps every decision (gates, slots, retries, history); this sends each
attempt as one Celery task (id `<run_id>.<attempt>`, hard time limit = timeout + kill grace)
and waits for its result without blocking the loop: one poller reads, every few
milliseconds, the results and the leases of all attempts in flight in one round trip. How an
attempt can end here, besides its body's own result:

- a lease seen and then gone for half its length: its worker was lost (`crashed`, the
  coordinator re-runs idempotent jobs at once and dead-letters the others);
- no worker started it within SCHEDULER_CELERY_START_TIMEOUT_SECONDS: the scheduler claims it
  itself (so no worker ever will) and it fails, retryable: its body never ran;
- the broker unreachable when it is sent: it fails at once, retryable, and the scheduler
  goes on;
- no result long after its hard time limit: `timeout`, and it is revoked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import structlog
from celery.exceptions import TimeLimitExceeded, WorkerLostError
from redis.exceptions import RedisError

from .base import JobContext
from .celery_app import (
    ATTEMPT_TASK,
    CeleryOptions,
    build_app,
    cancel_key,
    claim_key,
    lease_key,
    task_id,
)
from .celery_cluster import read_cluster
from .job_config import ResolvedJob
from .params import ParamsProblem
from .records import (
    CANCELLED_BY_OPERATOR,
    BodyResult,
    ClusterStatus,
    Outcome,
    WorkerStatus,
    summarize_error,
)

log = structlog.get_logger(__name__)

#: How often the results and leases of the attempts in flight are read (one round trip).
POLL_SECONDS = 0.01
CLUSTER_SECONDS = 1.0
#: After a failed send, others fail at once for this long (while the broker does not answer
#: reads either) instead of each waiting for a connection timeout behind it.
SEND_BACKOFF_SECONDS = 1.0
_SEND_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}


@dataclass(eq=False)
class _Attempt:
    task: str
    run_id: str
    timeout: float
    future: asyncio.Future[BodyResult]
    sent_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # when its lease was first seen
    missing_since: float | None = None  # its lease, once seen, is gone since
    holder: str | None = None  # the worker process holding its lease
    cancel_at: float | None = None
    giving_up: bool = False

    def resolve(self, result: BodyResult) -> None:
        if not self.future.done():
            self.future.set_result(result)


class CeleryBackend:
    def __init__(self, options: CeleryOptions, jobs: Mapping[str, ResolvedJob]) -> None:
        self._options = options
        self._jobs = jobs
        self._app = build_app(options, results=False)
        #: Never connects: its keys and its decoding of the results the workers store.
        self._codec = build_app(options).backend
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="celery-send")
        self._broker = _client(options.broker_url)
        same = options.results_url == options.broker_url
        self._results = self._broker if same else _client(options.results_url)
        self._inflight: dict[str, _Attempt] = {}  # task id -> attempt
        self._runs: dict[str, _Attempt] = {}  # run id -> its attempt in flight
        #: Job type -> fences of attempts a previous term left on workers (see `orphaned`).
        self._orphans: dict[str, set[asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cluster = ClusterStatus(0, (), broker_up=False)
        self._send_failed: tuple[float, str] | None = None
        self._outage = False

    # ExecutionBackend
    async def start(self) -> None:
        self._background(self._poll())
        self._background(self._watch_cluster())

    async def execute(self, job: ResolvedJob, context: JobContext) -> BodyResult:
        await self._orphans_fenced(job.job_type)
        loop = asyncio.get_running_loop()
        attempt = _Attempt(
            task_id(context.run_id, context.attempt),
            context.run_id,
            job.config.timeout_seconds,
            loop.create_future(),
        )
        scheduled = context.scheduled_time
        args = [job.job_type, job.config.model_dump(mode="json"), context.run_id,
                context.attempt, None if scheduled is None else scheduled.isoformat(),
                dict(context.params) or None]  # fmt: skip
        refused = await self._send(attempt, args)
        if refused is not None:
            return refused
        self._inflight[attempt.task] = attempt
        self._runs[attempt.run_id] = attempt
        try:
            return await attempt.future
        except asyncio.CancelledError:  # the scheduler stops: a queued attempt never starts
            self._background(self._claim_or_leave(attempt, "scheduler-stopped"), "leave")
            raise
        finally:
            del self._inflight[attempt.task]
            if self._runs.get(attempt.run_id) is attempt:
                del self._runs[attempt.run_id]
            self._background(self._forget(attempt.task))

    def reload(self, task_files: Sequence[str], jobs: Mapping[str, ResolvedJob]) -> None:
        # The workers import their own copy of the tasks folder (same image): deploy new task
        # files to them. Each attempt carries its job's configuration as of now.
        self._jobs = jobs

    async def validate_params(
        self, job: ResolvedJob, params: Mapping[str, Any]
    ) -> ParamsProblem | None:
        return None  # no task code here: the worker validates, and fails the run (not retried)

    async def stop(self, grace_seconds: float) -> None:
        pending = [t for t in self._tasks if t.get_name() == "leave"]
        if pending:  # claims that stop queued attempts from starting after we are gone
            await asyncio.wait(pending, timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._broker.aclose()
        if self._results is not self._broker:
            await self._results.aclose()
        self._sender.shutdown(wait=False, cancel_futures=True)

    def statuses(self) -> list[WorkerStatus]:
        return []  # remote workers: see `cluster`

    def cluster(self) -> ClusterStatus | None:
        return self._cluster

    def cancel(self, run_id: str) -> bool:
        attempt = self._runs.get(run_id)
        if attempt is None:
            return False
        if attempt.cancel_at is None:
            attempt.cancel_at = time.monotonic()
            self._background(self._pass_on_cancel(attempt))
        return True

    def worker_pid(self, run_id: str) -> int | None:
        return None  # a process on another machine, maybe: see the run's `worker` in the logs

    def orphaned(self, attempts: Sequence[tuple[str, int, str]]) -> None:
        """Attempts (run id, attempt, job type) the previous term left `running`: their rows
        are closed and idempotent ones re-run, so no attempt of the same job is sent while one
        of them may still execute on a worker, and one still queued is claimed (never runs)."""
        for run_id, number, job_type in attempts:
            job = self._jobs.get(job_type)
            timeout = (
                job.config.timeout_seconds if job else self._options.visibility_timeout_seconds
            )
            fence = asyncio.get_running_loop().create_task(
                self._fence_orphan(task_id(run_id, number), timeout)
            )
            fences = self._orphans.setdefault(job_type, set())
            fences.add(fence)
            fence.add_done_callback(fences.discard)

    # Sending
    async def _send(self, attempt: _Attempt, args: list[Any]) -> BodyResult | None:
        """Hand the attempt to the broker; the failure to return if it could not be."""
        failed = self._send_failed
        recent = failed is not None and time.monotonic() - failed[0] < SEND_BACKOFF_SECONDS
        if failed is not None and recent and self._outage:
            return _unsent(failed[1])
        limit = attempt.timeout + self._options.kill_grace_seconds
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._sender, self._publish, attempt.task, args, limit
            )
        except Exception as error:  # kombu's OperationalError, redis' errors, ...
            self._send_failed = (time.monotonic(), summarize_error(error))
            log.error("attempt not handed to Celery", task_id=attempt.task, error=str(error))
            return _unsent(self._send_failed[1])
        self._send_failed = None
        return None

    def _publish(self, task: str, args: list[Any], time_limit: float) -> None:
        self._app.send_task(
            ATTEMPT_TASK,
            args=args,
            task_id=task,
            queue=self._options.queue,
            time_limit=time_limit,
            retry=True,
            retry_policy=_SEND_RETRY,
        )

    def _revoke(self, task: str, terminate: bool = False) -> None:
        def revoke() -> None:
            try:
                self._app.control.revoke(task, terminate=terminate, signal="SIGKILL")
            except Exception as error:  # the claim drops it anyway; the kill is best effort
                log.warning("revoke failed", task_id=task, error=str(error))

        self._sender.submit(revoke)

    # Watching
    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if not self._inflight:
                continue
            attempts = list(self._inflight.values())
            now = time.monotonic()
            try:
                results, leases = await self._read([a.task for a in attempts])
            except (RedisError, OSError) as error:
                self._note_outage(error)
            else:
                self._note_outage(None)
                for attempt, result, lease in zip(attempts, results, leases, strict=True):
                    self._observe(attempt, result, lease, now)
            for attempt in attempts:
                if not attempt.future.done():
                    self._check_deadlines(attempt, now)

    async def _read(self, tasks: list[str]) -> tuple[list[Any], list[Any]]:
        result_keys = [self._codec.get_key_for_task(task) for task in tasks]
        lease_keys = [lease_key(task) for task in tasks]
        if self._results is self._broker:
            pipe = self._broker.pipeline(transaction=False)
            pipe.mget(result_keys)
            pipe.mget(lease_keys)
            results, leases = await pipe.execute()
            return results, leases
        return await self._results.mget(result_keys), await self._broker.mget(lease_keys)

    def _observe(
        self, attempt: _Attempt, raw: bytes | None, lease: bytes | None, now: float
    ) -> None:
        if raw is not None:
            result = self._result_of(attempt, self._codec.decode_result(raw))
            if result is not None:
                attempt.resolve(result)
                return
        if lease is not None:
            attempt.started_at = attempt.started_at or now
            attempt.missing_since, attempt.holder = None, lease.decode(errors="replace")
        elif attempt.started_at is not None:
            attempt.missing_since = attempt.missing_since or now
            if now - attempt.missing_since > self._options.lease_seconds / 2:
                why = "its Celery worker was lost (its lease lapsed"
                why += f"; it ran on {attempt.holder})" if attempt.holder else ")"
                log.warning("celery worker lost", task_id=attempt.task, holder=attempt.holder)
                attempt.resolve(BodyResult(Outcome.CRASHED, why))
                self._revoke(attempt.task)

    def _result_of(self, attempt: _Attempt, meta: Mapping[str, Any]) -> BodyResult | None:
        status, value = meta.get("status"), meta.get("result")
        if status == "SUCCESS" and isinstance(value, dict):
            return BodyResult.from_data(value["result"])
        if status == "FAILURE":
            return self._failure_of(attempt, value)
        if status == "REVOKED":
            if attempt.cancel_at is not None:
                return BodyResult(Outcome.CANCELLED, CANCELLED_BY_OPERATOR, retryable=False)
            return BodyResult(Outcome.FAILURE, "revoked on its Celery worker")
        return None  # PENDING, STARTED, RETRY: not an end

    def _failure_of(self, attempt: _Attempt, error: object) -> BodyResult:
        text = summarize_error(error) if isinstance(error, BaseException) else str(error)
        if isinstance(error, WorkerLostError):
            why = f"its Celery worker process was lost: {text}"
            return BodyResult(Outcome.CRASHED, why, killed_worker=True)
        if isinstance(error, TimeLimitExceeded):
            limit = attempt.timeout + self._options.kill_grace_seconds
            why = f"timed out after {attempt.timeout:g}s and ignored its cancellation: its "
            why += f"Celery worker process was killed at the hard time limit ({limit:g}s)"
            return BodyResult(Outcome.TIMEOUT, why, killed_worker=True)
        return BodyResult(Outcome.FAILURE, f"Celery worker error: {text}")

    def _check_deadlines(self, attempt: _Attempt, now: float) -> None:
        options = self._options
        if attempt.started_at is None:
            if now - attempt.sent_at > options.start_timeout_seconds and not attempt.giving_up:
                attempt.giving_up = True
                self._background(self._give_up(attempt))
            return
        if attempt.cancel_at is not None:
            reach = options.kill_grace_seconds + options.lease_seconds / 3 + 0.5
            if now - attempt.cancel_at > reach:
                why = f"{CANCELLED_BY_OPERATOR} (its body did not stop within the kill grace: "
                why += "its Celery worker process was killed)"
                attempt.resolve(BodyResult(Outcome.CANCELLED, why, retryable=False))
                self._revoke(attempt.task, terminate=True)
            return
        limit = attempt.timeout + options.kill_grace_seconds
        if now - attempt.started_at > limit + options.lease_seconds + 1.0:
            why = f"timed out after {attempt.timeout:g}s: no result from its Celery worker "
            why += f"within the {limit:g}s hard time limit"
            attempt.resolve(BodyResult(Outcome.TIMEOUT, why))
            self._revoke(attempt.task, terminate=True)

    async def _give_up(self, attempt: _Attempt) -> None:
        """No worker started it in time: claim it, so that none ever will, and fail it."""
        if await self._claim(attempt.task, "scheduler-gave-up"):
            seconds = self._options.start_timeout_seconds
            why = f"no Celery worker started it within {seconds:g}s (is `scheduler worker` "
            why += f"running and consuming the queue {self._options.queue!r}?); it did not run"
            attempt.resolve(BodyResult(Outcome.FAILURE, why))
            self._revoke(attempt.task)
            return
        # A worker holds it: its lease appears, or its absence soon says the worker is lost.
        now = time.monotonic()
        attempt.started_at = attempt.started_at or now
        attempt.missing_since = attempt.missing_since or now

    async def _pass_on_cancel(self, attempt: _Attempt) -> None:
        if attempt.started_at is None and await self._claim(attempt.task, "scheduler-cancelled"):
            why = f"{CANCELLED_BY_OPERATOR} before a Celery worker started it"
            attempt.resolve(BodyResult(Outcome.CANCELLED, why, retryable=False))
            self._revoke(attempt.task)
            return
        try:
            ttl = int(attempt.timeout + self._options.kill_grace_seconds) + 60
            await self._broker.set(cancel_key(attempt.task), 1, ex=ttl)
        except RedisError as error:
            log.warning("cancellation not passed on: broker unreachable", error=str(error))
        attempt.started_at = attempt.started_at or time.monotonic()

    async def _claim(self, task: str, holder: str) -> bool:
        try:
            claimed = await self._broker.set(
                claim_key(task), holder, nx=True, ex=self._options.claim_seconds
            )
        except RedisError:
            return False
        return bool(claimed)

    async def _claim_or_leave(self, attempt: _Attempt, holder: str) -> None:
        if attempt.started_at is None and await self._claim(attempt.task, holder):
            self._revoke(attempt.task)

    async def _forget(self, task: str) -> None:
        """The attempt ended: its result and lease are read. Its claim stays, to drop a late
        redelivery of its message."""
        try:
            await self._results.delete(self._codec.get_key_for_task(task))
            await self._broker.delete(lease_key(task), cancel_key(task))
        except RedisError:
            pass  # they expire

    async def _fence_orphan(self, task: str, timeout: float) -> None:
        if await self._claim(task, "scheduler-recovered"):
            self._revoke(task)  # it had not started: now it never will
            return
        log.warning("an attempt the last leader sent may still run on a Celery worker: "
                    "this job's attempts wait for it", task_id=task)  # fmt: skip
        deadline = time.monotonic() + timeout + self._options.kill_grace_seconds
        deadline += 2 * self._options.lease_seconds
        missing_since: float | None = None
        while time.monotonic() < deadline:
            try:
                held = await self._broker.exists(lease_key(task))
            except RedisError:
                held = 1  # unknown: keep waiting
            now = time.monotonic()
            missing_since = None if held else missing_since or now
            if missing_since is not None and now - missing_since > self._options.lease_seconds / 2:
                return
            await asyncio.sleep(0.1)
        self._revoke(task, terminate=True)

    async def _orphans_fenced(self, job_type: str) -> None:
        fences = self._orphans.get(job_type)
        if fences:
            await asyncio.wait(set(fences))

    async def _watch_cluster(self) -> None:
        while True:
            try:
                self._cluster = await read_cluster(self._broker, self._options.queue)
            except (RedisError, OSError) as error:
                self._note_outage(error)
                self._cluster = ClusterStatus(0, self._cluster.workers, broker_up=False)
            await asyncio.sleep(CLUSTER_SECONDS)

    def _note_outage(self, error: BaseException | None) -> None:
        if error is not None and not self._outage:
            log.error("celery broker unreachable: attempts in flight wait", error=str(error))
        elif error is None and self._outage:
            log.info("celery broker reachable again")
        self._outage = error is not None

    def _background(self, coroutine: Coroutine[Any, Any, Any], name: str = "") -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def _unsent(error: str) -> BodyResult:
    return BodyResult(
        Outcome.FAILURE,
        f"not handed to Celery: the broker is unreachable ({error}); it did not run",
    )
