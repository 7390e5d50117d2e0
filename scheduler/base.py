"""What a task is made of: `BaseTask`, its `JobContext` and the `RunnerResult`s it returns.

Task files import from here under the seed's name: `from ..base import BaseTask, JobContext, ...`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from .job_types import JobType
from .options import JobConfig

__all__ = ["BaseTask", "JobContext", "JobType", "RunnerResult"]


@dataclass
class RunnerResult:
    """One item of a run's outcome. Subclass it as a dataclass to carry more fields.

    A run returns a list of these; items with `success=False` are counted as failed items,
    while an exception raised by the task fails the whole run.
    """

    success: bool
    # Keyword-only so that subclasses may add fields without defaults.
    message: str = field(default="", kw_only=True)


ResultT = TypeVar("ResultT", bound=RunnerResult)
ItemT = TypeVar("ItemT")
ModelT = TypeVar("ModelT", bound=BaseModel)


def _no_resources() -> Mapping[str, object]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class JobContext:
    """Everything one run of a job knows about itself."""

    job_type: JobType | str
    config: JobConfig
    run_id: str
    attempt: int = 1
    scheduled_time: datetime | None = None
    #: What the job's requirement providers handed over, by requirement name ("twitter": client).
    resources: Mapping[str, object] = field(default_factory=_no_resources)
    #: The JSON params an operator gave this run (`POST /api/jobs/{job_type}/run`,
    #: `scheduler trigger --param`), read-only; empty for scheduled runs.
    params: Mapping[str, Any] = field(default_factory=_no_resources)
    #: The params validated against the job's model (`@job(..., params=Model)`), else None.
    params_model: BaseModel | None = None

    def __post_init__(self) -> None:
        if type(self.params) is not MappingProxyType:  # read-only, whoever built it
            object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def params_as(self, model: type[ModelT]) -> ModelT:
        """The params as `model`: the instance validated before the run (`@job(...,
        params=model)`), or `params` validated now (pydantic's ValidationError if they fail)."""
        if isinstance(self.params_model, model):
            return self.params_model
        return model.model_validate(dict(self.params))

    def with_params(self, params: Mapping[str, Any], model: BaseModel | None) -> JobContext:
        return dataclasses.replace(self, params=MappingProxyType(dict(params)), params_model=model)

    def with_resources(self, resources: Mapping[str, object]) -> JobContext:
        return dataclasses.replace(self, resources=MappingProxyType(dict(resources)))

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def retry_count(self) -> int:
        """How many times this run was retried before this attempt (0 on the first attempt)."""
        return self.attempt - 1

    @property
    def is_retry(self) -> bool:
        return self.attempt > 1


class BaseTask(ABC, Generic[ResultT]):
    """Base class of every job's task. A fresh instance serves each run, so runs share no state."""

    @abstractmethod
    async def _execute_impl(self, context: JobContext) -> list[ResultT]:
        """Do the job's work once and return one result per item handled."""

    async def execute(self, context: JobContext) -> list[ResultT]:
        """Run the task once; the service calls this, wrapped in its timeout and retries.

        A plain `def _execute_impl` runs in a thread of its own, so blocking code does not stall
        the other runs; a thread cannot be cancelled, so at its timeout the run is recorded
        `timeout` and its worker process is recycled once the thread is abandoned.
        """
        impl: Callable[[JobContext], Any] = self._execute_impl
        if inspect.iscoroutinefunction(impl):
            results: list[ResultT] = await impl(context)
        else:
            results = await asyncio.to_thread(impl, context)
        return results

    @staticmethod
    def batches(items: Iterable[ItemT], size: int) -> Iterator[list[ItemT]]:
        """Split `items` into lists of at most `size` items, in order, lazily."""
        if size < 1:
            raise ValueError(f"batch size must be at least 1, got {size}")
        iterator = iter(items)
        while chunk := list(itertools.islice(iterator, size)):
            yield chunk

    async def process_in_batches(
        self,
        items: Iterable[ItemT],
        context: JobContext,
        handle_batch: Callable[[list[ItemT]], Awaitable[list[ResultT]]],
    ) -> list[ResultT]:
        """Hand `items` to `handle_batch` in chunks of the job's `batch_size`; gather results."""
        results: list[ResultT] = []
        for chunk in self.batches(items, context.batch_size):
            results.extend(await handle_batch(chunk))
        return results
