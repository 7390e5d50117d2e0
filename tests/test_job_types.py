from __future__ import annotations

import pickle

import pytest

from scheduler import BaseTask, JobContext, JobType, RunnerResult, job
from scheduler.errors import (
    UnknownJobTypeAttributeError,
    UnknownJobTypeError,
    UnknownJobTypeNameError,
)


def register(*job_types: str) -> None:
    for job_type in job_types:

        @job(job_type)
        class Task(BaseTask[RunnerResult]):
            async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
                return []


def test_member_is_created_for_each_registered_job() -> None:
    register("my_awesome_job")
    member = JobType.MY_AWESOME_JOB
    assert isinstance(member, JobType)
    assert member == "my_awesome_job"
    assert member.name == "MY_AWESOME_JOB"
    assert member.value == "my_awesome_job"
    assert str(member) == "my_awesome_job"
    assert repr(member) == "<JobType.MY_AWESOME_JOB: 'my_awesome_job'>"


def test_lookup_by_value_returns_the_same_member() -> None:
    register("alpha")
    assert JobType("alpha") is JobType.ALPHA
    assert JobType(JobType.ALPHA) is JobType.ALPHA


def test_unknown_value_raises_value_error_listing_known_types() -> None:
    register("alpha", "beta")
    with pytest.raises(
        ValueError, match=r"'gamma' is not a job type; known job types: alpha, beta"
    ):
        JobType("gamma")
    with pytest.raises(UnknownJobTypeError):
        JobType(42)


def test_unknown_attribute_raises_attribute_error_naming_known_types() -> None:
    register("alpha")
    with pytest.raises(AttributeError, match=r"no member 'GAMMA'; known job types: alpha"):
        _ = JobType.GAMMA
    with pytest.raises(UnknownJobTypeAttributeError):
        _ = JobType.alpha  # member names are upper case
    assert not hasattr(JobType, "GAMMA")


def test_lookup_by_name_like_an_enum() -> None:
    register("my_awesome_job", "other")
    assert JobType["MY_AWESOME_JOB"] is JobType.MY_AWESOME_JOB
    assert JobType["OTHER"] is JobType("other")


def test_unknown_name_raises_key_error_listing_known_names() -> None:
    register("my_awesome_job", "other")
    with pytest.raises(KeyError) as raised:
        JobType["GAMMA"]
    assert isinstance(raised.value, UnknownJobTypeNameError)
    assert str(raised.value) == (
        "JobType has no member named 'GAMMA'; known names: MY_AWESOME_JOB, OTHER"
    )
    with pytest.raises(KeyError, match=r"named 'my_awesome_job'; .* did you mean 'MY_AWESOME_JOB'"):
        JobType["my_awesome_job"]  # the value, not the name
    with pytest.raises(KeyError, match=r"named 3; known names"):
        JobType[3]  # type: ignore[index]


def test_iteration_len_and_membership_follow_registration_order() -> None:
    register("zeta", "alpha", "mid")
    assert list(JobType) == ["zeta", "alpha", "mid"]
    assert len(JobType) == 3
    assert "alpha" in JobType
    assert JobType.MID in JobType
    assert "nope" not in JobType
    assert 3 not in JobType


def test_get_all_job_types_from_the_class_and_its_metaclass() -> None:
    register("one", "two")
    assert JobType.get_all_job_types() == [JobType.ONE, JobType.TWO]
    assert JobType.__class__.get_all_job_types() == ["one", "two"]  # the seed's spelling


def test_members_hash_like_their_string_value() -> None:
    register("alpha")
    assert {JobType.ALPHA: 1}["alpha"] == 1
    assert {"alpha": 1}[JobType.ALPHA] == 1


def test_members_pickle_by_value() -> None:
    register("alpha")
    data = pickle.dumps(JobType.ALPHA)
    assert b"JobType" not in data  # loading it never needs the registry
    assert pickle.loads(data) == "alpha"


def test_unregistering_a_job_removes_its_member() -> None:
    from scheduler import JobRegistry

    register("alpha")
    JobRegistry.unregister("alpha")
    assert "alpha" not in JobType
    assert len(JobType) == 0
