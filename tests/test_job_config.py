from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scheduler import BaseTask, JobContext, JobPriority, JobRegistry, RunnerResult, job
from scheduler.job_config import ResolvedConfig, env_names, resolve_job_configs
from scheduler.options import OVERRIDABLE_OPTIONS


class Noop(BaseTask[RunnerResult]):
    async def _execute_impl(self, context: JobContext) -> list[RunnerResult]:
        return []


def declare(job_type: str = "my_job", **options: Any) -> None:
    class Task(Noop):
        pass

    job(job_type, **options)(Task)


def resolve(
    environ: dict[str, str], config: str | None = None, tmp: Path | None = None
) -> ResolvedConfig:
    path = None
    if config is not None:
        assert tmp is not None
        path = tmp / "scheduler.toml"
        path.write_text(config, encoding="utf-8")
    return resolve_job_configs(JobRegistry.list_jobs(), environ, path)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


# option: (decorator value, file value, _RUNNER_ env text, plain env text, expected per layer)
LAYERS: dict[str, tuple[Any, Any, str, str, tuple[Any, Any, Any, Any]]] = {
    "enabled": (True, False, "on", "off", (True, False, True, False)),
    "interval_seconds": (60, 120, "180", "240.5", (60, 120, 180, 240.5)),
    "priority": (
        JobPriority.NORMAL,
        "low",
        "High",
        "4",
        (JobPriority.NORMAL, JobPriority.LOW, JobPriority.HIGH, JobPriority.CRITICAL),
    ),
    "max_retries": (3, 4, "5", "0", (3, 4, 5, 0)),
    "retry_delay_seconds": (30, 1.5, "2.5", "0", (30, 1.5, 2.5, 0)),
    "timeout_seconds": (300, 10, "20", "30", (300, 10, 20, 30)),
    "max_concurrent": (1, 2, "3", "4", (1, 2, 3, 4)),
    "batch_size": (10, 20, "30", "40", (10, 20, 30, 40)),
    "cron": (
        "0 * * * *",
        "*/5  * * * *",
        "0 9 * * 1-5",
        "@daily",
        ("0 * * * *", "*/5 * * * *", "0 9 * * 1-5", "@daily"),
    ),
    "timezone": (
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Asia/Tokyo",
        ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"),
    ),
    "preserve_order": (False, True, "false", "yes", (False, True, False, True)),
    "idempotent": (True, False, "1", "0", (True, False, True, False)),
    "misfire_grace_seconds": (30, 40, "50", "60", (30, 40, 50, 60)),
    "coalesce": (True, False, "yes", "no", (True, False, True, False)),
}
#: What else an option's declaration needs: a time zone applies to a cron schedule.
ALSO_DECLARED: dict[str, dict[str, Any]] = {"timezone": {"cron": "0 3 * * *"}}


def test_every_overridable_option_has_a_precedence_case() -> None:
    assert set(LAYERS) == set(OVERRIDABLE_OPTIONS)


@pytest.mark.parametrize("option", OVERRIDABLE_OPTIONS)
def test_precedence_env_over_runner_env_over_file_over_decorator(
    option: str, tmp_path: Path
) -> None:
    decorator, file_value, runner_text, plain_text, expected = LAYERS[option]
    declare(**{option: decorator}, **ALSO_DECLARED.get(option, {}))
    plain, runner = env_names("my_job", option)
    file = f"[jobs.my_job]\n{option} = {toml_value(file_value)}\n"

    layers = [
        ({}, None),
        ({}, file),
        ({runner: runner_text}, file),
        ({runner: runner_text, plain: plain_text}, file),
    ]
    kinds = [None, "config file", "environment", "environment"]
    for (environ, config), want, kind in zip(layers, expected, kinds, strict=True):
        resolved = resolve(environ, config, tmp_path)
        assert resolved.problems == ()
        job_config = resolved.jobs["my_job"]
        assert getattr(job_config.config, option) == want, (environ, config)
        origin = job_config.origins.get(option)
        assert (origin.kind if origin else None) == kind
    assert resolved.jobs["my_job"].origins[option].where == plain


def test_plain_and_runner_forms_that_disagree_warn_and_plain_wins() -> None:
    declare()
    resolved = resolve({"MY_JOB_INTERVAL_SECONDS": "10", "MY_JOB_RUNNER_INTERVAL_SECONDS": "20"})
    assert resolved.jobs["my_job"].config.interval_seconds == 10
    (warning,) = resolved.warnings
    assert (
        "MY_JOB_INTERVAL_SECONDS='10' and MY_JOB_RUNNER_INTERVAL_SECONDS='20' disagree" in warning
    )
    assert "using MY_JOB_INTERVAL_SECONDS" in warning


def test_plain_and_runner_forms_that_agree_do_not_warn() -> None:
    declare()
    resolved = resolve({"MY_JOB_ENABLED": "true", "MY_JOB_RUNNER_ENABLED": "TRUE"})
    assert resolved.warnings == ()


