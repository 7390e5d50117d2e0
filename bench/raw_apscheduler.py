"""The baseline: raw APScheduler 3.11 with its SQLAlchemy job store, as people set it up.

Run as a script by bench/dispatch.py: N no-op jobs on a 1 s interval, added after start, for a
measured window; prints JSON with the scheduled and start times of every run in the window.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger


def noop() -> None:
    """The job: nothing, so that what is measured is the scheduler."""


def main(count: int, seconds: float, warmup: float, url: str, aligned: bool) -> None:
    lock = threading.Lock()
    ran: list[tuple[float, float]] = []
    missed: list[float] = []

    def listen(event: Any) -> None:
        now = time.time()
        with lock:
            if event.code == EVENT_JOB_EXECUTED:
                ran.append((event.scheduled_run_time.timestamp(), now))
            elif event.code == EVENT_JOB_MISSED:
                missed.append(event.scheduled_run_time.timestamp())
            else:
                missed.extend(t.timestamp() for t in event.scheduled_run_times)

    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=url)}, timezone=UTC
    )
    scheduler.add_listener(listen, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    scheduler.start()
    start = datetime.now(UTC) + timedelta(seconds=1)
    for n in range(count):
        offset = 0.0 if aligned else n / count
        scheduler.add_job(
            "bench.raw_apscheduler:noop",
            trigger=IntervalTrigger(seconds=1, timezone=UTC),
            id=f"raw_{n:05d}",
            next_run_time=start + timedelta(seconds=offset),
        )
    window_start = start.timestamp() + warmup
    time.sleep(max(window_start + seconds - time.time(), 0) + 1.5)  # the window, then stragglers
    scheduler.shutdown(wait=False)
    with lock:
        print(
            json.dumps(
                {"ran": ran, "missed": missed, "window": [window_start, window_start + seconds]}
            )
        )


if __name__ == "__main__":
    main(
        int(sys.argv[1]),
        float(sys.argv[2]),
        float(sys.argv[3]),
        sys.argv[4],
        sys.argv[5] == "aligned",
    )
