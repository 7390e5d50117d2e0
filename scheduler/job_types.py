"""`JobType`: an enum-like class whose members are created at run time, one per registered job.

Members are `str` instances, so `JobType.MY_JOB == "my_job"` and either can key a dict. They
pickle as their plain string value, so a pickled member never needs the registry to load.
Only the registry adds or removes members (`_add`, `_remove`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .errors import UnknownJobTypeAttributeError, UnknownJobTypeError

_MEMBERS: dict[str, JobType] = {}  # value -> member, in registration order


def _known() -> str:
    return ", ".join(_MEMBERS) or "(none: no job has been registered; was discovery run?)"


class _JobTypeMeta(type):
    """Gives the class `JobType` its enum-like behaviour: lookup, iteration, membership."""

    def __call__(cls, value: object) -> JobType:
        if isinstance(value, JobType):
            return value
        member = _MEMBERS.get(value) if isinstance(value, str) else None
        if member is None:
            raise UnknownJobTypeError(f"{value!r} is not a job type; known job types: {_known()}")
        return member

    def __getattr__(cls, name: str) -> JobType:
        if not name.startswith("_"):
            member = _MEMBERS.get(name.lower())
            if member is not None and member.name == name:
                return member
        raise UnknownJobTypeAttributeError(
            f"JobType has no member {name!r}; known job types: {_known()}"
        )

    def __iter__(cls) -> Iterator[JobType]:
        return iter(list(_MEMBERS.values()))

    def __len__(cls) -> int:
        return len(_MEMBERS)

    def __contains__(cls, value: object) -> bool:
        return isinstance(value, str) and value in _MEMBERS

    @staticmethod
    def get_all_job_types() -> list[JobType]:
        """Every registered job type, in registration order."""
        return list(_MEMBERS.values())


class JobType(str, metaclass=_JobTypeMeta):
    """The type of a job: `JobType.MY_AWESOME_JOB` is the member for `"my_awesome_job"`."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return self.upper()

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"<JobType.{self.name}: {self.value!r}>"

    def __str__(self) -> str:
        return self.value

    def __reduce__(self) -> tuple[Any, ...]:
        return (str, (self.value,))

    @classmethod
    def _add(cls, value: str) -> JobType:
        member = _MEMBERS.get(value)
        if member is None:
            member = str.__new__(cls, value)
            _MEMBERS[value] = member
        return member

    @classmethod
    def _remove(cls, value: str) -> None:
        _MEMBERS.pop(value, None)
