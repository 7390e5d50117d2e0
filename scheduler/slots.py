"""The global run limit (`SCHEDULER_MAX_WORKERS`): at most N attempts execute at once; waiting
attempts start by priority."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PrioritySlots:
    """An asyncio semaphore whose waiters are served highest priority first, FIFO within one.

    A released slot is handed straight to the next waiter, so a newcomer can never overtake a
    run that was already waiting. Lives on one event loop.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"the run limit needs at least one slot, got {size}")
        self.size = size
        self._free = size
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def busy(self) -> int:
        return self.size - self._free

    @property
    def waiting(self) -> int:
        return sum(1 for *_, future in self._waiting if not future.done())

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, priority: int) -> None:
        """Take a slot, waiting for one if none is free; `release` gives it back."""
        # A free slot means nobody live is waiting: a released slot goes to a waiter first.
        if self._free > 0:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (-priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            raise

    def release(self) -> None:
        while self._waiting:
            *_, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1
