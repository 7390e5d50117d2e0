"""The command line, run as a real subprocess the way operators and CI pipelines run it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.conftest import FIXTURES, REPO_ROOT, WriteTask
from tests.support import run_cli

GOOD_TASK = """
    from scheduler import BaseTask, JobContext, RunnerResult, job

    @job("{job_type}", interval_seconds=30, requires_wallet=True)
    class Task(BaseTask[RunnerResult]):
        async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
            return []
"""


def scheduler(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env=env)


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "scheduler"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("list", "check"):
        assert command in result.stdout


def test_check_passes_on_the_example_tasks() -> None:
    result = scheduler("check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 3 job(s) in ")


def test_check_fails_listing_every_problem(tasks_dir: Path, write_task: WriteTask) -> None:
    write_task("good.py", GOOD_TASK.format(job_type="good"))
    write_task("broken.py", "def (:\n")
    result = scheduler(
        "check",
        "--tasks-dir",
        str(tasks_dir),
        env={"GOOD_INTERVAL_SECONDS": "-1", "GOOD_ENABLD": "yes"},
    )
    assert result.returncode == 1
    assert f"error: task file {tasks_dir / 'broken.py'}: SyntaxError" in result.stderr
    assert (
        "error: environment GOOD_INTERVAL_SECONDS='-1': interval_seconds: "
        "Input should be greater than or equal to 0.1" in result.stderr
    )
    assert (
        "warning: environment variable GOOD_ENABLD matches no option of job 'good'" in result.stderr
    )
    assert "check failed: 2 problem(s)" in result.stderr


def test_check_says_why_a_job_is_blocked_without_failing(
    tasks_dir: Path, write_task: WriteTask
) -> None:
    write_task("good.py", GOOD_TASK.format(job_type="good"))
    result = scheduler("check", "--tasks-dir", str(tasks_dir))
    assert result.returncode == 0, result.stderr
    assert (
        "warning: job 'good' is blocked: requirement 'wallet': no provider is registered; "
        'declare one in a task file: env_requirement("wallet", "VARIABLE")'
    ) in result.stderr
    assert result.stdout == (
        f"ok: 1 job(s) in {tasks_dir}; 1 blocked by an unavailable requirement (see the warnings)\n"
    )


#: What the README tells a user to add beside the seed example (its paragraph after it).
TWITTER_PROVIDER = """
    from scheduler import env_requirement

    env_requirement("twitter", "TWITTER_BEARER_TOKEN")
