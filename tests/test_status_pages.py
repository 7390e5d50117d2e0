"""The job and run pages, and the buttons, as a person uses them: a real headless Chromium
driven by chromedriver (Selenium) against the real service, checked against the run history."""

from __future__ import annotations

import html
import itertools
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from scheduler.job_page import JobNotice, render_job_page, upcoming_runs
from scheduler.run_page import render_run_page
from scheduler.views import JobHistory, JobSettings, JobView, Override, RunView
from tests.support import (
    ServiceFactory,
    ServiceProcess,
    post_form,
    system_tool,
    task_source,
    wait_until,
)
from tests.test_status_page import chromium

TOKEN = "pages-token-0123456789"
SECRET = "hunter2-secret"
#: A task that fails naming a database URL with a password in it (the history masks it).
LEAKY = f"raise RuntimeError('cannot reach postgresql://reporter:{SECRET}@db.internal/reports')"
#: A task that sleeps as long as its params say, so that the chart's bars differ.
SLEEPY = (
    "await asyncio.sleep(float(context.params.get('seconds', 0)))\n"
    "return [RunnerResult(success=True)]"
)


def chromedriver() -> str:
    return system_tool("chromedriver", "chromium-driver")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium, through the system's chromedriver (nothing is downloaded)."""
    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1400,1000", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}",
    ):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver()), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def table(driver: WebDriver, table_id: str) -> list[list[str]]:
    """The visible text of each body row of the table `table_id`."""
    return [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
    ]


def run_ids_linked(driver: WebDriver, table_id: str) -> list[str]:
    """The run ids the rows of `table_id` link to, in row order."""
    links = driver.find_elements(By.CSS_SELECTOR, f'#{table_id} tbody a[href^="/runs/"]')
    return [str(link.get_attribute("href")).rsplit("/", 1)[-1] for link in links]


