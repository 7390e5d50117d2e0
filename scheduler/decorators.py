"""`@job`: declare a task class as a scheduled job. Task files import it under the seed's name:
`from ..decorators import JobPriority, job`.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .base import BaseTask
from .errors import JobDefinitionError
from .metadata import JobMetadata, SourceLocation
from .options import DECORATOR_OPTIONS, JobConfig, JobPriority
from .params import model_schema
from .registry import JobRegistry
from .suggestions import did_you_mean

__all__ = ["JobMetadata", "JobPriority", "job"]

TaskT = TypeVar("TaskT", bound=type[BaseTask[Any]])

JOB_TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
_REQUIREMENT_PREFIX = "requires_"


def job(
    job_type: str,
    *,
    name: str | None = None,
    description: str | None = None,
    interval_seconds: float | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    enabled: bool | None = None,
    priority: JobPriority | None = None,
    max_retries: int | None = None,
    retry_delay_seconds: float | None = None,
    timeout_seconds: float | None = None,
    max_concurrent: int | None = None,
    batch_size: int | None = None,
    dependencies: Iterable[str] = (),
    preserve_order: bool | None = None,
    idempotent: bool | None = None,
    misfire_grace_seconds: int | None = None,
    coalesce: bool | None = None,
    params: type[BaseModel] | None = None,
    **requirements: bool,
) -> Callable[[TaskT], TaskT]:
    """Register the decorated `BaseTask` subclass as the job `job_type`.

    An option left as None takes its default (see `JobConfig`). Any `requires_<name>=True`
    declares a named requirement that must be available for the job to run. `params` is a
    pydantic model that the params of a manual run must validate against (the body gets the
    instance: `context.params_as(Model)`).
    """
    caller = sys._getframe(1)
    location = SourceLocation(caller.f_code.co_filename, caller.f_lineno)
    given = {
        "interval_seconds": interval_seconds,
        "cron": cron,
        "timezone": timezone,
        "enabled": enabled,
        "priority": priority,
        "max_retries": max_retries,
        "retry_delay_seconds": retry_delay_seconds,
        "timeout_seconds": timeout_seconds,
        "max_concurrent": max_concurrent,
        "batch_size": batch_size,
        "preserve_order": preserve_order,
        "idempotent": idempotent,
        "misfire_grace_seconds": misfire_grace_seconds,
        "coalesce": coalesce,
    }

    def decorate(cls: TaskT) -> TaskT:
        problems: list[str] = []
        _check_job_type(job_type, problems)
        _check_task_class(cls, problems)
        _check_params_model(params, problems)
        required = _requirement_names(requirements, problems)
        needs = _dependency_names(job_type, dependencies, problems)
        config = _validated_config({k: v for k, v in given.items() if v is not None}, problems)
        if problems or config is None:
            owner = getattr(cls, "__qualname__", repr(cls))
            raise JobDefinitionError(
                f"invalid @job({job_type!r}) on {owner} at {location}:\n"
                + "\n".join(f"  - {problem}" for problem in problems)
            )
        JobRegistry.register(
            JobMetadata(
                job_type=job_type,
                name=name or _readable(cls.__name__),
                description=description or _own_docstring(cls),
                module=cls.__module__,
                class_name=cls.__qualname__,
                defaults=config,
                requirements=required,
                dependencies=needs,
                source=location,
                synchronous=not inspect.iscoroutinefunction(cls._execute_impl),
                params_model=None if params is None else _qualified(params),
                params_schema=None if params is None else model_schema(params),
            ),
            cls,
            params,
        )
        return cls

    return decorate


def _check_job_type(job_type: object, problems: list[str]) -> None:
    if not isinstance(job_type, str) or not JOB_TYPE_PATTERN.fullmatch(job_type):
        problems.append(
            f"job type {job_type!r} is not valid: use lowercase letters, digits and underscores, "
            "starting with a letter (it names environment variables and JobType members)"
        )


def _check_task_class(cls: object, problems: list[str]) -> None:
    if not (isinstance(cls, type) and issubclass(cls, BaseTask)):
        problems.append(f"@job decorates {cls!r}, which is not a subclass of BaseTask")
        return
    impl = cls._execute_impl
    if impl is BaseTask._execute_impl:
        problems.append(f"{cls.__qualname__} does not implement _execute_impl")


def _check_params_model(model: object, problems: list[str]) -> None:
    if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
        problems.append(f"option 'params' must be a pydantic BaseModel subclass, got {model!r}")


def _qualified(model: type[BaseModel]) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def _requirement_names(options: Mapping[str, object], problems: list[str]) -> tuple[str, ...]:
    """Names of the `requires_<name>=True` options; anything else here is an unknown option."""
    names: list[str] = []
    for option, value in options.items():
        if not option.startswith(_REQUIREMENT_PREFIX) or option == _REQUIREMENT_PREFIX:
            problems.append(
                f"unknown option {option!r}{did_you_mean(option, DECORATOR_OPTIONS)} "
                f"(options: {', '.join(DECORATOR_OPTIONS)}, requires_<name>)"
            )
        elif not isinstance(value, bool):
            problems.append(f"option {option!r} must be True or False, got {value!r}")
        elif value:
            names.append(option.removeprefix(_REQUIREMENT_PREFIX))
    return tuple(sorted(names))


def _dependency_names(job_type: str, dependencies: object, problems: list[str]) -> tuple[str, ...]:
    if isinstance(dependencies, str) or not isinstance(dependencies, Iterable):
        problems.append(f"option 'dependencies' must be a list of job types, got {dependencies!r}")
        return ()
    names: list[str] = []
    for dependency in dependencies:
        if not isinstance(dependency, str) or not JOB_TYPE_PATTERN.fullmatch(dependency):
            problems.append(f"option 'dependencies': {dependency!r} is not a valid job type")
        elif dependency == job_type:
            problems.append("option 'dependencies': a job cannot depend on itself")
        elif dependency not in names:
            names.append(str(dependency))
    return tuple(names)


def _validated_config(values: dict[str, object], problems: list[str]) -> JobConfig | None:
    try:
        return JobConfig.model_validate(values, strict=True)
    except ValidationError as error:
        for detail in error.errors(include_url=False):
            option = ".".join(str(part) for part in detail["loc"])
            message = str(detail["msg"]).removeprefix("Value error, ")
            if option:
                problems.append(f"option {option}={detail['input']!r}: {message}")
            else:
                problems.append(message)
        return None


def _readable(class_name: str) -> str:
    """`MyAwesomeJobTask` -> `My Awesome Job`."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", class_name).split()
    if len(words) > 1 and words[-1] == "Task":
        words.pop()
    return " ".join(words)


def _own_docstring(cls: type) -> str:
    """The class's own docstring, not one inherited from BaseTask."""
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""
