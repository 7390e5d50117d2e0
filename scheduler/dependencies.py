"""The dependency graph between jobs: unknown names and cycles are configuration problems, and
a dependency on a disabled job keeps its dependants from ever running."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .job_config import ResolvedJob
from .metadata import JobMetadata
from .suggestions import did_you_mean

#: How alike a name must be to be suggested while task files failed to import: the missing job
#: is then more likely in one of them than a misspelling of a job that did load.
TYPO_CUTOFF = 0.85


def unknown_dependencies(
    jobs: Iterable[JobMetadata], failed_files: Sequence[str] = ()
) -> list[str]:
    """One line per dependency on a job that is not registered.

    When task files failed to import, the missing job is most likely declared in one of them:
    the message says so, and suggests another name only if it is very close (a typo).
    """
    graph = {meta.job_type: meta.dependencies for meta in jobs}
    problems = []
    for job_type, needs in graph.items():
        for need in needs:
            if need in graph:
                continue
            others = [other for other in graph if other != job_type]  # never the job itself
            if failed_files:
                hint = did_you_mean(need, others, cutoff=TYPO_CUTOFF)
                hint += f" (task files that failed to import: {', '.join(failed_files)})"
            else:
                hint = did_you_mean(need, others)
            problems.append(f"job {job_type!r} depends on unknown job {need!r}{hint}")
    return problems


def dependency_cycles(jobs: Iterable[JobMetadata]) -> list[str]:
    graph = {meta.job_type: meta.dependencies for meta in jobs}
    return [f"dependency cycle: {' -> '.join(cycle)}" for cycle in find_cycles(graph)]


def dependency_problems(jobs: Iterable[JobMetadata], failed_files: Sequence[str] = ()) -> list[str]:
    """Every dependency on an unknown job, and every cycle, each as one readable line."""
    jobs = list(jobs)
    return [*unknown_dependencies(jobs, failed_files), *dependency_cycles(jobs)]


def disabled_dependencies(jobs: Mapping[str, ResolvedJob]) -> dict[str, tuple[str, ...]]:
    """Each enabled job that waits on a disabled job -> the path to it, from the job's own
    dependency to the disabled one (`("b", "a")`: it depends on 'b', which depends on disabled
    'a'). A run waits for the latest run of each dependency to have succeeded, and a disabled
    job never runs, so such a job never runs either."""
    paths: dict[str, tuple[str, ...]] = {}
    changed = True
    while changed:  # until no job is added: a job may wait on one only found blocked later
        changed = False
        for job_type, job in jobs.items():
            if job_type in paths or not job.config.enabled:
                continue
            path = _path_to_disabled(job.metadata.dependencies, jobs, paths)
            if path:
                paths[job_type] = path
                changed = True
    return {job_type: paths[job_type] for job_type in jobs if job_type in paths}


def _path_to_disabled(
    needs: Sequence[str], jobs: Mapping[str, ResolvedJob], paths: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    for need in needs:
        dependency = jobs.get(need)
        if dependency is not None and not dependency.config.enabled:
            return (need,)
        if need in paths:
            return (need, *paths[need])
    return ()  # unknown dependencies are reported as such, not here


def disabled_dependency_problem(job_type: str, path: Sequence[str]) -> str:
    """What `scheduler check` and the service's start-up say about one such job."""
    through = f" (through {' -> '.join(map(repr, path[:-1]))})" if len(path) > 1 else ""
    return (
        f"job {job_type!r} depends on disabled job {path[-1]!r}{through}: it never runs until "
        f"{path[-1]!r} is enabled (a job runs only after its dependencies' latest runs succeeded)"
    )


def disabled_dependency_reason(path: Sequence[str]) -> str:
    """Why such a job is blocked, for its state in `scheduler list` and the status."""
    if len(path) == 1:
        return f"dependency {path[0]!r} is disabled: this job never runs until it is enabled"
    return (
        f"dependency {path[0]!r} waits on disabled job {path[-1]!r}: this job never runs until "
        f"{path[-1]!r} is enabled"
    )


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
