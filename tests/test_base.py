from __future__ import annotations

from dataclasses import dataclass

import pytest

from scheduler import BaseTask, JobConfig, JobContext, RunnerResult


@dataclass
class CountResult(RunnerResult):
    count: int  # a subclass may add fields without defaults


class Chunker(BaseTask[CountResult]):
    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    async def _execute_impl(self, context: JobContext) -> list[CountResult]:
        return await self.process_in_batches(range(23), context, self._handle)

    async def _handle(self, batch: list[int]) -> list[CountResult]:
        self.seen.append(batch)
        return [CountResult(True, len(batch), message=f"{batch[0]}..{batch[-1]}")]


def test_runner_result_is_a_subclassable_dataclass() -> None:
    result = CountResult(success=False, message="partial", count=3)
    assert (result.success, result.message, result.count) == (False, "partial", 3)
    assert RunnerResult(success=True).message == ""


def test_batches_split_lazily_in_order() -> None:
    assert list(BaseTask.batches(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(BaseTask.batches([], 3)) == []
    with pytest.raises(ValueError, match="at least 1"):
        list(BaseTask.batches([1], 0))


async def test_process_in_batches_uses_the_context_batch_size() -> None:
    task = Chunker()
    context = JobContext("chunker", JobConfig(batch_size=10), run_id="r1")
    results = await task.execute(context)
    assert [len(batch) for batch in task.seen] == [10, 10, 3]
    assert [r.count for r in results] == [10, 10, 3]
    assert results[-1].message == "20..22"


def test_context_exposes_attempt_and_batch_size() -> None:
    context = JobContext("job", JobConfig(batch_size=4), run_id="r", attempt=3)
    assert (context.batch_size, context.retry_count, context.is_retry) == (4, 2, True)
    assert dict(context.resources) == {}
