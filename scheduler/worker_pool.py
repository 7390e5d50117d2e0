"""The supervised pool of worker processes: `ProcessBackend`, the default `ExecutionBackend`.

The scheduler process sends each attempt to the least busy worker and awaits its
`BodyResult`; it never runs task code itself. The supervisor (a task on the scheduler's loop,
four times a second) enforces what a worker cannot enforce on itself:

- a run still going `kill_grace_seconds` after its timeout (it ignored its cancellation, or
  blocks its worker's loop) is recorded `timeout` and its worker killed;
- a run an operator cancelled that has not stopped `kill_grace_seconds` later is recorded
  `cancelled` and its worker killed (its other runs: `crashed`, not their doing);
- a worker over the memory limit takes no new runs and is recycled once its runs end; over the
  hard limit it is killed at once;
- a worker that dies (an exit, a signal, a segfault, the OOM killer) has each of its runs
  recorded `crashed` with the exit code or signal, and is replaced at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import structlog

from . import board
from .base import JobContext
from .job_config import ResolvedJob
from .params import ParamsProblem
from .records import (
    CANCELLED_BY_OPERATOR,
    NOT_EXECUTING_MARK,
    BodyResult,
    ClusterStatus,
    Outcome,
    WorkerStatus,
)
from .wire import LineBuffer, Message, encode, encode_init

log = structlog.get_logger(__name__)

#: How often deadlines and memory are checked (a kill lands up to this late).
SUPERVISE_SECONDS = 0.25
#: How long a worker may take to exit once its input is closed, before it is killed.
EXIT_SECONDS = 1.0
#: How long a check of params may take, a worker's start included, before it is given up.
VALIDATE_SECONDS = 5.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ExitReason(StrEnum):
    """Why a worker process ended: the `reason` label of `scheduler_worker_exits_total`."""

    DIED = "died"  # exited or was killed on its own account (exit, signal, segfault, OOM)
    TIMEOUT = "timeout"  # killed: one of its runs overran its timeout by the kill grace
    MEMORY = "memory"  # killed: over the hard memory limit
    RECYCLED = "recycled"  # ended idle after retiring (memory limit, a stuck thread)
    STOPPED = "stopped"  # the service stopped
    #: killed: a run an operator cancelled did not stop within the kill grace
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class PoolOptions:
    workers: int
    tasks_dir: Path
    #: The task files that imported cleanly at discovery: the only ones a worker imports.
    task_files: tuple[str, ...]
    kill_grace_seconds: float
    max_memory_bytes: int
    kill_memory_bytes: int
    watchdog_seconds: float
    log_level: str
    log_format: str
    event_loop: str


class PoolObserver(Protocol):
    def worker_exited(self, reason: ExitReason) -> None: ...
    def loop_blocked(self, job_type: str | None) -> None: ...


class _Dispatch:
    __slots__ = ("cancelling", "deadline", "future", "job_type", "message", "run_id", "timeout")

    def __init__(self, message: Message, timeout: float) -> None:
        self.message = message
        self.job_type: str = message["job"]
        self.run_id: str = message["run_id"]
        self.timeout = timeout
        self.deadline = float("inf")  # set when it is sent to a worker
        #: An operator cancelled it: past `deadline` its worker is killed as `cancelled`.
        self.cancelling = False
        self.future: asyncio.Future[BodyResult] = asyncio.get_running_loop().create_future()

    def resolve(self, result: BodyResult) -> None:
        if not self.future.done():  # not cancelled meanwhile (a shutdown)
            self.future.set_result(result)


def _dispatch_order(worker: _Worker) -> tuple[bool, int, float]:
    return worker.blocked is not None, len(worker.in_flight), -worker.heard_at


class _Worker:
    def __init__(self, index: int, process: asyncio.subprocess.Process, board: str) -> None:
        self.index = index
        self.process = process
        #: The file of bodies running in it (board.py).
        self.board = board
        self.state = "starting"  # -> ready -> (retiring) ; the reader ends it
        self.in_flight: dict[int, _Dispatch] = {}
        #: Checks of params sent to it (`validate`), by key.
        self.validations: dict[int, asyncio.Future[ParamsProblem | None]] = {}
        self.outbox: list[Message] = []
        self.kill_reason: tuple[ExitReason, str] | None = None
        self.blocked: Message | None = None
        self.blocked_at = 0.0
        self.rss_bytes = 0
        self.spawned_at = time.monotonic()
        #: When it last sent anything: a loop that a run blocks falls silent before the
        #: watchdog can say so.
        self.heard_at = self.spawned_at

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self, now: float) -> WorkerStatus:
        blocked = self.blocked
        return WorkerStatus(
            index=self.index,
            pid=self.pid,
            state=self.state,
            runs=len(self.in_flight),
            rss_bytes=self.rss_bytes,
            blocked_job=blocked.get("job") if blocked else None,
            blocked_seconds=round(now - self.blocked_at, 3) if blocked else 0.0,
            blocked_where=blocked.get("where") if blocked else None,
        )


class ProcessBackend:
    """Runs attempts' bodies in `options.workers` supervised worker processes."""

    def __init__(
        self,
        options: PoolOptions,
        jobs: Mapping[str, ResolvedJob],
        observer: PoolObserver | None = None,
    ) -> None:
        self._options = options
        self._init: Message = {
            "k": "init",
            "tasks_dir": str(options.tasks_dir),
            "files": list(options.task_files),
            "jobs": _job_configs(jobs),
            "log_level": options.log_level,
            "log_format": options.log_format,
            "event_loop": options.event_loop,
            "watchdog_seconds": options.watchdog_seconds,
        }
        self._observer = observer
        self._workers: dict[int, _Worker] = {}
        self._pending: deque[_Dispatch] = deque()
        self._keys = itertools.count(1)
        self._indexes = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._start_failures = 0
        self._boards = Path(tempfile.mkdtemp(prefix="scheduler-boards-"))

    # ExecutionBackend
    async def start(self) -> None:
        for _ in range(self._options.workers):
            await self._spawn()
        self._background(self._supervise())

    async def execute(self, job: ResolvedJob, context: JobContext) -> BodyResult:
        key = next(self._keys)
        scheduled = context.scheduled_time
        message = {
            "k": "run",
            "id": key,
            "job": job.job_type,
            "run_id": context.run_id,
            "attempt": context.attempt,
            "scheduled": None if scheduled is None else scheduled.isoformat(),
        }
        if context.params:
            message["params"] = dict(context.params)
        dispatch = _Dispatch(message, job.config.timeout_seconds)
        worker = self._least_busy()
        if worker is None:
            self._pending.append(dispatch)
        else:
            self._send(worker, key, dispatch)
        return await dispatch.future

    def reload(self, task_files: Sequence[str], jobs: Mapping[str, ResolvedJob]) -> None:
        """Workers started from now on import `task_files` as they are now; each current one
        takes no new runs, finishes those it has on the code it started with, and ends."""
        self._init = {**self._init, "files": list(task_files), "jobs": _job_configs(jobs)}
        for worker in list(self._workers.values()):
            if worker.state == "starting":  # it was handed the old files: none of its runs yet
                worker.state = "retiring"
                self._kill(worker, ExitReason.RECYCLED, "was replaced: the task files changed")
                self._background(self._respawn(), name="spawn")
            else:
                self._retire(worker, "the task files changed", quiet=True)

    async def validate_params(
        self, job: ResolvedJob, params: Mapping[str, Any]
    ) -> ParamsProblem | None:
        """Ask a worker whether `params` validate against the job's model (its validators
        are task code: they run there, never here). `TimeoutError` if no worker answers
        within `VALIDATE_SECONDS`."""
        async with asyncio.timeout(VALIDATE_SECONDS):
            while (worker := self._least_busy()) is None:  # none ready yet: starting up
                await asyncio.sleep(0.05)
            key = next(self._keys)
            future: asyncio.Future[ParamsProblem | None] = (
                asyncio.get_running_loop().create_future()
            )
            worker.validations[key] = future
            if not worker.outbox:
                asyncio.get_running_loop().call_soon(self._flush, worker)
            worker.outbox.append({"k": "validate", "id": key, "job": job.job_type,
                                  "params": dict(params)})  # fmt: skip
            try:
                return await future
            finally:
                worker.validations.pop(key, None)

    async def stop(self, grace_seconds: float) -> None:
        """End every worker: closed input first (an idle worker exits), then SIGKILL."""
        self._stopping = True
        for task in self._tasks:
            if task.get_name() == "supervisor":
                task.cancel()
        workers = list(self._workers.values())
        for worker in workers:
            worker.kill_reason = worker.kill_reason or (ExitReason.STOPPED, "the service stopped")
            with contextlib.suppress(Exception):
                assert worker.process.stdin is not None
                worker.process.stdin.close()
        waits = [asyncio.create_task(w.process.wait()) for w in workers]
        if waits:
            _, late = await asyncio.wait(waits, timeout=max(grace_seconds, EXIT_SECONDS))
            for worker in workers:
                if worker.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
            if late:
                await asyncio.wait(late, timeout=5)
        readers = [t for t in self._tasks if t.get_name().startswith("reader")]
        if readers:
            await asyncio.wait(readers, timeout=5)
        shutil.rmtree(self._boards, ignore_errors=True)

    def cancel(self, run_id: str) -> bool:
        """Ask the worker executing `run_id` to cancel its body ({"k": "cancel"}); past the
        kill grace the supervisor kills that worker. A run still waiting for a worker ends
        at once."""
        for dispatch in self._pending:
            if dispatch.run_id == run_id and not dispatch.future.done():
                self._pending.remove(dispatch)
                dispatch.resolve(
                    BodyResult(Outcome.CANCELLED, CANCELLED_BY_OPERATOR, retryable=False)
                )
                return True
        found = self._executing(run_id)
        if found is None:
            return False
        worker, key, dispatch = found
        if not dispatch.cancelling:
            dispatch.cancelling = True
            grace = time.monotonic() + self._options.kill_grace_seconds
            dispatch.deadline = min(dispatch.deadline, grace)
            self._queue(worker, {"k": "cancel", "id": key})
            log.info(
                "run cancellation sent to its worker",
                worker=worker.index,
                pid=worker.pid,
                job_type=dispatch.job_type,
                run_id=run_id,
            )
        return True

    def cluster(self) -> ClusterStatus | None:
        return None

    def orphaned(self, attempts: Sequence[tuple[str, int, str]]) -> None:
        pass  # their workers ended with the scheduler that started them (see worker.watch)

    def worker_pid(self, run_id: str) -> int | None:
        found = self._executing(run_id)
        return None if found is None else found[0].pid

    def _executing(self, run_id: str) -> tuple[_Worker, int, _Dispatch] | None:
        """The worker running `run_id`'s attempt (cancellations are rare: a scan will do)."""
        for worker in self._workers.values():
            for key, dispatch in worker.in_flight.items():
                if dispatch.run_id == run_id:
                    return worker, key, dispatch
        return None

    # What the service shows
    def statuses(self) -> list[WorkerStatus]:
        now = time.monotonic()
        return [worker.status(now) for worker in self._workers.values()]

    # Dispatch
    def _least_busy(self) -> _Worker | None:
        """The ready worker with the fewest runs, one whose loop answers before all; of those
        as busy, the one heard from last (one silent with a run in flight may be blocked)."""
        ready = [w for w in self._workers.values() if w.state == "ready"]
        return min(
            ready,
            key=lambda w: (w.blocked is not None, len(w.in_flight), -w.heard_at),
            default=None,
        )

    def _send(self, worker: _Worker, key: int, dispatch: _Dispatch) -> None:
        # The hard deadline counts from the hand-over: time spent waiting for a worker to
        # come up is not the body's.
        dispatch.deadline = time.monotonic() + dispatch.timeout + self._options.kill_grace_seconds
        worker.in_flight[key] = dispatch
        self._queue(worker, dispatch.message)

    def _queue(self, worker: _Worker, message: Message) -> None:
        if not worker.outbox:
            asyncio.get_running_loop().call_soon(self._flush, worker)
        worker.outbox.append(message)

    def _flush(self, worker: _Worker) -> None:
        batch, worker.outbox = worker.outbox, []
        stdin = worker.process.stdin
        if batch and stdin is not None and not stdin.is_closing():
            stdin.write(encode(batch))

    # Workers' lives
    async def _spawn(self) -> None:
        index = next(self._indexes)
        board_path = str(self._boards / f"worker-{index}.board")
        board.create(board_path)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "scheduler.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Out of the terminal's process group: a Ctrl-C reaches the scheduler, which
            # drains, and not the workers, which would drop their runs at once.
            start_new_session=True,
        )
        worker = _Worker(index, process, board_path)
        self._workers[index] = worker
        assert process.stdin is not None
        process.stdin.write(encode_init({**self._init, "board": board_path}))
        self._background(self._read(worker), name=f"reader-{index}")

    def _background(self, coroutine: Any, name: str = "supervisor") -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, worker: _Worker) -> None:
        stdout = worker.process.stdout
        assert stdout is not None
        lines = LineBuffer()
        with contextlib.suppress(ConnectionError):
            while data := await stdout.read(2**16):
                worker.heard_at = time.monotonic()
                for message in lines.feed(data):
                    self._on_message(worker, message)
        code = await worker.process.wait()
        await self._on_exit(worker, code)

    def _on_message(self, worker: _Worker, message: Message) -> None:
        kind = message["k"]
        if kind == "done":
            dispatch = worker.in_flight.pop(message["id"], None)
            if dispatch is not None:
                dispatch.resolve(BodyResult.from_data(message))
        elif kind == "validated":
            self._on_validated(worker, message)
        elif kind == "ready":
            self._on_ready(worker, message)
        elif kind == "blocked":
            worker.blocked, worker.blocked_at = message, time.monotonic() - message["seconds"]
            log.warning(
                "worker event loop blocked by a run",
                worker=worker.index,
                pid=worker.pid,
                job_type=message.get("job"),
                run_id=message.get("run_id"),
                seconds=message["seconds"],
                where=message.get("where"),
            )
            if self._observer is not None:
                self._observer.loop_blocked(message.get("job"))
        elif kind == "unblocked":
            blocked, worker.blocked = worker.blocked or {}, None
            log.warning(
                "worker event loop unblocked",
                worker=worker.index,
                job_type=blocked.get("job"),
                run_id=blocked.get("run_id"),
                blocked_seconds=message["seconds"],
            )
        elif kind == "retire":
            self._retire(worker, str(message.get("why")))

    def _on_validated(self, worker: _Worker, message: Message) -> None:
        future = worker.validations.pop(message["id"], None)
        if future is not None and not future.done():
            problem = message.get("problem")
            future.set_result(None if problem is None else ParamsProblem.from_data(problem))

    def _on_ready(self, worker: _Worker, message: Message) -> None:
        if worker.state != "starting":
            return
        worker.state = "ready"
        self._start_failures = 0
        seconds = round(time.monotonic() - worker.spawned_at, 3)
        log.info("worker ready", worker=worker.index, pid=worker.pid, start_seconds=seconds)
        for failed in message.get("failed", []):  # imported at discovery, not here
            log.error("task file failed to import in a worker", worker=worker.index, error=failed)
        while self._pending and (target := self._least_busy()) is not None:
            dispatch = self._pending.popleft()
            if not dispatch.future.done():  # nobody waits for a run cancelled meanwhile
                self._send(target, dispatch.message["id"], dispatch)

    async def _on_exit(self, worker: _Worker, code: int) -> None:
        self._workers.pop(worker.index, None)
        reason, why = worker.kill_reason or (ExitReason.DIED, _exit_description(code))
        runs = list(worker.in_flight.values())
        # Of the runs on a worker that died on its own, the body caught executing is held to
        # account (board.py): it alone counts toward quarantine. A kill by the supervisor
        # names its cause (or has none).
        culprit = board.culprit(worker.board) if reason == ExitReason.DIED else None
        with contextlib.suppress(OSError):
            os.unlink(worker.board)
        for key, dispatch in worker.in_flight.items():
            error = f"its worker process (pid {worker.pid}) {why}"
            # Killed for a cancelled run: the others on it were not executing that run.
            if reason in (ExitReason.DIED, ExitReason.CANCELLED) and key != culprit:
                error += f" {NOT_EXECUTING_MARK}"
            dispatch.resolve(BodyResult(Outcome.CRASHED, error, killed_worker=key == culprit))
        worker.in_flight.clear()
        for future in worker.validations.values():
            if not future.done():
                future.set_exception(TimeoutError(f"its worker process (pid {worker.pid}) {why}"))
        worker.validations.clear()
        if reason != ExitReason.STOPPED and self._observer is not None:
            self._observer.worker_exited(reason)
        if reason not in (ExitReason.RECYCLED, ExitReason.STOPPED):
            log.error(
                "worker process ended",
                worker=worker.index,
                pid=worker.pid,
                exit_code=code,
                reason=str(reason),
                why=why,
                runs=[f"{d.job_type}:{d.run_id}" for d in runs],
            )
        if self._stopping or worker.state == "retiring":
            return  # a retiring worker's replacement was started when it retired
        if worker.state == "starting":  # it never came up: do not spin
            self._start_failures += 1
            await asyncio.sleep(min(0.1 * 2**self._start_failures, 5.0))
        await self._respawn()

    async def _respawn(self) -> None:
        """Start a replacement, retrying while the system refuses (no memory, no processes)."""
        delay = 0.1
        while not self._stopping:
            try:
                await self._spawn()
                return
            except OSError as error:
                log.error("worker process could not be started; retrying", error=str(error))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _retire(self, worker: _Worker, why: str, *, quiet: bool = False) -> None:
        """No new runs for `worker`; it ends once idle, and a fresh one takes its place."""
        if worker.state != "ready":
            return
        worker.state = "retiring"
        emit = log.info if quiet else log.warning
        emit("worker retiring", worker=worker.index, pid=worker.pid, why=why)
        self._background(self._respawn(), name="spawn")

    def _kill(self, worker: _Worker, reason: ExitReason, why: str) -> None:
        if worker.kill_reason is None:
            worker.kill_reason = (reason, why)
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_SECONDS)
            now = time.monotonic()
            for worker in list(self._workers.values()):
                if worker.kill_reason is None:
                    self._enforce(worker, now)

    def _enforce(self, worker: _Worker, now: float) -> None:
        options = self._options
        for key, dispatch in list(worker.in_flight.items()):
            if dispatch.deadline < now and dispatch.cancelling:
                grace = f"{options.kill_grace_seconds:g}s"
                worker.in_flight.pop(key)
                dispatch.resolve(
                    BodyResult(
                        Outcome.CANCELLED,
                        f"{CANCELLED_BY_OPERATOR}; it did not stop within {grace} (it ignored "
                        "its cancellation, blocked its worker's event loop, or runs in a "
                        "thread), so its worker was killed",
                        retryable=False,
                    )
                )
                why = (
                    f"was killed: run {dispatch.run_id} of {dispatch.job_type} did not stop "
                    f"within {grace} of its cancellation"
                )
                self._kill(worker, ExitReason.CANCELLED, why)
                return
            if dispatch.deadline < now:
                overran = f"ran {options.kill_grace_seconds:g}s past its {dispatch.timeout:g}s"
                worker.in_flight.pop(key)
                dispatch.resolve(
                    BodyResult(
                        Outcome.TIMEOUT,
                        f"timed out: {overran} timeout without stopping (it ignored its "
                        "cancellation or blocked its worker's event loop); its worker was killed",
                        killed_worker=True,
                    )
                )
                why = f"was killed: run {dispatch.run_id} of {dispatch.job_type} {overran} timeout"
                self._kill(worker, ExitReason.TIMEOUT, why)
                return
        worker.rss_bytes = _rss_bytes(worker.pid)
        if worker.rss_bytes > options.kill_memory_bytes:
            mb = worker.rss_bytes // 2**20
            limit = options.kill_memory_bytes // 2**20
            self._kill(worker, ExitReason.MEMORY, f"was killed: {mb} MB over the {limit} MB limit")
        elif worker.rss_bytes > options.max_memory_bytes:
            mb, limit = worker.rss_bytes // 2**20, options.max_memory_bytes // 2**20
            self._retire(worker, f"{mb} MB of memory, over the {limit} MB limit")
        if worker.state == "retiring" and not worker.in_flight:
            self._kill(worker, ExitReason.RECYCLED, "was recycled")


def _job_configs(jobs: Mapping[str, ResolvedJob]) -> dict[str, Any]:
    return {job_type: job.config.model_dump(mode="json") for job_type, job in jobs.items()}


def _exit_description(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0
