"""One call of a task's body: its requirements, its timeout, what it raised, what it returned.

Runs wherever the body runs: in a worker process (the default) or on the service's own loop
(`SCHEDULER_EXECUTION=inline`). Whatever the body raises, `SystemExit` and
`KeyboardInterrupt` included, ends this attempt only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from .base import JobContext, RunnerResult
from .errors import NonRetryableError
from .masking import register_secret
from .params import ParamsProblem, validate_params
from .records import (
    CANCELLED_BY_OPERATOR,
    BodyResult,
    Outcome,
    SkipReason,
    summarize_error,
    traceback_text,
)
from .registry import JobRegistry
from .requirements import RequirementRegistry, RequirementUnavailable

log = structlog.get_logger(__name__)


async def acquire_requirements(names: Sequence[str]) -> dict[str, object] | BodyResult:
    """The requirements' resources, or the skip that says which one is unavailable."""
    if not names:
        return {}
    try:
        resources = await RequirementRegistry.acquire(names)
    except RequirementUnavailable as error:
        return BodyResult(Outcome.SKIPPED, str(error), skip_reason=SkipReason.REQUIREMENT)
    for resource in resources.values():  # a token handed to a run is never shown again
        register_secret(resource)
    return resources


def with_validated_params(context: JobContext) -> JobContext | BodyResult:
    """The context with its params validated against the job's model (if it declares one),
    or the failure, not retried, of params that no longer validate (the model changed since
    they were accepted)."""
    model = JobRegistry.get_params_model(str(context.job_type))
    if model is None:
        return context
    validated = validate_params(model, context.params)
    if isinstance(validated, ParamsProblem):
        why = f"params do not validate against {validated.model} (not retried): {validated.text}"
        return BodyResult(Outcome.FAILURE, summarize_error(why), retryable=False)
    return context.with_params(context.params, validated)


async def invoke(
    task_class: type[Any],
    context: JobContext,
    timeout_seconds: float,
    *,
    abandon_after_seconds: float | None = None,
    synchronous: bool = False,
    wrap: Callable[[Awaitable[Any]], Awaitable[Any]] | None = None,
    cancel: asyncio.Future[None] | None = None,
) -> BodyResult:
    """Call the body once within `timeout_seconds`.

    A body that swallows its cancellation is waited for `abandon_after_seconds` more, then
    abandoned (inline mode: nothing can stop it; a worker instead leaves it to its supervisor,
    which kills the process). The outcome is `timeout` either way. A plain `def` body cannot be
    cancelled at all: it is recorded `timeout` at once and left to finish in its thread.
    `wrap` drives the body's coroutine (the worker's board marks each of its steps).

    `cancel`, once done, is an operator's cancellation: the body is cancelled (a plain-def one
    cannot be: its thread is waited for) and waited for up to `abandon_after_seconds` (None:
    until it ends; in a worker the supervisor kills the process past the kill grace); the
    outcome is `cancelled`, whatever the body did once asked to stop.
    """
    body = asyncio.ensure_future(_contained(task_class, context, wrap))
    try:
        waits: set[asyncio.Future[Any]] = {body} if cancel is None else {body, cancel}
        done, _ = await asyncio.wait(
            waits, timeout=timeout_seconds, return_when=asyncio.FIRST_COMPLETED
        )
        if body in done:
            return _result_of(body)
        if cancel is not None and cancel in done:
            return await _cancelled(body, synchronous, abandon_after_seconds)
        body.cancel()
        if not synchronous:
            await asyncio.wait({body}, timeout=abandon_after_seconds)
        return _timed_out(body, timeout_seconds, synchronous)
    except asyncio.CancelledError:
        body.cancel()
        raise


async def _cancelled(
    body: asyncio.Future[Any], synchronous: bool, abandon_after_seconds: float | None
) -> BodyResult:
    """An operator's cancellation: stop the body and wait for it to end."""
    if not synchronous:  # a thread cannot be stopped: cancelling its wrapper would only hide it
        body.cancel()
    await asyncio.wait({body}, timeout=abandon_after_seconds)
    why = CANCELLED_BY_OPERATOR
    if not body.done():
        if synchronous:
            why += " (a plain-def body cannot be stopped; its thread was abandoned)"
        else:
            why += " (it ignored its cancellation and was abandoned)"
        body.add_done_callback(_discard_outcome)
    else:
        _discard_outcome(body)
    return BodyResult(Outcome.CANCELLED, why, retryable=False)


class _TaskExited(Exception):
    """`SystemExit` or `KeyboardInterrupt` raised by task code, carried as a plain error: an
    asyncio task re-raises those two out of the event loop itself."""


async def _contained(
    task_class: type[Any],
    context: JobContext,
    wrap: Callable[[Awaitable[Any]], Awaitable[Any]] | None = None,
) -> Any:
    try:
        execution = task_class().execute(context)
        return await (execution if wrap is None else wrap(execution))
    except (SystemExit, KeyboardInterrupt) as error:
        raise _TaskExited(f"{summarize_error(error)} (raised by the task)") from None


def _timed_out(body: asyncio.Future[Any], timeout_seconds: float, synchronous: bool) -> BodyResult:
    why = f"timed out after {timeout_seconds:g}s"
    if synchronous:
        why += " (a plain-def body cannot be cancelled; its thread was abandoned)"
    elif not body.done():
        why += " and ignored its cancellation"
        body.add_done_callback(_discard_outcome)
    else:
        _discard_outcome(body)
    return BodyResult(Outcome.TIMEOUT, why)


def _discard_outcome(body: asyncio.Future[Any]) -> None:
    if not body.cancelled():
        body.exception()  # retrieved: no "exception was never retrieved" at exit


def _result_of(body: asyncio.Future[Any]) -> BodyResult:
    if body.cancelled():  # the body cancelled itself
        return BodyResult(Outcome.FAILURE, "the task cancelled itself")
    error = body.exception()
    if error is None:
        return counted(body.result())
    if isinstance(error, NonRetryableError):
        return BodyResult(Outcome.FAILURE, summarize_error(error), retryable=False)
    if isinstance(error, _TaskExited):  # ends this attempt only, never the process
        return BodyResult(Outcome.FAILURE, str(error))
    log.error("run raised", exc_info=error)
    return BodyResult(Outcome.FAILURE, summarize_error(error), traceback=traceback_text(error))


def counted(results: object) -> BodyResult:
    """Success with the result items counted, or a failure if the body returned junk."""
    items = [] if results is None else results
    if not isinstance(items, list | tuple) or not all(
        isinstance(item, RunnerResult) for item in items
    ):
        why = f"_execute_impl returned {type(results).__name__}, not a list of RunnerResult"
        return BodyResult(Outcome.FAILURE, why)
    succeeded = sum(1 for item in items if item.success)
    for item in items:
        if not item.success:
            log.warning("item failed", message=item.message, item=type(item).__name__)
    return BodyResult(Outcome.SUCCESS, None, succeeded, len(items) - succeeded)
