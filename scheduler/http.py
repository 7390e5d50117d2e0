"""The HTTP side of the service (FastAPI on uvicorn, in the service's own event loop):
/metrics, /healthz, /readyz and the JSON API."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import socket
import urllib.parse
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal, Protocol

import h11
import uvicorn
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import (
    AmbiguousRunError,
    ConfigurationError,
    NotActiveError,
    ParamsRejected,
    ParamsUnverifiable,
    RunAlreadyStartedError,
    RunNotInProgressError,
    UnknownJobTypeError,
    UnknownRunError,
)
from .job_page import JobNotice, render_job_page
from .metrics import package_version
from .page_html import RUN_ID, job_url, message_page
from .params import MAX_PARAMS_BYTES, ParamsError, ParamsTooLarge, encode_params
from .pending import PendingRun
from .records import RunCancellation, RunInProgress, RunRecord, RunSummary, WorkerStatus, utcnow
from .run_page import render_run_page
from .status_page import render_status_page
from .views import HealthReport, JobHistory, JobStateName, JobView, RunOutcome, RunView


class ServiceView(Protocol):
    """What the HTTP endpoints read from, and ask of, the running service."""

    @property
    def metrics_registry(self) -> CollectorRegistry: ...
    @property
    def is_leader(self) -> bool: ...
    @property
    def admin_token(self) -> str | None: ...
    def health_problems(self) -> list[str]: ...
    def jobs_overview(self) -> list[JobView]: ...
    def workers(self) -> list[WorkerStatus]: ...
    def runs(self, job_type: str | None, limit: int, offset: int) -> list[RunRecord]: ...
    def recent_failures(self, limit: int = 10) -> tuple[list[RunRecord], str | None]: ...
    def dead_letters(
        self, limit: int = 10, *, last_read: bool = False
    ) -> tuple[list[RunRecord], str | None]: ...
    def job_history(self, job_type: str, limit: int = 50) -> JobHistory: ...
    def run_attempts(self, run_id: str) -> tuple[list[RunView], str | None]: ...
    def task_file_failures(self) -> list[tuple[str, str]]: ...
    async def run_now(
        self, job_type: str, params: Mapping[str, Any] | None = None
    ) -> RunSummary | str: ...
    async def schedule_run(
        self, job_type: str, at: datetime, params: Mapping[str, Any] | None = None
    ) -> PendingRun: ...
    def scheduled_runs(self) -> list[PendingRun]: ...
    async def cancel_scheduled(self, run_id: str) -> PendingRun: ...
    async def pause(self, job_type: str) -> None: ...
    async def resume(self, job_type: str) -> None: ...
    def runs_in_progress(self) -> list[RunInProgress]: ...
    async def cancel_run(self, run_id: str) -> RunCancellation: ...
    async def cancel_job(self, job_type: str) -> list[RunCancellation]: ...


class Problem(BaseModel):
    detail: str


#: How far ahead a delayed run may be.
MAX_DELAY_DAYS = 366


class RunRequest(BaseModel):
    """The optional body of `POST /api/jobs/{job_type}/run`."""

    model_config = ConfigDict(extra="forbid")

    at: AwareDatetime | None = Field(
        None,
        description="When to run: an ISO 8601 time with its UTC offset. Absent, null, now or "
        f"past: at once. At most {MAX_DELAY_DAYS} days ahead.",
    )
    params: dict[str, Any] | None = Field(
        None,
        description="A JSON object the run reads as `context.params` (validated against the "
        f"job's params model, if it declares one); at most {MAX_PARAMS_BYTES} bytes of JSON.",
    )

    @field_validator("at")
    @classmethod
    def _within_reach(cls, at: datetime | None) -> datetime | None:
        if at is None:
            return None
        try:
            at = at.astimezone(UTC)
            ahead = at - utcnow()
        except OverflowError:
            raise ValueError("at is out of range") from None
        if ahead > timedelta(days=MAX_DELAY_DAYS):
            raise ValueError(
                f"at is {ahead.days} days ahead; a delayed run may be at most {MAX_DELAY_DAYS} "
                "days ahead"
            )
        return at


class ScheduledRun(BaseModel):
    """A delayed run, accepted (`status` "scheduled"), pending, or cancelled."""

    job_type: str
    run_id: str
    status: Literal["scheduled", "cancelled"]
    at: datetime


class PendingRunView(BaseModel):
    run_id: str
    job_type: str
    at: datetime
    params: dict[str, Any]
    created_at: datetime


class JobAction(BaseModel):
    job_type: str
    state: JobStateName
    next_run_time: datetime | None


class CancelledRun(BaseModel):
    """A run an operator cancelled: `status` is its final outcome (`cancelled`, or how it
    ended if it ended first) or `cancelling` if it had not stopped yet when this answered."""

    run_id: str
    job_type: str
    attempt: int
    status: str


class JobCancellation(BaseModel):
    job_type: str
    #: The runs of the job that were in progress and are cancelled (empty: none was).
    cancelled: list[CancelledRun]


class RunsPage(BaseModel):
    job_type: str
    limit: int
    offset: int
    next_offset: int | None
    runs: list[RunView]


_bearer = HTTPBearer(auto_error=False)
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing or wrong bearer token"},
    403: {"model": Problem, "description": "Write endpoints are disabled (no token configured)"},
    404: {"model": Problem, "description": "Unknown job type"},
    409: {"model": Problem, "description": "This instance is a standby"},
}


CANCEL_RUN_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No run in progress has that id (or prefix)"},
    409: {"model": Problem, "description": "The prefix matches several runs, or a standby"},
}
#: The most a status page form may send (its admin token), in bytes.
MAX_FORM_BYTES = 4096


def _view(request: Request) -> ServiceView:
    view: ServiceView = request.app.state.view
    return view


View = Annotated[ServiceView, Depends(_view)]


def require_admin(
    view: View, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Write endpoints need the configured bearer token; with none configured they are off."""
    given = credentials.credentials if credentials is not None else ""
    refusal = _token_refusal(view, given)
    if refusal is not None:
        status, detail = refusal
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        raise HTTPException(status, detail, headers=headers)


