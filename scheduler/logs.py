"""Logging: structlog, with the standard library routed through the same renderer.

APScheduler, SQLAlchemy and every other library log through `logging`; their records pass the
same processors as ours, so one process writes one format (JSON lines by default).
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from contextvars import ContextVar, Token
from typing import Any, Literal, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from .masking import MASK, mask_secrets

LogFormat = Literal["json", "console"]

_SECRET_KEY = re.compile(
    r"(^|_)(password|passwd|secret|token|api_?key|authorization|credentials?)($|_)", re.IGNORECASE
)
#: Fields that are ours and never hold a secret: not searched (this runs for every line).
_PLAIN_FIELDS = frozenset({"timestamp", "level", "logger", "job_type", "run_id", "attempt"})
#: Tracebacks as data, without each frame's local variables: they hold whatever the code had
#: in hand (a database URL with its password, the token a provider handed a run).
_DICT_TRACEBACKS = structlog.processors.ExceptionRenderer(
    ExceptionDictTransformer(show_locals=False)
)
#: The longest text a log field keeps: a task's 10 MB exception message must not become a
#: 10 MB log line (and its traceback, in every collector downstream).
FIELD_LIMIT = 8000


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        if len(value) > FIELD_LIMIT:
            value = f"{value[:FIELD_LIMIT]}… ({len(value) - FIELD_LIMIT} more characters cut)"
        return mask_secrets(value)
    if isinstance(value, dict):
        return {
            k: value[k]
            if k in _PLAIN_FIELDS
            else MASK
            if v is not None and _secret_key(k)
            else _scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    return value


@functools.lru_cache(maxsize=4096)
def _secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Mask passwords in URLs and the values of keys that name secrets, however deep; cut
    overlong texts to `FIELD_LIMIT`."""
    scrubbed: EventDict = _scrub(event_dict)
    return scrubbed


#: The run whose code is executing: (job type, run id, attempt or None). One variable set once
#: per run and attempt, rather than structlog's bind_contextvars (a variable per key, a cost
#: at thousands of runs a second); every log line of the run, the task's own included (through
#: structlog or the standard library), carries it.
_RUN: ContextVar[tuple[str, str, int | None] | None] = ContextVar("scheduler_run", default=None)
RunToken = Token[tuple[str, str, int | None] | None]


def bind_run(job_type: str, run_id: str, attempt: int | None = None) -> RunToken:
    """Tag the log lines of the current context with the run; undo with `unbind_run`."""
    return _RUN.set((job_type, run_id, attempt))


def unbind_run(token: RunToken) -> None:
    _RUN.reset(token)


def add_run_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Put the current run's job type, run id and attempt first; the line's own keys win."""
    run = _RUN.get()
    if run is None:
        return event_dict
    job_type, run_id, attempt = run
    tagged: EventDict = {"job_type": job_type, "run_id": run_id}
    if attempt is not None:
        tagged["attempt"] = attempt
    tagged.update(event_dict)
    return tagged


def _not_a_max_instances_skip(record: logging.LogRecord) -> bool:
    """APScheduler warns of every run it skips at `max_instances`; the service logs the same
    skip as `run skipped` (reason max_instances). One line per skip, not two: under overload
    there may be thousands a second."""
    return not str(record.msg).startswith('Execution of job "%s" skipped: maximum number')


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's fast file logger, with a name for `add_logger_name`."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


def configure_logging(
    level: str = "INFO",
    fmt: LogFormat = "json",
    stream: TextIO | None = None,
    *,
    cache: bool = False,
) -> None:
    """Send every log record, structlog's and the standard library's, to `stream` in `fmt`.

    Our own lines take structlog's native path (a level-filtering logger writing rendered lines),
    which costs a fraction of a trip through `logging`; records of other libraries go through a
    `logging` handler that renders them with the same processors. `cache=True` (the service)
    builds each module's logger once: right for a process that configures logging once, wrong
    for one that reconfigures it (tests).
    """
    stream = stream or sys.stderr
    numeric_level = logging.getLevelName(level.upper())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_run_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: list[Processor] = (
        [_DICT_TRACEBACKS, redact_secrets, structlog.processors.JSONRenderer()]
        if fmt == "json"
        else [structlog.processors.format_exc_info, redact_secrets,
              structlog.dev.ConsoleRenderer(colors=False)]
    )  # fmt: skip
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=lambda *args: _NamedWriteLogger(stream, str(args[0]) if args else ""),
        cache_logger_on_first_use=cache,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric_level)
    # `warnings.warn` (libraries' deprecations, a task's own) as log lines of the same format;
    # off and on again: a `warnings.catch_warnings` since the last call may have undone it.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    apscheduler_log = logging.getLogger("apscheduler.scheduler")
    if _not_a_max_instances_skip not in apscheduler_log.filters:
        apscheduler_log.addFilter(_not_a_max_instances_skip)
