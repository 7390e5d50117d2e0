"""The status page at `/`: server-rendered HTML that refreshes itself, linking each job to its
page (job_page.py) and each run to its own (run_page.py), and whose one action, cancelling a
run in progress, is a plain form (no JavaScript) that posts the admin token."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from .page_html import (
    RUN_ID,
    SHORT_ID,
    ago,
    cancel_form,
    cell,
    history_banner,
    html_cell,
    job_link,
    outcome_label,
    page,
    run_link,
    stamp,
    when,
)
from .records import Outcome, RunInProgress
from .views import JobView, RunView

REFRESH_SECONDS = 10

#: What a cancel's redirect may say about the run (anything else in the query is ignored).
_CANCEL_OUTCOMES = frozenset({*(str(outcome) for outcome in Outcome), "cancelling"})


def _in_progress_section(
    runs: Sequence[RunInProgress], leader: bool, now: datetime, writes_enabled: bool
) -> str:
    rows = [
        "<tr>"
        + html_cell(run_link(run.run_id))
        + html_cell(job_link(run.job_type))
        + cell(run.attempt)
        + cell(f"{run.started_at:%Y-%m-%d %H:%M:%S} ({ago(run.started_at, now)})")
        + cell(run.trigger)
        + cell(run.state, run.state)
        + cell("-" if run.worker_pid is None else run.worker_pid)
        + html_cell(
            cancel_form(run.run_id, writes_enabled=writes_enabled)
            if run.state != "cancelling"
            else "-"
        )
        + "</tr>"
        for run in runs
    ]
    empty = "none" if leader else "none here: this is a standby"
    body = "".join(rows) or f'<tr><td colspan="8">{empty}</td></tr>'
    return (
        "<h2>Runs in progress</h2>\n"
        "<p>Cancel needs the admin token (SCHEDULER_ADMIN_TOKEN). The page refreshes every "
        f'{REFRESH_SECONDS}s; <a href="/?refresh=off">stop refreshing</a> while you type it.</p>\n'
        '<table id="in-progress"><thead><tr><th>Run</th><th>Job type</th><th>Attempt</th>'
        "<th>Started (UTC)</th><th>Trigger</th><th>State</th><th>Worker PID</th><th></th>"
        f"</tr></thead><tbody>{body}"
        "</tbody></table>"
    )


def _notice(cancelled: tuple[str, str | None] | None) -> str:
    """What a cancel's redirect says, if it is one this page could have made."""
    if cancelled is None:
        return ""
    run_id, outcome = cancelled
    if not RUN_ID.fullmatch(run_id) or outcome not in _CANCEL_OUTCOMES:
        return ""
    said = (
        "is stopping (see its job's history for how it ends)"
        if outcome == "cancelling"
        else f"ended: {outcome}"
    )
    return f'<p id="notice" class="notice">Run {escape(run_id)} was cancelled and {said}.</p>'


def _broken_files_section(broken: Sequence[tuple[str, str]]) -> str:
    if not broken:
        return ""
    rows = "".join(
        f"<tr>{cell(path)}<td><code>{escape(error)}</code></td></tr>" for path, error in broken
    )
    return (
        "<h2>Task files that fail to import</h2>\n"
        '<table id="broken"><thead><tr><th>File</th><th>Error</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>\n<p>Their jobs keep their schedules; their runs are "
        "skipped until the file imports again (<code>scheduler check -v</code> shows the "
        "tracebacks).</p>"
    )


def _empty_row(columns: int, text: str) -> str:
    return f'<tr><td colspan="{columns}">{escape(text)}</td></tr>'


def _failed_runs_table(table_id: str, runs: Sequence[RunView], empty: str) -> str:
    """Failed attempts, newest first; each links to its run's page (the last column)."""
    rows = "".join(
        "<tr>"
        + cell(stamp(r.started_at))
        + html_cell(job_link(r.job_type))
        + cell(outcome_label(r.outcome), r.outcome)
        + cell(r.attempt)
        + f"<td><code>{escape(r.error or '')}</code></td>"
        + html_cell(run_link(r.run_id, r.run_id[:SHORT_ID]))
        + "</tr>"
        for r in runs
    )
    return (
        f'<table id="{table_id}"><thead><tr><th>Started (UTC)</th><th>Job type</th>'
        "<th>Outcome</th><th>Attempt</th><th>Error</th><th>Run</th></tr></thead>"
        f"<tbody>{rows or _empty_row(6, empty)}</tbody></table>"
    )


