from __future__ import annotations

import re
from typing import Any

import pytest

from scheduler import (
    BaseTask,
    JobConfig,
    JobContext,
    JobDefinitionError,
    JobPriority,
    JobRegistry,
    RunnerResult,
    job,
)


class Noop(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        return []


def declare(job_type: str = "sample", **options: Any) -> type[BaseTask[RunnerResult]]:
    """Declare a fresh no-op task class as `job_type` with `options`."""

    class SampleTask(Noop):
        """Sample task docstring."""

    return job(job_type, **options)(SampleTask)


def test_job_priority_is_ordered() -> None:
    assert JobPriority.LOW < JobPriority.NORMAL < JobPriority.HIGH < JobPriority.CRITICAL
    assert max(JobPriority) is JobPriority.CRITICAL


def test_defaults_are_documented_values() -> None:
    declare()
    meta = JobRegistry.get("sample")
    assert meta.defaults == JobConfig()
    assert meta.defaults.interval_seconds == 60
    assert meta.defaults.enabled is True
    assert meta.defaults.priority is JobPriority.NORMAL
    assert (meta.defaults.max_retries, meta.defaults.retry_delay_seconds) == (3, 30)
    assert meta.defaults.timeout_seconds == 300
    assert (meta.defaults.max_concurrent, meta.defaults.batch_size) == (1, 10)
    assert (meta.defaults.preserve_order, meta.defaults.idempotent) == (False, True)
    assert meta.requirements == ()
    assert meta.dependencies == ()


def test_every_seed_option_is_recorded() -> None:
    declare("other")
    declare(
        name="Human Readable Name",
        description="What it does",
        interval_seconds=120,
        enabled=False,
        priority=JobPriority.CRITICAL,
        max_retries=5,
        retry_delay_seconds=2.5,
        timeout_seconds=9,
        max_concurrent=1,
        batch_size=25,
        requires_wallet=True,
        requires_twitter=True,
        requires_discord=False,
        requires_s3_bucket=True,
        dependencies=["other"],
        preserve_order=True,
        idempotent=False,
    )
    meta = JobRegistry.get("sample")
    assert (meta.name, meta.description) == ("Human Readable Name", "What it does")
    assert meta.defaults == JobConfig(
        interval_seconds=120,
        enabled=False,
        priority=JobPriority.CRITICAL,
        max_retries=5,
        retry_delay_seconds=2.5,
        timeout_seconds=9,
        max_concurrent=1,
        batch_size=25,
        preserve_order=True,
        idempotent=False,
    )
    assert meta.requirements == ("s3_bucket", "twitter", "wallet")
    assert meta.dependencies == ("other",)


def test_name_defaults_to_readable_class_name_and_description_to_docstring() -> None:
    class MyAwesomeJobTask(Noop):
        """Does awesome things.

        In detail.
        """

    class HTTPPollerTask(Noop):
        pass

    job("awesome")(MyAwesomeJobTask)
    job("poller")(HTTPPollerTask)
    assert JobRegistry.get("awesome").name == "My Awesome Job"
    assert JobRegistry.get("awesome").description == "Does awesome things.\n\nIn detail."
    assert JobRegistry.get("poller").name == "HTTP Poller"
    assert JobRegistry.get("poller").description == ""  # not BaseTask's docstring


def test_source_location_is_the_decorator_line() -> None:
    declare()
    source = JobRegistry.get("sample").source
    assert source.path == __file__
    assert str(source).startswith(__file__ + ":")


def test_decorator_returns_the_class_unchanged() -> None:
    class Task(Noop):
        pass

    assert job("same")(Task) is Task
    assert JobRegistry.get_task_class("same") is Task


def test_unknown_option_names_option_job_and_file() -> None:
    with pytest.raises(JobDefinitionError) as error:
        declare("typo_job", intervl_seconds=5)
    message = str(error.value)
    assert "unknown option 'intervl_seconds'" in message
    assert "did you mean 'interval_seconds'?" in message
    assert "@job('typo_job')" in message
    assert __file__ in message
    assert not JobRegistry.is_registered("typo_job")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"interval_seconds": 0}, r"option interval_seconds=0: .*greater than or equal to 0.1"),
        ({"interval_seconds": 0.000001}, r"interval_seconds=1e-06: .*greater than or equal to 0.1"),
        ({"interval_seconds": -5}, r"option interval_seconds=-5: .*greater than or equal to 0.1"),
        (
            {"interval_seconds": 60, "cron": "* * * * *"},
            r"set either interval_seconds \(60\) or cron \('\* \* \* \* \*'\), not both",
        ),
        ({"cron": "* * * *"}, r"option cron='\* \* \* \*': cron .* has 4 field\(s\); expected 5"),
        ({"cron": "0 25 * * *"}, r"option cron='0 25 \* \* \*': .*higher than the maximum"),
        ({"cron": "0 0 * * 8"}, r"day-of-week '8' in '8' is not 0-7 or a day name"),
        ({"cron": "0 0 * * *", "timezone": "Mars/Olympus"}, r"unknown time zone 'Mars/Olympus'"),
        ({"timezone": "Europe/Berlin"}, r"applies to cron schedules only"),
        ({"misfire_grace_seconds": 0}, r"option misfire_grace_seconds=0: .*greater than 0"),
        ({"coalesce": "no"}, r"option coalesce='no': Input should be a valid boolean"),
        ({"max_concurrent": 0}, r"option max_concurrent=0: Input should be greater than 0"),
        ({"max_retries": -1}, r"option max_retries=-1: .*greater than or equal to 0"),
        ({"retry_delay_seconds": -1}, r"option retry_delay_seconds=-1: .*greater than or equal"),
        ({"timeout_seconds": 0}, r"option timeout_seconds=0: Input should be greater than 0"),
        ({"batch_size": 0}, r"option batch_size=0: Input should be greater than 0"),
        ({"enabled": "yes"}, r"option enabled='yes': Input should be a valid boolean"),
        ({"priority": 9}, r"option priority=9: Input should be"),
        ({"interval_seconds": float("inf")}, r"option interval_seconds=inf: .*finite number"),
        (
            {"preserve_order": True, "max_concurrent": 2},
            r"preserve_order=True needs max_concurrent=1 .*got max_concurrent=2",
        ),
        ({"requires_wallet": "yes"}, r"option 'requires_wallet' must be True or False"),
        ({"dependencies": "other"}, r"'dependencies' must be a list of job types"),
        ({"dependencies": ["Bad Name"]}, r"'dependencies': 'Bad Name' is not a valid job type"),
        ({"dependencies": ["sample"]}, r"a job cannot depend on itself"),
    ],
)
def test_invalid_values_name_job_and_option(options: dict[str, Any], expected: str) -> None:
    with pytest.raises(JobDefinitionError, match=r"@job\('sample'\)") as error:
        declare(**options)
    assert re.search(expected, str(error.value)), str(error.value)
    assert not JobRegistry.is_registered("sample")


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(JobDefinitionError) as error:
        declare(interval_seconds=0, batch_size=0, colour="red")
    message = str(error.value)
    assert "interval_seconds" in message
    assert "batch_size" in message
    assert "unknown option 'colour'" in message


