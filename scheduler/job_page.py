"""A job's page, `/jobs/{job_type}`: its effective configuration and where each value came
from, its state and why, its next runs, requirements and dependencies, its latest runs as a
chart (inline SVG, no JavaScript) and a table, its skips and dead letters, and the Run now /
Pause / Resume buttons (forms that post the admin token)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape

from .cron import next_fire_times, zone
from .masking import mask_secrets
from .page_html import (
    OUTCOME_COLORS,
    RUN_ID,
    SHORT_ID,
    WRITES_DISABLED,
    actions_form,
    ago,
    cell,
    duration,
    history_banner,
    html_cell,
    job_link,
    job_url,
    outcome_label,
    page,
    run_link,
    stamp,
    when,
)
from .records import Outcome, RunInProgress, SkipReason
from .views import JobHistory, JobView, RunView

#: How many fire times "Next runs" lists.
NEXT_RUNS = 5
_CHART_HEIGHT = 120
_BAR_GAP = 3
#: Bars are this wide at most (a few runs) and at least (50 runs), in pixels.
_BAR_WIDTHS = (40, 12)
_CHART_WIDTH = 640
#: The shortest bar drawn, so that a skip or an instant run still shows (and can be clicked).
_MIN_BAR = 3
_NOTICE_OUTCOMES = frozenset(str(outcome) for outcome in Outcome) | {"started"}
_SKIP_REASONS = frozenset(str(reason) for reason in SkipReason)


def upcoming_runs(job: JobView, count: int = NEXT_RUNS) -> list[datetime]:
    """The job's next `count` fire times: none while it has no next run (paused, disabled,
    quarantined); an interval job's every interval from the next; a cron job's from its
    expression in its time zone."""
    first = job.next_run_time
    if first is None or count < 1:
        return []
    config = job.config
    if config is None:  # not loaded: only the stored next run is known
        return [first]
    if config.cron:
        later = next_fire_times(
            config.cron, config.timezone or "UTC", first + timedelta(microseconds=1), count - 1
        )
        return [first, *later]
    if config.interval_seconds:
        step = timedelta(seconds=config.interval_seconds)
        return [first + k * step for k in range(count)]
    return [first]


def _local(moment: datetime, job: JobView) -> str:
    """The wall-clock time in a cron job's own zone, when that is not UTC."""
    name = job.config.timezone if job.config else None
    if not job.config or not job.config.cron or not name or name.upper() == "UTC":
        return ""
    return f" ({moment.astimezone(zone(name)):%Y-%m-%d %H:%M} {name})"


def _next_runs_section(job: JobView, now: datetime) -> str:
    times = upcoming_runs(job)
    if not times:
        why = {
            "paused": "paused: none until it is resumed",
            "quarantined": "quarantined: none until it is resumed",
            "disabled": "disabled: none",
        }.get(job.state, "none scheduled")
        return f'<p id="next-runs" class="muted">{escape(why)}</p>'
    items = "".join(f"<li>{escape(when(t, now) + _local(t, job))}</li>" for t in times)
    note = (
        '<p class="muted">Its runs are skipped until its task file imports again.</p>'
        if job.state == "not_loaded"
        else ""
    )
    return f'<ol id="next-runs">{items}</ol>{note}'


def _source_of(job: JobView, option: str) -> str:
    override = job.overrides.get(option)
    if override is None:
        return "decorator (or its default)"
    return f"{override.source}: {override.where} = {mask_secrets(str(override.value))}"


