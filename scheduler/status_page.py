"""The status page at `/`: server-rendered HTML that refreshes itself, and whose one action,
cancelling a run in progress, is a plain form (no JavaScript) that posts the admin token."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from .records import Outcome, RunInProgress, RunRecord
from .views import JobView

REFRESH_SECONDS = 10

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #1d2330; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e6ee; }
th { background: #f4f6fa; }
.ok, .success, .scheduled, .ready { color: #17733a; }
.failure, .timeout, .unhealthy, .crashed, .quarantined, .retiring { color: #b3261e; }
.blocked, .paused, .disabled, .not_loaded, .skipped, .interrupted, .degraded { color: #8a5a00; }
.cancelled, .cancelling, .retrying { color: #8a5a00; } .running { color: #1a56b3; }
code { font-size: 12px; }
form.cancel { display: flex; gap: .4rem; margin: 0; }
form.cancel input { width: 11rem; }
.notice { background: #f4f6fa; padding: .5rem .8rem; border-left: 4px solid #8a5a00; }
"""
_RUN_ID = re.compile(r"[0-9a-f]{32}")
#: What a cancel's redirect may say about the run (anything else in the query is ignored).
_CANCEL_OUTCOMES = frozenset({*(str(outcome) for outcome in Outcome), "cancelling"})


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = max((moment - now).total_seconds(), 0)
    return f"{moment:%Y-%m-%d %H:%M:%S} (in {seconds:.0f}s)"


def _cell(text: object, css: str = "") -> str:
    attr = f' class="{escape(css)}"' if css else ""
    return f"<td{attr}>{escape(str(text))}</td>"


def _outcome_label(outcome: str | None) -> str:
    return {"failure": "failed", "timeout": "timed out"}.get(outcome or "", outcome or "-")


def _cancel_form(run_id: str) -> str:
    return (
        f'<form class="cancel" method="post" action="/runs/{escape(run_id)}/cancel">'
        '<input type="password" name="token" placeholder="admin token" required '
        'autocomplete="current-password" aria-label="admin token">'
        '<button type="submit">Cancel</button></form>'
    )


