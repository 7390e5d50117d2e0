"""Stored job state as JSON the service validates: a row of the job store is data, never code.

APScheduler stores each job as a pickle and unpickles it when it loads the job, so whoever can
write that table can run code on the scheduler's host. Here a job is a JSON object with exactly
the fields a job of this service has; the function must be the service's own entry point, and the
trigger one the service builds (interval or cron). Anything else is refused with `StoredJobError`,
saying what is wrong; the store then sets the row aside and the job is rebuilt from its task file.

`legacy_state` reads the pickles of databases written before this format, through an unpickler
that can only build the handful of classes such a pickle holds (for the migration).
"""

from __future__ import annotations

import io
import json
import pickle
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.interval import IntervalTrigger

from . import cron
from .errors import StoredJobError
from .executor import JOB_FUNCTION

FORMAT = 1
_FIELDS = frozenset(
    {"format", "id", "func", "trigger", "executor", "args", "kwargs", "name",
     "misfire_grace_time", "coalesce", "max_instances", "next_run_time"}
)  # fmt: skip
_INTERVAL_FIELDS = frozenset({"type", "seconds", "start_date", "end_date", "timezone", "jitter"})
_CRON_FIELDS = frozenset({"type", "expression", "timezone"})


def encode(state: dict[str, Any]) -> bytes:
    """A job's `__getstate__()` as the stored JSON."""
    document = {
        "format": FORMAT,
        "id": state["id"],
        "func": state["func"],
        "trigger": _trigger_document(state["id"], state["trigger"]),
        "executor": state["executor"],
        "args": list(state["args"]),
        "kwargs": state["kwargs"],
        "name": state["name"],
        "misfire_grace_time": state["misfire_grace_time"],
        "coalesce": state["coalesce"],
        "max_instances": state["max_instances"],
        "next_run_time": _time(state["next_run_time"]),
    }
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes, job_id: str) -> dict[str, Any]:
    """The job state (for `Job.__setstate__`) stored in `data` under `job_id`, validated."""
    where = f"stored job {job_id!r}"
    if not data.startswith(b"{"):
        kind = "a pickle" if data[:1] == b"\x80" else "not JSON"
        raise StoredJobError(f"{where}: its state is {kind}; only this service's JSON is read")
    try:
        document = json.loads(data)
    except ValueError as error:
        raise StoredJobError(f"{where}: its state is not valid JSON ({error})") from None
    if not isinstance(document, dict) or set(document) != _FIELDS:
        found = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise StoredJobError(f"{where}: expected the fields {sorted(_FIELDS)}, found {found}")
    _check(where, document["format"] == FORMAT, f"format {document['format']!r}")
    _check(where, document["id"] == job_id, f"id {document['id']!r} in a row of id {job_id!r}")
    # The function is imported by reference when the job loads: only the service's own.
    _check(where, document["func"] == JOB_FUNCTION, f"function {document['func']!r}")
    _check(where, document["executor"] == "default", f"executor {document['executor']!r}")
    args, kwargs = document["args"], document["kwargs"]
    _check(where, _strings(args) and len(args) <= 1, f"args {args!r}")
    _check(where, isinstance(kwargs, dict) and set(kwargs) <= {"task_file"}, f"kwargs {kwargs!r}")
    _check(where, _optional_str(kwargs.get("task_file")), f"task_file {kwargs.get('task_file')!r}")
    _check(where, isinstance(document["name"], str), f"name {document['name']!r}")
    grace = document["misfire_grace_time"]
    _check(where, grace is None or _positive_int(grace), f"misfire_grace_time {grace!r}")
    _check(where, isinstance(document["coalesce"], bool), f"coalesce {document['coalesce']!r}")
    limit = document["max_instances"]
    _check(where, _positive_int(limit), f"max_instances {limit!r}")
    return {
        "version": 1,
        "id": job_id,
        "func": JOB_FUNCTION,
        "trigger": _trigger(where, document["trigger"]),
        "executor": "default",
        "args": tuple(args),
        "kwargs": dict(kwargs),
        "name": document["name"],
        "misfire_grace_time": grace,
        "coalesce": document["coalesce"],
        "max_instances": limit,
        "next_run_time": _parse_time(where, "next_run_time", document["next_run_time"]),
    }


