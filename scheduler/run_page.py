"""A run's page, `/runs/{run_id}`: every attempt the history has of it, in order, with its
trigger, times, outcome, skip reason, items, instance, params and its error text in full."""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape

from .masking import mask_secrets
from .page_html import (
    cancel_form,
    cell,
    duration,
    history_banner,
    html_cell,
    job_link,
    outcome_label,
    page,
    stamp,
)
from .records import RunInProgress
from .views import RunView


def _params(run: RunView) -> str:
    if run.params is None:
        return "-"
    return mask_secrets(json.dumps(run.params, sort_keys=True))


def _attempts_table(attempts: Sequence[RunView]) -> str:
    rows = "".join(
        "<tr>"
        + html_cell(f'<a href="#attempt-{a.attempt}">{a.attempt}</a>')
        + cell(a.trigger)
        + cell(stamp(a.scheduled_at, precise=True))
        + cell(stamp(a.started_at, precise=True))
        + cell(stamp(a.finished_at, precise=True))
        + cell(duration(a.duration_seconds))
        + cell(outcome_label(a.outcome) + (" (dead letter)" if a.dead_letter else ""), a.outcome)
        + cell(a.skip_reason or "-")
        + cell(f"{a.items_succeeded} / {a.items_failed}")
        + cell(a.instance)
        + f"<td><code>{escape(_params(a))}</code></td>"
        + "</tr>"
        for a in attempts
    )
    return (
        '<table id="attempts"><thead><tr><th>Attempt</th><th>Trigger</th>'
        "<th>Scheduled (UTC)</th><th>Started (UTC)</th><th>Finished (UTC)</th><th>Duration</th>"
        "<th>Outcome</th><th>Skip reason</th><th>Items ok / failed</th><th>Instance</th>"
        f"<th>Params</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _errors_section(attempts: Sequence[RunView]) -> str:
    parts = []
    for a in attempts:
        text = mask_secrets(a.error) if a.error else "(no error text)"
        parts.append(
            f'<h3 id="attempt-{a.attempt}">Attempt {a.attempt}: '
            f'<span class="{escape(a.outcome)}">{escape(outcome_label(a.outcome))}</span></h3>\n'
            f'<pre class="error" id="error-{a.attempt}">{escape(text)}</pre>'
        )
        if a.traceback:  # masked when stored; masked again, as everything shown is
            parts.append(
                f'<details open><summary>Traceback</summary><pre class="traceback" '
                f'id="traceback-{a.attempt}">{escape(mask_secrets(a.traceback))}</pre></details>'
            )
    return "\n".join(parts)


def render_run_page(
    run_id: str,
    attempts: Sequence[RunView],
    *,
    in_progress: RunInProgress | None = None,
    writes_enabled: bool = True,
    history_error: str | None = None,
) -> str:
    """The page of `run_id`, whose `attempts` (first first) the history holds."""
    latest = attempts[-1] if attempts else None
    job_type = latest.job_type if latest else (in_progress.job_type if in_progress else "")
    summary = ""
    if latest is not None:
        final = "still in progress" if in_progress else outcome_label(latest.outcome)
        dead = (
            " It failed after its last retry: a dead letter."
            if any(a.dead_letter for a in attempts)
            else ""
        )
        summary = (
            f'<p id="run-summary">Job {job_link(job_type)}: {len(attempts)} attempt(s) '
            f'recorded, the latest <span class="{escape(latest.outcome)}">'
            f"{escape(final)}</span>.{escape(dead)}</p>"
        )
    cancel = ""
    if in_progress is not None and in_progress.state != "cancelling":
        cancel = (
            f"<p>Attempt {in_progress.attempt} is {escape(in_progress.state)}. "
            + cancel_form(run_id, writes_enabled=writes_enabled)
            + "</p>"
        )
    back = f" · job {job_link(job_type)}" if job_type else ""
    body = f"""<p><a href="/">← Scheduler status</a>{back}</p>
<h1>Run <code>{escape(run_id)}</code></h1>
{history_banner(history_error, "its attempts cannot be shown now.")}
{summary}
{cancel}
<h2>Attempts</h2>
{_attempts_table(attempts)}
<h2>Errors</h2>
<p class="muted">Each attempt's error text, and where it raised, as the history keeps them
(secrets masked, no local variables).</p>
{_errors_section(attempts)}"""
    return page(f"Run {run_id}", body)
