"""The Celery application both ends share: the scheduler sends attempts, `scheduler worker`
executes them. Built from settings alone, so both build the same one (same image, same env).

One Celery task (`taskwarden.attempt`) is one attempt of one run: its task id is
`<run_id>.<attempt>`, and the coordinator keeps doing the retries (a retry is a new task).
The broker's Redis also holds the keys that make "no attempt's body runs twice" hold:

- `taskwarden:claim:<task id>`: whoever sets it first (SET NX) owns the attempt: the worker
  that runs it, or the scheduler that gave up on it; a redelivered message whose claim exists
  is acknowledged and dropped;
- `taskwarden:lease:<task id>`: refreshed by the worker while the body runs; one that lapses
  says its worker was lost;
- `taskwarden:cancel:<task id>`: an operator's cancellation, read by the worker's lease thread;
- `taskwarden:worker:<name>`: each worker's heartbeat (concurrency, busy), for the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery

from .settings import ServiceSettings

ATTEMPT_TASK = "taskwarden.attempt"
KEY_PREFIX = "taskwarden:"
#: How often a worker writes its heartbeat, and how long one lives.
HEARTBEAT_SECONDS = 1.0
HEARTBEAT_TTL_SECONDS = 5
#: How long a finished attempt's result may wait in the backend (the scheduler deletes it
#: when it reads it; this only bounds what a dead scheduler leaves behind).
RESULT_EXPIRES_SECONDS = 24 * 3600


@dataclass(frozen=True)
class CeleryOptions:
    broker_url: str
    results_url: str
    queue: str
    lease_seconds: float
    start_timeout_seconds: float
    visibility_timeout_seconds: float
    kill_grace_seconds: float

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> CeleryOptions:
        if not settings.celery_broker_url:
            raise ValueError("SCHEDULER_CELERY_BROKER_URL is not set")
        return cls(
            broker_url=settings.celery_broker_url,
            results_url=settings.celery_results_url or settings.celery_broker_url,
            queue=settings.celery_queue,
            lease_seconds=settings.celery_lease_seconds,
            start_timeout_seconds=settings.celery_start_timeout_seconds,
            visibility_timeout_seconds=settings.celery_visibility_timeout_seconds,
            kill_grace_seconds=settings.kill_grace_seconds,
        )

    @property
    def claim_seconds(self) -> int:
        """A claim outlives any redelivery of its message (those come a visibility timeout
        after the delivery they repeat)."""
        return int(3 * self.visibility_timeout_seconds) + 60


def build_app(options: CeleryOptions, *, results: bool = True) -> Celery:
    """The app; `results=False` for the scheduler's sending: Celery would otherwise subscribe
    to each task's result channel (and retry that for 20 s when the broker is down), and the
    scheduler reads the results itself."""
    backend = options.results_url if results else "disabled"
    app = Celery("taskwarden", broker=options.broker_url, backend=backend)
    transport: dict[str, Any] = {
        "visibility_timeout": options.visibility_timeout_seconds,
        # Workers look for messages past their visibility timeout this often (one ZRANGE),
        # so a lost worker's messages come back about a visibility timeout after delivery.
        "unacked_restore_interval": int(max(1, min(10, options.visibility_timeout_seconds / 10))),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    }
    app.conf.update(
        task_default_queue=options.queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # A message is acknowledged once its attempt ended, so a worker lost mid-run leaves it
        # to be redelivered, and the claim drops the redelivery.
        task_acks_late=True,
        # A pool child that dies (os._exit, a signal, the OOM killer) fails its attempt with
        # WorkerLostError at once, recorded `crashed`: a requeue would only come back to be
        # dropped by its claim, and the scheduler would learn later, from the lease.
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options={"socket_connect_timeout": 2, "socket_timeout": 5},
        # A result written during a broker outage is retried, not lost (the scheduler would
        # otherwise see the lease lapse and call the attempt crashed).
        result_backend_always_retry=True,
        result_backend_max_retries=30,
        result_expires=RESULT_EXPIRES_SECONDS,
        task_track_started=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        # On a broker connection loss a running body goes on: its lease and its result survive
        # the outage (see above); cancelling it would lose work for nothing.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


def task_id(run_id: str, attempt: int) -> str:
    return f"{run_id}.{attempt}"


def claim_key(task: str) -> str:
    return f"{KEY_PREFIX}claim:{task}"


def lease_key(task: str) -> str:
    return f"{KEY_PREFIX}lease:{task}"


def cancel_key(task: str) -> str:
    return f"{KEY_PREFIX}cancel:{task}"


def worker_key(name: str) -> str:
    return f"{KEY_PREFIX}worker:{name}"
