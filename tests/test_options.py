"""Every decorator option does at run time what it promises: one end-to-end test each, against
the real service in a subprocess, each able to fail if the option did nothing."""

from __future__ import annotations

import itertools
import math

import pytest

from scheduler import JobPriority
from scheduler.records import RunRecord
from tests.support import ServiceFactory, task_source, wait_until

QUICK = "return [RunnerResult(success=True)]"
FAIL = "raise RuntimeError(f'boom on attempt {context.attempt}')"


def gap(earlier: RunRecord, later: RunRecord) -> float:
    assert earlier.finished_at is not None
    return (later.started_at - earlier.finished_at).total_seconds()


@pytest.fixture(autouse=True, params=["process", "inline"])
def execution(request: pytest.FixtureRequest, services: ServiceFactory) -> str:
    """Run semantics are the same wherever bodies run: every test here runs in both modes."""
    mode = str(request.param)
    services.defaults["SCHEDULER_EXECUTION"] = mode
    return mode


def test_timeout_cancels_the_run_records_it_and_frees_the_slot(services: ServiceFactory) -> None:
    services.write_task(
        "sleeper.py",
        task_source(
            "sleeper",
            "await asyncio.sleep(30)\n" + QUICK,
            interval_seconds=0.5,
            timeout_seconds=0.3,
            idempotent=False,
        ),
    )
    services()
    runs = services.wait_for_runs("sleeper", 3, outcome="timeout")
    for run in runs:
        assert run.error == "timed out after 0.3s"
        assert run.duration_seconds is not None and 0.29 < run.duration_seconds < 1.0
        assert run.attempt == 1 and run.dead_letter  # not idempotent: never retried
    # The slot was free for each next run: a skip may only happen while a run still held it
    # (on a loaded machine a run can start late and overlap the next slot).
    for skip in services.finished("sleeper", "skipped"):
        holders = [r for r in runs if r.started_at <= skip.started_at < r.finished_at]  # type: ignore[operator]
        assert holders, f"{skip} was skipped although no run held the slot"


def test_idempotent_job_is_retried_after_a_timeout(services: ServiceFactory) -> None:
    services.write_task(
        "slowpoke.py",
        task_source(
            "slowpoke",
            "await asyncio.sleep(30 if context.attempt == 1 else 0)\n" + QUICK,
            interval_seconds=3600,
            timeout_seconds=0.3,
            max_retries=1,
            retry_delay_seconds=0.1,
        ),
    )
    services()
    (success,) = services.wait_for_runs("slowpoke", 1)
    (timeout,) = services.finished("slowpoke", "timeout")
    assert (timeout.attempt, success.attempt) == (1, 2)
    assert timeout.run_id == success.run_id
    assert not timeout.dead_letter and not success.dead_letter


def test_failed_run_is_retried_with_exponential_backoff(services: ServiceFactory) -> None:
    services.write_task(
        "flaky.py",
        task_source("flaky", FAIL, interval_seconds=3600, max_retries=2, retry_delay_seconds=0.3),
    )
    services()
    attempts = services.wait_for_runs("flaky", 3, outcome="failure")
    assert [r.attempt for r in attempts] == [1, 2, 3]
    assert len({r.run_id for r in attempts}) == 1
    assert [r.error for r in attempts] == [f"RuntimeError: boom on attempt {n}" for n in (1, 2, 3)]
    assert [r.dead_letter for r in attempts] == [False, False, True]
    first, second = gap(attempts[0], attempts[1]), gap(attempts[1], attempts[2])
    assert 0.3 <= first < 0.3 * 1.25 + 0.2, first  # base delay plus up to 25 % jitter
    assert 0.6 <= second < 0.6 * 1.25 + 0.2, second  # doubled
    assert len(services.runs("flaky")) == 3  # and no fourth attempt


def test_a_retry_that_succeeds_ends_the_run(services: ServiceFactory) -> None:
    services.write_task(
        "second_time.py",
        task_source(
            "second_time",
            "if context.attempt == 1:\n    raise RuntimeError('first try')\n" + QUICK,
            interval_seconds=3600,
            max_retries=5,
            retry_delay_seconds=0.05,
        ),
    )
    services()
    (success,) = services.wait_for_runs("second_time", 1)
    assert success.attempt == 2
    assert [r.attempt for r in services.runs("second_time")] == [1, 2]


def test_non_retryable_error_is_not_retried(services: ServiceFactory) -> None:
    services.write_task(
        "hopeless.py",
        task_source(
            "hopeless",
            "raise NonRetryableError('bad input: no such account')",
            interval_seconds=3600,
            max_retries=3,
            retry_delay_seconds=0.05,
        ),
    )
    services()
    (run,) = services.wait_for_runs("hopeless", 1, outcome="failure")
    assert run.dead_letter and run.attempt == 1
    assert run.error == "NonRetryableError: bad input: no such account"


