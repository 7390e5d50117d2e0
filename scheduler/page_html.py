"""What the status pages share: the style, the page shell, cells, times, links and the token
forms. Every text that reaches a page goes through `escape` here or in the page; nothing
here imports the scheduler, so every page module can use it."""

from __future__ import annotations

import re
import urllib.parse
from datetime import datetime
from html import escape

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #1d2330; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
h3 { font-size: 1rem; margin: 1.2rem 0 .3rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e6ee;
  vertical-align: top; }
th { background: #f4f6fa; }
table.facts { width: auto; min-width: 40rem; } table.facts th { width: 10rem; }
.ok, .success, .scheduled, .ready { color: #17733a; }
.failure, .timeout, .unhealthy, .crashed, .quarantined, .retiring { color: #b3261e; }
.blocked, .paused, .disabled, .not_loaded, .skipped, .interrupted, .degraded { color: #8a5a00; }
.cancelled, .cancelling, .retrying { color: #8a5a00; } .running { color: #1a56b3; }
code { font-size: 12px; }
pre { background: #f4f6fa; padding: .6rem .8rem; overflow-x: auto; white-space: pre-wrap;
  font-size: 12px; }
form.token, form.cancel { display: inline-flex; gap: .4rem; margin: 0 .8rem .4rem 0; }
form.token input, form.cancel input { width: 11rem; }
.notice { background: #f4f6fa; padding: .5rem .8rem; border-left: 4px solid #8a5a00; }
.muted { color: #5b6375; }
svg.chart { display: block; margin: .6rem 0; background: #fbfcfe; border: 1px solid #e3e6ee; }
.legend span { display: inline-block; margin-right: 1rem; }
.legend i { display: inline-block; width: .8rem; height: .8rem; margin-right: .3rem;
  vertical-align: -1px; }
"""

#: A whole run id, as every page and form takes it.
RUN_ID = re.compile(r"[0-9a-f]{32}")
#: How much of a run id the tables show (the link carries the whole id).
SHORT_ID = 12

#: The bar color of each outcome in the run charts (and their legend).
OUTCOME_COLORS = {
    "success": "#2e9e5b",
    "failure": "#d0392e",
    "timeout": "#a3158f",
    "crashed": "#7a1212",
    "interrupted": "#e08a00",
    "cancelled": "#c9a227",
    "skipped": "#a7adba",
    "running": "#1a56b3",
}


def page(title: str, body: str, *, refresh_seconds: int | None = None) -> str:
    """A whole page: `title` (plain text) and `body` (HTML, escaped already)."""
    refresh = (
        f'<meta http-equiv="refresh" content="{refresh_seconds}">\n' if refresh_seconds else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
{refresh}<title>{escape(title)}</title><style>{STYLE}</style></head>
<body>
{body}
</body></html>
"""


def message_page(text: str, title: str = "Scheduler status", back: str = "/") -> str:
    """A page that says one thing (why a form did nothing, or that nothing is there), with
    the way back."""
    return page(
        title,
        f"<h1>{escape(title)}</h1>\n"
        f'<p id="message" class="unhealthy">{escape(text)}</p>\n'
        f'<p><a href="{escape(back)}">Back</a> · <a href="/">the status page</a></p>',
    )


def cell(text: object, css: str = "") -> str:
    attr = f' class="{escape(css)}"' if css else ""
    return f"<td{attr}>{escape(str(text))}</td>"


def html_cell(html: str, css: str = "") -> str:
    """A cell of HTML the caller escaped already (a link, a form)."""
    attr = f' class="{escape(css)}"' if css else ""
    return f"<td{attr}>{html}</td>"


def ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"


def when(moment: datetime | None, now: datetime) -> str:
    """A time ahead: `2026-05-01 07:30:00 (in 42s)`."""
    if moment is None:
        return "-"
    seconds = max((moment - now).total_seconds(), 0)
    return f"{moment:%Y-%m-%d %H:%M:%S} (in {seconds:.0f}s)"


def stamp(moment: datetime | None, *, precise: bool = False) -> str:
    """A time in UTC; `precise`: to the millisecond (a run's attempts, seconds apart)."""
    if moment is None:
        return "-"
    return f"{moment:%Y-%m-%d %H:%M:%S.%f}"[:-3] if precise else f"{moment:%Y-%m-%d %H:%M:%S}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 600:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m"


def outcome_label(outcome: str | None) -> str:
    return {"failure": "failed", "timeout": "timed out"}.get(outcome or "", outcome or "-")


def job_url(job_type: str) -> str:
    return f"/jobs/{urllib.parse.quote(job_type, safe='')}"


def run_url(run_id: str) -> str:
    return f"/runs/{urllib.parse.quote(run_id, safe='')}"


def job_link(job_type: str) -> str:
    return f'<a href="{escape(job_url(job_type))}">{escape(job_type)}</a>'


def run_link(run_id: str, text: str | None = None) -> str:
    """A link to the run's page; `text` (default: the whole id) is what it shows."""
    return f'<a href="{escape(run_url(run_id))}">{escape(text or run_id)}</a>'


def token_form(action: str, label: str, *, writes_enabled: bool, form_class: str = "token") -> str:
    """A button that posts the admin token (a password field) to `action`, or, with no token
    configured, a disabled one that says why."""
    if not writes_enabled:
        return (
            '<button type="button" disabled title="write endpoints are disabled: set '
            f'SCHEDULER_ADMIN_TOKEN">{escape(label)} (writes disabled)</button>'
        )
    return (
        f'<form class="{escape(form_class)}" method="post" action="{escape(action)}">'
        '<input type="password" name="token" placeholder="admin token" required '
        'autocomplete="current-password" aria-label="admin token">'
        f'<button type="submit">{escape(label)}</button></form>'
    )


def actions_form(actions: list[tuple[str, str]], *, writes_enabled: bool) -> str:
    """One admin token field and a button per (action, label): each button posts the form to
    its own action (`formaction`, no JavaScript), so the token is typed once."""
    if not writes_enabled:
        return "".join(token_form(action, label, writes_enabled=False) for action, label in actions)
    buttons = "".join(
        f'<button type="submit" formaction="{escape(action)}">{escape(label)}</button>'
        for action, label in actions
    )
    return (
        f'<form class="token" method="post" action="{escape(actions[0][0])}">'
        '<input type="password" name="token" placeholder="admin token" required '
        f'autocomplete="current-password" aria-label="admin token">{buttons}</form>'
    )


def cancel_form(run_id: str, *, writes_enabled: bool) -> str:
    """The Cancel button of a run in progress (POST /runs/{run_id}/cancel)."""
    action = f"{run_url(run_id)}/cancel"
    return token_form(action, "Cancel", writes_enabled=writes_enabled, form_class="cancel")


WRITES_DISABLED = "Write endpoints are disabled: set SCHEDULER_ADMIN_TOKEN to enable these buttons."


def history_banner(error: str | None, what: str) -> str:
    """The banner of a page whose run history could not be read just now (`what`: what the
    page shows instead)."""
    if error is None:
        return ""
    return (
        f'<p id="stale" class="unhealthy">The run history cannot be read ({escape(error)}): '
        f"{escape(what)}</p>"
    )