def _in_progress_section(runs: Sequence[RunInProgress], leader: bool, now: datetime) -> str:
    rows = [
        "<tr>"
        + _cell(run.run_id)
        + _cell(run.job_type)
        + _cell(run.attempt)
        + _cell(f"{run.started_at:%Y-%m-%d %H:%M:%S} ({_ago(run.started_at, now)})")
        + _cell(run.trigger)
        + _cell(run.state, run.state)
        + _cell("-" if run.worker_pid is None else run.worker_pid)
        + f"<td>{_cancel_form(run.run_id) if run.state != 'cancelling' else '-'}</td>"
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
    if not _RUN_ID.fullmatch(run_id) or outcome not in _CANCEL_OUTCOMES:
        return ""
    said = (
        "is stopping (see its job's history for how it ends)"
        if outcome == "cancelling"
        else f"ended: {outcome}"
    )
    return f'<p id="notice" class="notice">Run {escape(run_id)} was cancelled and {said}.</p>'


def render_message_page(text: str) -> str:
    """A page that says one thing (why a form did nothing), with the way back."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Scheduler status</title><style>{_STYLE}</style></head>
<body>
<h1>Scheduler status</h1>
<p id="message" class="unhealthy">{escape(text)}</p>
<p><a href="/">Back to the status page</a></p>
</body></html>
"""


def _history_banner(error: str | None) -> str:
    if error is None:
        return ""
    return (
        f'<p id="stale" class="unhealthy">The run history cannot be read ({escape(error)}): '
        "the failures below are the last ones read; job states are this instance's own.</p>"
    )


def _broken_files_section(broken: Sequence[tuple[str, str]]) -> str:
    if not broken:
        return ""
    rows = "".join(
        f"<tr>{_cell(path)}<td><code>{escape(error)}</code></td></tr>" for path, error in broken
    )
    return (
        "<h2>Task files that fail to import</h2>\n"
        '<table id="broken"><thead><tr><th>File</th><th>Error</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>\n<p>Their jobs keep their schedules; their runs are "
        "skipped until the file imports again (<code>scheduler check -v</code> shows the "
        "tracebacks).</p>"
    )


def render_status_page(
    jobs: Sequence[JobView],
    problems: Sequence[str],
    leader: bool,
    failures: Sequence[RunRecord],
    workers: Sequence[dict[str, Any]] = (),
    now: datetime | None = None,
    *,
    in_progress: Sequence[RunInProgress] = (),
    refresh: bool = True,
    cancelled: tuple[str, str | None] | None = None,
    broken_files: Sequence[tuple[str, str]] = (),
    history_error: str | None = None,
) -> str:
    """The page. `cancelled`: the (run id, outcome) a cancel's redirect carries;
    `broken_files`: (path, error) of each task file that fails to import; `history_error`: why
    the run history could not be read just now (the failures shown are the last read)."""
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
    rows = []
    for job in jobs:
        state = job.state + (f" ({job.state_reason})" if job.state_reason else "")
        rows.append(
            "<tr>"
            + _cell(job.job_type)
            + _cell(state, job.state)
            + _cell(job.schedule or "-")
            + _cell(_when(job.next_run_time, now))
            + _cell(_outcome_label(job.last_outcome), job.last_outcome or "")
            + _cell(_ago(job.last_success_at, now))
            + "</tr>"
        )
    failure_rows = [
        "<tr>"
        + _cell(r.started_at.strftime("%Y-%m-%d %H:%M:%S"))
        + _cell(r.job_type)
        + _cell(_outcome_label(r.outcome), r.outcome)
        + _cell(r.attempt)
        + f"<td><code>{escape(r.error or '')}</code></td>"
        + "</tr>"
        for r in failures
    ]
    worker_rows = [
        "<tr>"
        + _cell(w["index"])
        + _cell(w["pid"])
        + _cell(w["state"], w["state"])
        + _cell(w["runs"])
        + _cell(f"{w['rss_bytes'] / 2**20:.0f} MB")
        + _cell(
            f"blocked {w['blocked_seconds']:.1f}s by {w['blocked_job']} at {w['blocked_where']}"
            if w["blocked_job"] or w["blocked_seconds"]
            else "answers",
            "unhealthy" if w["blocked_seconds"] else "ok",
        )
        + "</tr>"
        for w in workers
    ]
    workers_table = (
        '<h2>Workers</h2>\n<table id="workers"><thead><tr><th>Worker</th><th>PID</th>'
        "<th>State</th><th>Runs</th><th>Memory</th><th>Event loop</th></tr></thead>"
        f"<tbody>{''.join(worker_rows)}</tbody></table>"
        if worker_rows
        else ""
    )
    refreshes = (
        f"every {REFRESH_SECONDS}s" if refresh else 'not refreshing (<a href="/">refresh again</a>)'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
{f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""}
<title>Scheduler status</title><style>{_STYLE}</style></head>
<body>
<h1>Scheduler status</h1>
<p id="health" class="{health_class}">{escape(health)} · {role}
· refreshed {now:%Y-%m-%d %H:%M:%S} UTC, {refreshes}</p>
{_history_banner(history_error)}
{_notice(cancelled)}
{_broken_files_section(broken_files)}
<h2>Jobs</h2>
<table id="jobs"><thead><tr><th>Job type</th><th>State</th><th>Schedule</th><th>Next run (UTC)</th>
<th>Last outcome</th><th>Last success</th></tr></thead>
<tbody>{"".join(rows) or '<tr><td colspan="6">no jobs</td></tr>'}</tbody></table>
<h2>Recent failures</h2>
<table id="failures"><thead><tr><th>Started (UTC)</th><th>Job type</th><th>Outcome</th>
<th>Attempt</th><th>Error</th></tr></thead>
<tbody>{"".join(failure_rows) or '<tr><td colspan="5">none</td></tr>'}</tbody></table>
{_in_progress_section(in_progress, leader, now)}
{workers_table}
</body></html>
"""