def _trigger_document(job_id: str, trigger: Any) -> dict[str, Any]:
    if isinstance(trigger, cron.CrontabTrigger):
        return {"type": "cron", "expression": trigger.expression, "timezone": trigger.zone_name}
    if not isinstance(trigger, IntervalTrigger):
        raise StoredJobError(f"job {job_id!r}: cannot store a {type(trigger).__name__}")
    return {
        "type": "interval",
        "seconds": trigger.interval.total_seconds(),
        "start_date": _time(trigger.start_date),
        "end_date": _time(trigger.end_date),
        "timezone": _zone_name(trigger.timezone),
        "jitter": trigger.jitter,
    }


def _trigger(where: str, trigger: Any) -> IntervalTrigger | cron.CrontabTrigger:
    if isinstance(trigger, dict) and trigger.get("type") == "cron":
        return _cron(where, trigger)
    return _interval(where, trigger)


def _cron(where: str, trigger: dict[str, Any]) -> cron.CrontabTrigger:
    _check(where, set(trigger) == _CRON_FIELDS, f"cron trigger fields {sorted(trigger)}")
    expression, zone = trigger["expression"], trigger["timezone"]
    _check(where, isinstance(expression, str), f"cron expression {expression!r}")
    _check(where, isinstance(zone, str), f"time zone {zone!r}")
    try:
        return cron.CrontabTrigger(expression, zone)
    except ValueError as error:
        raise StoredJobError(f"{where}: {error}") from None


def _interval(where: str, trigger: Any) -> IntervalTrigger:
    if not isinstance(trigger, dict) or set(trigger) != _INTERVAL_FIELDS:
        raise StoredJobError(f"{where}: its trigger is neither interval nor cron: {trigger!r}")
    _check(where, trigger["type"] == "interval", f"trigger type {trigger['type']!r}")
    seconds, jitter = trigger["seconds"], trigger["jitter"]
    _check(where, _positive_number(seconds), f"interval of {seconds!r} seconds")
    _check(where, jitter is None or _positive_number(jitter), f"jitter {jitter!r}")
    start = _parse_time(where, "start_date", trigger["start_date"])
    _check(where, start is not None, "no start_date")
    return IntervalTrigger(
        seconds=seconds,
        start_date=start,
        end_date=_parse_time(where, "end_date", trigger["end_date"]),
        timezone=_zone(where, trigger["timezone"]),
        jitter=jitter,
    )


def _check(where: str, ok: bool, what: str) -> None:
    if not ok:
        raise StoredJobError(f"{where}: unexpected {what}")


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _parse_time(where: str, name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise StoredJobError(f"{where}: {name} {value!r} is not a time with a UTC offset")
    return moment


def _zone_name(zone: tzinfo) -> str:
    if zone == UTC or getattr(zone, "key", None) == "UTC":
        return "UTC"
    key = getattr(zone, "key", None) or getattr(zone, "zone", None)
    if not isinstance(key, str):
        raise StoredJobError(f"cannot store the time zone {zone!r}: it has no IANA name")
    return key


def _zone(where: str, name: Any) -> tzinfo:
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name) if isinstance(name, str) else UTC
    except (ZoneInfoNotFoundError, ValueError):
        raise StoredJobError(f"{where}: unknown time zone {name!r}") from None


#: Everything a pickled job of this service holds; any other global is refused.
_PICKLE_GLOBALS = frozenset(
    {
        ("apscheduler.triggers.interval", "IntervalTrigger"),
        ("datetime", "datetime"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("zoneinfo", "ZoneInfo._unpickle"),
        ("zoneinfo._zoneinfo", "ZoneInfo._unpickle"),
    }
)


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise StoredJobError(f"the pickle refers to {module}.{name}, which is not allowed")
        return super().find_class(module, name)


def legacy_state(data: bytes, job_id: str) -> dict[str, Any]:
    """The state in an APScheduler pickle, built only from allowed classes, then validated
    as `decode` validates JSON."""
    try:
        state = _AllowListUnpickler(io.BytesIO(data)).load()
    except StoredJobError as error:
        raise StoredJobError(f"stored job {job_id!r}: {error}") from None
    except Exception as error:
        raise StoredJobError(f"stored job {job_id!r}: unreadable pickle ({error})") from None
    try:
        document = encode(state)
    except (KeyError, TypeError, AttributeError) as error:
        why = f"stored job {job_id!r}: not a job of this service ({error})"
        raise StoredJobError(why) from None
    return decode(document, job_id)
