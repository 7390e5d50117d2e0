"""Discovery of N generated task files, against plain imports of the same files without `@job`.

Each measurement runs in a fresh interpreter, so module caches never carry over; "cold" removes
the bytecode caches first (a fresh container), "warm" keeps them (every later start).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import textwrap
from pathlib import Path

from bench import MEASURED_PYTHON

TASK_TEMPLATE = '''\
from dataclasses import dataclass

from ..base import BaseTask, JobContext, RunnerResult
from ..decorators import JobPriority, job


@dataclass
class Result{n}(RunnerResult):
    items: int = 0


@job("generated_job_{n}", interval_seconds={interval}, priority=JobPriority.HIGH, max_retries=2,
     timeout_seconds=30, batch_size=20, requires_workspace=True)
class GeneratedTask{n}(BaseTask[Result{n}]):
    """Generated job number {n}."""

    async def _execute_impl(self, context: JobContext) -> list[Result{n}]:
        return [Result{n}(success=True, items={n})]
'''

PLAIN_TEMPLATE = '''\
from dataclasses import dataclass

from scheduler.base import BaseTask, JobContext, RunnerResult


@dataclass
class Result{n}(RunnerResult):
    items: int = 0


class GeneratedTask{n}(BaseTask[Result{n}]):
    """Generated job number {n}."""

    async def _execute_impl(self, context: JobContext) -> list[Result{n}]:
        return [Result{n}(success=True, items={n})]
'''

MEASURE_DISCOVERY = """
import time, pathlib, sys
import scheduler.discovery as d
start = time.perf_counter()
report = d.discover(pathlib.Path(sys.argv[1]))
elapsed = time.perf_counter() - start
assert len(report.job_types) == int(sys.argv[2]) and not report.failures, report.failures
print(elapsed)
"""

MEASURE_PLAIN = """
import importlib, time, pathlib, sys
import scheduler.base
folder = pathlib.Path(sys.argv[1])
sys.path.insert(0, str(folder))
start = time.perf_counter()
for path in sorted(folder.glob("*.py")):
    importlib.import_module(path.stem)
print(time.perf_counter() - start)
"""


def write_files(folder: Path, count: int, template: str) -> None:
    folder.mkdir(parents=True)
    for n in range(count):
        source = template.format(n=n, interval=30 + n % 90)
        (folder / f"generated_{n:04d}.py").write_text(source, encoding="utf-8")


def measure(script: str, folder: Path, count: int, cold: bool) -> float:
    if cold:
        shutil.rmtree(folder / "__pycache__", ignore_errors=True)
    output = subprocess.run(
        [MEASURED_PYTHON, "-c", textwrap.dedent(script), str(folder), str(count)],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    ).stdout
    return float(output.strip().splitlines()[-1])


def main(count: int = 200, repeats: int = 7) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tasks, plain = Path(tmp) / "tasks", Path(tmp) / "plain"
        write_files(tasks, count, TASK_TEMPLATE)
        write_files(plain, count, PLAIN_TEMPLATE)
        print(f"discovery of {count} task files, median of {repeats} fresh processes")
        print(f"{'case':<6} {'discover()':>12} {'plain import':>13} {'ratio':>7}")
        for cold in (True, False):
            ours = statistics.median(
                measure(MEASURE_DISCOVERY, tasks, count, cold) for _ in range(repeats)
            )
            base = statistics.median(
                measure(MEASURE_PLAIN, plain, count, cold) for _ in range(repeats)
            )
            label = "cold" if cold else "warm"
            print(f"{label:<6} {ours * 1000:>10.1f}ms {base * 1000:>11.1f}ms {ours / base:>6.2f}x")


if __name__ == "__main__":
    main()
