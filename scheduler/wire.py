"""The messages between the scheduler process and its worker processes: JSON objects, one a
line, written in batches (one system call for everything queued in a loop iteration).

JSON, not pickle: the scheduler process must never run code that a worker (task code) could
slip into a message.
"""

from __future__ import annotations

import json
import os
from typing import Any

Message = dict[str, Any]

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_decode = json.JSONDecoder().decode


def encode(messages: list[Message]) -> bytes:
    return "".join([_encoder.encode(message) + "\n" for message in messages]).encode()


def encode_init(message: Message) -> bytes:
    """The first message to a worker, after its length in bytes on a line of its own: the
    worker reads exactly it and leaves what follows to its loop (reading a line byte by byte
    took seconds for the 5 MB of 10,000 jobs' settings)."""
    payload = encode([message])
    return f"{len(payload)}\n".encode() + payload


def read_init(fd: int) -> Message:
    """The message `encode_init` wrote, read from `fd` and nothing after it."""
    header = bytearray()
    while (byte := os.read(fd, 1)) not in (b"\n", b""):
        header += byte
    remaining = int(header)
    chunks = []
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            raise EOFError("the scheduler closed the pipe before the worker's settings ended")
        chunks.append(chunk)
        remaining -= len(chunk)
    (message,) = LineBuffer().feed(b"".join(chunks))
    return message


class LineBuffer:
    """Splits what arrives on a pipe into whole messages."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[Message]:
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [_decode(line.decode()) for line in lines if line]
