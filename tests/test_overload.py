"""Overload degrades gracefully: a job skipped at max_concurrent at every due time gets one
history row per summary window, the log one warning line per reason and window (whatever the
number of jobs), and the count is kept exactly."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from scheduler.records import SkipReason
from scheduler.skip_summary import SkipCoalescer
from tests.support import ServiceFactory, metric, task_source, wait_until

TOKEN = "overload-token-0123456789"
T0 = datetime(2026, 1, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_skip_is_recorded_and_the_rest_are_counted_per_window() -> None:
    clock = Clock()
    skips = SkipCoalescer(60, clock)
    at = [T0 + timedelta(seconds=i) for i in range(5)]
    assert skips.admit("a", SkipReason.MAX_INSTANCES, at[0])
    assert not skips.admit("a", SkipReason.MAX_INSTANCES, at[1])
    assert not skips.admit("a", SkipReason.MAX_INSTANCES, at[2])
    assert skips.admit("a", SkipReason.MISFIRE, at[2])  # windows are per job and reason
    assert skips.admit("b", SkipReason.MAX_INSTANCES, at[2])
    assert skips.due() == []  # nothing closed yet
    clock.now = 60
    assert not skips.admit("a", SkipReason.MAX_INSTANCES, at[3])  # into the closed window
    (summary,) = skips.due()
    assert (summary.job_type, summary.reason, summary.count) == ("a", "max_instances", 3)
    assert (summary.first, summary.last) == (at[1], at[3])
    assert skips.admit("a", SkipReason.MAX_INSTANCES, at[4])  # a new window, recorded in full
    assert not skips.admit("a", SkipReason.MAX_INSTANCES, at[4])
    (last,) = skips.due(everything=True)  # at a stop: every window, closed or not
    assert last.count == 1 and skips.due(everything=True) == []


def test_skips_are_logged_in_full_once_per_reason_and_window_whatever_the_job() -> None:
    clock = Clock()
    skips = SkipCoalescer(60, clock)
    assert skips.announce(SkipReason.MAX_INSTANCES)
    assert not skips.announce(SkipReason.MAX_INSTANCES)  # another job's first: not again
    assert skips.announce(SkipReason.MISFIRE)
    clock.now = 60
    assert skips.announce(SkipReason.MAX_INSTANCES)
    assert all(SkipCoalescer(0, clock).announce(SkipReason.MISFIRE) for _ in range(3))


def test_a_zero_window_records_every_skip() -> None:
    skips = SkipCoalescer(0, Clock())
    assert all(skips.admit("a", SkipReason.MAX_INSTANCES, T0) for _ in range(3))
    assert skips.due(everything=True) == []


def summarised(error: str | None) -> int:
    match = re.match(r"(\d+) more run\(s\) due from ", error or "")
    return int(match.group(1)) if match else 0


def test_skips_at_max_concurrent_are_summarised_and_counted_exactly(
    services: ServiceFactory,
) -> None:
    services.write_task(
        "busy.py",
        task_source("busy", "await asyncio.sleep(60)\nreturn []", interval_seconds=0.1,
                    max_concurrent=1, timeout_seconds=120),
    )  # fmt: skip
    service = services(
        SCHEDULER_ADMIN_TOKEN=TOKEN,
        SCHEDULER_SKIP_SUMMARY_SECONDS="1",
        SCHEDULER_HEARTBEAT_SECONDS="0.5",
        SCHEDULER_SHUTDOWN_GRACE_SECONDS="0.2",
    )
    service.wait_for_log("active: this instance runs the jobs")
    series = 'scheduler_job_skipped_total{job_type="busy",reason="max_instances"}'
    wait_until(lambda: metric(service, series) >= 30, timeout=30, what="30 skips")
    assert service.post_json("/api/jobs/busy/pause", TOKEN)[0] == 200  # no more skips
    counted = metric(service, series)

    def rows() -> list[int]:
        skipped = [r for r in services.finished("busy", "skipped") if r.trigger == "schedule"]
        return [summarised(r.error) or 1 for r in skipped if r.skip_reason == "max_instances"]

    # Every skip is in the history: one row for the first of each window, one for the rest.
    wait_until(lambda: sum(rows()) == counted, timeout=10, what="the summaries to be written")
    assert metric(service, series) == counted
    per_row = rows()
    assert len(per_row) < counted / 3, per_row  # not a row per skip
    assert any(n > 1 for n in per_row), per_row
    logs = service.logs()
    lines = [e for e in logs if e.get("event") in ("run skipped", "runs skipped")]
    assert len(lines) == len(per_row)  # and a line per row (at info), not per skip
    summed = [e for e in logs if e.get("event") == "runs skipped, summed up"]
    assert summed and all(e["level"] == "warning" and e["jobs"] == 1 for e in summed)
    assert sum(e["count"] for e in summed) == sum(n for n in per_row if n > 1)
    assert service.stop() == 0