def _config_section(job: JobView) -> str:
    if job.config is None:
        return (
            '<p id="config" class="muted">Unknown: the task file does not import, so its '
            "decorator was not read.</p>"
        )
    rows = "".join(
        "<tr>"
        + cell(option)
        + cell(mask_secrets("-" if value is None else str(value)))
        + cell(_source_of(job, option), "override" if option in job.overrides else "muted")
        + "</tr>"
        for option, value in job.config.model_dump().items()
    )
    return (
        '<table id="config"><thead><tr><th>Option</th><th>Effective value</th><th>Source</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def _summary_section(job: JobView, now: datetime) -> str:
    state = job.state + (f": {mask_secrets(job.state_reason)}" if job.state_reason else "")
    facts = [
        ("State", cell(state, job.state)),
        ("Schedule", cell(job.schedule or "-")),
        ("Next run (UTC)", cell(when(job.next_run_time, now))),
        ("Running now", cell(job.running)),
        ("Last outcome", cell(outcome_label(job.last_outcome), job.last_outcome or "")),
        ("Last finished", cell(ago(job.last_finished_at, now))),
        ("Last success", cell(ago(job.last_success_at, now))),
        ("Last error", f"<td><code>{escape(mask_secrets(job.last_error or '-'))}</code></td>"),
        ("Task class", cell(job.task_class or "-")),
        ("Defined at", cell(job.source or "-")),
    ]
    rows = "".join(f"<tr><th>{escape(name)}</th>{value}</tr>" for name, value in facts)
    return f'<table id="summary" class="facts"><tbody>{rows}</tbody></table>'


def _needs_section(job: JobView) -> str:
    requirements = ", ".join(escape(r) for r in job.requirements) or "none"
    dependencies = ", ".join(job_link(d) for d in job.dependencies) or "none"
    schema = (
        '<h3>Params</h3><pre id="params-schema">'
        f"{escape(mask_secrets(json.dumps(job.params_schema, indent=2)))}</pre>"
        if job.params_schema
        else ""
    )
    return (
        f'<p id="requirements">Requirements: {requirements}</p>\n'
        f'<p id="dependencies">Runs after the latest success of: {dependencies}</p>\n{schema}'
    )


def runs_chart(runs: Sequence[RunView]) -> str:
    """The runs (given newest first) as bars, oldest left: height the duration, color the
    outcome, each a link to its run with the details as its tooltip."""
    if not runs:
        return ""
    ordered = list(reversed(runs))
    longest = max((r.duration_seconds or 0.0 for r in ordered), default=0.0) or 1.0
    widest, narrowest = _BAR_WIDTHS
    bar = max(narrowest, min(widest, _CHART_WIDTH // len(ordered) - _BAR_GAP))
    width = len(ordered) * (bar + _BAR_GAP) + _BAR_GAP
    bars = []
    for index, run in enumerate(ordered):
        seconds = run.duration_seconds or 0.0
        height = max(_MIN_BAR, round(seconds / longest * (_CHART_HEIGHT - 10)))
        x, y = _BAR_GAP + index * (bar + _BAR_GAP), _CHART_HEIGHT - height
        tip = (
            f"{stamp(run.started_at)} attempt {run.attempt}: {outcome_label(run.outcome)}"
            f"{f' ({run.skip_reason})' if run.skip_reason else ''}, {duration(seconds)}"
        )
        color = OUTCOME_COLORS.get(run.outcome, "#5b6375")
        bars.append(
            f'<a href="/runs/{escape(run.run_id)}"><rect class="bar {escape(run.outcome)}" '
            f'data-run-id="{escape(run.run_id)}" x="{x}" y="{y}" width="{bar}" '
            f'height="{height}" fill="{color}"><title>{escape(tip)}</title></rect></a>'
        )
    shown = sorted({r.outcome for r in ordered})
    legend = "".join(
        f'<span><i style="background:{OUTCOME_COLORS.get(o, "#5b6375")}"></i>'
        f"{escape(outcome_label(o))}</span>"
        for o in shown
    )
    return (
        f'<svg id="chart" class="chart" role="img" width="{width}" height="{_CHART_HEIGHT}" '
        f'viewBox="0 0 {width} {_CHART_HEIGHT}" xmlns="http://www.w3.org/2000/svg" '
        f'aria-label="Durations of the latest {len(ordered)} attempts, oldest first">'
        f"{''.join(bars)}</svg>\n"
        f'<p class="legend">{legend} <span class="muted">oldest left; the tallest bar is '
        f"{escape(duration(longest))}; hover a bar for its details, click it for its run</span></p>"
    )


def _runs_table(table_id: str, runs: Sequence[RunView], empty: str) -> str:
    rows = "".join(
        "<tr>"
        + cell(stamp(r.started_at))
        + cell(r.attempt)
        + cell(r.trigger)
        + cell(outcome_label(r.outcome), r.outcome)
        + cell(r.skip_reason or "-")
        + cell(duration(r.duration_seconds))
        + cell(f"{r.items_succeeded} / {r.items_failed}")
        + f"<td><code>{escape(mask_secrets(r.error or ''))}</code></td>"
        + html_cell(run_link(r.run_id, r.run_id[:SHORT_ID]))
        + "</tr>"
        for r in runs
    )
    body = rows or f'<tr><td colspan="9">{escape(empty)}</td></tr>'
    return (
        f'<table id="{table_id}"><thead><tr><th>Started (UTC)</th><th>Attempt</th>'
        "<th>Trigger</th><th>Outcome</th><th>Skip reason</th><th>Duration</th>"
        "<th>Items ok / failed</th><th>Error</th><th>Run</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _actions_section(job: JobView, leader: bool, writes_enabled: bool) -> str:
    base = job_url(job.job_type)
    actions = [(f"{base}/run", "Run now")]
    if job.state in ("paused", "quarantined"):
        actions.append((f"{base}/resume", "Resume"))
    elif job.state != "disabled":
        actions.append((f"{base}/pause", "Pause"))
    notes = []
    if not writes_enabled:
        notes.append(WRITES_DISABLED)
    if not leader:
        notes.append("This instance is a standby: actions need the active instance.")
    if job.state == "disabled":
        notes.append("A disabled job (enabled=False) is not scheduled: nothing to pause.")
    said = "".join(f'<p class="muted">{escape(note)}</p>' for note in notes)
    form = actions_form(actions, writes_enabled=writes_enabled)
    return f'<div id="actions">{form}</div>{said}'


def _notice(notice: JobNotice | None) -> str:
    """What an action's redirect says, if it is one this page could have made."""
    if notice is None:
        return ""
    if notice.done in ("paused", "resumed") and notice.ran is None:
        text = escape(
            "Paused: no runs are scheduled until it is resumed."
            if notice.done == "paused"
            else "Resumed: it is scheduled again."
        )
    elif notice.ran is not None and RUN_ID.fullmatch(notice.ran):
        if notice.outcome not in _NOTICE_OUTCOMES or (
            notice.skip is not None and notice.skip not in _SKIP_REASONS
        ):
            return ""
        how = (
            "started and is still running"
            if notice.outcome == "started"
            else f"ended: {outcome_label(notice.outcome)}"
            + (f" ({notice.skip})" if notice.skip else "")
        )
        text = f"Run {run_link(notice.ran)} {escape(how)}."
    else:
        return ""
    return f'<p id="notice" class="notice">{text}</p>'


def render_job_page(
    job: JobView,
    history: JobHistory,
    *,
    leader: bool,
    writes_enabled: bool,
    in_progress: Sequence[RunInProgress] = (),
    notice: JobNotice | None = None,
    now: datetime | None = None,
) -> str:
    now = now or datetime.now(UTC)
    running = "".join(
        f"<li>{run_link(r.run_id)}: attempt {r.attempt}, {escape(r.state)} since "
        f"{escape(stamp(r.started_at))}</li>"
        for r in in_progress
    )
    import_error = (
        f'<h2>Import error</h2>\n<pre id="import-error">'
        f"{escape(mask_secrets(job.state_reason or 'its task file failed to import'))}</pre>"
        if job.state == "not_loaded"
        else ""
    )
    description = f"<p>{escape(job.description)}</p>" if job.description else ""
    body = f"""<p><a href="/">← Scheduler status</a></p>
<h1>Job {escape(job.job_type)}</h1>
{description}
{history_banner(history.error, "the runs below may be missing.")}
{_notice(notice)}
{_actions_section(job, leader, writes_enabled)}
{_summary_section(job, now)}
{import_error}
{f'<h2>Runs in progress</h2><ul id="in-progress">{running}</ul>' if running else ""}
<h2>Next runs (UTC)</h2>
{_next_runs_section(job, now)}
<h2>Configuration</h2>
<p class="muted">Decorator, then config file, then environment: the source says which one set
each value.</p>
{_config_section(job)}
<h2>Requirements and dependencies</h2>
{_needs_section(job)}
<h2>Latest runs</h2>
<p class="muted">The latest {len(history.runs)} attempt(s) in the run history, newest first in
the table.</p>
{runs_chart(history.runs)}
{_runs_table("runs", history.runs, "no runs recorded")}
<h2>Recent skips</h2>
{_runs_table("skips", history.skips, "none")}
<h2>Dead letters</h2>
<p class="muted">Runs that failed after their last retry.</p>
{_runs_table("dead-letters", history.dead_letters, "none")}"""
    return page(f"Job {job.job_type}", body)


@dataclass(frozen=True)
class JobNotice:
    """What an action's redirect carries in its query: `done` (paused, resumed) or the run
    started (`ran`) and its `outcome` (`started` while it goes on) and `skip` reason."""

    done: str | None = None
    ran: str | None = None
    outcome: str | None = None
    skip: str | None = None