def _token_refusal(view: ServiceView, given: str) -> tuple[int, str] | None:
    """(status, why) if `given` is not the admin token, or no token is configured."""
    expected = view.admin_token
    if not expected:
        return 403, "write endpoints are disabled: set SCHEDULER_ADMIN_TOKEN to enable them"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return 401, "missing or wrong bearer token"
    return None


reads = APIRouter()
writes = APIRouter(dependencies=[Depends(require_admin)], responses=WRITE_RESPONSES)


@reads.get("/", response_class=HTMLResponse, summary="Status page")
def status_page(
    view: View,
    refresh: Annotated[str | None, Query(max_length=8)] = None,
    cancelled: Annotated[str | None, Query(max_length=64)] = None,
    outcome: Annotated[str | None, Query(max_length=16)] = None,
) -> HTMLResponse:
    failures, history_error = view.recent_failures()
    # In an outage one read that fails is enough: a second would double the page's wait.
    dead_letters, _ = view.dead_letters(last_read=history_error is not None)
    page = render_status_page(
        view.jobs_overview(),
        view.health_problems(),
        view.is_leader,
        [RunView.of(record) for record in failures],
        [dataclasses.asdict(worker) for worker in view.workers()],
        in_progress=view.runs_in_progress(),
        refresh=refresh != "off",
        cancelled=(cancelled, outcome) if cancelled else None,
        broken_files=view.task_file_failures(),
        history_error=history_error,
        dead_letters=[RunView.of(record) for record in dead_letters],
        writes_enabled=bool(view.admin_token),
    )
    return HTMLResponse(page)


#: How many of a job's latest attempts its page shows (table and chart).
JOB_PAGE_RUNS = 50
_Short = Annotated[str | None, Query(max_length=64)]


@reads.get("/jobs/{job_type}", response_class=HTMLResponse, include_in_schema=False)
def job_page(
    view: View,
    job_type: str,
    done: _Short = None,
    ran: _Short = None,
    outcome: _Short = None,
    skip: _Short = None,
) -> HTMLResponse:
    """A job's page (job_page.py); the query is what an action's redirect says about it."""
    job = next((j for j in view.jobs_overview() if j.job_type == job_type), None)
    if job is None:
        return _not_found(f"no job {job_type!r}", view)
    try:
        history = view.job_history(job_type, JOB_PAGE_RUNS)
    except UnknownJobTypeError as error:  # gone between the two looks (a reload)
        return _not_found(str(error), view)
    notice = JobNotice(done, ran, outcome, skip) if done or ran else None
    page = render_job_page(
        job,
        history,
        leader=view.is_leader,
        writes_enabled=bool(view.admin_token),
        in_progress=[r for r in view.runs_in_progress() if r.job_type == job_type],
        notice=notice,
    )
    return HTMLResponse(page)


