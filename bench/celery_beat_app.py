"""The baseline of bench/celery.py: plain Celery beat feeding plain Celery workers.

`celery -A bench.celery_beat_app beat` sends BENCH_JOBS entries every second; `celery -A
bench.celery_beat_app worker` runs them. Each body writes `now lag` to the journal of its
process, its lag counted from the moment beat published it (stamped by `before_task_publish`,
so beat's own lateness is not counted: in its favour).
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery, signals

app = Celery("bench", broker=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,  # beat has no one to read results
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ.get("BENCH_QUEUE", "bench"),
    beat_schedule={
        f"job_{i}": {
            "task": f"bench.{os.environ.get('BENCH_KIND', 'noop')}",
            "schedule": timedelta(seconds=1),
        }
        for i in range(int(os.environ.get("BENCH_JOBS", "0")))
    },
)


@signals.before_task_publish.connect  # type: ignore[untyped-decorator]
def _stamp(body: Any = None, **_: Any) -> None:
    _, kwargs, _ = body
    kwargs["sent"] = time.time()


def _journal(sent: float) -> None:
    start = time.time()
    with open(Path(os.environ["BENCH_JOURNAL"]) / str(os.getpid()), "a") as out:
        out.write(f"{start} {start - sent}\n")


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop(sent: float = 0.0) -> None:
    _journal(sent)


@app.task(name="bench.io")  # type: ignore[untyped-decorator]
def io(sent: float = 0.0) -> None:
    _journal(sent)
    time.sleep(0.05)  # 50 ms of waiting, as on a network call
