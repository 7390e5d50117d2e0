"""What the service says about its own health (status.py)."""

from __future__ import annotations

from scheduler.status import NO_WORKER_GRACE_SECONDS, Health, health_problems


def healthy(**fields: object) -> Health:
    health = Health(leader=True, database_ok=True, heartbeat_at=1000.0, scheduler_alive=True)
    for name, value in fields.items():
        setattr(health, name, value)
    return health


def test_a_leader_without_a_ready_worker_is_unhealthy_after_the_grace() -> None:
    assert health_problems(healthy(), 2.0, now=1001.0) == []
    starting = healthy(no_worker_since=1000.0)
    assert health_problems(starting, 2.0, now=1000.0 + NO_WORKER_GRACE_SECONDS - 1) == []
    late = 1000.0 + NO_WORKER_GRACE_SECONDS + 1
    assert health_problems(healthy(no_worker_since=1000.0, heartbeat_at=late), 2.0, now=late) == [
        "no worker process has been ready for 11s"
    ]


def test_a_standby_needs_no_worker() -> None:
    standby = healthy(leader=False, no_worker_since=0.0)
    assert health_problems(standby, 2.0, now=1001.0) == []