def screenshot(driver: WebDriver, path: Path) -> Path:
    """The whole page as a PNG: the viewport grown to the page's height for the shot."""
    assert isinstance(driver, webdriver.Chrome)
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    height = min(int(metrics["cssContentSize"]["height"]) + 20, 8000)
    size = {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", size)
    try:
        assert driver.save_screenshot(str(path)), path
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path


def press(driver: WebDriver, label: str, token: str) -> None:
    """Type `token` into the job page's admin token field and press the button `label`."""
    form = driver.find_element(By.CSS_SELECTOR, "#actions form")
    field = form.find_element(By.CSS_SELECTOR, 'input[type="password"][name="token"]')
    field.clear()
    field.send_keys(token)
    form.find_element(By.XPATH, f'.//button[normalize-space()="{label}"]').click()


def notice(driver: WebDriver) -> str:
    found = driver.find_elements(By.ID, "notice")
    return found[0].text if found else ""


def job_state(service: ServiceProcess, job_type: str) -> str:
    status, jobs = service.get_json("/api/jobs")
    assert status == 200, jobs
    return str(next(job["state"] for job in jobs if job["job_type"] == job_type))


def test_job_and_run_pages_show_the_history_and_the_buttons_act(
    services: ServiceFactory, browser: WebDriver, tmp_path: Path
) -> None:
    services.write_task("fine.py", task_source("fine", SLEEPY, interval_seconds=3600))
    services.write_task(
        "leaky.py",
        task_source("leaky", LEAKY, interval_seconds=3600, max_retries=1, retry_delay_seconds=0),
    )
    services.write_task(
        "needy.py", task_source("needy", SLEEPY, interval_seconds=3600, requires_unicorn=True)
    )
    service = services(SCHEDULER_ADMIN_TOKEN=TOKEN, FINE_TIMEOUT_SECONDS="45")
    services.wait_for_runs("fine", 1)
    for seconds in (0.4, 0.1, 0.8, 0.2):  # manual runs of differing lengths, for the chart
        status, body = service.post_json(
            "/api/jobs/fine/run", TOKEN, {"params": {"seconds": seconds}}
        )
        assert status == 200 and body["status"] == "success", body
    history = services.wait_for_runs("fine", 5)
    leaky = services.wait_for_runs("leaky", 2, outcome="failure")
    assert [r.attempt for r in leaky] == [1, 2] and leaky[-1].dead_letter
    assert SECRET not in (leaky[0].error or "")  # masked when stored

    # `/`: the job links to its page; the dead letter to its run's.
    browser.get(service.base_url + "/?refresh=off")
    dead = table(browser, "dead-letters")
    assert [row[1:4] for row in dead] == [["leaky", "failed", "2"]], dead
    assert run_ids_linked(browser, "dead-letters") == [leaky[-1].run_id]
    assert SECRET not in browser.page_source
    screenshot(browser, tmp_path / "status_page.png")
    browser.find_element(By.CSS_SELECTOR, '#jobs a[href="/jobs/fine"]').click()
    wait_until(lambda: browser.current_url.endswith("/jobs/fine"), what="the job page")

    # The configuration says where the override came from.
    config = {row[0]: row for row in table(browser, "config")}
    assert config["timeout_seconds"][1] == "45.0"
    assert config["timeout_seconds"][2] == "environment: FINE_TIMEOUT_SECONDS = 45"
    assert config["max_retries"][2] == "decorator (or its default)"
    # The chart and the table show exactly the attempts the history has.
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart rect.bar")
    assert [bar.get_attribute("data-run-id") for bar in bars] == [r.run_id for r in history]
    assert {bar.get_attribute("class") for bar in bars} == {"bar success"}
    heights = [float(str(bar.get_attribute("height"))) for bar in bars]
    assert heights.index(max(heights)) == 3  # the 0.8 s run is the tallest
    rows = table(browser, "runs")
    assert len(rows) == len(history) == 5
    assert run_ids_linked(browser, "runs") == [r.run_id for r in reversed(history)]
    assert [row[2] for row in rows] == ["manual"] * 4 + ["schedule"]
    # Next runs: five, an interval apart, from the stored next run.
    nexts = browser.find_elements(By.CSS_SELECTOR, "#next-runs li")
    times = [datetime.fromisoformat(li.text[:19]) for li in nexts]
    assert len(times) == 5 and {b - a for a, b in itertools.pairwise(times)} == {timedelta(hours=1)}
    job_shot = screenshot(browser, tmp_path / "job_page.png")

    # The run page of the dead letter: both attempts, in order, the error masked.
    browser.get(service.base_url + "/jobs/leaky")
    assert [row[3] for row in table(browser, "dead-letters")] == ["failed"]
    browser.find_element(By.CSS_SELECTOR, "#dead-letters a[href^='/runs/']").click()
    wait_until(lambda: "/runs/" in browser.current_url, what="the run page")
    attempts = table(browser, "attempts")
    assert [(row[0], row[1], row[6]) for row in attempts] == [
        ("1", "schedule", "failed"),
        ("2", "schedule", "failed (dead letter)"),
    ]
    error = browser.find_element(By.CSS_SELECTOR, "pre#error-2").text
    assert error == leaky[-1].error
    assert "postgresql://reporter:***@db.internal/reports" in error
    traceback = browser.find_element(By.CSS_SELECTOR, "pre#traceback-2").text
    assert traceback.startswith("Traceback (most recent call last):")
    assert "leaky.py" in traceback and traceback.endswith(error)  # where it raised, masked
    assert SECRET not in browser.page_source
    run_shot = screenshot(browser, tmp_path / "run_page.png")
    assert job_shot.stat().st_size > 10_000 and run_shot.stat().st_size > 10_000

    # A job whose runs are skipped: its skips, with their reasons, and grey bars.
    skipped = services.wait_for_runs("needy", 1, outcome="skipped")
    browser.get(service.base_url + "/jobs/needy")
    skips = table(browser, "skips")
    assert [(row[3], row[4]) for row in skips] == [("skipped", "requirement")] * len(skipped)
    assert "requirement 'unicorn'" in skips[0][7]
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart rect.bar")
    assert [bar.get_attribute("class") for bar in bars] == ["bar skipped"] * len(skipped)
    assert "blocked" in browser.find_element(By.ID, "summary").text

    # Pause, then Resume, with the token: the job's state and the page's notice say so.
    browser.get(service.base_url + "/jobs/fine")
    press(browser, "Pause", TOKEN)
    wait_until(lambda: "done=paused" in browser.current_url, what="the pause's redirect")
    assert notice(browser).startswith("Paused")
    assert job_state(service, "fine") == "paused"
    assert browser.find_element(By.ID, "next-runs").text == "paused: none until it is resumed"
    press(browser, "Resume", TOKEN)
    wait_until(lambda: "done=resumed" in browser.current_url, what="the resume's redirect")
    assert notice(browser).startswith("Resumed") and job_state(service, "fine") == "scheduled"

    # Run now: the notice names the run and its outcome, and links to its page.
    press(browser, "Run now", TOKEN)
    wait_until(lambda: "ran=" in browser.current_url, what="the run's redirect")
    ran = urllib.parse.parse_qs(urllib.parse.urlparse(browser.current_url).query)["ran"][0]
    assert notice(browser) == f"Run {ran} ended: success."
    (row,) = [r for r in services.wait_for_runs("fine", 6) if r.run_id == ran]
    assert (row.trigger, row.outcome) == ("manual", "success")
    browser.find_element(By.CSS_SELECTOR, f'#notice a[href="/runs/{ran}"]').click()
    wait_until(lambda: browser.current_url.endswith(f"/runs/{ran}"), what="the new run's page")
    assert [(r[0], r[1], r[6]) for r in table(browser, "attempts")] == [("1", "manual", "success")]

    # A wrong token: a page that says so, and nothing changes.
    browser.get(service.base_url + "/jobs/fine")
    press(browser, "Pause", "wrong")
    message = wait_until(lambda: browser.find_elements(By.ID, "message"), what="the error page")
    assert message[0].text == "Not paused: the admin token is missing or wrong"
    assert job_state(service, "fine") == "scheduled"
    assert post_form(service, "/jobs/fine/pause", {"token": "wrong"})[0] == 401
    assert post_form(service, "/jobs/fine/run", {})[0] == 401
    assert len(services.finished("fine")) == 6 and job_state(service, "fine") == "scheduled"

    # A standby shows the page but acts on nothing.
    standby = services(SCHEDULER_ADMIN_TOKEN=TOKEN)
    standby.wait_for_log("standby: another instance is active")
    status, _, body = post_form(standby, "/jobs/fine/pause", {"token": TOKEN})
    assert status == 409 and "Not paused: this instance is a standby" in body
    assert job_state(service, "fine") == "scheduled"


def test_unknown_pages_a_broken_task_file_and_no_token(
    services: ServiceFactory, browser: WebDriver
) -> None:
    source = task_source("fragile", "return [RunnerResult(success=True)]", interval_seconds=3600)
    services.write_task("fragile.py", source)
    service = services(SCHEDULER_RELOAD="true")  # no SCHEDULER_ADMIN_TOKEN: writes are off
    services.wait_for_runs("fragile", 1)

    browser.get(service.base_url + "/jobs/fragile")
    buttons = browser.find_elements(By.CSS_SELECTOR, "#actions button")
    assert [b.text for b in buttons] == ["Run now (writes disabled)", "Pause (writes disabled)"]
    assert all(not b.is_enabled() for b in buttons)
    assert "Write endpoints are disabled" in browser.find_element(By.TAG_NAME, "body").text
    status, _, body = post_form(service, "/jobs/fragile/run", {"token": "anything"})
    assert status == 403 and "write endpoints are disabled" in body
    assert len(services.finished("fragile")) == 1

    for path, said in (
        ("/jobs/nope", "no job 'nope'"),
        ("/runs/" + "f" * 32, f"no run {'f' * 32} in the run history"),
        ("/runs/not-a-run", "is not a run id"),
    ):
        status, page = service.get(path)
        assert status == 404 and said in html.unescape(page.decode()), (path, page)
        browser.get(service.base_url + path)
        assert "Not found" in browser.find_element(By.ID, "message").text

    # Its file stops importing: its page shows what is known, and the import error.
    services.write_task("fragile.py", source + "\nraise ImportError('no module named leftpad')\n")
    wait_until(lambda: job_state(service, "fragile") == "not_loaded", what="fragile not loaded")
    browser.get(service.base_url + "/jobs/fragile")
    error = browser.find_element(By.ID, "import-error").text
    assert "fragile.py failed to import" in error and "leftpad" in error
    assert "Unknown: the task file does not import" in browser.find_element(By.ID, "config").text
    assert len(table(browser, "runs")) == len(services.runs("fragile"))


def view_of(**changes: Any) -> JobView:
    settings = JobSettings(
        enabled=True, interval_seconds=600.0, cron=None, timezone=None, priority="NORMAL",
        max_retries=0, retry_delay_seconds=1.0, timeout_seconds=30.0, max_concurrent=1,
        batch_size=10, preserve_order=False, idempotent=True, misfire_grace_seconds=None,
        coalesce=None,
    )  # fmt: skip
    fields: dict[str, Any] = {
        "job_type": "report", "name": "report", "description": None, "task_class": None,
        "source": None, "state": "scheduled", "state_reason": None, "schedule": "every 600s",
        "config": settings, "overrides": {}, "requirements": [], "dependencies": [],
        "params_schema": None, "next_run_time": datetime(2026, 3, 28, 23, 30, tzinfo=UTC),
        "running": 0, "last_outcome": None, "last_finished_at": None, "last_error": None,
        "last_success_at": None,
    }  # fmt: skip
    return JobView(**{**fields, **changes})


def test_next_runs_follow_the_interval_the_cron_expression_or_nothing() -> None:
    job = view_of()
    first = job.next_run_time
    assert first is not None
    assert upcoming_runs(job) == [first + timedelta(minutes=10 * k) for k in range(5)]
    assert upcoming_runs(view_of(next_run_time=None, state="paused")) == []
    assert job.config is not None
    # 09:00 in Berlin on weekdays, from a Friday: Monday is in summer time, an hour earlier.
    cron = job.config.model_copy(update={"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"})
    friday = datetime(2026, 3, 27, 8, tzinfo=UTC)
    times = upcoming_runs(view_of(config=cron, next_run_time=friday))
    assert [f"{t:%a %d %H:%M}" for t in times] == [
        "Fri 27 08:00", "Mon 30 07:00", "Tue 31 07:00", "Wed 01 07:00", "Thu 02 07:00",
    ]  # fmt: skip
    assert upcoming_runs(view_of(config=None, state="not_loaded")) == [first]


def test_pages_escape_everything_and_say_only_what_a_redirect_could() -> None:
    hostile = "<script>alert(1)</script>"
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    run = RunView(
        run_id="0" * 32, job_type="report", attempt=1, trigger=hostile, scheduled_at=None,
        started_at=moment, finished_at=moment, duration_seconds=0.0, outcome="failure",
        skip_reason=None, error=f"{hostile} password={SECRET}", items_succeeded=0,
        items_failed=0, dead_letter=True, instance=hostile, params={"token": SECRET},
        traceback=f"Traceback (most recent call last):\n  {hostile}\nValueError: password={SECRET}",
    )  # fmt: skip
    job = view_of(
        description=hostile,
        last_error=hostile,
        overrides={"timeout_seconds": Override(source="environment", where=hostile, value=hostile)},
    )
    history = JobHistory(runs=[run], dead_letters=[run])
    pages = [
        render_job_page(job, history, leader=True, writes_enabled=True),
        render_run_page(run.run_id, [run]),
    ]
    for page in pages:
        assert "<script>" not in page and "&lt;script&gt;" in page and SECRET not in page
    ok = JobNotice(ran="a" * 32, outcome="skipped", skip="max_instances")
    said = render_job_page(job, history, leader=True, writes_enabled=True, notice=ok)
    assert "ended: skipped (max_instances).</p>" in said
    for forged in (
        JobNotice(ran="<b>x</b>", outcome="success"),
        JobNotice(ran="a" * 32, outcome="<i>"),
        JobNotice(ran="a" * 32, outcome="skipped", skip="<i>"),
        JobNotice(done="deleted"),
    ):
        page = render_job_page(job, history, leader=True, writes_enabled=True, notice=forged)
        assert 'id="notice"' not in page, forged
