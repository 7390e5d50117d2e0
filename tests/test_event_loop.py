"""The service's event loop choice: uvloop where installed, the standard loop on request."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from scheduler import ConfigurationError, event_loop
from scheduler.event_loop import loop_name, run_on_loop


async def running_loop() -> asyncio.AbstractEventLoop:
    await asyncio.sleep(0)
    return asyncio.get_running_loop()


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", uvloop.Loop), ("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)],
)
def test_each_choice_runs_on_its_loop(choice: event_loop.EventLoopChoice, expected: type) -> None:
    loop = run_on_loop(running_loop(), choice)
    assert isinstance(loop, expected)
    assert (choice == "asyncio") != isinstance(loop, uvloop.Loop)
    assert loop.is_closed()


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(event_loop, "uvloop_available", lambda: False)  # as on Windows
    assert loop_name("auto") == "asyncio"
    with pytest.raises(ConfigurationError, match="SCHEDULER_EVENT_LOOP='uvloop': uvloop is not"):
        loop_name("uvloop")
