"""The messages between the scheduler process and its worker processes: JSON objects, one a
line, written in batches (one system call for everything queued in a loop iteration).

JSON, not pickle: the scheduler process must never run code that a worker (task code) could
slip into a message.
"""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_decode = json.JSONDecoder().decode


def encode(messages: list[Message]) -> bytes:
    return "".join([_encoder.encode(message) + "\n" for message in messages]).encode()


class LineBuffer:
    """Splits what arrives on a pipe into whole messages."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[Message]:
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [_decode(line.decode()) for line in lines if line]
