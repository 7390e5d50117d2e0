"""The `scheduler` command line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .catalog import JobCatalog, load_catalog
from .errors import SchedulerError
from .job_config import ResolvedJob
from .logs import configure_logging
from .options import JobPriority
from .settings import load_settings

F = TypeVar("F", bound=Callable[..., Any])


def catalog_options(command: F) -> F:
    """The options every command that discovers tasks shares."""
    command = click.option(
        "--verbose", "-v", is_flag=True, help="Also log discovery and configuration details."
    )(command)
    command = click.option(
        "--config-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="TOML file with [jobs.<job_type>] overrides  [env: SCHEDULER_CONFIG_FILE]",
    )(command)
    command = click.option(
        "--tasks-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="Folder of task files  [env: SCHEDULER_TASKS_DIR; default: ./tasks]",
    )(command)
    return command


def _catalog(tasks_dir: Path | None, config_file: Path | None, verbose: bool) -> JobCatalog:
    try:
        settings = load_settings(tasks_dir=tasks_dir, config_file=config_file)
        # The report is the output; log lines would only repeat it, unless asked for.
        configure_logging("DEBUG" if verbose else "CRITICAL", "console")
        return load_catalog(settings, os.environ)
    except SchedulerError as error:
        raise click.ClickException(str(error)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taskwarden", prog_name="scheduler")
def cli() -> None:
    """A persistent job scheduler: discovers @job tasks and runs them on their intervals."""


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@catalog_options
def list_command(
    tasks_dir: Path | None, config_file: Path | None, verbose: bool, as_json: bool
) -> None:
    """List discovered jobs, their effective settings and where overrides came from."""
    catalog = _catalog(tasks_dir, config_file, verbose)
    if as_json:
        click.echo(json.dumps(catalog_as_json(catalog), indent=2))
    else:
        click.echo(jobs_table(list(catalog.jobs.values())))
        for line in override_lines(list(catalog.jobs.values())):
            click.echo(line)
        _report(catalog)
    if not catalog.ok:
        sys.exit(1)


@cli.command()
@catalog_options
def check(tasks_dir: Path | None, config_file: Path | None, verbose: bool) -> None:
    """Validate task files and configuration; exit 1 if anything is wrong."""
    catalog = _catalog(tasks_dir, config_file, verbose)
    _report(catalog)
    if not catalog.ok:
        count = len(catalog.failures) + len(catalog.problems)
        click.echo(f"check failed: {count} problem(s)", err=True)
        sys.exit(1)
    click.echo(f"ok: {len(catalog.jobs)} job(s) in {catalog.discovery.tasks_dir}")


def _report(catalog: JobCatalog) -> None:
    for failure in catalog.failures:
        click.echo(f"error: task file {failure}", err=True)
    for problem in catalog.problems:
        click.echo(f"error: {problem}", err=True)
    for warning in catalog.warnings:
        click.echo(f"warning: {warning}", err=True)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _display(value: object) -> str:
    if isinstance(value, JobPriority):
        return value.name
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def jobs_table(jobs: list[ResolvedJob]) -> str:
    header = ("JOB TYPE", "NAME", "ENABLED", "INTERVAL", "PRIORITY", "CONCURRENT", "RETRIES",
              "TIMEOUT", "BATCH", "REQUIRES", "DEPENDS ON")  # fmt: skip
    rows = [header]
    for job in jobs:
        c, m = job.config, job.metadata
        rows.append((
            job.job_type, m.name, "yes" if c.enabled else "no", _seconds(c.interval_seconds),
            c.priority.name, str(c.max_concurrent),
            f"{c.max_retries} every {_seconds(c.retry_delay_seconds)}",
            _seconds(c.timeout_seconds), str(c.batch_size),
            ", ".join(m.requirements) or "-", ", ".join(m.dependencies) or "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def override_lines(jobs: list[ResolvedJob]) -> list[str]:
    lines = [
        f"  {job.job_type}.{option} = {_display(getattr(job.config, option))} from {origin}"
        for job in jobs
        for option, origin in job.origins.items()
    ]
    return ["", "Overridden values:", *lines] if lines else []


def job_as_json(job: ResolvedJob) -> dict[str, Any]:
    meta = job.metadata
    config = job.config.model_dump(mode="json")
    config["priority"] = job.config.priority.name
    return {
        "job_type": job.job_type,
        "name": meta.name,
        "description": meta.description,
        "task_class": meta.qualified_class_name,
        "source": str(meta.source),
        "config": config,
        "requirements": list(meta.requirements),
        "dependencies": list(meta.dependencies),
        "overrides": {
            option: {"source": origin.kind, "where": origin.where, "value": origin.raw}
            for option, origin in job.origins.items()
        },
    }


def catalog_as_json(catalog: JobCatalog) -> dict[str, Any]:
    return {
        "tasks_dir": str(catalog.discovery.tasks_dir),
        "jobs": [job_as_json(job) for job in catalog.jobs.values()],
        "failures": [{"path": str(f.path), "error": f.error} for f in catalog.failures],
        "problems": list(catalog.problems),
        "warnings": list(catalog.warnings),
    }


def main() -> None:
    cli()
