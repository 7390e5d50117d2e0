from __future__ import annotations

import io
import json
import logging
import re
import textwrap
from pathlib import Path

import pytest

from scheduler import DiscoveryError, JobRegistry, JobType, discover
from scheduler.discovery import HELPER
from scheduler.logs import configure_logging
from tests.conftest import FIXTURES, REPO_ROOT, WriteTask
from tests.support import run_cli

SEED = REPO_ROOT.parent / "shared" / "seed" / "job-runner-auto-discovery.md"

GOOD_TASK = """
    from scheduler import BaseTask, JobContext, RunnerResult, job

    @job("{job_type}")
    class Task(BaseTask[RunnerResult]):
        async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
            return [RunnerResult(success=True)]
"""


def test_fixture_is_the_seed_example_verbatim() -> None:
    if not SEED.exists():
        pytest.skip(f"the seed document is not beside this checkout ({SEED})")
    block = re.search(r"```python\n(.*?)```", SEED.read_text(encoding="utf-8"), re.DOTALL)
    assert block is not None
    assert (FIXTURES / "seed_example.py").read_text(encoding="utf-8") == block.group(1)


def test_seed_example_pasted_verbatim_is_discovered(tasks_dir: Path) -> None:
    (tasks_dir / "my_awesome_job.py").write_text(
        (FIXTURES / "seed_example.py").read_text(encoding="utf-8"), encoding="utf-8"
    )
    report = discover(tasks_dir)
    assert report.failures == ()
    assert report.job_types == ("my_awesome_job",)
    meta = JobRegistry.get("my_awesome_job")
    assert JobType.MY_AWESOME_JOB == "my_awesome_job"
    assert meta.name == "My Awesome Job"
    assert meta.description == "Does awesome things"
    assert meta.defaults.interval_seconds == 120
    assert meta.defaults.max_concurrent == 2
    assert meta.requirements == ("twitter",)
    assert meta.module == "scheduler.tasks.my_awesome_job"


async def test_seed_example_executes(tasks_dir: Path) -> None:
    (tasks_dir / "seed.py").write_text(
        (FIXTURES / "seed_example.py").read_text(encoding="utf-8"), encoding="utf-8"
    )
    discover(tasks_dir)
    from scheduler import JobContext

    meta = JobRegistry.get("my_awesome_job")
    results = await JobRegistry.get_task_class("my_awesome_job")().execute(
        JobContext("my_awesome_job", meta.defaults, "r1")
    )
    assert [(r.success, r.message, r.items_processed) for r in results] == [(True, "Done!", 10)]  # type: ignore[attr-defined]


def test_broken_files_are_reported_and_the_others_still_discovered(
    tasks_dir: Path, write_task: WriteTask
) -> None:
    write_task("a_good.py", GOOD_TASK.format(job_type="good_a"))
    write_task("b_syntax.py", "def broken(:\n    pass\n")
    write_task("c_missing.py", "import module_that_does_not_exist\n")
    write_task("d_raises.py", "raise RuntimeError('boom at import')\n")
    write_task("e_exits.py", "import sys\nsys.exit(3)\n")
    write_task("f_good.py", GOOD_TASK.format(job_type="good_f"))
    report = discover(tasks_dir)
    assert report.job_types == ("good_a", "good_f")
    errors = {failure.path.name: failure.error for failure in report.failures}
    assert errors == {
        "b_syntax.py": "SyntaxError: invalid syntax (line 1)",
        "c_missing.py": "ModuleNotFoundError: No module named 'module_that_does_not_exist' "
        "(line 1)",
        "d_raises.py": "RuntimeError: boom at import (line 1)",
        "e_exits.py": "SystemExit: 3 (line 2)",
    }
    assert all(failure.path.is_absolute() for failure in report.failures)
    assert "boom at import" in next(f.traceback for f in report.failures if "raises" in str(f))
    assert report.job_files == {
        "good_a": tasks_dir / "a_good.py",
        "good_f": tasks_dir / "f_good.py",
    }


def test_jobs_of_a_file_that_fails_half_way_are_not_kept(
    tasks_dir: Path, write_task: WriteTask
) -> None:
    source = textwrap.dedent(GOOD_TASK.format(job_type="half_done"))
    write_task("half.py", source + "\nraise ValueError('late')\n")
    report = discover(tasks_dir)
    assert [f.error for f in report.failures] == ["ValueError: late (line 9)"]
    assert not JobRegistry.is_registered("half_done")
    assert "half_done" not in JobType


def test_duplicate_job_type_across_files_names_both(tasks_dir: Path, write_task: WriteTask) -> None:
    write_task("one.py", GOOD_TASK.format(job_type="dup"))
    write_task("two.py", GOOD_TASK.format(job_type="dup"))
    report = discover(tasks_dir)
    assert report.job_types == ("dup",)
    (failure,) = report.failures
    assert failure.path.name == "two.py"
    assert "DuplicateJobError: job type 'dup' is registered twice" in failure.error
    assert str(tasks_dir / "one.py") in failure.error
    assert str(tasks_dir / "two.py") in failure.error


