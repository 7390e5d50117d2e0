"""Each job's effective configuration: decorator <- config file <- environment, validated.

Environment variables are `<JOB_TYPE>_<OPTION>`, or the older `<JOB_TYPE>_RUNNER_<OPTION>`,
matched case-insensitively; the plain form wins when both are set. The config file is TOML with
one table per job: `[jobs.my_job]` holding `interval_seconds = 300`. Every problem is collected,
each naming the variable (or file and key) and the value, so one start-up shows them all.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from .metadata import JobMetadata
from .options import OVERRIDABLE_OPTIONS, SCHEDULE_OPTIONS, JobConfig
from .suggestions import closest, did_you_mean

OriginKind = Literal["environment", "config file"]


@dataclass(frozen=True, slots=True)
class ValueOrigin:
    """Where an overridden option's value came from."""

    kind: OriginKind
    where: str  # the variable's name, or "<file> [jobs.<job>] <key>"
    raw: object

    def __str__(self) -> str:
        return f"{self.kind} {self.where}={self.raw!r}"


@dataclass(frozen=True)
class ResolvedJob:
    """A job with its effective configuration and where each overridden value came from."""

    metadata: JobMetadata
    config: JobConfig
    origins: Mapping[str, ValueOrigin] = field(default_factory=dict)

    @property
    def job_type(self) -> str:
        return self.metadata.job_type


@dataclass(frozen=True)
class ResolvedConfig:
    jobs: dict[str, ResolvedJob]
    problems: tuple[str, ...]
    warnings: tuple[str, ...]


def env_names(job_type: str, option: str) -> tuple[str, str]:
    """The plain and the backwards-compatible environment variable names of one option."""
    prefix = job_type.upper()
    return f"{prefix}_{option.upper()}", f"{prefix}_RUNNER_{option.upper()}"


def resolve_job_configs(
    jobs: Iterable[JobMetadata],
    environ: Mapping[str, str],
    config_file: Path | None = None,
) -> ResolvedConfig:
    jobs = list(jobs)
    problems: list[str] = []
    warnings: list[str] = []
    known = [meta.job_type for meta in jobs]
    file_tables = _read_config_file(config_file, known, problems, warnings) if config_file else {}
    env = _index_environment(environ, warnings)

    resolved: dict[str, ResolvedJob] = {}
    problems.extend(_ambiguous_names(known, env))
    known_set = frozenset(known)
    for meta in jobs:
        origins = _file_overrides(config_file, file_tables.get(meta.job_type, {}), meta, problems)
        origins.update(_env_overrides(meta.job_type, env, warnings, known_set))
        config = _validate(meta, origins, problems)
        if config is not None:
            resolved[meta.job_type] = ResolvedJob(meta, config, origins)

    warnings.extend(_typo_warnings(env, known))
    return ResolvedConfig(resolved, tuple(problems), tuple(warnings))


def _index_environment(
    environ: Mapping[str, str], warnings: list[str]
) -> dict[str, tuple[str, str]]:
    """Upper-cased name -> (name as set, value); variable names are matched case-insensitively."""
    index: dict[str, tuple[str, str]] = {}
    for name, value in sorted(environ.items()):
        key = name.upper()
        if key in index and index[key][1] != value:
            warnings.append(
                f"environment variables {index[key][0]} and {name} differ only in case and "
                f"disagree; using {index[key][0]}={index[key][1]!r}"
            )
            continue
        index.setdefault(key, (name, value))
    return index


def _ambiguous_names(known_jobs: list[str], env: Mapping[str, tuple[str, str]]) -> list[str]:
    """With jobs `foo` and `foo_runner`, FOO_RUNNER_ENABLED could mean either: an error."""
    plain = {env_names(job, option)[0]: job for job in known_jobs for option in OVERRIDABLE_OPTIONS}
    problems = []
    for job in known_jobs:
        for option in OVERRIDABLE_OPTIONS:
            own, runner = env_names(job, option)
            if runner in env and runner in plain:
                problems.append(
                    f"environment variable {env[runner][0]} is ambiguous: it sets {option} of "
                    f"job {plain[runner]!r}, and in the older _RUNNER_ form {option} of job "
                    f"{job!r}; use {own} for {job!r} (the _RUNNER_ form is not read for it)"
                )
    return problems


def _env_overrides(
    job_type: str,
    env: Mapping[str, tuple[str, str]],
    warnings: list[str],
    known: frozenset[str],
) -> dict[str, ValueOrigin]:
    origins: dict[str, ValueOrigin] = {}
    for option in OVERRIDABLE_OPTIONS:
        plain_name, runner_name = env_names(job_type, option)
        plain = env.get(plain_name)
        # The _RUNNER_ form of an ambiguous name belongs to the other job (an error says so).
        ambiguous = runner_name.removesuffix(f"_{option.upper()}").lower() in known
        runner = None if ambiguous else env.get(runner_name)
        chosen = plain or runner
        if chosen is None:
            continue
        if plain and runner and plain[1].strip().lower() != runner[1].strip().lower():
            warnings.append(
                f"{plain[0]}={plain[1]!r} and {runner[0]}={runner[1]!r} disagree; "
                f"using {plain[0]} (the plain form wins over the _RUNNER_ form)"
            )
        origins[option] = ValueOrigin("environment", chosen[0], chosen[1].strip())
    return origins


