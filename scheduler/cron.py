"""Cron schedules with the meaning crontab(5) gives them, on APScheduler's own `CronTrigger`.

APScheduler 3's `CronTrigger.from_crontab` differs from cron in two ways that would make a job
run on the wrong days: its day-of-week numbers start at Monday (cron's 0 is Sunday), and when
both the day of the month and the day of the week are restricted it runs when both match
(cron runs when either does). `CrontabTrigger` translates the week days to names and combines
two triggers for the "either" case.

Daylight-saving changes, in the schedule's time zone:
- a wall-clock time skipped by the spring change runs once, an hour later (02:30 -> 03:30);
- a wall-clock time that happens twice at the autumn change runs once, at its first
  occurrence, unless the hour field starts with `*` (`*/30 * * * *`, `15 */2 * * *`): such a
  job runs in real time, so it runs in both passes through the repeated hour.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from .suggestions import did_you_mean

FIELDS: Final = ("minute", "hour", "day", "month", "day_of_week")
MACROS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAY_NAMES: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DAY_TERM = re.compile(r"(?P<first>\*|\w+)(?:-(?P<last>\w+))?(?:/(?P<step>\d+))?")
_MICROSECOND = timedelta(microseconds=1)
#: How far ahead `longest_gap` looks: over a week, so weekly patterns show their longest silence.
_GAP_HORIZON = timedelta(days=8)
_GAP_MAX_FIRES = 2000


def zone(name: str) -> tzinfo:
    """The IANA time zone `name`; ValueError naming it if unknown."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        hint = did_you_mean(name, available_timezones())
        raise ValueError(
            f"unknown time zone {name!r}{hint} (use an IANA name such as 'Europe/Berlin' or 'UTC')"
        ) from None


def normalize(expression: str) -> str:
    """The expression with single spaces; ValueError saying what is wrong if it is not cron."""
    text = " ".join(expression.split())
    fields = MACROS.get(text.lower(), text).split(" ")
    if len(fields) != len(FIELDS):
        raise ValueError(
            f"cron {expression!r} has {len(fields)} field(s); expected 5 "
            "(minute hour day-of-month month day-of-week) or one of " + ", ".join(MACROS)
        )
    _triggers(fields, UTC, expression)
    return text


class CrontabTrigger(BaseTrigger):  # type: ignore[misc]
    """Fires when a crontab expression matches, in the time zone `timezone` (an IANA name)."""

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        self.expression = normalize(expression)
        self.timezone = zone(timezone)
        self.zone_name = "UTC" if self.timezone is UTC else timezone
        fields = MACROS.get(self.expression.lower(), self.expression).split(" ")
        self._triggers = _triggers(fields, self.timezone, expression)
        self._hour_in_real_time = fields[1].startswith("*")
        self.jitter = None

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        if previous_fire_time is not None and now <= previous_fire_time:
            now = previous_fire_time + _MICROSECOND  # never the same time twice
        while True:
            times = [t.get_next_fire_time(previous_fire_time, now) for t in self._triggers]
            # In UTC: within one zone Python compares and adds wall-clock times, ignoring the
            # fold, so the repeated hour's second pass would look earlier than its first; and a
            # time the spring change skips becomes the real instant it stands for.
            upcoming = [moment.astimezone(UTC) for moment in times if moment is not None]
            if not upcoming:
                return None
            moment: datetime = min(upcoming)
            if self._hour_in_real_time or not self._second_pass(moment):
                return moment
            previous_fire_time, now = moment, moment + _MICROSECOND

    def _second_pass(self, moment: datetime) -> bool:
        """Whether `moment` is a wall-clock time's second occurrence (autumn's repeated hour)."""
        local = moment.astimezone(self.timezone)
        return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()

    def __str__(self) -> str:
        return f"cron[{self.expression}, {self.zone_name}]"

    def __repr__(self) -> str:
        return f"<CrontabTrigger ({self.expression!r}, timezone={self.zone_name!r})>"


def _triggers(fields: list[str], timezone: tzinfo, expression: str) -> list[CronTrigger]:
    values = dict(zip(FIELDS, fields, strict=True))
    try:
        values["day_of_week"] = _week_days(values["day_of_week"])
        if fields[2].startswith("*") or fields[4].startswith("*"):
            return [CronTrigger(**values, timezone=timezone)]
        # Both restricted: cron runs when either matches.
        return [
            CronTrigger(**{**values, "day_of_week": "*"}, timezone=timezone),
            CronTrigger(**{**values, "day": "*"}, timezone=timezone),
        ]
    except ValueError as error:
        raise ValueError(f"cron {expression!r}: {error}") from None


def _week_days(field: str) -> str:
    """A cron day-of-week field (0 or 7 is Sunday, names allowed) as APScheduler day names."""
    if field == "*":
        return field
    days: set[int] = set()
    for term in field.split(","):
        match = _DAY_TERM.fullmatch(term.lower())
        if match is None:
            raise ValueError(f"day-of-week term {term!r} is not valid")
        first, last, step = match["first"], match["last"], match["step"]
        if first == "*":
            if last is not None:
                raise ValueError(f"day-of-week term {term!r} is not valid")
            low, high = 0, 6
        else:
            low = _day(first, term)
            high = _day(last, term) if last is not None else (6 if step else low)
        if high < low:
            raise ValueError(f"day-of-week range {term!r} runs backwards")
        days.update(day % 7 for day in range(low, high + 1, int(step or 1)))
    return ",".join(_DAY_NAMES[day] for day in sorted(days))


def _day(value: str, term: str) -> int:
    if value in _DAY_NAMES:
        return _DAY_NAMES.index(value)
    if value.isdigit() and int(value) <= 7:
        return int(value)
    raise ValueError(f"day-of-week {value!r} in {term!r} is not 0-7 or a day name (sun-sat)")


@functools.lru_cache(maxsize=1024)
def longest_gap(expression: str, timezone: str, start: datetime | None = None) -> float:
    """The longest time in seconds between two runs over the next week or so: how long the job
    may be silent and still be on schedule (what a "stale job" alert measures against)."""
    trigger = CrontabTrigger(expression, timezone)
    now = start or datetime.now(UTC).replace(second=0, microsecond=0)
    moment = trigger.get_next_fire_time(None, now)
    if moment is None:
        return 0.0
    end, gap, count = moment + _GAP_HORIZON, 0.0, 0
    while moment < end and count < _GAP_MAX_FIRES:
        upcoming = trigger.get_next_fire_time(moment, moment.astimezone(UTC) + _MICROSECOND)
        if upcoming is None:
            break
        gap = max(gap, (upcoming - moment).total_seconds())
        moment, count = upcoming, count + 1
    return gap


def next_fire_times(expression: str, timezone: str, after: datetime, count: int) -> list[datetime]:
    """The next `count` times the schedule fires after `after`."""
    trigger = CrontabTrigger(expression, timezone)
    times: list[datetime] = []
    previous, now = None, after
    while len(times) < count:
        moment = trigger.get_next_fire_time(previous, now)
        if moment is None:
            break
        times.append(moment)
        previous = moment.astimezone(UTC)
        now = previous + _MICROSECOND
    return times
