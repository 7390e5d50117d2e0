"""Logging: structlog, with the standard library routed through the same renderer.

APScheduler, SQLAlchemy and every other library log through `logging`; their records pass the
same processors as ours, so one process writes one format (JSON lines by default).
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["json", "console"]

_URL_CREDENTIALS = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@/\s]+@", re.IGNORECASE)
_SECRET_KEY = re.compile(
    r"(^|_)(password|passwd|secret|token|api_?key|authorization|credentials?)($|_)", re.IGNORECASE
)
MASK = "***"


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        if "@" in value and "://" in value:  # the cheap test first: this runs for every value
            return _URL_CREDENTIALS.sub(rf"\g<head>:{MASK}@", value)
        return value
    if isinstance(value, dict):
        return {
            k: MASK if v is not None and _secret_key(k) else _scrub(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    return value


@functools.lru_cache(maxsize=4096)
def _secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Mask passwords in URLs and the values of keys that name secrets, however deep."""
    scrubbed: EventDict = _scrub(event_dict)
    return scrubbed


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
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: list[Processor] = (
        [structlog.processors.dict_tracebacks, redact_secrets, structlog.processors.JSONRenderer()]
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
    apscheduler_log = logging.getLogger("apscheduler.scheduler")
    if _not_a_max_instances_skip not in apscheduler_log.filters:
        apscheduler_log.addFilter(_not_a_max_instances_skip)
