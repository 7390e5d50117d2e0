"""Discovery in child processes: task files that hang, exit or crash at import cost only their
own jobs, and the process that asked never imports task code."""

from __future__ import annotations

import sys
from pathlib import Path

from scheduler import JobRegistry
from scheduler.isolated_discovery import discover_isolated, probe_requirements
from tests.conftest import WriteTask
from tests.support import ServiceFactory, run_cli, task_source

GOOD = task_source("good", "return [RunnerResult(success=True)]", interval_seconds=0.3)


def test_bad_files_cost_only_their_own_jobs(tasks_dir: Path, write_task: WriteTask) -> None:
    write_task("a_good.py", GOOD)
    write_task("b_hangs.py", "import time\ntime.sleep(60)\n")
    write_task("c_exits.py", "import os\nos._exit(5)\n")
    write_task("d_segfaults.py", "import ctypes\nctypes.string_at(0)\n")
    write_task("e_raises.py", "x = 1\nraise RuntimeError('boom')\n")
    write_task("f_good.py", GOOD.replace("'good'", "'good_too'"))
    found = discover_isolated(tasks_dir, timeout_seconds=1.0)
    assert [meta.job_type for meta in found.jobs] == ["good", "good_too"]
    errors = {f.path.name: f.error for f in found.report.failures}
    assert errors == {
        "b_hangs.py": "import did not finish within 1s (does it block at import?)",
        "c_exits.py": "it ended the discovery process with exit code 5",
        "d_segfaults.py": "it ended the discovery process: killed by SIGSEGV",
        "e_raises.py": "RuntimeError: boom (line 2)",
    }
    assert "raise RuntimeError('boom')" in next(
        f.traceback for f in found.report.failures if f.path.name == "e_raises.py"
    )
    assert found.report.job_files["good_too"] == tasks_dir.resolve() / "f_good.py"
    assert found.report.seconds < 10
    # This process holds the metadata, never the code.
    assert JobRegistry.is_registered("good")
    assert not [name for name in sys.modules if name.startswith("scheduler.tasks.")]


def test_requirements_are_probed_in_a_child(tasks_dir: Path, write_task: WriteTask) -> None:
    write_task(
        "providers.py",
        "from scheduler import env_requirement, requirement, RequirementUnavailable\n"
        "env_requirement('twitter', 'NO_SUCH_VARIABLE_SET')\n"
        "@requirement('wallet')\ndef wallet():\n    return 'ok'\n",
    )
    unavailable = probe_requirements(tasks_dir, ["twitter", "wallet", "nobody"], 5.0)
    assert unavailable == {
        "twitter": "requirement 'twitter': environment variable(s) not set: NO_SUCH_VARIABLE_SET",
        "nobody": "requirement 'nobody': no provider is registered; declare one in a task file: "
        'env_requirement("nobody", "VARIABLE") (available while that environment variable is set) '
        'or @requirement("nobody") on a function that returns what the run needs',
    }


def test_check_names_each_bad_file_and_shows_tracebacks_with_v(
    tasks_dir: Path, write_task: WriteTask
) -> None:
    write_task("good.py", GOOD)
    write_task("exits.py", "import sys\nsys.exit(9)\n")
    write_task("raises.py", "def f():\n    raise ValueError('deep')\nf()\n")
    plain = run_cli("check", "--tasks-dir", str(tasks_dir), cwd=tasks_dir.parent)
    assert plain.returncode == 1
    assert f"error: task file {tasks_dir / 'raises.py'}: ValueError: deep (line 2)" in plain.stderr
    assert "SystemExit: 9 (line 2)" in plain.stderr
    assert "Traceback" not in plain.stderr
    verbose = run_cli("check", "-v", "--tasks-dir", str(tasks_dir), cwd=tasks_dir.parent)
    assert "Traceback (most recent call last)" in verbose.stderr
    assert "raise ValueError('deep')" in verbose.stderr


def test_the_service_starts_past_a_file_that_hangs_at_import(services: ServiceFactory) -> None:
    services.write_task("good.py", GOOD)
    services.write_task("hangs.py", "import time\ntime.sleep(60)\n")
    service = services(SCHEDULER_DISCOVERY_TIMEOUT_SECONDS="1")
    services.wait_for_runs("good", 2)
    failed = service.wait_for_log("task file failed to import")
    assert failed["path"].endswith("hangs.py") and "within 1s" in failed["error"]
    assert service.stop() == 0
