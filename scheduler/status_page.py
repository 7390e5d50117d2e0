"""The read-only status page at `/`: server-rendered HTML that refreshes itself."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from .records import RunRecord

REFRESH_SECONDS = 10

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #1d2330; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e6ee; }
th { background: #f4f6fa; }
.ok, .success, .scheduled, .ready { color: #17733a; }
.failure, .timeout, .unhealthy, .crashed, .quarantined, .retiring { color: #b3261e; }
.blocked, .paused, .disabled, .not_loaded, .skipped, .interrupted { color: #8a5a00; }
code { font-size: 12px; }
"""


def _ago(iso: str | None, now: datetime) -> str:
    if not iso:
        return "never"
    seconds = (now - datetime.fromisoformat(iso)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"


def _when(iso: str | None, now: datetime) -> str:
    if not iso:
        return "-"
    moment = datetime.fromisoformat(iso)
    seconds = max((moment - now).total_seconds(), 0)
    return f"{moment:%Y-%m-%d %H:%M:%S} (in {seconds:.0f}s)"


def _cell(text: object, css: str = "") -> str:
    attr = f' class="{escape(css)}"' if css else ""
    return f"<td{attr}>{escape(str(text))}</td>"


def _outcome_label(outcome: str | None) -> str:
    return {"failure": "failed", "timeout": "timed out"}.get(outcome or "", outcome or "-")


def render_status_page(
    jobs: Sequence[dict[str, Any]],
    problems: Sequence[str],
    leader: bool,
    failures: Sequence[RunRecord],
    workers: Sequence[dict[str, Any]] = (),
    now: datetime | None = None,
) -> str:
    now = now or datetime.now(UTC)
    health = "healthy" if not problems else "unhealthy: " + "; ".join(problems)
    role = "active instance" if leader else "standby"
    rows = []
    for job in jobs:
        state = job["state"] + (f" ({job['state_reason']})" if job.get("state_reason") else "")
        rows.append(
            "<tr>"
            + _cell(job["job_type"])
            + _cell(state, job["state"])
            + _cell(job.get("schedule") or "-")
            + _cell(_when(job.get("next_run_time"), now))
            + _cell(_outcome_label(job.get("last_outcome")), job.get("last_outcome") or "")
            + _cell(_ago(job.get("last_success_at"), now))
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
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>Scheduler status</title><style>{_STYLE}</style></head>
<body>
<h1>Scheduler status</h1>
<p id="health" class="{"ok" if not problems else "unhealthy"}">{escape(health)} · {role}
· refreshed {now:%Y-%m-%d %H:%M:%S} UTC, every {REFRESH_SECONDS}s</p>
<h2>Jobs</h2>
<table id="jobs"><thead><tr><th>Job type</th><th>State</th><th>Schedule</th><th>Next run (UTC)</th>
<th>Last outcome</th><th>Last success</th></tr></thead>
<tbody>{"".join(rows) or '<tr><td colspan="6">no jobs</td></tr>'}</tbody></table>
<h2>Recent failures</h2>
<table id="failures"><thead><tr><th>Started (UTC)</th><th>Job type</th><th>Outcome</th>
<th>Attempt</th><th>Error</th></tr></thead>
<tbody>{"".join(failure_rows) or '<tr><td colspan="5">none</td></tr>'}</tbody></table>
{workers_table}
</body></html>
"""
