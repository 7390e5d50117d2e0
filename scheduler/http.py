"""The HTTP side of the service (FastAPI on uvicorn, in the service's own event loop):
/metrics, /healthz, /readyz and the JSON API."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .errors import ConfigurationError
from .metrics import package_version


class ServiceView(Protocol):
    """What the HTTP endpoints read from the running service."""

    @property
    def metrics_registry(self) -> CollectorRegistry: ...
    @property
    def is_leader(self) -> bool: ...
    def health_problems(self) -> list[str]: ...
    def jobs_overview(self) -> list[dict[str, Any]]: ...


def create_app(view: ServiceView) -> FastAPI:
    app = FastAPI(
        title="taskwarden scheduler",
        version=package_version(),
        description="Health, metrics and jobs of a taskwarden scheduler service.",
    )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:  # sync: FastAPI runs it in a thread, off the event loop
        return Response(generate_latest(view.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="200 while the service is alive and its database answers")
    def healthz() -> JSONResponse:
        problems = view.health_problems()
        body = {"status": "unhealthy" if problems else "ok", "problems": problems}
        return JSONResponse(body, status_code=503 if problems else 200)

    @app.get("/readyz", summary="200 on the active instance, 503 on a standby")
    def readyz() -> JSONResponse:
        if view.is_leader:
            return JSONResponse({"status": "active"})
        return JSONResponse(
            {"status": "standby", "reason": "another instance is active, or none yet"},
            status_code=503,
        )

    @app.get("/api/jobs", summary="Every job: configuration, state, next run, latest outcome")
    def jobs() -> list[dict[str, Any]]:
        return view.jobs_overview()

    return app


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the service owns SIGTERM and SIGINT


class HttpServer:
    """uvicorn serving `app` on a socket bound up front, so a taken port is a clear error."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.host, self.port = host, port
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as error:
            sock.close()
            raise ConfigurationError(
                [f"SCHEDULER_HTTP_HOST/PORT: cannot listen on {self.host}:{self.port}: {error}"]
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, 10)
