"""The board of one worker: which body is executing, in a small file both processes map.

The worker writes a run's dispatch key into the board's first cell while that run's async body
holds the loop (one step of its coroutine at a time), and into a slot of its own while a
plain-def body runs in a thread; no system call either way. When the worker dies (an exit, a
signal, a segfault, the OOM killer: nothing of it runs any more), the scheduler reads the board:
the body caught executing is the one held to account. Runs that were only waiting for the
loop, or had finished, are not on it.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Awaitable, Generator
from typing import Any, TypeVar

T = TypeVar("T")

SLOTS = 1024  # cell 0: the async body on the loop; the rest: bodies in threads
_CELL = struct.Struct("<q")
SIZE = SLOTS * _CELL.size


def create(path: str) -> None:
    with open(path, "wb") as file:
        file.truncate(SIZE)


def culprit(path: str) -> int | None:
    """The key of the body that was executing (the scheduler's side, after the worker died):
    the async one on the loop, else the latest one in a thread; None when none was."""
    try:
        with open(path, "rb") as file:
            keys: list[int] = [key for (key,) in _CELL.iter_unpack(file.read(SIZE))]
    except OSError:
        return None
    if keys and keys[0]:
        return keys[0]
    return max((key for key in keys[1:] if key), default=None)


class Board:
    """The worker's side."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self._free = list(range(SLOTS - 1, 0, -1))

    def on_loop(self, key: int, body: Awaitable[T]) -> Awaitable[T]:
        """`body`, with `key` in cell 0 for each step it takes."""
        return _Stepped(self._map, key, body)

    def enter_thread(self, key: int) -> int | None:
        """Put up `key` for a body in a thread; its slot for `leave` (None: board full)."""
        if not self._free:
            return None
        slot = self._free.pop()
        _CELL.pack_into(self._map, slot * _CELL.size, key)
        return slot

    def leave(self, slot: int | None) -> None:
        if slot is not None:
            _CELL.pack_into(self._map, slot * _CELL.size, 0)
            self._free.append(slot)


class _Stepped:
    """Drives a coroutine step by step, marking cell 0 around each step."""

    __slots__ = ("_body", "_key", "_map")

    def __init__(self, board: mmap.mmap, key: int, body: Awaitable[Any]) -> None:
        self._map, self._key, self._body = board, key, body

    def __await__(self) -> Generator[Any, Any, Any]:
        steps = self._body.__await__()
        board, key, pack = self._map, self._key, _CELL.pack_into
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            pack(board, 0, key)
            try:
                yielded = steps.send(sent) if thrown is None else steps.throw(thrown)
            except StopIteration as stop:
                return stop.value
            finally:
                pack(board, 0, 0)
            try:
                sent, thrown = (yield yielded), None
            except BaseException as error:  # a cancellation, thrown into the body
                sent, thrown = None, error