def test_private_files_are_skipped_and_helpers_import_relatively(
    tasks_dir: Path, write_task: WriteTask
) -> None:
    write_task("_helpers.py", "GREETING = 'hi'\nraise_if_imported_as_task = True\n")
    write_task("_broken_private.py", "this is not python")
    write_task(
        "uses_helper.py",
        """
        from scheduler import BaseTask, JobContext, RunnerResult, job
        from ._helpers import GREETING

        @job("helped", description=GREETING)
        class Helped(BaseTask[RunnerResult]):
            async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
                return []
        """,
    )
    report = discover(tasks_dir)
    assert report.failures == ()
    assert report.modules == ("scheduler.tasks.uses_helper",)
    assert JobRegistry.get("helped").description == "hi"


def test_file_name_that_is_not_a_module_name_is_reported(
    tasks_dir: Path, write_task: WriteTask
) -> None:
    write_task("my-task.py", GOOD_TASK.format(job_type="dashed"))
    (failure,) = discover(tasks_dir).failures
    assert "'my-task.py' is not a valid Python module name" in failure.error


def test_rediscovery_reflects_changes_on_disk(tasks_dir: Path, write_task: WriteTask) -> None:
    write_task("a.py", GOOD_TASK.format(job_type="first_name"))
    assert discover(tasks_dir).job_types == ("first_name",)
    write_task("a.py", GOOD_TASK.format(job_type="second_name"))
    assert discover(tasks_dir).job_types == ("second_name",)
    assert [m.job_type for m in JobRegistry.list_jobs()] == ["second_name"]


def test_missing_tasks_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match="does not exist"):
        discover(tmp_path / "nowhere")


def test_discovery_logs_what_it_found(tasks_dir: Path, write_task: WriteTask) -> None:
    write_task("ok.py", GOOD_TASK.format(job_type="logged"))
    write_task("bad.py", "1/0\n")
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    discover(tasks_dir)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = next(r for r in records if r["event"] == "task file failed to import")
    assert failed["level"] == "error"
    assert failed["path"] == str(tasks_dir / "bad.py")
    assert failed["error"] == "ZeroDivisionError: division by zero (line 1)"
    summary = next(r for r in records if r["event"] == "discovery finished")
    assert summary["jobs"] == ["logged"]
    assert summary["failed_files"] == [str(tasks_dir / "bad.py")]
    assert summary["files"] == 2
    logging.getLogger().handlers.clear()


def test_files_that_give_no_job_are_logged_at_debug_with_why(
    tasks_dir: Path, write_task: WriteTask
) -> None:
    write_task("real.py", GOOD_TASK.format(job_type="real"))
    write_task("constants.py", "LIMIT = 3\n")
    write_task("_helpers.py", "GREETING = 'hi'\n")
    (tasks_dir / "nested").mkdir()
    write_task("nested/deep_job.py", GOOD_TASK.format(job_type="deep"))
    (tasks_dir / "__pycache__").mkdir()
    write_task("__pycache__/stale.py", "")  # never looked into
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream)
    report = discover(tasks_dir)
    assert report.job_types == ("real",)
    ignored = [
        (r["path"], r["why"])
        for r in map(json.loads, stream.getvalue().splitlines())
        if r["event"] == "task file ignored"
    ]
    assert ignored == [
        (str(tasks_dir / "_helpers.py"), HELPER),
        (str(tasks_dir / "constants.py"), "declares no @job"),
        (
            str(tasks_dir / "nested" / "deep_job.py"),
            "in a sub-folder: only top-level files are discovered",
        ),
    ]
    assert [(f.path, f.why) for f in report.ignored] == [(Path(path), why) for path, why in ignored]
    logging.getLogger().handlers.clear()


def test_check_v_names_the_files_that_give_no_job(tasks_dir: Path, write_task: WriteTask) -> None:
    write_task("real.py", GOOD_TASK.format(job_type="real"))
    write_task("constants.py", "LIMIT = 3\n")
    (tasks_dir / "nested").mkdir()
    write_task("nested/deep_job.py", GOOD_TASK.format(job_type="deep"))
    verbose = run_cli("check", "-v", "--tasks-dir", str(tasks_dir), cwd=tasks_dir.parent)
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout == f"ok: 1 job(s) in {tasks_dir}\n"
    lines = [line for line in verbose.stderr.splitlines() if "task file ignored" in line]
    assert len(lines) == 2, verbose.stderr
    assert f"path={tasks_dir / 'constants.py'} why='declares no @job'" in lines[0]
    assert f"path={tasks_dir / 'nested' / 'deep_job.py'} why='in a sub-folder: " in lines[1]
    quiet = run_cli("check", "--tasks-dir", str(tasks_dir), cwd=tasks_dir.parent)
    assert "task file ignored" not in quiet.stderr