"""


def test_check_on_the_seed_example_says_how_to_provide_twitter(
    tasks_dir: Path, write_task: WriteTask
) -> None:
    write_task("my_awesome_job.py", (FIXTURES / "seed_example.py").read_text(encoding="utf-8"))
    bare = scheduler("check", "--tasks-dir", str(tasks_dir))
    assert bare.returncode == 0, bare.stderr
    assert (
        "warning: job 'my_awesome_job' is blocked: requirement 'twitter': no provider is "
        'registered; declare one in a task file: env_requirement("twitter", "VARIABLE") '
        '(available while that environment variable is set) or @requirement("twitter") on a '
        "function that returns what the run needs\n"
    ) in bare.stderr
    assert "1 blocked by an unavailable requirement" in bare.stdout
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    (shown,) = [line for line in readme.splitlines() if line.startswith("warning: job 'my_awe")]
    assert shown in bare.stderr.splitlines()  # the README shows what check really prints

    write_task("providers.py", TWITTER_PROVIDER)
    unset = scheduler("check", "--tasks-dir", str(tasks_dir))
    assert unset.returncode == 0, unset.stderr
    assert (
        "warning: job 'my_awesome_job' is blocked: requirement 'twitter': environment "
        "variable(s) not set: TWITTER_BEARER_TOKEN"
    ) in unset.stderr

    provided = scheduler("check", "--tasks-dir", str(tasks_dir), env={"TWITTER_BEARER_TOKEN": "t"})
    assert provided.returncode == 0, provided.stderr
    assert "warning" not in provided.stderr
    assert provided.stdout == f"ok: 1 job(s) in {tasks_dir}\n"


def dependent_jobs(write_task: WriteTask) -> None:
    """fetch (disabled) <- report <- summary, and off (disabled itself) <- fetch."""
    for job_type, options in [
        ("fetch", "enabled=False"),
        ("report", "dependencies=['fetch']"),
        ("summary", "dependencies=['report']"),
        ("off", "dependencies=['fetch'], enabled=False"),
    ]:
        write_task(
            f"{job_type}.py",
            f"""
            from scheduler import BaseTask, JobContext, RunnerResult, job

            @job("{job_type}", {options})
            class Task(BaseTask[RunnerResult]):
                async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
                    return []
            """,
        )


def test_check_fails_on_a_dependency_on_a_disabled_job(
    tasks_dir: Path, write_task: WriteTask
) -> None:
    dependent_jobs(write_task)
    result = scheduler("check", "--tasks-dir", str(tasks_dir))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: job 'report' depends on disabled job 'fetch': it never runs until 'fetch' is "
        "enabled (a job runs only after its dependencies' latest runs succeeded)",
        "error: job 'summary' depends on disabled job 'fetch' (through 'report'): it never runs "
        "until 'fetch' is enabled (a job runs only after its dependencies' latest runs "
        "succeeded)",
        "check failed: 2 problem(s)",
    ]
    enabled = scheduler("check", "--tasks-dir", str(tasks_dir), env={"FETCH_ENABLED": "true"})
    assert enabled.returncode == 0, enabled.stderr
    assert enabled.stdout == f"ok: 4 job(s) in {tasks_dir}\n"


def test_list_shows_jobs_behind_a_disabled_dependency_as_blocked(
    tasks_dir: Path, write_task: WriteTask
) -> None:
    dependent_jobs(write_task)
    result = scheduler("list", "--tasks-dir", str(tasks_dir))
    assert result.returncode == 1
    statuses = {row.split()[0]: row.split()[2] for row in result.stdout.splitlines()[1:5]}
    assert statuses == {
        "fetch": "disabled",
        "report": "blocked",
        "summary": "blocked",
        "off": "disabled",
    }
    assert (
        "  report: dependency 'fetch' is disabled: this job never runs until it is enabled\n"
        "  summary: dependency 'report' waits on disabled job 'fetch': this job never runs "
        "until 'fetch' is enabled\n"
    ) in result.stdout
    assert "error: job 'report' depends on disabled job 'fetch'" in result.stderr

    as_json = json.loads(scheduler("list", "--json", "--tasks-dir", str(tasks_dir)).stdout)
    report = next(job for job in as_json["jobs"] if job["job_type"] == "report")
    assert report["state"] == "blocked"  # the state names of /api/jobs
    assert report["state_reason"] == (
        "dependency 'fetch' is disabled: this job never runs until it is enabled"
    )
    assert any("'summary' depends on disabled job 'fetch'" in p for p in as_json["problems"])


def test_tasks_dir_from_environment(tasks_dir: Path, write_task: WriteTask) -> None:
    write_task("good.py", GOOD_TASK.format(job_type="from_env"))
    result = scheduler("check", env={"SCHEDULER_TASKS_DIR": str(tasks_dir)})
    assert result.returncode == 0, result.stderr
    assert f"ok: 1 job(s) in {tasks_dir}" in result.stdout


def test_bad_service_setting_is_a_clear_error() -> None:
    result = scheduler("check", env={"SCHEDULER_LOG_FORMAT": "xml"})
    assert result.returncode == 1
    assert "SCHEDULER_LOG_FORMAT='xml': Input should be 'json' or 'console'" in result.stderr


def test_list_shows_jobs_and_where_overrides_came_from(
    tmp_path: Path, tasks_dir: Path, write_task: WriteTask
) -> None:
    write_task("good.py", GOOD_TASK.format(job_type="good"))
    config = tmp_path / "jobs.toml"
    config.write_text("[jobs.good]\nbatch_size = 99\npriority = 'high'\n", encoding="utf-8")
    result = scheduler(
        "list",
        "--tasks-dir",
        str(tasks_dir),
        "--config-file",
        str(config),
        env={
            "good_runner_interval_seconds": "45",
            "SCHEDULER_DATABASE_URL": f"sqlite:///{tmp_path}/none.db",
        },
    )
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:3] == ["JOB", "TYPE", "NAME"]
    # Not stored yet (no service ran); its requirement is not asked (see the next test).
    assert row.split()[:8] == ["good", "Task", "unscheduled", "every", "45s", "at", "start", "HIGH"]
    assert "wallet" in row
    assert (
        "good.interval_seconds = 45 from environment good_runner_interval_seconds='45'"
        in result.stdout
    )
    assert (
        f"good.batch_size = 99 from config file {config} [jobs.good] batch_size=99" in result.stdout
    )
    assert "good.priority = HIGH from config file" in result.stdout


SLOW_PROVIDER_TASK = """
    import pathlib, time
    from scheduler import BaseTask, JobContext, RunnerResult, job, requirement

    @requirement("vault")
    def vault() -> str:
        pathlib.Path({marker!r}).touch()
        time.sleep(1)
        return "token"

    @job("needs_vault", interval_seconds=30, requires_vault=True)
    class Task(BaseTask[RunnerResult]):
        async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
            return []
