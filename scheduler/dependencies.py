"""The dependency graph between jobs: unknown names and cycles are configuration problems."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .metadata import JobMetadata
from .suggestions import did_you_mean


def unknown_dependencies(
    jobs: Iterable[JobMetadata], failed_files: Sequence[str] = ()
) -> list[str]:
    """One line per dependency on a job that is not registered.

    When task files failed to import, the missing job may be declared in one of them; the
    message says so.
    """
    graph = {meta.job_type: meta.dependencies for meta in jobs}
    problems = []
    for job_type, needs in graph.items():
        for need in needs:
            if need not in graph:
                hint = did_you_mean(need, graph)
                if not hint and failed_files:
                    hint = f" (task files that failed to import: {', '.join(failed_files)})"
                problems.append(f"job {job_type!r} depends on unknown job {need!r}{hint}")
    return problems


def dependency_cycles(jobs: Iterable[JobMetadata]) -> list[str]:
    graph = {meta.job_type: meta.dependencies for meta in jobs}
    return [f"dependency cycle: {' -> '.join(cycle)}" for cycle in find_cycles(graph)]


def dependency_problems(jobs: Iterable[JobMetadata], failed_files: Sequence[str] = ()) -> list[str]:
    """Every dependency on an unknown job, and every cycle, each as one readable line."""
    jobs = list(jobs)
    return [*unknown_dependencies(jobs, failed_files), *dependency_cycles(jobs)]


def find_cycles(graph: dict[str, tuple[str, ...]]) -> list[list[str]]:
    """Each cycle once, as a path that starts and ends at the same job."""
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycles.append([*path[path.index(node) :], node])
            return
        if node in done or node not in graph:
            return
        path.append(node)
        for need in graph[node]:
            visit(need, path)
        path.pop()
        done.add(node)

    for start in graph:
        visit(start, [])
    return cycles
