"""Slow and idle HTTP clients cannot take the service's file descriptors (issue 13, point 8).

A real HttpServer runs on its own event loop in a thread, as in the service; raw sockets play
clients that connect, send part of a request and never finish it. What the server holds is
read from the kernel: a connection to its port that some process still has open.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from scheduler.event_loop import EventLoopChoice, run_on_loop
from scheduler.http import MAX_CONNECTIONS, HttpServer

PROC_TCP = Path("/proc/net/tcp")
pytestmark = pytest.mark.skipif(not PROC_TCP.exists(), reason="reads Linux's /proc/net/tcp")

LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
# Half-sent: a request line cut short, and a request whose headers never end.
PARTIAL = (b"GET /ok HTT", b"GET /ok HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
BATCH = 10  # connections opened at once, before the test waits for the server to take them
GRACE = 2.0  # seconds allowed past a deadline on a busy machine


class Gate:
    """An endpoint's way of holding requests in progress until the test lets them go."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.entered = 0

    def hold(self) -> None:
        with self._lock:
            self.entered += 1
        self.release.wait(30)


def make_app(gate: Gate | None = None) -> FastAPI:
    app = FastAPI()

    @app.get("/ok")
    def ok() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/slow")
    async def slow(seconds: float) -> dict[str, float]:
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @app.get("/held")
    def held() -> dict[str, bool]:  # sync: runs in a thread, so it can block
        assert gate is not None
        gate.hold()
        return {"held": True}

    return app


@contextlib.contextmanager
def serving(app: FastAPI, loop: EventLoopChoice = "asyncio", **limits: Any) -> Iterator[int]:
    """An HttpServer for `app` on 127.0.0.1, on a loop of its own in a thread; yields its port."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        server = HttpServer(app, "127.0.0.1", 0, **limits)
        await server.start()
        state["port"], state["loop"] = server.port, asyncio.get_running_loop()
        state["stopping"] = stopping = asyncio.Event()
        ready.set()
        await stopping.wait()
        await server.stop()

    def run() -> None:
        try:
            run_on_loop(main(), loop)
        except BaseException as error:  # reported by the test's own thread
            state["error"] = error
            ready.set()

    thread = threading.Thread(target=run, name="http-server", daemon=True)
    thread.start()
    assert ready.wait(15), "the server did not start"
    if "error" in state:
        raise state["error"]
    try:
        yield state["port"]
    finally:
        state["loop"].call_soon_threadsafe(state["stopping"].set)
        thread.join(20)
        assert not thread.is_alive(), "the server did not stop"
        if "error" in state:
            raise state["error"]


def server_side(port: int) -> tuple[int, int]:
    """The connections to `port` that the server holds open, and those still waiting in the
    listen queue to be accepted. The client's side of each has another local port; a socket
    not yet accepted, or closed, has no inode. The kernel writes the table while sockets come
    and go, so one read can list a socket twice: each is counted once."""
    held: set[str] = set()
    queued: set[str] = set()
    with PROC_TCP.open() as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) != port or fields[3] == "0A":  # 0A: LISTEN
                continue
            if fields[9] != "0":
                held.add(fields[9])
            elif fields[3] == "01":  # ESTABLISHED
                queued.add(fields[2])  # the client's address and port
    return len(held), len(queued)


def held_connections(port: int) -> int:
    return server_side(port)[0]


class PeakSampler:
    """Reads `held_connections` every few milliseconds in a thread and keeps the highest."""

    def __init__(self, port: int) -> None:
        self.port, self.peak, self.samples = port, 0, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, held_connections(self.port))
            self.samples += 1


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def half_sent(port: int, index: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(PARTIAL[index % len(PARTIAL)])
    sock.setblocking(False)  # for closed_by_server
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def wait_until_closed(socks: list[socket.socket], timeout: float) -> dict[socket.socket, float]:
    """When (monotonic) the server closed each of `socks`, waiting at most `timeout` seconds."""
    closed: dict[socket.socket, float] = {}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while len(closed) < len(socks) and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(min(left, 0.1)):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                if closed_by_server(ready):
                    closed[ready] = time.monotonic()
                    selector.unregister(ready)
    return closed


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, float]:
    """One GET on a new connection: its status and how long the answer took."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        connection.close()


@contextlib.contextmanager
def client_sockets() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


@LOOPS
def test_a_full_server_holds_its_cap_and_still_answers(loop: EventLoopChoice) -> None:
    """300 half-sent requests against the default cap of 256: the server takes each, closes the
    oldest ones beyond its cap, and a normal GET is answered at once (not 503, not refused)."""
    attackers = 300
    with (
        serving(make_app(), loop, header_timeout=60) as port,
        client_sockets() as socks,
        PeakSampler(port) as sampler,
    ):
        for start in range(0, attackers, BATCH):
            socks.extend(half_sent(port, i) for i in range(start, start + BATCH))
            expected = min(len(socks), MAX_CONNECTIONS)
            wait_for(
                lambda n=expected: server_side(port) == (n, 0),  # type: ignore[misc]
                10,
                f"the server to hold {expected} connections with {len(socks)} open",
            )
        closed = [sock for sock in socks if closed_by_server(sock)]
        assert closed == socks[: attackers - MAX_CONNECTIONS], "the oldest ones make room"

        status, took = get(port, "/ok")
        assert status == 200
        assert took < GRACE
        wait_for(lambda: held_connections(port) <= MAX_CONNECTIONS, 10, "the cap again")

    assert sampler.samples > 10
    # An accepted socket exists for a moment before the server can close one to make room, so
    # a sample can see one batch more; none stays: the server settled at the cap after each.
    assert sampler.peak <= MAX_CONNECTIONS + BATCH


