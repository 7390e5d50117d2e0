"""One call of a task's body (invoke.py) and the worker's board (board.py), in this process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from scheduler import BaseTask, JobConfig, JobContext, RunnerResult
from scheduler import board as boards
from scheduler.invoke import invoke
from scheduler.records import Outcome


def context() -> JobContext:
    return JobContext("some_job", JobConfig(), "run-1")


class Exits(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        raise SystemExit(3)


class Swallows(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        for _ in range(3):
            try:
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                pass
        return [RunnerResult(success=True)]


class Sync(BaseTask[RunnerResult]):
    def _execute_impl(self, context: JobContext) -> list[RunnerResult]:  # type: ignore[override]
        return [RunnerResult(success=True), RunnerResult(success=False)]


async def test_system_exit_from_a_body_fails_the_attempt_only() -> None:
    result = await invoke(Exits, context(), 5)
    assert (result.outcome, result.error) == (Outcome.FAILURE, "SystemExit: 3 (raised by the task)")


async def test_a_body_that_swallows_its_cancellation_is_a_timeout_even_if_it_returns() -> None:
    result = await invoke(Swallows, context(), 0.05, abandon_after_seconds=1)
    assert result.outcome == Outcome.TIMEOUT
    assert result.error == "timed out after 0.05s"  # it ended within the grace


async def test_a_body_that_outlives_the_grace_is_abandoned() -> None:
    result = await invoke(Swallows, context(), 0.05, abandon_after_seconds=0.05)
    assert result.error == "timed out after 0.05s and ignored its cancellation"


async def test_a_plain_def_body_runs_and_counts_items() -> None:
    result = await invoke(Sync, context(), 5, synchronous=True)
    assert (result.outcome, result.items_succeeded, result.items_failed) == (Outcome.SUCCESS, 1, 1)


async def test_the_board_holds_the_key_of_the_body_while_it_steps(tmp_path: Path) -> None:
    path = str(tmp_path / "board")
    boards.create(path)
    board = boards.Board(path)
    seen: list[int | None] = []

    async def body() -> str:
        seen.append(boards.culprit(path))
        await asyncio.sleep(0)
        seen.append(boards.culprit(path))
        return "done"

    assert await board.on_loop(7, body()) == "done"
    assert seen == [7, 7]
    assert boards.culprit(path) is None  # between steps, nobody
    slot = board.enter_thread(9)
    assert boards.culprit(path) == 9
    board.leave(slot)
    assert boards.culprit(path) is None


async def test_a_cancellation_reaches_the_body_through_the_board(tmp_path: Path) -> None:
    path = str(tmp_path / "board")
    boards.create(path)
    cancelled = asyncio.Event()

    async def body() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.ensure_future(boards.Board(path).on_loop(3, body()))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.wait({task})
    assert task.cancelled() and cancelled.is_set()