@pytest.mark.parametrize("job_type", ["", "My Job", "1job", "my-job", "MyJob"])
def test_invalid_job_type_is_rejected(job_type: str) -> None:
    with pytest.raises(JobDefinitionError, match="is not valid: use lowercase letters"):
        declare(job_type)


def test_class_that_is_not_a_base_task_is_rejected() -> None:
    class NotATask:
        async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
            return []

    with pytest.raises(JobDefinitionError, match="not a subclass of BaseTask"):
        job("not_a_task")(NotATask)  # type: ignore[type-var]


def test_plain_def_execute_impl_is_accepted_and_marked_synchronous() -> None:
    class SyncTask(BaseTask[RunnerResult]):
        def _execute_impl(self, context: JobContext) -> list[RunnerResult]:  # type: ignore[override]
            return [RunnerResult(success=True)]

    job("sync_job")(SyncTask)
    assert JobRegistry.get("sync_job").synchronous
    assert not JobRegistry.get("sync_job").module.startswith("scheduler.tasks")


def test_missing_execute_impl_is_rejected() -> None:
    class EmptyTask(BaseTask[RunnerResult]):
        pass

    with pytest.raises(JobDefinitionError, match="EmptyTask does not implement _execute_impl"):
        job("empty_job")(EmptyTask)
