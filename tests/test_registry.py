from __future__ import annotations

import pytest

from scheduler import BaseTask, DuplicateJobError, JobContext, JobRegistry, RunnerResult, job
from scheduler.errors import UnknownJobTypeError


class Noop(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        return []


def test_list_jobs_returns_metadata_in_registration_order() -> None:
    @job("second", interval_seconds=5)
    class Second(Noop):
        """Second job."""

    @job("first")
    class First(Noop):
        pass

    jobs = JobRegistry.list_jobs()
    assert [meta.job_type for meta in jobs] == ["second", "first"]
    assert JobRegistry.get_task_class(jobs[0].job_type) is Second
    assert jobs[0].defaults.interval_seconds == 5
    assert jobs[0].description == "Second job."
    assert JobRegistry.get_task_class(jobs[1].job_type) is First


def test_same_job_type_on_two_classes_names_both_places() -> None:
    @job("twice")
    class One(Noop):
        pass

    with pytest.raises(DuplicateJobError) as error:

        @job("twice")
        class Two(Noop):
            pass

    message = str(error.value)
    assert "'twice' is registered twice" in message
    assert f"One at {__file__}:" in message
    assert f"Two at {__file__}:" in message
    assert JobRegistry.get_task_class("twice") is One  # never a silent overwrite


def test_get_unknown_job_type_lists_known_ones() -> None:
    @job("known")
    class Known(Noop):
        pass

    with pytest.raises(
        UnknownJobTypeError, match=r"no job of type 'unknown'.*known job types: known"
    ):
        JobRegistry.get("unknown")


def test_clear_and_unregister_module() -> None:
    @job("a")
    class A(Noop):
        pass

    assert JobRegistry.unregister_module(__name__) == ["a"]
    assert JobRegistry.list_jobs() == []
