"""A worker process: `python -m scheduler.worker`, started and supervised by `worker_pool`.

It imports the task files it is told to, then runs every attempt it is sent as a task on its
own event loop, many at once, and sends back each `BodyResult`. Its protocol runs over the
stdin and stdout it was started with; task code gets /dev/null and stderr in their place, so a
`print` cannot corrupt a message. A watchdog thread reports when the loop stops answering
(blocking code in a task), with the run and the line it is stuck on, and ends the process if
the scheduler that started it is gone.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import threading
import time
import types
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from .base import JobContext
from .board import Board
from .discovery import discover
from .event_loop import EventLoopChoice, run_on_loop
from .invoke import _contained, acquire_requirements, invoke, with_validated_params
from .job_types import JobType
from .logs import bind_run, configure_logging
from .options import JobConfig
from .params import ParamsProblem, validate_params
from .records import BodyResult, Outcome, SkipReason
from .records import summarize_error as summarize
from .registry import JobRegistry
from .wire import LineBuffer, Message, encode, read_init

log = structlog.get_logger(__name__)

#: How often the loop proves it answers (and the watchdog looks): a third of the watchdog's
#: threshold, at most this. Each beat is a wakeup of an idle worker: few keep it near 0 % CPU.
MAX_BEAT_SECONDS = 0.25


def beat_seconds(threshold: float) -> float:
    return min(MAX_BEAT_SECONDS, threshold / 3)


class Channel:
    """The worker's end of the protocol: batched writes, safe from the watchdog thread too."""

    def __init__(self, write_fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self._fd = write_fd
        self._loop = loop
        self._lock = threading.Lock()
        self._outbox: list[Message] = []

    def send_now(self, message: Message) -> None:
        self._write([message])

    def send(self, message: Message) -> None:
        """Queue `message`; everything queued in this loop iteration leaves in one write."""
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox.append(message)

    def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        self._write(batch)

    def _write(self, messages: list[Message]) -> None:
        data = memoryview(encode(messages))
        with self._lock:
            while data:
                data = data[os.write(self._fd, data) :]


class Worker:
    def __init__(
        self, jobs: dict[str, JobConfig], channel: Channel, board: Board, beat: float
    ) -> None:
        self._jobs = jobs
        self._beat_seconds = beat
        self._board = board
        self._channel = channel
        self._tasks: set[asyncio.Task[None]] = set()
        #: Dispatch key -> the future that cancels that run's body (an operator's cancel).
        self._cancels: dict[int, asyncio.Future[None]] = {}
        self.beat_at = time.monotonic()

    async def serve(self, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**24)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        self._beat()
        lines = LineBuffer()
        while data := await reader.read(2**16):
            for message in lines.feed(data):
                kind = message["k"]
                if kind == "run":
                    task = loop.create_task(self._run(message))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif kind == "validate":
                    self._validate(message)
                elif kind == "cancel":
                    self._cancel(message["id"])
        # The scheduler closed our stdin: it stopped, or died. Nothing is left to report to.
        os._exit(0)

    def _beat(self) -> None:
        self.beat_at = time.monotonic()
        asyncio.get_running_loop().call_later(self._beat_seconds, self._beat)

    def _validate(self, message: Message) -> None:
        """Check params against the job's model, for the scheduler (which has no task
        classes): the model's validators are task code, and run here."""
        job_type = message["job"]
        model = JobRegistry.get_params_model(job_type)
        problem: ParamsProblem | None = None
        if model is not None:
            try:
                validated = validate_params(model, message["params"])
            except Exception as error:  # a validator that raises something else
                error_data = {"loc": [], "msg": summarize(error), "type": "validator_error"}
                validated = ParamsProblem(model.__name__, (error_data,), summarize(error))
            problem = validated if isinstance(validated, ParamsProblem) else None
        answer = None if problem is None else problem.as_data()
        self._channel.send({"k": "validated", "id": message["id"], "problem": answer})

    def _cancel(self, key: int) -> None:
        """An operator cancels run `key`: its body is cancelled, and its result (`cancelled`)
        goes back once the body has ended. One that does not end is the supervisor's to kill."""
        cancel = self._cancels.get(key)
        if cancel is not None and not cancel.done():
            log.info("run cancellation received", key=key)
            cancel.set_result(None)

    async def _run(self, message: Message) -> None:
        job_type, key = message["job"], message["id"]
        bind_run(job_type, message["run_id"], message["attempt"])  # this task's context only
        cancel = self._cancels[key] = asyncio.get_running_loop().create_future()
        try:
            result = await self._attempt(job_type, message, cancel)
        except Exception as error:  # a bug of ours: the run fails, the worker lives on
            log.exception("worker could not run the attempt")
            result = BodyResult(Outcome.FAILURE, f"worker error: {error!r}")
        finally:
            del self._cancels[key]
        self._channel.send({"k": "done", "id": key, **result.as_data()})

    async def _attempt(
        self, job_type: str, message: Message, cancel: asyncio.Future[None]
    ) -> BodyResult:
        config = self._jobs.get(job_type)
        if config is None or not JobRegistry.is_registered(job_type):
            # Its task file changed between discovery and this worker's start (a reload
            # follows): the run is skipped, not failed and retried with a backoff.
            why = f"job {job_type!r} is not loaded in this worker: its task file failed to import"
            return BodyResult(Outcome.SKIPPED, why, skip_reason=SkipReason.NOT_LOADED)
        meta = JobRegistry.get(job_type)
        scheduled = message.get("scheduled")
        context = JobContext(
            JobType(job_type),
            config,
            message["run_id"],
            message["attempt"],
            None if scheduled is None else datetime.fromisoformat(scheduled),
            params=message.get("params") or {},
        )
        checked = with_validated_params(context)
        if isinstance(checked, BodyResult):
            return checked
        context = checked
        key, board = message["id"], self._board
        resources = await board.on_loop(key, acquire_requirements(meta.requirements))
        if isinstance(resources, BodyResult):
            return resources
        if resources:
            context = context.with_resources(resources)
        # A plain-def body stays on the board until its thread ends, even past its timeout.
        slot = board.enter_thread(key) if meta.synchronous else None
        result = await invoke(
            JobRegistry.get_task_class(job_type),
            context,
            config.timeout_seconds,
            synchronous=meta.synchronous,
            wrap=None if meta.synchronous else functools.partial(board.on_loop, key),
            cancel=cancel,
        )
        if result.outcome != Outcome.TIMEOUT:
            board.leave(slot)
        if result.outcome == Outcome.TIMEOUT and meta.synchronous:
            # Its thread cannot be stopped: take no new runs, and let the supervisor end us.
            self._channel.send({"k": "retire", "why": f"a timed-out run of {job_type} is stuck"})
        return result


def watch(worker: Worker, channel: Channel, threshold: float, parent: int) -> None:
    """The watchdog thread: report a blocked loop (once per episode, with its run), and exit
    when the scheduler that started this worker is gone."""
    main = threading.main_thread().ident
    blocked_since: float | None = None
    while True:
        time.sleep(beat_seconds(threshold))
        if os.getppid() != parent:
            os._exit(0)
        silent = time.monotonic() - worker.beat_at
        if silent > threshold and blocked_since is None:
            blocked_since = worker.beat_at
            frame = sys._current_frames().get(main or 0)
            channel.send_now({"k": "blocked", "seconds": round(silent, 3), **_culprit(frame)})
        elif silent <= threshold and blocked_since is not None:
            seconds = round(time.monotonic() - blocked_since, 3)
            channel.send_now({"k": "unblocked", "seconds": seconds})
            blocked_since = None


def _culprit(frame: types.FrameType | None) -> dict[str, Any]:
    """The run whose code holds the loop, and the line it is on."""
    where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else "unknown"
    while frame is not None:
        if frame.f_code is _contained.__code__:
            context = frame.f_locals.get("context")
            if isinstance(context, JobContext):
                return {"job": str(context.job_type), "run_id": context.run_id, "where": where}
        frame = frame.f_back
    return {"job": None, "run_id": None, "where": where}


def main() -> None:
    read_fd, write_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # task code that prints writes to the log stream, not into the protocol
    init = read_init(read_fd)
    configure_logging(init["log_level"], init["log_format"], cache=True)
    tasks_dir = Path(init["tasks_dir"])
    report = discover(tasks_dir, [tasks_dir / name for name in init["files"]])
    jobs = {job_type: JobConfig.model_validate(c) for job_type, c in init["jobs"].items()}
    choice: EventLoopChoice = init["event_loop"]
    run_on_loop(_serve(jobs, init, report.failures, read_fd, write_fd), choice)


async def _serve(
    jobs: dict[str, JobConfig], init: Message, failures: Any, read_fd: int, write_fd: int
) -> None:
    channel = Channel(write_fd, asyncio.get_running_loop())
    threshold = init["watchdog_seconds"]
    worker = Worker(jobs, channel, Board(init["board"]), beat_seconds(threshold))
    threading.Thread(
        target=watch,
        args=(worker, channel, threshold, os.getppid()),
        name="watchdog",
        daemon=True,
    ).start()
    channel.send_now({"k": "ready", "pid": os.getpid(), "failed": [str(f) for f in failures]})
    await worker.serve(read_fd)


if __name__ == "__main__":
    main()