def test_names_are_matched_case_insensitively() -> None:
    declare()
    resolved = resolve({"my_job_enabled": "false", "My_Job_Runner_Batch_Size": "7"})
    assert resolved.jobs["my_job"].config.enabled is False
    assert resolved.jobs["my_job"].config.batch_size == 7
    assert resolved.jobs["my_job"].origins["enabled"].where == "my_job_enabled"


@pytest.mark.parametrize("text", ["true", "1", "yes", "on", "TRUE", " Yes "])
def test_true_booleans(text: str) -> None:
    declare(enabled=False)
    assert resolve({"MY_JOB_ENABLED": text}).jobs["my_job"].config.enabled is True


@pytest.mark.parametrize("text", ["false", "0", "no", "off", "OFF"])
def test_false_booleans(text: str) -> None:
    declare()
    assert resolve({"MY_JOB_ENABLED": text}).jobs["my_job"].config.enabled is False


@pytest.mark.parametrize(
    ("text", "priority"),
    [("critical", JobPriority.CRITICAL), ("LOW", JobPriority.LOW), ("2", JobPriority.NORMAL)],
)
def test_priority_by_name_or_number(text: str, priority: JobPriority) -> None:
    declare()
    assert resolve({"MY_JOB_PRIORITY": text}).jobs["my_job"].config.priority is priority


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MY_JOB_ENABLED", "maybe", "enabled: Input should be a valid boolean"),
        (
            "MY_JOB_INTERVAL_SECONDS",
            "0",
            "interval_seconds: Input should be greater than or equal to 0.1",
        ),
        ("MY_JOB_CRON", "*/5 * *", "cron: cron '*/5 * *' has 3 field(s); expected 5"),
        (
            "MY_JOB_TIMEZONE",
            "Europe/Berln",
            "timezone: unknown time zone 'Europe/Berln'; did you mean 'Europe/Berlin'?",
        ),
        ("MY_JOB_INTERVAL_SECONDS", "soon", "interval_seconds: Input should be a valid number"),
        ("MY_JOB_TIMEOUT_SECONDS", "-3", "timeout_seconds: Input should be greater than 0"),
        ("MY_JOB_MAX_CONCURRENT", "2.5", "max_concurrent: Input should be a valid integer"),
        ("MY_JOB_MAX_RETRIES", "-1", "max_retries: Input should be greater than or equal to 0"),
        ("MY_JOB_BATCH_SIZE", "0", "batch_size: Input should be greater than 0"),
        ("MY_JOB_PRIORITY", "urgent", "priority: Input should be 1, 2, 3 or 4"),
        (
            "MY_JOB_RUNNER_RETRY_DELAY_SECONDS",
            "nan",
            "retry_delay_seconds: Input should be a finite",
        ),
    ],
)
def test_bad_environment_values_name_variable_and_value(
    variable: str, value: str, message: str
) -> None:
    declare()
    resolved = resolve({variable: value})
    assert "my_job" not in resolved.jobs
    (problem,) = resolved.problems
    assert problem == f"environment {variable}={value!r}: {message}" or problem.startswith(
        f"environment {variable}={value!r}: {message}"
    )


def test_every_bad_value_is_listed_at_once(tmp_path: Path) -> None:
    declare()
    declare("other_job")
    resolved = resolve(
        {"MY_JOB_ENABLED": "maybe", "MY_JOB_BATCH_SIZE": "-1", "OTHER_JOB_INTERVAL_SECONDS": "x"},
        "[jobs.other_job]\ntimeout_seconds = -1\n",
        tmp_path,
    )
    assert len(resolved.problems) == 4
    assert any("MY_JOB_ENABLED='maybe'" in p for p in resolved.problems)
    assert any("MY_JOB_BATCH_SIZE='-1'" in p for p in resolved.problems)
    assert any("OTHER_JOB_INTERVAL_SECONDS='x'" in p for p in resolved.problems)
    assert any(
        f"config file {tmp_path / 'scheduler.toml'} [jobs.other_job] timeout_seconds=-1" in p
        for p in resolved.problems
    )


def test_override_that_breaks_a_rule_across_options_names_the_variable() -> None:
    declare(preserve_order=True)
    (problem,) = resolve({"MY_JOB_MAX_CONCURRENT": "2"}).problems
    assert "job 'my_job': preserve_order=True needs max_concurrent=1" in problem
    assert "environment MY_JOB_MAX_CONCURRENT='2'" in problem


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[jobs.my_job\n", "not valid TOML"),
        (
            "[jobs.my_job]\ninterval = 5\n",
            "'interval' is not an option that can be configured; did you mean 'interval_seconds'?",
        ),
        (
            "[jobs.my_job]\ndependencies = []\n",
            "'dependencies' is not an option that can be configured",
        ),
        ("jobs = 3\n", "'jobs' must be a table"),
        ("[jobs]\nmy_job = 3\n", "[jobs.my_job] must be a table"),
        ("[database]\nurl = 'x'\n", "unknown top-level key 'database'"),
    ],
)
def test_config_file_problems(config: str, message: str, tmp_path: Path) -> None:
    declare()
    resolved = resolve({}, config, tmp_path)
    assert len(resolved.problems) == 1
    assert message in resolved.problems[0]
    assert str(tmp_path / "scheduler.toml") in resolved.problems[0]