def _read_config_file(
    path: Path, known_jobs: list[str], problems: list[str], warnings: list[str]
) -> dict[str, dict[str, object]]:
    """The `[jobs.<job_type>]` tables of the TOML config file."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        problems.append(f"config file {path}: cannot be read: {error.strerror or error}")
        return {}
    except tomllib.TOMLDecodeError as error:
        problems.append(f"config file {path}: not valid TOML: {error}")
        return {}
    for section in document.keys() - {"jobs"}:
        problems.append(
            f"config file {path}: unknown top-level key {section!r} (expected [jobs.*])"
        )
    jobs = document.get("jobs", {})
    if not isinstance(jobs, dict):
        problems.append(f"config file {path}: 'jobs' must be a table of [jobs.<job_type>] tables")
        return {}
    tables: dict[str, dict[str, object]] = {}
    for job_type, table in jobs.items():
        if not isinstance(table, dict):
            problems.append(f"config file {path}: [jobs.{job_type}] must be a table")
        elif job_type not in known_jobs:
            warnings.append(
                f"config file {path}: [jobs.{job_type}] matches no discovered job"
                f"{did_you_mean(job_type, known_jobs)}"
            )
        else:
            tables[job_type] = table
    return tables


def _file_overrides(
    path: Path | None, table: Mapping[str, object], meta: JobMetadata, problems: list[str]
) -> dict[str, ValueOrigin]:
    origins: dict[str, ValueOrigin] = {}
    for key, value in table.items():
        where = f"{path} [jobs.{meta.job_type}] {key}"
        if key in OVERRIDABLE_OPTIONS:
            origins[key] = ValueOrigin("config file", where, value)
        else:
            problems.append(
                f"config file {where}: {key!r} is not an option that can be configured"
                f"{did_you_mean(key, OVERRIDABLE_OPTIONS)}"
                f" (options: {', '.join(OVERRIDABLE_OPTIONS)})"
            )
    return origins


def _validate(
    meta: JobMetadata, origins: Mapping[str, ValueOrigin], problems: list[str]
) -> JobConfig | None:
    values = meta.defaults.model_dump()
    overridden = [option for option in SCHEDULE_OPTIONS if option in origins]
    if len(overridden) == 1:  # an override of the schedule replaces the decorator's kind of it
        values.update(dict.fromkeys(SCHEDULE_OPTIONS))
        if overridden == ["interval_seconds"] and "timezone" not in origins:
            values["timezone"] = None
    values.update((option, origin.raw) for option, origin in origins.items())
    try:
        return JobConfig.model_validate(values)
    except ValidationError as error:
        for detail in error.errors(include_url=False):
            message = str(detail["msg"]).removeprefix("Value error, ")
            option = str(detail["loc"][0]) if detail["loc"] else ""
            if option in origins:
                problems.append(f"{origins[option]}: {option}: {message}")
            else:  # a rule across options; name every overridden value it involves
                culprits = ", ".join(str(origin) for origin in origins.values())
                problems.append(f"job {meta.job_type!r}: {message} (set by {culprits})")
        return None


def _typo_warnings(env: Mapping[str, tuple[str, str]], known_jobs: list[str]) -> list[str]:
    """Warn about variables that look like job overrides but match no job or no option."""
    valid = {
        name for job in known_jobs for opt in OVERRIDABLE_OPTIONS for name in env_names(job, opt)
    }
    prefixes = {job.upper(): job for job in known_jobs}
    upper_options = [option.upper() for option in OVERRIDABLE_OPTIONS]
    suffixes = tuple(f"_{option}" for option in upper_options)
    warnings = []
    for key, (name, _) in sorted(env.items()):
        if key in valid or key.startswith("SCHEDULER_"):
            continue
        matching = [p for p in prefixes if key.startswith(p + "_")]
        job_prefix = max(matching, key=len, default=None)
        if job_prefix is not None:
            option = key.removeprefix(job_prefix + "_").removeprefix("RUNNER_")
            hint = closest(f"{job_prefix}_{option}", valid, cutoff=0.6)
            warnings.append(
                f"environment variable {name} matches no option of job {prefixes[job_prefix]!r}"
                + (f"; did you mean {hint}?" if hint else f" (options: {', '.join(upper_options)})")
            )
        elif key.endswith(suffixes):
            hint = closest(key, valid, cutoff=0.8)
            if hint:
                warnings.append(f"environment variable {name} matches no job; did you mean {hint}?")
    return warnings