@reads.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
def run_page(view: View, run_id: str) -> HTMLResponse:
    """A run's page (run_page.py), by its whole id (32 hex digits, as every table links it)."""
    run_id = run_id.strip().lower()
    if not RUN_ID.fullmatch(run_id):
        return _not_found(f"{run_id[:64]!r} is not a run id (32 hexadecimal digits)")
    attempts, error = view.run_attempts(run_id)
    in_progress = next((r for r in view.runs_in_progress() if r.run_id == run_id), None)
    if error is not None and in_progress is None:
        why = f"the run history cannot be read ({error}); try again shortly"
        return HTMLResponse(message_page(why, "Run " + run_id), status_code=503)
    if not attempts and in_progress is None:
        return _not_found(f"no run {run_id} in the run history")
    page = render_run_page(
        run_id,
        attempts,
        in_progress=in_progress,
        writes_enabled=bool(view.admin_token),
        history_error=error,
    )
    return HTMLResponse(page)


def _not_found(why: str, view: ServiceView | None = None) -> HTMLResponse:
    """The 404 page; given the view, it lists the job types there are."""
    text = f"Not found: {why}."
    if view is not None:
        known = ", ".join(job.job_type for job in view.jobs_overview()) or "none"
        text += f" Known job types: {known}."
    return HTMLResponse(message_page(text, "Not found"), status_code=404)


