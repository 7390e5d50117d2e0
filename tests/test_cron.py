"""Cron schedules: crontab(5) semantics on APScheduler's CronTrigger, and daylight saving."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from scheduler.cron import CrontabTrigger, longest_gap, next_fire_times, normalize

BERLIN = ZoneInfo("Europe/Berlin")


def fires(expression: str, after: datetime, count: int, timezone: str = "UTC") -> list[str]:
    zone = ZoneInfo(timezone)
    return [
        moment.astimezone(zone).strftime("%a %d %H:%M %Z")
        for moment in next_fire_times(expression, timezone, after, count)
    ]


DEC_2 = datetime(2026, 12, 2, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 0 * * 0", ["Sun 06 00:00 UTC", "Sun 13 00:00 UTC"]),  # 0 is Sunday, as in cron
        ("0 0 * * 7", ["Sun 06 00:00 UTC", "Sun 13 00:00 UTC"]),  # and so is 7
        ("0 0 * * 1", ["Mon 07 00:00 UTC", "Mon 14 00:00 UTC"]),
        ("0 0 * * sat,SUN", ["Sat 05 00:00 UTC", "Sun 06 00:00 UTC"]),
        ("0 0 * * 0-2", ["Sun 06 00:00 UTC", "Mon 07 00:00 UTC", "Tue 08 00:00 UTC"]),
        ("0 0 * * */3", ["Wed 02 00:00 UTC", "Sat 05 00:00 UTC", "Sun 06 00:00 UTC"]),
        ("0 0 * * 1-5/2", ["Wed 02 00:00 UTC", "Fri 04 00:00 UTC", "Mon 07 00:00 UTC"]),
        # Both days restricted: either matches (the 13th, and every Friday).
        ("0 0 13 * 5", ["Fri 04 00:00 UTC", "Fri 11 00:00 UTC", "Sun 13 00:00 UTC"]),
        ("*/20 9 * * *", ["Wed 02 09:00 UTC", "Wed 02 09:20 UTC", "Wed 02 09:40 UTC"]),
        ("@daily", ["Wed 02 00:00 UTC", "Thu 03 00:00 UTC"]),
        ("@weekly", ["Sun 06 00:00 UTC"]),
        ("@hourly", ["Wed 02 00:00 UTC", "Wed 02 01:00 UTC"]),
    ],
)
def test_cron_expressions_mean_what_crontab_says(expression: str, expected: list[str]) -> None:
    assert fires(expression, DEC_2, len(expected)) == expected


def test_month_names_are_understood() -> None:
    (moment,) = next_fire_times("0 12 1 jan,jul *", "UTC", DEC_2, 1)
    assert moment.strftime("%a %d %H:%M %b %Y") == "Fri 01 12:00 Jan 2027"


def test_the_autumn_repeated_hour_runs_a_fixed_time_once() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:00-02:59 happens twice.
    night = datetime(2026, 10, 24, 12, tzinfo=UTC)
    assert fires("30 2 * * *", night, 3, "Europe/Berlin") == [
        "Sun 25 02:30 CEST",
        "Mon 26 02:30 CET",
        "Tue 27 02:30 CET",
    ]


def test_the_autumn_repeated_hour_runs_twice_when_the_hour_is_a_wildcard() -> None:
    before = datetime(2026, 10, 24, 23, 40, tzinfo=UTC)
    assert fires("*/30 * * * *", before, 6, "Europe/Berlin") == [
        "Sun 25 02:00 CEST",
        "Sun 25 02:30 CEST",
        "Sun 25 02:00 CET",
        "Sun 25 02:30 CET",
        "Sun 25 03:00 CET",
        "Sun 25 03:30 CET",
    ]


def test_a_time_the_spring_change_skips_runs_an_hour_later() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist that night.
    night = datetime(2026, 3, 28, 12, tzinfo=UTC)
    assert fires("30 2 * * *", night, 3, "Europe/Berlin") == [
        "Sun 29 03:30 CEST",
        "Mon 30 02:30 CEST",
        "Tue 31 02:30 CEST",
    ]
    every_half_hour = fires(
        "*/30 * * * *", datetime(2026, 3, 29, 0, 10, tzinfo=UTC), 3, "Europe/Berlin"
    )
    assert every_half_hour == ["Sun 29 01:30 CET", "Sun 29 03:00 CEST", "Sun 29 03:30 CEST"]


def test_a_trigger_never_goes_back_in_time() -> None:
    trigger = CrontabTrigger("*/15 * * * *", "Europe/Berlin")
    previous = None
    now = datetime(2026, 10, 24, 22, tzinfo=UTC)
    for _ in range(24):
        moment = trigger.get_next_fire_time(previous, now)
        assert moment is not None and (previous is None or moment > previous)
        previous, now = moment, moment
    assert (
        previous - datetime(2026, 10, 24, 22, tzinfo=UTC)
    ).total_seconds() == 23 * 15 * 60  # every 15 real minutes


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("* * * *", "has 4 field(s); expected 5"),
        ("* * * * * *", "has 6 field(s)"),
        ("60 * * * *", "higher than the maximum value (59)"),
        ("* 24 * * *", "higher than the maximum value (23)"),
        ("* * 0 * *", "lower than the minimum value (1)"),
        ("* * * 13 *", "higher than the maximum value (12)"),
        ("* * * * 8", "day-of-week '8' in '8' is not 0-7 or a day name"),
        ("* * * * mon-funday", "day-of-week 'funday'"),
        ("* * * * 5-1", "day-of-week range '5-1' runs backwards"),
        ("@fortnightly", "has 1 field(s)"),
    ],
)
def test_a_bad_expression_says_what_is_wrong(expression: str, complaint: str) -> None:
    with pytest.raises(ValueError, match="cron") as error:
        normalize(expression)
    assert complaint in str(error.value)


def test_the_longest_gap_covers_a_week() -> None:
    wednesday = datetime(2026, 12, 2, tzinfo=UTC)
    assert longest_gap("*/5 * * * *", "UTC", wednesday) == 300
    # Weekdays 09:00-17:55 every 5 min: Friday 17:55 to Monday 09:00 is the longest silence.
    assert longest_gap("*/5 9-17 * * 1-5", "UTC", wednesday) == (63 * 60 + 5) * 60
    assert longest_gap("0 0 1 1 *", "UTC", wednesday) == 365 * 24 * 3600
