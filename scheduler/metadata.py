"""What `@job` records about a task class: plain data, so that it crosses process boundaries.

The scheduler process never imports task code: discovery imports the task files in a child
process and hands back each job's `JobMetadata` as JSON (`as_data` / `from_data`). The class
itself stays with whoever imported it (`JobRegistry.get_task_class`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .options import JobConfig


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """Where a job was declared: the file and line of its `@job(...)`."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class JobMetadata:
    """A registered job: its identity, where its task class lives and the decorator's values."""

    job_type: str
    name: str
    description: str
    #: The module and qualified name of the task class.
    module: str
    class_name: str
    defaults: JobConfig
    requirements: tuple[str, ...]
    dependencies: tuple[str, ...]
    source: SourceLocation
    #: `def _execute_impl` (run in a worker thread) rather than `async def`.
    synchronous: bool = False
    #: The qualified name of the params model (`@job(..., params=Model)`), if one is declared.
    params_model: str | None = None
    #: That model's JSON schema as text (None without a model, or if pydantic has none).
    params_schema: str | None = None

    @property
    def qualified_class_name(self) -> str:
        return f"{self.module}.{self.class_name}"

    def as_data(self) -> dict[str, Any]:
        return {
            "job_type": self.job_type,
            "name": self.name,
            "description": self.description,
            "module": self.module,
            "class_name": self.class_name,
            "defaults": self.defaults.model_dump(mode="json"),
            "requirements": list(self.requirements),
            "dependencies": list(self.dependencies),
            "source": [self.source.path, self.source.line],
            "synchronous": self.synchronous,
            "params_model": self.params_model,
            "params_schema": self.params_schema,
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> JobMetadata:
        path, line = data["source"]
        return cls(
            job_type=str(data["job_type"]),
            name=str(data["name"]),
            description=str(data["description"]),
            module=str(data["module"]),
            class_name=str(data["class_name"]),
            defaults=JobConfig.model_validate(data["defaults"]),
            requirements=tuple(map(str, data["requirements"])),
            dependencies=tuple(map(str, data["dependencies"])),
            source=SourceLocation(str(path), int(line)),
            synchronous=bool(data["synchronous"]),
            params_model=_optional(data.get("params_model")),
            params_schema=_optional(data.get("params_schema")),
        )


def _optional(value: object) -> str | None:
    return None if value is None else str(value)