def test_missing_config_file_is_a_problem(tmp_path: Path) -> None:
    declare()
    resolved = resolve_job_configs(JobRegistry.list_jobs(), {}, tmp_path / "absent.toml")
    (problem,) = resolved.problems
    assert f"config file {tmp_path / 'absent.toml'}: cannot be read" in problem


def test_config_table_for_unknown_job_warns_with_suggestion(tmp_path: Path) -> None:
    declare("my_awesome_job")
    resolved = resolve({}, "[jobs.my_awsome_job]\nenabled = false\n", tmp_path)
    assert resolved.problems == ()
    (warning,) = resolved.warnings
    assert (
        "[jobs.my_awsome_job] matches no discovered job; did you mean 'my_awesome_job'?" in warning
    )


def test_typo_in_job_name_warns_with_closest_variable() -> None:
    declare("my_awesome_job")
    (warning,) = resolve({"MY_AWSOME_JOB_ENABLED": "false"}).warnings
    assert warning == (
        "environment variable MY_AWSOME_JOB_ENABLED matches no job; "
        "did you mean MY_AWESOME_JOB_ENABLED?"
    )


def test_typo_in_option_warns_with_closest_variable() -> None:
    declare("my_awesome_job")
    (warning,) = resolve({"MY_AWESOME_JOB_INTERVAL": "5"}).warnings
    assert "MY_AWESOME_JOB_INTERVAL matches no option of job 'my_awesome_job'" in warning
    assert "did you mean MY_AWESOME_JOB_INTERVAL_SECONDS?" in warning


def test_unrelated_variables_do_not_warn() -> None:
    declare("my_awesome_job")
    environ = {"PATH": "/bin", "FEATURE_FLAG_ENABLED": "1", "SCHEDULER_TASKS_DIR": "x", "HOME": "/"}
    assert resolve(environ).warnings == ()


def test_longest_job_prefix_is_used_for_option_typos() -> None:
    declare("my_job")
    declare("my_job_two")
    (warning,) = resolve({"MY_JOB_TWO_ENABLD": "1"}).warnings
    assert "matches no option of job 'my_job_two'" in warning
    assert "did you mean MY_JOB_TWO_ENABLED?" in warning


def test_an_override_of_the_schedule_replaces_the_decorators_kind_of_schedule() -> None:
    declare(interval_seconds=120)
    to_cron = resolve({"MY_JOB_CRON": "*/5 * * * *", "MY_JOB_TIMEZONE": "Europe/Berlin"})
    config = to_cron.jobs["my_job"].config
    assert (config.cron, config.timezone, config.interval_seconds) == (
        "*/5 * * * *", "Europe/Berlin", None,
    )  # fmt: skip
    assert str(config.schedule) == "cron */5 * * * * (Europe/Berlin)"
    JobRegistry.clear()
    declare(cron="0 3 * * *", timezone="Asia/Tokyo")
    config = resolve({"MY_JOB_INTERVAL_SECONDS": "30"}).jobs["my_job"].config
    assert (config.cron, config.timezone, config.interval_seconds) == (None, None, 30)
    (problem,) = resolve({"MY_JOB_INTERVAL_SECONDS": "30", "MY_JOB_CRON": "@hourly"}).problems
    assert problem.startswith("job 'my_job': set either interval_seconds (30) or cron ('@hourly')")
    assert "MY_JOB_INTERVAL_SECONDS='30'" in problem and "MY_JOB_CRON='@hourly'" in problem


def test_a_cron_jobs_period_is_its_longest_silence() -> None:
    declare(cron="0 9 * * 1-5")  # weekdays at nine: Friday to Monday is the longest gap
    assert resolve({}).jobs["my_job"].config.schedule.period_seconds == 3 * 24 * 3600


def test_a_name_two_jobs_could_mean_is_an_error_naming_both() -> None:
    declare("foo")
    declare("foo_runner")
    resolved = resolve({"FOO_RUNNER_ENABLED": "false"})
    (problem,) = resolved.problems
    assert "FOO_RUNNER_ENABLED is ambiguous" in problem
    assert "job 'foo_runner'" in problem and "job 'foo'" in problem and "use FOO_ENABLED" in problem
    assert resolved.jobs["foo"].config.enabled is True  # neither silently disabled
    assert resolve({"FOO_ENABLED": "false"}).problems == ()


def test_typos_of_every_option_get_the_right_suggestion() -> None:
    declare()
    environ = {"MY_JOB_PRESERVE_ORDR": "1", "MY_JOB_IDEMPOTNT": "no", "MY_JOB_CRONN": "@daily"}
    warnings = "\n".join(resolve(environ).warnings)
    assert "MY_JOB_PRESERVE_ORDR matches no option of job 'my_job'; did you mean " in warnings
    assert "did you mean MY_JOB_PRESERVE_ORDER?" in warnings
    assert "did you mean MY_JOB_IDEMPOTENT?" in warnings
    assert "did you mean MY_JOB_CRON?" in warnings
