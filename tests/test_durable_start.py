"""A first attempt's `running` row commits before the attempt waits for a slot: slots bound the
bodies executing, not the commits (held through a commit they cap the rate at max_workers per
commit). The coordinator against a history whose commits the test releases, inline."""

from __future__ import annotations

import asyncio
import dataclasses

from scheduler import BaseTask, JobContext, JobRegistry, RunnerResult, job
from scheduler.backends import InlineBackend
from scheduler.coordinator import RunCoordinator
from scheduler.job_config import resolve_job_configs
from scheduler.job_state import JobStates
from scheduler.records import Outcome, RunRecord, StartRefusal
from scheduler.slots import PrioritySlots


class GatedHistory:
    """A HistorySink whose `started` returns only when the test lets the commit through."""

    def __init__(self) -> None:
        self.committing: list[str] = []  # run ids whose row waits for its commit
        self.rows: dict[tuple[str, int], RunRecord] = {}
        self.commit = asyncio.Event()

    async def started(self, record: RunRecord) -> StartRefusal | None:
        self.rows[(record.run_id, record.attempt)] = dataclasses.replace(record)
        self.committing.append(record.run_id)
        await self.commit.wait()
        return None

    def finished(self, record: RunRecord) -> None:
        self.rows[(record.run_id, record.attempt)] = dataclasses.replace(record)

    def recorded(self, record: RunRecord) -> None:
        self.finished(record)


BODIES: list[str] = []


class Quick(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        BODIES.append(context.run_id)
        await asyncio.sleep(0.01)
        return [RunnerResult(success=True)]


class Forever(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        await asyncio.sleep(60)
        return []


def coordinator(history: GatedHistory, slots: int) -> RunCoordinator:
    return RunCoordinator(
        resolve_job_configs(JobRegistry.list_jobs(), {}).jobs,
        history=history,
        states=JobStates(),
        slots=PrioritySlots(slots),
        backend=InlineBackend(kill_grace_seconds=0.2),
        instance="test",
    )


async def until(condition: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_runs_commit_their_rows_together_while_one_slot_runs_them_one_by_one() -> None:
    job("quick", max_concurrent=10)(Quick)

    async def scenario() -> None:
        BODIES.clear()
        history = GatedHistory()
        runs = coordinator(history, slots=1)
        tasks = [runs.spawn("quick") for _ in range(5)]
        # Every row is on its way to the database at once, with one slot: none waits for the
        # slot before its commit (so one commit serves them all).
        await until(lambda: len(history.committing) == 5)
        assert BODIES == []  # and no body starts before its row is committed
        history.commit.set()
        summaries = await asyncio.gather(*tasks)
        assert {s.outcome for s in summaries} == {Outcome.SUCCESS}
        assert sorted(BODIES) == sorted(history.committing)
        for row in history.rows.values():  # the start is the body's, not the row's
            assert row.outcome == Outcome.SUCCESS and row.finished_at is not None

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_stop_while_a_run_waits_for_a_slot_records_it_interrupted() -> None:
    job("forever", max_concurrent=2, idempotent=True)(Forever)

    async def scenario() -> None:
        history = GatedHistory()
        history.commit.set()
        runs = coordinator(history, slots=1)
        holder = runs.spawn("forever")
        await until(lambda: len(history.committing) == 1)
        waiter = runs.spawn("forever")
        await until(lambda: len(history.committing) == 2)  # its row is committed; no slot
        assert await runs.drain(0.05) == 2
        await asyncio.gather(holder, waiter, return_exceptions=True)
        rows = list(history.rows.values())
        assert [r.outcome for r in rows] == [Outcome.INTERRUPTED, Outcome.INTERRUPTED]
        assert all("runs again at the next start" in str(r.error) for r in rows)
        assert sorted(runs.cut_off) == sorted((r.run_id, 1) for r in rows)

    asyncio.run(asyncio.wait_for(scenario(), 30))