@pytest.mark.parametrize(
    ("urgent_priority", "first"),
    [(JobPriority.CRITICAL, "zz_crit"), (JobPriority.LOW, "lowly")],
)
def test_waiting_runs_start_by_priority_then_first_come(
    services: ServiceFactory, urgent_priority: JobPriority, first: str
) -> None:
    # With one worker, "blocker" holds it for 1.5 s. "lowly" falls due before "zz_crit" (their
    # first runs are spread by job type: blocker 0.18 s, lowly 0.28 s, zz_crit 0.34 s), so
    # first-come alone would start lowly first; a higher priority must overtake it.
    services.write_task(
        "blocker.py",
        task_source("blocker", "await asyncio.sleep(1.5)\n" + QUICK, interval_seconds=3600),
    )
    services.write_task(
        "lowly.py", task_source("lowly", QUICK, interval_seconds=3600, priority=JobPriority.LOW)
    )
    services.write_task(
        "zz_crit.py", task_source("zz_crit", QUICK, interval_seconds=3600, priority=urgent_priority)
    )
    services(SCHEDULER_MAX_WORKERS="1")
    (lowly,) = services.wait_for_runs("lowly", 1)
    (urgent,) = services.wait_for_runs("zz_crit", 1)
    (blocker,) = services.wait_for_runs("blocker", 1)
    assert lowly.scheduled_at is not None and urgent.scheduled_at is not None
    assert blocker.started_at < lowly.scheduled_at < urgent.scheduled_at  # both waited
    order = sorted([lowly, urgent], key=lambda r: r.started_at)
    assert order[0].job_type == first
    assert blocker.finished_at is not None and order[0].started_at >= blocker.finished_at


def test_preserve_order_runs_every_time_in_order_without_overlap(services: ServiceFactory) -> None:
    body = "await asyncio.sleep(0.35)\n" + QUICK
    services.write_task(
        "ordered.py", task_source("ordered", body, interval_seconds=0.2, preserve_order=True)
    )
    services.write_task("unordered.py", task_source("unordered", body, interval_seconds=0.2))
    services()
    ordered = services.wait_for_runs("ordered", 6)
    scheduled = [r.scheduled_at for r in ordered]
    assert scheduled == sorted(scheduled)
    steps = [(b - a).total_seconds() for a, b in itertools.pairwise(scheduled)]  # type: ignore[operator]
    assert all(abs(step - 0.2) < 0.01 for step in steps), steps  # none coalesced or dropped
    for earlier, later in itertools.pairwise(ordered):
        assert gap(earlier, later) >= 0  # never overlapping
    assert not [r for r in services.finished("ordered", "skipped")]
    # The same job without preserve_order drops the runs that fall due while one is running.
    wait_until(lambda: services.finished("unordered", "skipped"), what="unordered skips")
    assert {r.skip_reason for r in services.finished("unordered", "skipped")} == {"max_instances"}


def test_max_concurrent_bounds_overlapping_runs(services: ServiceFactory) -> None:
    services.write_task(
        "parallel.py",
        task_source(
            "parallel", "await asyncio.sleep(1)\n" + QUICK, interval_seconds=0.2, max_concurrent=2
        ),
    )
    services()
    runs = services.wait_for_runs("parallel", 4)
    wait_until(lambda: services.finished("parallel", "skipped"), what="max_instances skips")
    events = sorted(
        [(r.started_at, 1) for r in runs] + [(r.finished_at, -1) for r in runs],  # type: ignore[misc]
    )
    running = list(itertools.accumulate(delta for _, delta in events))
    assert max(running) == 2  # parallel runs happen, and never more than two
    skipped = services.finished("parallel", "skipped")
    assert {r.skip_reason for r in skipped} == {"max_instances"}
    assert "max_concurrent reached" in (skipped[0].error or "")


def test_dependency_that_never_succeeded_or_failed_last_blocks_the_run(
    services: ServiceFactory,
) -> None:
    services.write_task(
        "upstream.py",
        task_source(
            "upstream",
            "marker = pathlib.Path(os.environ['MARK'])\n"
            "if marker.exists():\n    raise NonRetryableError('down')\n"
            "marker.touch()\n" + QUICK,
            interval_seconds=0.6,
            max_retries=0,
        ),
    )
    services.write_task(
        "downstream.py",
        task_source("downstream", QUICK, interval_seconds=0.25, dependencies=["upstream"]),
    )
    services(MARK=str(services.workdir / "upstream.mark"))
    services.wait_for_runs("upstream", 1, outcome="failure")

    def reasons() -> set[str]:
        return {r.error or "" for r in services.finished("downstream", "skipped")}

    wait_until(
        lambda: "dependency 'upstream' ended with failure in its latest run" in reasons(),
        what="a skip because upstream failed",
    )
    skips = services.finished("downstream", "skipped")
    assert {r.skip_reason for r in skips} == {"dependency"}
    upstream_failed = services.finished("upstream", "failure")[0].finished_at
    assert upstream_failed is not None
    assert not [
        r for r in services.finished("downstream", "success") if r.started_at > upstream_failed
    ]


