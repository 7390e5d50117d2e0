"""The baseline: raw APScheduler 3.11 with its SQLAlchemy job store, as people set it up.

Run as a script by bench/dispatch.py: N no-op jobs on a 1 s interval, added after start, for a
measured window; prints JSON with the scheduled and start times of every run in the window, the
CPU seconds spent in it and the RSS at its end. The URL "memory" means its in-memory job store.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bench.procfs import rss_mb


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

    store = MemoryJobStore() if url == "memory" else SQLAlchemyJobStore(url=url)
    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone=UTC)
    scheduler.add_listener(listen, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    scheduler.start(paused=True)  # add everything first, as the service's reconcile does
    trigger = IntervalTrigger(seconds=1, timezone=UTC)
    first_due = _common_due_time(scheduler, count)
    for n in range(count):
        # Staggered: due times spread over the second; aligned: all due at the same instant.
        offset = timedelta(seconds=0 if aligned else n / count)
        scheduler.add_job(
            "bench.raw_apscheduler:noop",
            trigger=trigger,
            id=f"raw_{n:05d}",
            next_run_time=first_due + offset,
        )
    scheduler.resume()
    window_start = max(time.time(), first_due.timestamp()) + warmup
    time.sleep(max(window_start - time.time(), 0))
    cpu_before = time.process_time()
    time.sleep(max(window_start + seconds - time.time(), 0))
    cpu = time.process_time() - cpu_before
    rss = rss_mb(os.getpid())
    time.sleep(1.5)  # stragglers
    with lock:
        window = [window_start, window_start + seconds]
        print(json.dumps({"ran": ran, "missed": missed, "window": window, "cpu": cpu, "rss": rss}))
    sys.stdout.flush()
    os._exit(0)  # shutdown() would wait for a scheduler thread that may be far behind


def _common_due_time(scheduler: Any, count: int) -> datetime:
    """An instant by which adding `count` jobs will surely be done (timed on 50 probes)."""
    started = time.perf_counter()
    for n in range(50):
        scheduler.add_job(noop, trigger="interval", seconds=3600, id=f"probe_{n}",
                          next_run_time=datetime.now(UTC) + timedelta(hours=1))  # fmt: skip
    per_add = (time.perf_counter() - started) / 50
    for n in range(50):
        scheduler.remove_job(f"probe_{n}")
    return datetime.now(UTC) + timedelta(seconds=2 + 3 * per_add * count)


if __name__ == "__main__":
    main(
        int(sys.argv[1]),
        float(sys.argv[2]),
        float(sys.argv[3]),
        sys.argv[4],
        sys.argv[5] == "aligned",
    )
