from __future__ import annotations

from datetime import UTC, datetime

from scheduler.history import JobHistorySummary
from scheduler.job_state import JobStates


def test_dependency_blocker_names_each_reason() -> None:
    now = datetime.now(UTC)
    states = JobStates(
        {
            "healthy": JobHistorySummary("success", now),
            "failing": JobHistorySummary("failure", now),
            "timing_out": JobHistorySummary("timeout", None),
        }
    )
    assert states.dependency_blocker(["healthy"]) is None
    assert (
        states.dependency_blocker(["healthy", "fresh"]) == "dependency 'fresh' has never succeeded"
    )
    assert states.dependency_blocker(["failing"]) == (
        "dependency 'failing' ended with failure in its latest run"
    )
    assert (
        states.dependency_blocker(["timing_out"]) == "dependency 'timing_out' has never succeeded"
    )
    states.started("healthy")
    assert states.dependency_blocker(["healthy"]) == "dependency 'healthy' is running"
    states.finished("healthy", "success", now)
    assert states.dependency_blocker(["healthy"]) is None
    states.started("failing")
    states.finished("failing", "success", now)
    assert states.dependency_blocker(["failing"]) is None