"""


def test_list_asks_no_requirement_provider_and_check_does(
    tmp_path: Path, tasks_dir: Path, write_task: WriteTask
) -> None:
    marker = tmp_path / "asked"
    write_task("vault.py", SLOW_PROVIDER_TASK.format(marker=str(marker)))
    for args in (["list"], ["list", "--json"]):
        result = scheduler(*args, "--tasks-dir", str(tasks_dir))
        assert result.returncode == 0, result.stderr
        assert "needs_vault" in result.stdout
    assert not marker.exists(), "list asked a requirement provider (a slow one holds it up)"
    checked = scheduler("check", "--tasks-dir", str(tasks_dir))
    assert checked.returncode == 0, checked.stderr
    assert marker.exists()


def test_check_json_reports_what_the_text_does(tasks_dir: Path, write_task: WriteTask) -> None:
    write_task("good.py", GOOD_TASK.format(job_type="good"))  # requires a wallet: no provider
    write_task("bad.py", "raise ImportError('no wallet sdk')\n")
    result = scheduler("check", "--json", "--tasks-dir", str(tasks_dir))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert (report["ok"], report["jobs"]) == (False, ["good"])
    assert report["failures"] == [
        {"path": str(tasks_dir / "bad.py"), "error": "ImportError: no wallet sdk (line 1)"}
    ]
    assert list(report["blocked"]) == ["good"] and "wallet" in report["blocked"]["good"][0]
    (tasks_dir / "bad.py").unlink()
    fixed = scheduler("check", "--json", "--tasks-dir", str(tasks_dir))
    assert fixed.returncode == 0 and json.loads(fixed.stdout)["ok"] is True


def test_list_json_has_every_effective_option(tasks_dir: Path, write_task: WriteTask) -> None:
    (tasks_dir / "seed.py").write_text(
        (FIXTURES / "seed_example.py").read_text(encoding="utf-8"), encoding="utf-8"
    )
    write_task("good.py", GOOD_TASK.format(job_type="good"))
    result = scheduler(
        "list", "--json", "--tasks-dir", str(tasks_dir), env={"MY_AWESOME_JOB_ENABLED": "off"}
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    jobs = {entry["job_type"]: entry for entry in document["jobs"]}
    assert list(jobs) == ["good", "my_awesome_job"]
    awesome = jobs["my_awesome_job"]
    assert awesome["config"] == {
        "enabled": False,
        "interval_seconds": 120.0,
        "priority": "NORMAL",
        "max_retries": 3,
        "retry_delay_seconds": 30.0,
        "timeout_seconds": 300.0,
        "max_concurrent": 2,
        "batch_size": 10,
        "preserve_order": False,
        "idempotent": True,
        "cron": None,
        "timezone": None,
        "misfire_grace_seconds": None,
        "coalesce": None,
    }
    assert awesome["requirements"] == ["twitter"]
    assert awesome["overrides"] == {
        "enabled": {"source": "environment", "where": "MY_AWESOME_JOB_ENABLED", "value": "off"}
    }
    assert awesome["name"] == "My Awesome Job"
    assert awesome["source"].startswith(str(tasks_dir / "seed.py") + ":")
    assert document["failures"] == [] and document["problems"] == []


def test_list_exits_1_and_reports_broken_files(tasks_dir: Path, write_task: WriteTask) -> None:
    write_task("good.py", GOOD_TASK.format(job_type="good"))
    write_task("bad.py", "raise ImportError('no wallet sdk')\n")
    result = scheduler("list", "--json", "--tasks-dir", str(tasks_dir))
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert [job["job_type"] for job in document["jobs"]] == ["good"]
    assert document["failures"] == [
        {"path": str(tasks_dir / "bad.py"), "error": "ImportError: no wallet sdk (line 1)"}
    ]


CRON_TASK = """
    from scheduler import BaseTask, JobContext, RunnerResult, job

    @job("{job_type}", {schedule})
    class Task(BaseTask[RunnerResult]):
        async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
            return []
