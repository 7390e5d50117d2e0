"""`JobType`: an enum-like class whose members are created at run time, one per registered job.

Members are `str` instances, so `JobType.MY_JOB == "my_job"` and either can key a dict. They
pickle as their plain string value, so a pickled member never needs the registry to load.
Only the registry adds or removes members (`_add`, `_remove`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .errors import UnknownJobTypeAttributeError, UnknownJobTypeError, UnknownJobTypeNameError
from .suggestions import did_you_mean

_MEMBERS: dict[str, JobType] = {}  # value -> member, in registration order


def _known(names: list[str] | None = None) -> str:
    listed = list(_MEMBERS) if names is None else names
    return ", ".join(listed) or "(none: no job has been registered; was discovery run?)"


def _by_name(name: str) -> JobType | None:
    """The member whose name (its value in upper case) is `name`."""
    member = _MEMBERS.get(name.lower())
    return member if member is not None and member.name == name else None


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
        member = None if name.startswith("_") else _by_name(name)
        if member is None:
            raise UnknownJobTypeAttributeError(
                f"JobType has no member {name!r}; known job types: {_known()}"
            )
        return member

    def __getitem__(cls, name: str) -> JobType:
        """Lookup by member name, as with an Enum: `JobType["MY_JOB"] is JobType.MY_JOB`."""
        member = _by_name(name) if isinstance(name, str) else None
        if member is None:
            names = [m.name for m in _MEMBERS.values()]
            # A job type's value ("my_job") is the likeliest slip: compare in upper case.
            hint = did_you_mean(name.upper(), names) if isinstance(name, str) else ""
            raise UnknownJobTypeNameError(
                f"JobType has no member named {name!r}; known names: {_known(names)}{hint}"
            )
        return member

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
