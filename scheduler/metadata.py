"""What `@job` records about a task class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .options import JobConfig

if TYPE_CHECKING:
    from .base import BaseTask


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """Where a job was declared: the file and line of its `@job(...)`."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class JobMetadata:
    """A registered job: its identity, its task class and the decorator's option values."""

    job_type: str
    name: str
    description: str
    task_class: type[BaseTask[Any]]
    defaults: JobConfig
    requirements: tuple[str, ...]
    dependencies: tuple[str, ...]
    source: SourceLocation

    @property
    def module(self) -> str:
        return self.task_class.__module__

    @property
    def qualified_class_name(self) -> str:
        return f"{self.task_class.__module__}.{self.task_class.__qualname__}"