@LOOPS
def test_half_sent_requests_are_closed_after_the_header_timeout(loop: EventLoopChoice) -> None:
    header_timeout, count = 1.0, 200  # fewer than the cap: only the timeout closes them
    with (
        serving(make_app(), loop, header_timeout=header_timeout) as port,
        client_sockets() as socks,
    ):
        opened: dict[socket.socket, tuple[float, float]] = {}
        for index in range(count):
            before = time.monotonic()
            sock = half_sent(port, index)
            opened[sock] = (before, time.monotonic())
            socks.append(sock)
        closed = wait_until_closed(socks, header_timeout + GRACE)
        assert len(closed) == count, f"{count - len(closed)} half-sent requests are still open"
        for sock, when in closed.items():
            before, after = opened[sock]
            assert when - before >= header_timeout * 0.9, "closed before its header timeout"
            assert when - after <= header_timeout + GRACE
        assert held_connections(port) == 0


@LOOPS
def test_the_header_timeout_ends_with_the_request(loop: EventLoopChoice) -> None:
    """A complete request is not cut however long it takes to answer; the next request on the
    same keep-alive connection gets its own header timeout."""
    header_timeout = 0.5
    with serving(make_app(), loop, header_timeout=header_timeout, keep_alive_timeout=30) as port:
        status, took = get(port, f"/slow?seconds={header_timeout * 3}")
        assert status == 200 and took >= header_timeout * 3

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/ok")
            response = connection.getresponse()
            assert response.status == 200 and response.read() == b'{"ok":true}'
            assert connection.sock is not None
            sock: socket.socket = connection.sock
            sent = time.monotonic()
            sock.sendall(PARTIAL[1])  # the next request never ends; keep-alive would wait 30 s
            closed = wait_until_closed([sock], header_timeout + GRACE)
            assert sock in closed, "a half-sent second request is held past its header timeout"
            assert closed[sock] - sent >= header_timeout * 0.9
        finally:
            connection.close()


@LOOPS
def test_an_idle_keep_alive_connection_is_closed(loop: EventLoopChoice) -> None:
    with serving(make_app(), loop, header_timeout=30, keep_alive_timeout=1) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/ok")
            assert connection.getresponse().read() == b'{"ok":true}'
            assert connection.sock is not None
            answered = time.monotonic()
            closed = wait_until_closed([connection.sock], 1 + GRACE)
            assert connection.sock in closed, "an idle keep-alive connection stays open"
            assert closed[connection.sock] - answered >= 0.9
        finally:
            connection.close()


def test_requests_beyond_max_in_flight_are_answered_503_at_once() -> None:
    gate = Gate()
    with serving(make_app(gate), max_in_flight=2) as port, ThreadPoolExecutor(2) as pool:
        try:
            held = [pool.submit(get, port, "/held") for _ in range(2)]
            wait_for(lambda: gate.entered == 2, 10, "two requests in progress")
            status, took = get(port, "/ok")
            assert status == 503 and took < GRACE
        finally:
            gate.release.set()
        assert [future.result(10)[0] for future in held] == [200, 200]
        assert get(port, "/ok")[0] == 200


def test_when_every_connection_serves_a_request_a_new_one_is_refused() -> None:
    gate = Gate()
    with (
        serving(make_app(gate), max_connections=2, header_timeout=30) as port,
        ThreadPoolExecutor(2) as pool,
        client_sockets() as socks,
    ):
        try:
            held = [pool.submit(get, port, "/held") for _ in range(2)]
            wait_for(lambda: gate.entered == 2, 10, "two requests in progress")
            socks.append(half_sent(port, 0))
            assert socks[0] in wait_until_closed(socks, GRACE), "a third connection is held"
            assert held_connections(port) == 2
        finally:
            gate.release.set()
        assert [future.result(10)[0] for future in held] == [200, 200]
        assert get(port, "/ok")[0] == 200


RAISE_LIMIT = """
import resource
from scheduler.limits import raise_open_file_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
print(soft, hard, raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_raise_open_file_limit_raises_the_soft_limit_to_the_hard_one() -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")

    def lower_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    result = subprocess.run(
        [sys.executable, "-c", RAISE_LIMIT],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lower_soft_limit,
        check=True,
    )
    before, seen_hard, returned, after = (int(word) for word in result.stdout.split())
    assert before == 256
    expected = 1_048_576 if seen_hard == resource.RLIM_INFINITY else seen_hard
    assert returned == after == expected
