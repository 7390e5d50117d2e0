"""`scheduler run`, `run-job` and `history` as operators and developers run them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import ServiceFactory, run_cli, task_source

QUICK = "return [RunnerResult(success=True)]"


def test_run_job_succeeds_with_exit_0(tmp_path: Path, tasks_dir: Path) -> None:
    (tasks_dir / "hello.py").write_text(task_source("hello", QUICK), encoding="utf-8")
    result = run_cli("run-job", "hello", "--tasks-dir", str(tasks_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hello: success after 1 attempt(s), items 1 ok / 0 failed" in result.stdout


def test_run_job_retries_and_exits_1_on_failure(tmp_path: Path, tasks_dir: Path) -> None:
    (tasks_dir / "bad.py").write_text(
        task_source(
            "bad",
            "raise RuntimeError(f'attempt {context.attempt}')",
            max_retries=2,
            retry_delay_seconds=0.05,
        ),
        encoding="utf-8",
    )
    result = run_cli("run-job", "bad", "--tasks-dir", str(tasks_dir), cwd=tmp_path)
    assert result.returncode == 1
    assert "bad: failure after 3 attempt(s)" in result.stdout
    assert "RuntimeError: attempt 3" in result.stdout


def test_run_job_retries_at_once_unless_told_to_wait(tmp_path: Path, tasks_dir: Path) -> None:
    """A developer waits for the outcome, not for a 5-minute backoff; the attempts' own clock
    shows whether the delays were waited."""
    body = (
        "import time\n"
        "with open({log!r}, 'a') as f:\n"
        "    f.write(f'{{time.monotonic()}}\\n')\n"
        "raise RuntimeError(f'attempt {{context.attempt}}')"
    )
    log = tmp_path / "attempts.log"
    (tasks_dir / "flaky.py").write_text(
        task_source("flaky", body.format(log=str(log)), max_retries=2, retry_delay_seconds=0.6),
        encoding="utf-8",
    )
    result = run_cli("run-job", "flaky", "--json", "--tasks-dir", str(tasks_dir), cwd=tmp_path)
    assert result.returncode == 1
    answer = json.loads(result.stdout)
    assert (answer["status"], answer["attempts"]) == ("failure", 3)
    assert "RuntimeError: attempt 3" in answer["error"]
    times = [float(line) for line in log.read_text().split()]
    assert len(times) == 3 and times[-1] - times[0] < 0.6  # the delays (0.6 s, 1.2 s) not waited

    log.unlink()
    waited = run_cli(
        "run-job", "flaky", "--wait-retry-delays", "--tasks-dir", str(tasks_dir), cwd=tmp_path
    )
    assert waited.returncode == 1 and "flaky: failure after 3 attempt(s)" in waited.stdout
    times = [float(line) for line in log.read_text().split()]
    assert len(times) == 3 and times[1] - times[0] >= 0.6  # jittered upwards, never shorter


def test_run_job_honours_the_timeout(tmp_path: Path, tasks_dir: Path) -> None:
    (tasks_dir / "slow.py").write_text(
        task_source("slow", "await asyncio.sleep(60)", timeout_seconds=0.2, idempotent=False),
        encoding="utf-8",
    )
    result = run_cli("run-job", "slow", "--tasks-dir", str(tasks_dir), cwd=tmp_path)
    assert result.returncode == 1
    assert "slow: timeout after 1 attempt(s)" in result.stdout


def test_run_job_unknown_job_names_the_known_ones(tmp_path: Path, tasks_dir: Path) -> None:
    (tasks_dir / "hello.py").write_text(task_source("hello", QUICK), encoding="utf-8")
    result = run_cli("run-job", "helo", "--tasks-dir", str(tasks_dir), cwd=tmp_path)
    assert result.returncode == 1
    assert "no job 'helo'" in result.stderr and "known: hello" in result.stderr


def test_run_refuses_invalid_configuration(tmp_path: Path, tasks_dir: Path) -> None:
    (tasks_dir / "a.py").write_text(task_source("a", QUICK, dependencies=["b"]), encoding="utf-8")
    (tasks_dir / "b.py").write_text(task_source("b", QUICK, dependencies=["a"]), encoding="utf-8")
    (tasks_dir / "c.py").write_text(
        task_source("c", QUICK, dependencies=["nope"]), encoding="utf-8"
    )
    result = run_cli(
        "run",
        cwd=tmp_path,
        env={"SCHEDULER_TASKS_DIR": str(tasks_dir), "A_INTERVAL_SECONDS": "-1"},
    )
    assert result.returncode == 1
    assert "configuration is invalid" in result.stderr
    assert "A_INTERVAL_SECONDS='-1'" in result.stderr
    assert "dependency cycle: a -> b -> a" in result.stderr
    assert "job 'c' depends on unknown job 'nope'" in result.stderr


def test_run_refuses_an_in_memory_database(tmp_path: Path, tasks_dir: Path) -> None:
    result = run_cli(
        "run",
        cwd=tmp_path,
        env={"SCHEDULER_TASKS_DIR": str(tasks_dir), "SCHEDULER_DATABASE_URL": "sqlite://"},
    )
    assert result.returncode == 1
    assert "needs a SQLite database file or a PostgreSQL server" in result.stderr


def test_history_lists_runs_and_the_dead_letters(services: ServiceFactory) -> None:
    services.write_task("fine.py", task_source("fine", QUICK, interval_seconds=0.2))
    services.write_task(
        "doomed.py",
        task_source("doomed", "raise RuntimeError('no way')", interval_seconds=3600, max_retries=0),
    )
    service = services()
    services.wait_for_runs("fine", 3)
    services.wait_for_runs("doomed", 1, outcome="failure")
    assert service.stop() == 0
    env = {"SCHEDULER_DATABASE_URL": services.database_url}

    table = run_cli("history", cwd=services.workdir, env=env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["STARTED", "(UTC)", "JOB"]
    assert "fine" in table.stdout and "doomed" in table.stdout

    only = json.loads(run_cli("history", "fine", "--json", cwd=services.workdir, env=env).stdout)
    assert only and {row["job_type"] for row in only} == {"fine"}
    ran = [row for row in only if row["outcome"] == "success"]
    assert len(ran) >= 3 and all(row["duration_seconds"] >= 0 for row in ran)
    # A 0.2 s job's slots due while the workers start up are skipped: its run is still waiting.
    others = {(row["outcome"], row["skip_reason"]) for row in only if row not in ran}
    assert others <= {("skipped", "max_instances")}, others

    dead = run_cli("history", "--dead-letter", "--json", cwd=services.workdir, env=env)
    (row,) = json.loads(dead.stdout)
    assert (row["job_type"], row["outcome"], row["error"]) == (
        "doomed",
        "failure",
        "RuntimeError: no way",
    )