def test_dependency_that_is_running_blocks_the_run(services: ServiceFactory) -> None:
    services.write_task(
        "loader.py",
        task_source(
            "loader",
            "if pathlib.Path(os.environ['MARK']).exists():\n    await asyncio.sleep(3)\n"
            "pathlib.Path(os.environ['MARK']).touch()\n" + QUICK,
            interval_seconds=1,
        ),
    )
    services.write_task(
        "report.py", task_source("report", QUICK, interval_seconds=0.2, dependencies=["loader"])
    )
    services(MARK=str(services.workdir / "loader.mark"))
    services.wait_for_runs("report", 1)  # loader succeeded once: report runs
    wait_until(
        lambda: any(
            r.error == "dependency 'loader' is running"
            for r in services.finished("report", "skipped")
        ),
        what="a skip while loader runs",
    )


def test_job_with_unavailable_requirement_is_skipped_until_it_is_available(
    services: ServiceFactory,
) -> None:
    header = """
        @requirement("vault")
        def vault_token() -> str:
            path = pathlib.Path(os.environ["TOKEN_FILE"])
            if not path.exists():
                raise RequirementUnavailable(f"no token in {path}")
            return path.read_text()
    """
    body = "pathlib.Path(os.environ['OUT']).write_text(str(context.resources['vault']))\n" + QUICK
    services.write_task(
        "secretive.py",
        task_source("secretive", body, header=header, interval_seconds=0.2, requires_vault=True),
    )
    token, out = services.workdir / "token", services.workdir / "out"
    services(TOKEN_FILE=str(token), OUT=str(out))

    # Runs due before the workers are up may be skipped `max_instances` first.
    def first_skip() -> RunRecord | None:
        skips = services.finished("secretive", "skipped")
        return next((r for r in skips if r.skip_reason != "max_instances"), None)

    skip = wait_until(first_skip, what="a run of secretive skipped for its requirement")
    assert skip.skip_reason == "requirement"
    assert skip.error == f"requirement 'vault': no token in {token}"
    assert not out.exists()
    token.write_text("s3cr3t")
    services.wait_for_runs("secretive", 1)
    assert out.read_text() == "s3cr3t"  # the provider's value reached the run


def test_batch_size_reaches_the_task_and_env_overrides_it(services: ServiceFactory) -> None:
    body = """
        async def handle(batch: list[int]) -> list[RunnerResult]:
            return [RunnerResult(success=len(batch) == context.batch_size)]
        return await self.process_in_batches(range(10), context, handle)
    """
    services.write_task(
        "chunky.py", task_source("chunky", body, interval_seconds=3600, batch_size=5)
    )
    services.write_task(
        "chunkier.py", task_source("chunkier", body, interval_seconds=3600, batch_size=5)
    )
    services(CHUNKIER_BATCH_SIZE="3")
    (chunky,) = services.wait_for_runs("chunky", 1)
    (chunkier,) = services.wait_for_runs("chunkier", 1)
    assert (chunky.items_succeeded, chunky.items_failed) == (2, 0)
    # 10 items in batches of 3: three full batches and a last one of 1
    assert (chunkier.items_succeeded, chunkier.items_failed) == (math.ceil(10 / 3) - 1, 1)


def test_failed_items_are_counted_and_logged(services: ServiceFactory) -> None:
    body = """
        return [
            RunnerResult(success=True, message="ok"),
            RunnerResult(success=False, message="row 7 rejected"),
            RunnerResult(success=False, message="row 9 rejected"),
        ]
    """
    services.write_task("partial.py", task_source("partial", body, interval_seconds=3600))
    service = services()
    (run,) = services.wait_for_runs("partial", 1)
    assert (run.items_succeeded, run.items_failed) == (1, 2)
    line = service.wait_for_log("item failed", message="row 9 rejected")
    assert line["job_type"] == "partial" and line["run_id"] == run.run_id
    assert line["level"] == "warning"


def test_raising_task_fails_the_run(services: ServiceFactory) -> None:
    services.write_task(
        "raiser.py", task_source("raiser", FAIL, interval_seconds=3600, max_retries=0)
    )
    service = services()
    (run,) = services.wait_for_runs("raiser", 1, outcome="failure")
    assert run.error == "RuntimeError: boom on attempt 1" and run.dead_letter
    line = service.wait_for_log("run raised")
    assert line["run_id"] == run.run_id and "boom on attempt 1" in str(line.get("exception"))
