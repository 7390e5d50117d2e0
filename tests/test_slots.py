from __future__ import annotations

import asyncio

import pytest

from scheduler import JobPriority
from scheduler.coordinator import MAX_RETRY_DELAY_SECONDS, retry_delay
from scheduler.slots import PrioritySlots


async def test_waiters_start_by_priority_then_in_arrival_order() -> None:
    pool = PrioritySlots(1)
    started: list[str] = []
    release = asyncio.Event()

    async def run(name: str, priority: int) -> None:
        async with pool.slot(priority):
            started.append(name)
            if name == "holder":
                await release.wait()

    holder = asyncio.create_task(run("holder", JobPriority.LOW))
    await asyncio.sleep(0)
    waiters = [
        asyncio.create_task(run(name, priority))
        for name, priority in [
            ("low-1", JobPriority.LOW),
            ("normal-1", JobPriority.NORMAL),
            ("critical-1", JobPriority.CRITICAL),
            ("normal-2", JobPriority.NORMAL),
            ("critical-2", JobPriority.CRITICAL),
        ]
    ]
    await asyncio.sleep(0)
    assert pool.waiting == 5 and pool.busy == 1
    release.set()
    await asyncio.gather(holder, *waiters)
    assert started == ["holder", "critical-1", "critical-2", "normal-1", "normal-2", "low-1"]
    assert pool.busy == 0


async def test_limit_is_never_exceeded_and_cancelled_waiters_give_way() -> None:
    pool = PrioritySlots(2)
    running = peak = 0

    async def work() -> None:
        nonlocal running, peak
        async with pool.slot(JobPriority.NORMAL):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

    tasks = [asyncio.create_task(work()) for _ in range(10)]
    await asyncio.sleep(0)
    tasks[5].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert peak == 2
    assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 1
    assert pool.busy == 0 and pool.waiting == 0


def test_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        PrioritySlots(0)


def test_retry_delay_doubles_with_bounded_jitter() -> None:
    assert [retry_delay(30, n, rng=lambda: 0.0) for n in (1, 2, 3)] == [30, 60, 120]
    assert retry_delay(30, 1, rng=lambda: 1.0) == 37.5
    assert retry_delay(30, 30, rng=lambda: 0.0) == MAX_RETRY_DELAY_SECONDS
    assert retry_delay(0, 3) == 0