def _jobs_table(jobs: Sequence[JobView], now: datetime) -> str:
    rows = []
    for job in jobs:
        state = job.state + (f" ({job.state_reason})" if job.state_reason else "")
        rows.append(
            "<tr>"
            + html_cell(job_link(job.job_type))
            + cell(state, job.state)
            + cell(job.schedule or "-")
            + cell(when(job.next_run_time, now))
            + cell(outcome_label(job.last_outcome), job.last_outcome or "")
            + cell(ago(job.last_success_at, now))
            + "</tr>"
        )
    return (
        '<table id="jobs"><thead><tr><th>Job type</th><th>State</th><th>Schedule</th>'
        "<th>Next run (UTC)</th><th>Last outcome</th><th>Last success</th></tr></thead>"
        f"<tbody>{''.join(rows) or _empty_row(6, 'no jobs')}</tbody></table>"
    )


def _workers_table(workers: Sequence[dict[str, Any]]) -> str:
    rows = [
        "<tr>"
        + cell(w["index"])
        + cell(w["pid"])
        + cell(w["state"], w["state"])
        + cell(w["runs"])
        + cell(f"{w['rss_bytes'] / 2**20:.0f} MB")
        + cell(
            f"blocked {w['blocked_seconds']:.1f}s by {w['blocked_job']} at {w['blocked_where']}"
            if w["blocked_job"] or w["blocked_seconds"]
            else "answers",
            "unhealthy" if w["blocked_seconds"] else "ok",
        )
        + "</tr>"
        for w in workers
    ]
    if not rows:
        return ""
    return (
        '<h2>Workers</h2>\n<table id="workers"><thead><tr><th>Worker</th><th>PID</th>'
        "<th>State</th><th>Runs</th><th>Memory</th><th>Event loop</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def render_status_page(
    jobs: Sequence[JobView],
    problems: Sequence[str],
    leader: bool,
    failures: Sequence[RunView],
    workers: Sequence[dict[str, Any]] = (),
    now: datetime | None = None,
    *,
    in_progress: Sequence[RunInProgress] = (),
    refresh: bool = True,
    cancelled: tuple[str, str | None] | None = None,
    broken_files: Sequence[tuple[str, str]] = (),
    history_error: str | None = None,
    dead_letters: Sequence[RunView] = (),
    writes_enabled: bool = True,
) -> str:
    """The page. `cancelled`: the (run id, outcome) a cancel's redirect carries;
    `broken_files`: (path, error) of each task file that fails to import; `history_error`: why
    the run history could not be read just now (the failures shown are the last read);
    `dead_letters`: the latest runs that failed after their last retry."""
    now = now or datetime.now(UTC)
    health, health_class = "healthy", "ok"
    if problems:
        health, health_class = "unhealthy: " + "; ".join(problems), "unhealthy"
    elif broken_files:
        health, health_class = (
            f"degraded: {len(broken_files)} task file(s) fail to import",
            "degraded",
        )
    role = "active instance" if leader else "standby"
    refreshes = (
        f"every {REFRESH_SECONDS}s" if refresh else 'not refreshing (<a href="/">refresh again</a>)'
    )
    stale = "the failures below are the last ones read; job states are this instance's own."
    body = f"""<h1>Scheduler status</h1>
<p id="health" class="{health_class}">{escape(health)} · {role}
· refreshed {now:%Y-%m-%d %H:%M:%S} UTC, {refreshes}</p>
{history_banner(history_error, stale)}
{_notice(cancelled)}
{_broken_files_section(broken_files)}
<h2>Jobs</h2>
<p class="muted">Each job's page has its configuration, next runs, run history and the Run
now / Pause / Resume buttons.</p>
{_jobs_table(jobs, now)}
<h2>Recent failures</h2>
{_failed_runs_table("failures", failures, "none")}
<h2>Dead letters</h2>
<p class="muted">Runs that failed after their last retry (<code>scheduler history
--dead-letter</code>).</p>
{_failed_runs_table("dead-letters", dead_letters, "none")}
{_in_progress_section(in_progress, leader, now, writes_enabled)}
{_workers_table(workers)}"""
    return page("Scheduler status", body, refresh_seconds=REFRESH_SECONDS if refresh else None)
