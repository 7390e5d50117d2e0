"""The `scheduler worker` process: a Celery worker, its heartbeat and its own HTTP port.

The heartbeat (`taskwarden:worker:<name>` in the broker, every second) tells the active
scheduler each worker's concurrency and how many attempts it runs (per-worker saturation on
its metrics). `/metrics` and `/healthz` on SCHEDULER_WORKER_HTTP_PORT describe this worker.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
import structlog
from celery import signals
from celery.worker import state as worker_state
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .celery_app import (
    HEARTBEAT_SECONDS,
    HEARTBEAT_TTL_SECONDS,
    CeleryOptions,
    build_app,
    worker_key,
)
from .celery_worker import redis_client, register_attempt_task
from .discovery import discover
from .settings import ServiceSettings

log = structlog.get_logger(__name__)


def default_name() -> str:
    return f"worker-{os.getpid()}@{socket.gethostname()}"


@dataclass(frozen=True)
class WorkerHealth:
    name: str
    concurrency: int
    busy: int
    accepted: int
    ready: bool
    broker_up: bool
    failed_task_files: tuple[str, ...]

    @property
    def healthy(self) -> bool:
        return self.ready and self.broker_up


class Monitor:
    """The heartbeat thread, and what this worker's HTTP port reports."""

    def __init__(self, client: redis.Redis, name: str, concurrency: int, failed: tuple[str, ...]):
        self._client = client
        self.name = name
        self.concurrency = concurrency
        self._failed = failed
        self._ready = threading.Event()
        self._beat_ok_at = 0.0

    def on_ready(self, **_: Any) -> None:
        self._ready.set()

    def run(self) -> None:
        while True:
            self.beat()
            time.sleep(HEARTBEAT_SECONDS)

    def beat(self) -> None:
        data = {"concurrency": self.concurrency, "busy": self.busy(), "pid": os.getpid()}
        try:
            self._client.set(worker_key(self.name), json.dumps(data), ex=HEARTBEAT_TTL_SECONDS)
        except redis.RedisError as error:
            log.warning("heartbeat not written: broker unreachable", error=str(error))
            return
        self._beat_ok_at = time.monotonic()

    def busy(self) -> int:
        return len(worker_state.active_requests)

    def health(self) -> WorkerHealth:
        broker_up = time.monotonic() - self._beat_ok_at < 3 * HEARTBEAT_SECONDS
        return WorkerHealth(
            name=self.name,
            concurrency=self.concurrency,
            busy=self.busy(),
            accepted=sum(worker_state.total_count.values()),
            ready=self._ready.is_set(),
            broker_up=broker_up,
            failed_task_files=self._failed,
        )


class _Collector(Collector):
    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        health = self._monitor.health()
        label = [health.name]
        for name, text, value in (
            ("busy", "Attempts this Celery worker runs now.", health.busy),
            ("concurrency", "Attempts this Celery worker runs at most at once.",
             health.concurrency),
            ("saturation", "Busy over concurrency (1: every pool process busy).",
             health.busy / health.concurrency if health.concurrency else 0.0),
            ("broker_up", "1 while the worker's heartbeat reaches the broker.",
             float(health.broker_up)),
        ):  # fmt: skip
            gauge = GaugeMetricFamily(f"scheduler_celery_worker_{name}", text, labels=["worker"])
            gauge.add_metric(label, value)
            yield gauge
        accepted = CounterMetricFamily(
            "scheduler_celery_worker_attempts",
            "Attempts this Celery worker accepted.",
            labels=["worker"],
        )
        accepted.add_metric(label, health.accepted)
        yield accepted


def serve_http(host: str, port: int, monitor: Monitor) -> ThreadingHTTPServer:
    registry = CollectorRegistry()
    registry.register(_Collector(monitor))
    ProcessCollector(registry=registry)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, generate_latest(registry), "text/plain; version=0.0.4")
            elif self.path == "/healthz":
                health = monitor.health()
                body = {**health.__dict__, "status": "ok" if health.healthy else "unhealthy"}
                self._answer(200 if health.healthy else 503, json.dumps(body).encode())
            else:
                self._answer(404, b'{"detail": "not found"}')

        def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the worker's log

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def run_worker(settings: ServiceSettings, concurrency: int, http_port: int, name: str) -> int:
    """Run a Celery worker until it is told to stop; its exit code."""
    options = CeleryOptions.from_settings(settings)
    report = discover(settings.tasks_dir)  # task code runs here: that is this process's job
    failed = tuple(str(failure.path.name) for failure in report.failures)
    app = build_app(options)
    register_attempt_task(app, options, settings.event_loop)
    monitor = Monitor(redis_client(options.broker_url), name, concurrency, failed)
    signals.worker_ready.connect(monitor.on_ready, weak=False)
    serve_http(settings.http_host, http_port, monitor)
    threading.Thread(target=monitor.run, name="heartbeat", daemon=True).start()
    log.info("celery worker starting", worker=name, concurrency=concurrency,
             queue=options.queue, http_port=http_port, jobs=list(report.job_types))  # fmt: skip
    worker = app.Worker(
        hostname=name,
        concurrency=concurrency,
        pool="prefork",
        queues=[options.queue],
        loglevel=settings.log_level,
        without_gossip=True,
        without_mingle=True,
        optimization="fair",
    )
    worker.start()
    return int(worker.exitcode or 0)
