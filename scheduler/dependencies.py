"""The dependency graph between jobs: unknown names and cycles are configuration problems."""

from __future__ import annotations

from collections.abc import Iterable

from .metadata import JobMetadata
from .suggestions import did_you_mean


def dependency_problems(jobs: Iterable[JobMetadata], failed_files: Iterable[str] = ()) -> list[str]:
    """Every dependency on an unknown job, and every cycle, each as one readable line."""
    graph = {meta.job_type: meta.dependencies for meta in jobs}
    broken = list(failed_files)
    problems = []
    for job_type, needs in graph.items():
        for need in needs:
            if need not in graph:
                hint = did_you_mean(need, graph)
                if not hint and broken:
                    hint = f" (task files that failed to import: {', '.join(broken)})"
                problems.append(f"job {job_type!r} depends on unknown job {need!r}{hint}")
    problems.extend(f"dependency cycle: {' -> '.join(cycle)}" for cycle in find_cycles(graph))
    return problems


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
