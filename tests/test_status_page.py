"""The status page as a person sees it, in a real headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

from tests.support import ServiceFactory, system_tool, task_source, wait_until


def chromium() -> str:
    return shutil.which("chromium-browser") or system_tool("chromium", "chromium")


def rendered_dom(url: str, profile: Path) -> str:
    """The DOM after Chromium loaded and rendered `url`."""
    result = subprocess.run(
        [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--dump-dom", url,
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Tables(HTMLParser):
    """Visible text of each table row, by table id."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.rows[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.rows[self._table].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_status_page_shows_a_failing_job_as_failed(
    services: ServiceFactory, tmp_path: Path
) -> None:
    services.write_task("fine.py", task_source("fine", "return [RunnerResult(success=True)]",
                                               interval_seconds=3600))  # fmt: skip
    services.write_task(
        "broken_job.py",
        task_source("broken_job", "raise RuntimeError('upstream returned 502')",
                    interval_seconds=3600, max_retries=0),
    )  # fmt: skip
    service = services()
    services.wait_for_runs("fine", 1)
    services.wait_for_runs("broken_job", 1, outcome="failure")
    wait_until(
        lambda: "failed" in service.get("/")[1].decode(), what="the page to show the failure"
    )
    dom = rendered_dom(service.base_url + "/", tmp_path / "profile")
    assert '<meta http-equiv="refresh"' in dom  # it refreshes itself
    tables = Tables()
    tables.feed(dom)
    jobs = {row[0]: row for row in tables.rows["jobs"][1:]}
    assert jobs["broken_job"][4] == "failed"
    assert jobs["fine"][4] == "success" and jobs["fine"][1] == "scheduled"
    assert jobs["broken_job"][5] == "never"
    failures = tables.rows["failures"][1:]
    assert [row[1:3] for row in failures] == [["broken_job", "failed"]]
    assert failures[0][4] == "RuntimeError: upstream returned 502"
    assert "healthy" in dom and "active instance" in dom
    workers = tables.rows["workers"][1:]  # process mode: one row per worker process
    assert len(workers) == 2 and {row[2] for row in workers} == {"ready"}
    assert {row[5] for row in workers} == {"answers"}