"""


def test_list_shows_each_schedule_and_when_it_runs_next(
    tasks_dir: Path, write_task: WriteTask, tmp_path: Path
) -> None:
    write_task("nightly.py", CRON_TASK.format(job_type="nightly", schedule='cron="30 2 * * *"'))
    write_task("ticker.py", CRON_TASK.format(job_type="ticker", schedule="interval_seconds=5"))
    env = {"NIGHTLY_TIMEZONE": "Asia/Tokyo", "SCHEDULER_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    result = scheduler("list", "--json", "--tasks-dir", str(tasks_dir), env=env)
    assert result.returncode == 0, result.stderr
    jobs = {entry["job_type"]: entry for entry in json.loads(result.stdout)["jobs"]}
    assert jobs["nightly"]["schedule"] == "cron 30 2 * * * (Asia/Tokyo)"
    assert jobs["ticker"]["schedule"] == "every 5s"
    # Not stored yet (no database: nothing is created): the next match, or at start.
    next_run = datetime.fromisoformat(jobs["nightly"]["next_run_time"])
    assert next_run.astimezone(ZoneInfo("Asia/Tokyo")).strftime("%H:%M") == "02:30"
    assert (jobs["ticker"]["next_run_time"], jobs["ticker"]["state"]) == (None, "unscheduled")
    assert not (tmp_path / "x.db").exists()
    table = scheduler("list", "--tasks-dir", str(tasks_dir), env=env).stdout
    assert "SCHEDULE" in table and "NEXT RUN (UTC)" in table
    assert "cron 30 2 * * * (Asia/Tokyo)" in table and f"{next_run:%Y-%m-%d %H:%M:%S}" in table
    assert "at start" in table


def test_history_run_elsewhere_says_so_and_creates_no_database(tmp_path: Path) -> None:
    result = run_cli("history", cwd=tmp_path)
    assert result.returncode == 1
    expected = tmp_path / "data" / "scheduler.db"
    assert f"no run history here: {expected} does not exist" in result.stderr
    assert not (tmp_path / "data").exists()  # a look creates nothing


def test_history_of_a_database_without_history_fails_and_migrates_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    result = run_cli("history", cwd=tmp_path, env={"SCHEDULER_DATABASE_URL": f"sqlite:///{empty}"})
    assert result.returncode == 1
    assert "cannot be read: " in result.stderr and "no such table" in result.stderr
    with sqlite3.connect(empty) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == []
