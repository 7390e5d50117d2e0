"""Logging: structlog, with the standard library routed through the same renderer.

APScheduler, SQLAlchemy and every other library log through `logging`; their records pass the
same processors as ours, so one process writes one format (JSON lines by default).
"""

from __future__ import annotations

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
        return _URL_CREDENTIALS.sub(rf"\g<head>:{MASK}@", value)
    if isinstance(value, dict):
        return {k: MASK if _secret(k, v) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    return value


def _secret(key: object, value: object) -> bool:
    return isinstance(key, str) and value is not None and bool(_SECRET_KEY.search(key))


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Mask passwords in URLs and the values of keys that name secrets, however deep."""
    scrubbed: EventDict = _scrub(event_dict)
    return scrubbed


def configure_logging(
    level: str = "INFO", fmt: LogFormat = "json", stream: TextIO | None = None
) -> None:
    """Send every log record, structlog's and the standard library's, to `stream` in `fmt`."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    renderer: list[Processor] = (
        [structlog.processors.dict_tracebacks, redact_secrets, structlog.processors.JSONRenderer()]
        if fmt == "json"
        else [structlog.processors.format_exc_info, redact_secrets,
              structlog.dev.ConsoleRenderer(colors=False)]
    )  # fmt: skip
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
