"""`scheduler worker`: a Celery worker that executes the attempts the active scheduler sends.

It imports the tasks folder at start (before its pool forks, so every child has the task
classes) and runs each attempt's body in a pool child on that child's own event loop, through
the same path as inline execution (`InlineBackend`: params, requirements, the body within its
timeout). Before the body starts, the attempt is claimed in the broker's Redis (SET NX): a
message delivered again (its first worker was lost, or the visibility timeout passed) whose
claim exists is acknowledged and dropped, so no attempt's body runs twice. While the body runs
a thread refreshes its lease, which is how the scheduler tells a lost worker from a slow one.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
import structlog
from celery import Celery, signals
from celery.exceptions import Ignore

from .backends import InlineBackend
from .base import JobContext
from .celery_app import ATTEMPT_TASK, CeleryOptions, cancel_key, claim_key, lease_key
from .event_loop import EventLoopChoice, loop_name
from .job_config import ResolvedJob
from .job_types import JobType
from .logs import bind_run, unbind_run
from .options import JobConfig
from .records import BodyResult, Outcome, SkipReason
from .registry import JobRegistry

log = structlog.get_logger(__name__)


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


class _Child:
    """What one pool child keeps between attempts: its loop, its backend, its connection."""

    def __init__(self, options: CeleryOptions, event_loop: EventLoopChoice) -> None:
        self.pid = os.getpid()
        self.holder = f"{socket.gethostname()}:{self.pid}"
        self.redis = redis_client(options.broker_url)
        if loop_name(event_loop) == "uvloop":
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        # A body that ignores its cancellation is waited for past the kill grace: Celery's
        # hard time limit (timeout + grace) ends it with this process, as the local supervisor
        # would (the wait only ends it where time limits are not enforced).
        self.backend = InlineBackend(2 * options.kill_grace_seconds + 1)


class Lease(threading.Thread):
    """Refreshes an attempt's lease (and re-asserts its claim, which a broker that restarted
    without its data lost) while its body runs; passes on an operator's cancellation."""

    def __init__(
        self,
        client: redis.Redis,
        task: str,
        holder: str,
        options: CeleryOptions,
        on_cancel: Callable[[], None],
    ) -> None:
        super().__init__(name=f"lease-{task}", daemon=True)
        self._client, self._task, self._holder = client, task, holder
        self._options = options
        self._on_cancel = on_cancel
        self._stopped = threading.Event()
        self._cancelled = False
        self._failing = False

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self._options.lease_seconds / 3):
            self.refresh()

    def refresh(self) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(lease_key(self._task), self._holder, px=int(self._options.lease_seconds * 1e3))
            pipe.set(claim_key(self._task), self._holder, nx=True, ex=self._options.claim_seconds)
            pipe.exists(cancel_key(self._task))
            _, _, cancelled = pipe.execute()
        except redis.RedisError as error:
            if not self._failing:
                log.warning("lease not refreshed: broker unreachable", error=str(error))
            self._failing = True
            return
        if self._failing:
            log.info("lease refreshed again", task_id=self._task)
        self._failing = False
        if cancelled and not self._cancelled:
            self._cancelled = True
            self._on_cancel()


_child: _Child | None = None
#: Task id -> the lease of the attempt this child runs; stopped once its result is stored.
_leases: dict[str, Lease] = {}
#: Attempts whose timed-out plain-def body still holds a thread: this child ends after them.
_tainted: set[str] = set()


def _the_child(options: CeleryOptions, event_loop: EventLoopChoice) -> _Child:
    global _child
    if _child is None or _child.pid != os.getpid():  # forked: nothing of the parent's is ours
        _child = _Child(options, event_loop)
    return _child


def register_attempt_task(app: Celery, options: CeleryOptions, event_loop: EventLoopChoice) -> None:
    @app.task(name=ATTEMPT_TASK, bind=True)  # type: ignore[untyped-decorator]
    def attempt(
        self: Any,
        job_type: str,
        config: dict[str, Any],
        run_id: str,
        attempt: int,
        scheduled: str | None,
        params: dict[str, Any] | None,
    ) -> dict[str, Any]:
        child = _the_child(options, event_loop)
        task = str(self.request.id)
        if not child.redis.set(claim_key(task), child.holder, nx=True, ex=options.claim_seconds):
            holder = child.redis.get(claim_key(task))
            log.warning("attempt already claimed: dropped, not run twice", task_id=task,
                        holder=_text(holder))  # fmt: skip
            raise Ignore()
        lease = Lease(child.redis, task, child.holder, options, _canceller(child, run_id))
        lease.refresh()
        _leases[task] = lease
        lease.start()
        token = bind_run(job_type, run_id, attempt)
        try:
            coroutine = _execute(child, job_type, config, run_id, attempt, scheduled, params)
            result = child.loop.run_until_complete(coroutine)
        except Exception as error:  # a bug of ours: the attempt fails, the worker lives on
            log.exception("worker could not run the attempt")
            result = BodyResult(Outcome.FAILURE, f"worker error: {error!r}")
        finally:
            unbind_run(token)
        if result.outcome == Outcome.TIMEOUT and _synchronous(job_type):
            _tainted.add(task)
        return {"result": result.as_data(), "worker": child.holder}

    signals.task_postrun.connect(_stop_lease, weak=False)


def _stop_lease(task_id: str | None = None, **_: Any) -> None:
    """After the result is stored (task_postrun): until then, a lapsed lease would wrongly
    say the worker was lost."""
    lease = _leases.pop(str(task_id), None)
    if lease is not None:
        lease.stop()
    if str(task_id) in _tainted:
        # Its thread cannot be stopped: end this child (its result is stored, so Celery
        # acknowledges the message) and let the pool start a clean one.
        log.warning("pool process ends: a timed-out plain-def body still holds a thread")
        os._exit(0)


def _text(value: bytes | str | None) -> str | None:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _synchronous(job_type: str) -> bool:
    return JobRegistry.is_registered(job_type) and JobRegistry.get(job_type).synchronous


def _canceller(child: _Child, run_id: str) -> Callable[[], None]:
    def cancel() -> None:
        log.info("run cancellation received", run_id=run_id)
        child.loop.call_soon_threadsafe(child.backend.cancel, run_id)

    return cancel


async def _execute(
    child: _Child,
    job_type: str,
    config: dict[str, Any],
    run_id: str,
    attempt: int,
    scheduled: str | None,
    params: dict[str, Any] | None,
) -> BodyResult:
    if not JobRegistry.is_registered(job_type):
        why = f"job {job_type!r} is not loaded in this Celery worker (its task file is missing "
        why += "or failed to import here)"
        return BodyResult(Outcome.SKIPPED, why, skip_reason=SkipReason.NOT_LOADED)
    job = ResolvedJob(JobRegistry.get(job_type), JobConfig.model_validate(config))
    context = JobContext(
        JobType(job_type),
        job.config,
        run_id,
        attempt,
        None if scheduled is None else datetime.fromisoformat(scheduled),
        params=params or {},
    )
    return await child.backend.execute(job, context)
