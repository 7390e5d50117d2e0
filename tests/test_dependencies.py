from __future__ import annotations

from typing import Any

from scheduler import BaseTask, JobContext, JobRegistry, RunnerResult, job
from scheduler.dependencies import dependency_problems, find_cycles


class Noop(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        return []


def declare(job_type: str, *needs: str, **options: Any) -> None:
    class Task(Noop):
        pass

    job(job_type, dependencies=list(needs), **options)(Task)


def test_known_acyclic_dependencies_are_fine() -> None:
    declare("fetch")
    declare("parse", "fetch")
    declare("report", "parse", "fetch")
    assert dependency_problems(JobRegistry.list_jobs()) == []


def test_unknown_dependency_is_named_with_a_suggestion() -> None:
    declare("fetch_prices")
    declare("report", "fetch_price")
    assert dependency_problems(JobRegistry.list_jobs()) == [
        "job 'report' depends on unknown job 'fetch_price'; did you mean 'fetch_prices'?"
    ]


def test_unknown_dependency_mentions_files_that_failed_to_import() -> None:
    declare("report", "fetch")
    (problem,) = dependency_problems(JobRegistry.list_jobs(), ["/tasks/fetch.py"])
    assert (
        "depends on unknown job 'fetch' (task files that failed to import: /tasks/fetch.py)"
        in problem
    )


def test_the_depending_job_is_never_suggested_for_its_own_dependency() -> None:
    declare("report_prices", "prices")  # 'prices' is most like 'report_prices' itself
    assert dependency_problems(JobRegistry.list_jobs()) == [
        "job 'report_prices' depends on unknown job 'prices'"
    ]


def test_failed_imports_are_named_in_preference_to_a_weak_match() -> None:
    declare("prices_report", "prices")
    declare("prices_export")  # alike enough for a did-you-mean, not enough to be a typo
    failed = ["/tasks/prices.py"]
    assert dependency_problems(JobRegistry.list_jobs(), failed) == [
        "job 'prices_report' depends on unknown job 'prices' "
        "(task files that failed to import: /tasks/prices.py)"
    ]


def test_a_likely_typo_is_still_suggested_beside_the_failed_imports() -> None:
    declare("fetch_prices")
    declare("report", "fetch_pricse")
    (problem,) = dependency_problems(JobRegistry.list_jobs(), ["/tasks/broken.py"])
    assert problem == (
        "job 'report' depends on unknown job 'fetch_pricse'; did you mean 'fetch_prices'? "
        "(task files that failed to import: /tasks/broken.py)"
    )


def test_cycles_are_named_as_paths() -> None:
    declare("a", "b")
    declare("b", "c")
    declare("c", "a")
    declare("d", "a")
    assert dependency_problems(JobRegistry.list_jobs()) == ["dependency cycle: a -> b -> c -> a"]


def test_find_cycles_reports_each_cycle_once() -> None:
    graph = {"x": ("y",), "y": ("x",), "p": ("q",), "q": ("p", "x")}
    assert sorted(map(tuple, find_cycles(graph))) == [("p", "q", "p"), ("x", "y", "x")]