async def _form_token(request: Request) -> str | HTMLResponse:
    """The admin token a status page form posted, or the page refusing a form too large."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return _message(413, "the form sent too much")
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    return (form.get("token") or [""])[0]


async def _form_refusal(
    view: ServiceView, request: Request, verb: str, back: str = "/"
) -> HTMLResponse | None:
    """The page refusing a form whose token is missing or wrong (or when writes are off)."""
    token = await _form_token(request)
    if isinstance(token, HTMLResponse):
        return token
    refusal = _token_refusal(view, token)
    if refusal is None:
        return None
    status, why = refusal
    return _message(
        status, "the admin token is missing or wrong" if status == 401 else why, verb, back
    )


@reads.post(
    "/runs/{run_id}/cancel",
    response_class=HTMLResponse,
    summary="The status page's Cancel button: a form with the admin token as `token`",
    include_in_schema=False,
)
async def cancel_run_form(view: View, request: Request, run_id: str) -> Response:
    """The status page's form (no JavaScript): the admin token comes in the form body, and a
    cancel redirects (303) back to the page, which says what happened."""
    refused = await _form_refusal(view, request, "cancelled")
    if refused is not None:
        return refused
    try:
        result = await view.cancel_run(run_id)
    except (RunNotInProgressError, UnknownJobTypeError) as error:
        return _message(404, str(error))
    except (AmbiguousRunError, NotActiveError) as error:
        return _message(409, str(error))
    query = urllib.parse.urlencode(
        {"cancelled": result.run.run_id, "outcome": result.outcome or "cancelling"}
    )
    return RedirectResponse(f"/?{query}", status_code=303)


@reads.post("/jobs/{job_type}/run", response_class=HTMLResponse, include_in_schema=False)
async def run_now_form(view: View, request: Request, job_type: str) -> Response:
    """The job page's Run now button: runs it (waiting a few seconds for its outcome, as the
    API does) and redirects back to the job page, which says how it went."""
    back = job_url(job_type)
    refused = await _form_refusal(view, request, "run", back)
    if refused is not None:
        return refused
    try:
        result = await view.run_now(job_type)
    except UnknownJobTypeError as error:
        return _message(404, str(error), "run", back)
    except NotActiveError as error:
        return _message(409, str(error), "run", back)
    except ParamsRejected as error:  # its params model has required fields: the API can pass
        return _message(422, f"its params are required ({error})", "run", back)
    except ParamsUnverifiable as error:
        return _message(503, str(error), "run", back)
    if isinstance(result, str):
        query = {"ran": result, "outcome": "started"}
    else:
        query = {"ran": result.run_id, "outcome": str(result.outcome)}
        if result.skip_reason:
            query["skip"] = str(result.skip_reason)
    return RedirectResponse(f"{back}?{urllib.parse.urlencode(query)}", status_code=303)


@reads.post("/jobs/{job_type}/pause", response_class=HTMLResponse, include_in_schema=False)
async def pause_form(view: View, request: Request, job_type: str) -> Response:
    return await _set_paused_form(view, request, job_type, paused=True)


@reads.post("/jobs/{job_type}/resume", response_class=HTMLResponse, include_in_schema=False)
async def resume_form(view: View, request: Request, job_type: str) -> Response:
    return await _set_paused_form(view, request, job_type, paused=False)


async def _set_paused_form(
    view: ServiceView, request: Request, job_type: str, *, paused: bool
) -> Response:
    """The job page's Pause and Resume buttons: the same calls as the API's, then back to the
    job page, which says what was done."""
    verb, back = ("paused" if paused else "resumed"), job_url(job_type)
    refused = await _form_refusal(view, request, verb, back)
    if refused is not None:
        return refused
    try:
        await (view.pause(job_type) if paused else view.resume(job_type))
    except UnknownJobTypeError as error:
        return _message(404, str(error), verb, back)
    except NotActiveError as error:
        return _message(409, str(error), verb, back)
    return RedirectResponse(f"{back}?done={verb}", status_code=303)


def _message(status: int, text: str, verb: str = "cancelled", back: str = "/") -> HTMLResponse:
    return HTMLResponse(message_page(f"Not {verb}: {text}", back=back), status_code=status)


@reads.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(view: View) -> Response:  # sync: FastAPI runs it in a thread, off the event loop
    return Response(generate_latest(view.metrics_registry), media_type=CONTENT_TYPE_LATEST)


@reads.get(
    "/healthz",
    summary="200 while the service is alive and its database answers (`degraded`: some task "
    "files fail to import), else 503 with the problems",
    responses={200: {"model": HealthReport}, 503: {"model": HealthReport}},
)
def healthz(view: View) -> JSONResponse:
    problems = view.health_problems()
    # A broken task file degrades the service but is no reason to restart it (a restart does
    # not fix the file, and the other jobs run): 200, with what is wrong.
    broken = view.task_file_failures()
    warnings = [f"task file {path} fails to import: {why}" for path, why in broken]
    status = "unhealthy" if problems else "degraded" if warnings else "ok"
    body = HealthReport(status=status, problems=problems, warnings=warnings)
    return JSONResponse(body.model_dump(), status_code=503 if problems else 200)


@reads.get("/readyz", summary="200 on the active instance, 503 on a standby")
def readyz(view: View) -> JSONResponse:
    if view.is_leader:
        return JSONResponse({"status": "active"})
    return JSONResponse(
        {"status": "standby", "reason": "another instance is active, or none yet"},
        status_code=503,
    )


@reads.get("/api/jobs", summary="Every job: configuration, state, next run, latest outcome")
def jobs(view: View) -> list[JobView]:
    return view.jobs_overview()


@reads.get("/api/workers", summary="The worker processes (empty in inline mode or on a standby)")
def workers(view: View) -> list[WorkerStatus]:
    return view.workers()


@reads.get(
    "/api/jobs/{job_type}/runs",
    summary="The job's run history, newest first",
    responses={404: {"model": Problem}},
)
def job_runs(
    view: View,
    job_type: str,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> RunsPage:
    records = view.runs(job_type, limit + 1, offset)
    more = len(records) > limit
    return RunsPage(
        job_type=job_type,
        limit=limit,
        offset=offset,
        next_offset=offset + limit if more else None,
        runs=[RunView.of(record) for record in records[:limit]],
    )


@reads.get("/api/runs/scheduled", summary="The delayed runs still pending, soonest first")
def scheduled_runs(view: View) -> list[PendingRunView]:
    return [
        PendingRunView(
            run_id=run.run_id,
            job_type=run.job_type,
            at=run.run_at,
            params=dict(run.params),
            created_at=run.created_at,
        )
        for run in view.scheduled_runs()
    ]


@writes.post(
    "/api/jobs/{job_type}/run",
    summary="Run the job now, or at `at` (max_concurrent, dependencies and requirements apply)",
    responses={
        202: {"model": ScheduledRun, "description": "A delayed run, stored until its time"},
        413: {"model": Problem, "description": "params too large"},
        503: {"model": Problem, "description": "params could not be validated now"},
    },
)
async def run_now(
    view: View,
    job_type: str,
    response: Response,
    request: Annotated[RunRequest | None, Body()] = None,
) -> RunOutcome | ScheduledRun:
    at = request.at if request is not None else None
    params = request.params if request is not None else None
    if params is not None:
        encode_params(params)  # plain JSON, and not too large
    if at is not None and at > utcnow():
        run = await view.schedule_run(job_type, at, params)
        response.status_code = 202
        return ScheduledRun(job_type=job_type, run_id=run.run_id, status="scheduled", at=run.run_at)
    result = await view.run_now(job_type, params)
    if isinstance(result, str):
        return RunOutcome(job_type=job_type, run_id=result, status="started")
    return RunOutcome.of(result)


@writes.delete(
    "/api/runs/scheduled/{run_id}",
    summary="Cancel a delayed run that has not started",
    responses={404: {"model": Problem, "description": "No such pending run"}},
)
async def cancel_scheduled(view: View, run_id: Annotated[str, Path(max_length=64)]) -> ScheduledRun:
    run = await view.cancel_scheduled(run_id)
    return ScheduledRun(job_type=run.job_type, run_id=run_id, status="cancelled", at=run.run_at)


@writes.post("/api/jobs/{job_type}/pause", summary="Stop scheduling the job until resumed")
async def pause(view: View, job_type: str) -> JobAction:
    await view.pause(job_type)
    return _job_action(view, job_type)


@writes.post("/api/jobs/{job_type}/resume", summary="Schedule a paused job again")
async def resume(view: View, job_type: str) -> JobAction:
    await view.resume(job_type)
    return _job_action(view, job_type)


@reads.get(
    "/api/runs/in-progress",
    summary="Runs with an attempt executing or waiting to retry (empty on a standby)",
)
def runs_in_progress(view: View) -> list[RunInProgress]:
    return view.runs_in_progress()


@writes.post(
    "/api/runs/{run_id}/cancel",
    summary="Cancel a run in progress, named by its id or a unique prefix (8 characters or more)",
    responses=CANCEL_RUN_RESPONSES,
)
async def cancel_run(
    view: View, run_id: Annotated[str, Path(min_length=8, max_length=64)]
) -> CancelledRun:
    return _cancelled(await view.cancel_run(run_id))


@writes.post("/api/jobs/{job_type}/cancel", summary="Cancel every run of the job in progress")
async def cancel_job(view: View, job_type: str) -> JobCancellation:
    results = await view.cancel_job(job_type)
    return JobCancellation(job_type=job_type, cancelled=[_cancelled(r) for r in results])


def _cancelled(result: RunCancellation) -> CancelledRun:
    run = result.run
    return CancelledRun(
        run_id=run.run_id,
        job_type=run.job_type,
        attempt=run.attempt,
        status=result.outcome or "cancelling",
    )


def _job_action(view: ServiceView, job_type: str) -> JobAction:
    job = next(j for j in view.jobs_overview() if j.job_type == job_type)
    return JobAction(job_type=job_type, state=job.state, next_run_time=job.next_run_time)


async def _unknown_job(_request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=404)


async def _standby(_request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=409)


async def _params_rejected(_request: Request, error: Exception) -> JSONResponse:
    """pydantic's errors in FastAPI's own shape (the field's `loc` under body.params)."""
    assert isinstance(error, ParamsRejected)
    detail = []
    for item in error.errors:
        loc = item.get("loc")
        detail.append({**item, "loc": ["body", "params", *(loc if isinstance(loc, list) else [])]})
    return JSONResponse({"detail": detail, "model": error.model}, status_code=422)


async def _bad_params(_request: Request, error: Exception) -> JSONResponse:
    status = 413 if isinstance(error, ParamsTooLarge) else 422
    return JSONResponse({"detail": str(error)}, status_code=status)


def _status(code: int) -> Any:
    async def handler(_request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=code)

    return handler


def create_app(view: ServiceView) -> FastAPI:
    app = FastAPI(
        title="taskwarden scheduler",
        version=package_version(),
        description="Health, metrics and jobs of a taskwarden scheduler service. Write "
        "endpoints need `Authorization: Bearer <SCHEDULER_ADMIN_TOKEN>`.",
        exception_handlers={
            UnknownJobTypeError: _unknown_job,
            NotActiveError: _standby,
            ParamsRejected: _params_rejected,
            ParamsError: _bad_params,
            ParamsUnverifiable: _status(503),
            UnknownRunError: _status(404),
            RunAlreadyStartedError: _status(409),
            RunNotInProgressError: _status(404),
            AmbiguousRunError: _standby,  # 409: a conflict, like a standby's
        },
    )
    app.state.view = view
    app.include_router(reads)
    app.include_router(writes)
    return app


# Bounds on what HTTP clients can hold, so that the API can never starve the scheduler of file
# descriptors (1,100 idle, half-sent requests once took all 1,024 and most runs failed).
MAX_CONNECTIONS = 256  # open connections, of the default 1,024 descriptors
MAX_IN_FLIGHT = 100  # requests being handled at once; more are answered 503 at once
HEADER_TIMEOUT_SECONDS = 10.0  # to send a whole request, from connecting or from its first byte
KEEP_ALIVE_SECONDS = 5  # idle between two requests on one connection
LISTEN_BACKLOG = 128  # also the most connections accepted in one go, before any is refused


class _ConnectionGuard:
    """One server's connections, oldest first, and the bounds they are held to."""

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open: dict[_GuardedH11Protocol, None] = {}  # a dict keeps the order of arrival

    def admit(self, connection: _GuardedH11Protocol) -> bool:
        """Make room for `connection` by closing the oldest one that has no complete request,
        or refuse it (False) when every connection is busy with a request."""
        if len(self.open) >= self.max_connections:
            waiting = next((c for c in self.open if c.waiting_for_request), None)
            if waiting is None:
                return False
            waiting.drop()
        self.open[connection] = None
        return True


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a deadline for the request.

    uvicorn bounds neither: `timeout_keep_alive` is armed only after a response, and
    `limit_concurrency` answers 503 to complete requests (counting every open connection, so a
    hundred half-sent ones would turn everyone away) but never closes a connection. A client
    that connects and never finishes its request line and headers is otherwise held forever.
    """

    guard: ClassVar[_ConnectionGuard]  # set by the subclass each server makes
    _deadline: asyncio.TimerHandle | None = None

    @classmethod
    def bound_to(cls, guard: _ConnectionGuard) -> type[_GuardedH11Protocol]:
        return type("GuardedH11Protocol", (cls,), {"guard": guard})

    @property
    def waiting_for_request(self) -> bool:
        """Connected without a complete request: still sending one, or idle between two."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.close()  # all busy: refuse this one rather than run out of descriptors
            return
        self._watch_request()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self.guard.open.pop(self, None)
        super().connection_lost(exc)

    def drop(self) -> None:
        self._cancel_deadline()
        self.guard.open.pop(self, None)
        self.transport.close()

    def _watch_request(self) -> None:
        """A request must be complete within the header timeout of the connection or of its
        first byte (an idle keep-alive connection is uvicorn's timeout_keep_alive's)."""
        if not self.waiting_for_request or self.transport.is_closing():
            self._cancel_deadline()
        elif self._deadline is None:
            self._deadline = self.loop.call_later(self.guard.header_timeout, self.drop)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class _InFlightLimit:
    """Answers 503 at once to a request beyond `limit` being handled, instead of queueing it.

    Not uvicorn's `limit_concurrency`: that counts open connections too, idle and half-sent
    ones included, so it would let a few slow clients turn every request away."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit, self.in_flight = app, limit, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.in_flight >= self.limit:
            busy = JSONResponse(
                {"detail": "too many requests in progress, retry shortly"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
            await busy(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the service owns SIGTERM and SIGINT


class HttpServer:
    """uvicorn serving `app` on a socket bound up front, so a taken port is a clear error.

    However many clients connect, it holds at most `max_connections` connections, closes one
    whose request is not complete `header_timeout` seconds after it connected (or after the
    request's first byte), closes an idle keep-alive one after `keep_alive_timeout` seconds,
    and answers 503 at once beyond `max_in_flight` requests being handled. When it is full, a
    new connection takes the place of the oldest one that has no complete request."""

    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_in_flight: int = MAX_IN_FLIGHT,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
        keep_alive_timeout: int = KEEP_ALIVE_SECONDS,
    ) -> None:
        self.host, self.port = host, port
        guard = _ConnectionGuard(max_connections, header_timeout)
        config = uvicorn.Config(
            _InFlightLimit(app, max_in_flight),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            http=_GuardedH11Protocol.bound_to(guard),  # h11 even where httptools is installed
            ws="none",  # no WebSocket endpoints; an upgrade would leave the guard's bookkeeping
            timeout_keep_alive=keep_alive_timeout,
            backlog=LISTEN_BACKLOG,  # uvicorn listens again with this (2,048 by default)
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
        self.port = sock.getsockname()[1]  # the port bound: the system's pick if 0 was asked for
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, 10)
