"""`JobRegistry`: every job that `@job` registered in this process, in registration order."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel

from .errors import DuplicateJobError, UnknownJobTypeError
from .job_types import JobType
from .metadata import JobMetadata


def _same_declaration(a: JobMetadata, b: JobMetadata) -> bool:
    """True when `b` is `a` imported again (same module and class), not a second declaration."""
    return a.qualified_class_name == b.qualified_class_name


#: One job as registered: its metadata, and its class and params model where imported here.
Registration = tuple[JobMetadata, type[Any] | None, type[BaseModel] | None]


class JobRegistry:
    """The process-wide registry of jobs. Discovery fills it; everything else reads it."""

    _jobs: ClassVar[dict[str, JobMetadata]] = {}
    _classes: ClassVar[dict[str, type[Any]]] = {}
    _params_models: ClassVar[dict[str, type[BaseModel]]] = {}

    @classmethod
    def register(
        cls,
        metadata: JobMetadata,
        task_class: type[Any] | None = None,
        params_model: type[BaseModel] | None = None,
    ) -> JobType:
        """Register a job; `task_class` (and its `params_model`) where this process imported
        it (not in the scheduler process, which only holds the metadata discovery handed
        back)."""
        existing = cls._jobs.get(metadata.job_type)
        if existing is not None and not _same_declaration(existing, metadata):
            raise DuplicateJobError(
                f"job type {metadata.job_type!r} is registered twice: by "
                f"{existing.class_name} at {existing.source} and by "
                f"{metadata.class_name} at {metadata.source}; "
                "job types must be unique, rename one of them"
            )
        cls._jobs[metadata.job_type] = metadata
        if task_class is not None:
            cls._classes[metadata.job_type] = task_class
        if params_model is not None:
            cls._params_models[metadata.job_type] = params_model
        return JobType._add(metadata.job_type)

    @classmethod
    def unregister(cls, job_type: str) -> None:
        cls._jobs.pop(job_type, None)
        cls._classes.pop(job_type, None)
        cls._params_models.pop(job_type, None)
        JobType._remove(job_type)

    @classmethod
    def unregister_module(cls, module: str) -> list[str]:
        """Forget every job declared in `module` (a task file that failed half-way through)."""
        removed = [jt for jt, meta in cls._jobs.items() if meta.module == module]
        for job_type in removed:
            cls.unregister(job_type)
        return removed

    @classmethod
    def clear(cls) -> None:
        for job_type in list(cls._jobs):
            cls.unregister(job_type)

    @classmethod
    def snapshot(cls) -> list[Registration]:
        """What `restore` puts back: every job, with its class and params model where this
        process has them."""
        return [
            (meta, cls._classes.get(job_type), cls._params_models.get(job_type))
            for job_type, meta in cls._jobs.items()
        ]

    @classmethod
    def restore(cls, snapshot: list[Registration]) -> None:
        cls.clear()
        for meta, task_class, params_model in snapshot:
            cls.register(meta, task_class, params_model)

    @classmethod
    def get(cls, job_type: str) -> JobMetadata:
        try:
            return cls._jobs[job_type]
        except KeyError:
            known = ", ".join(cls._jobs) or "(none)"
            raise UnknownJobTypeError(
                f"no job of type {job_type!r} is registered; known job types: {known}"
            ) from None

    @classmethod
    def get_task_class(cls, job_type: str) -> type[Any]:
        cls.get(job_type)  # an unknown job type says so
        try:
            return cls._classes[job_type]
        except KeyError:
            raise UnknownJobTypeError(
                f"job {job_type!r} is known here only as metadata: its task file was imported "
                "in another process (discovery runs task files in a child process)"
            ) from None

    @classmethod
    def get_params_model(cls, job_type: str) -> type[BaseModel] | None:
        """The params model the job declared, where this process imported its task file."""
        return cls._params_models.get(job_type)

    @classmethod
    def list_jobs(cls) -> list[JobMetadata]:
        """Every registered job with its metadata, in registration order."""
        return list(cls._jobs.values())

    @classmethod
    def is_registered(cls, job_type: str) -> bool:
        return job_type in cls._jobs
