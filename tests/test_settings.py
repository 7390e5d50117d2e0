from __future__ import annotations

from pathlib import Path

import pytest

from scheduler import ConfigurationError, load_settings
from scheduler.settings import unknown_service_variables


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SCHEDULER_TASKS_DIR", "SCHEDULER_CONFIG_FILE", "SCHEDULER_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.tasks_dir == Path("tasks")
    assert settings.config_file is None
    assert settings.log_level == "INFO"


def test_environment_is_read_case_insensitively(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("scheduler_tasks_dir", "/srv/tasks")
    monkeypatch.setenv("SCHEDULER_LOG_LEVEL", "debug")
    monkeypatch.setenv("SCHEDULER_LOG_FORMAT", "Console")
    settings = load_settings()
    assert settings.tasks_dir == Path("/srv/tasks")
    assert (settings.log_level, settings.log_format) == ("DEBUG", "console")


def test_command_line_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_TASKS_DIR", "/from/env")
    assert load_settings(tasks_dir=Path("/from/flag")).tasks_dir == Path("/from/flag")
    assert load_settings(tasks_dir=None).tasks_dir == Path("/from/env")


def test_bad_values_are_all_listed_with_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_LOG_LEVEL", "loud")
    monkeypatch.setenv("SCHEDULER_LOG_FORMAT", "xml")
    monkeypatch.setenv("SCHEDULER_EVENT_LOOP", "tokio")
    with pytest.raises(ConfigurationError) as error:
        load_settings()
    problems = error.value.problems
    assert len(problems) == 3
    assert problems[0].startswith("SCHEDULER_LOG_LEVEL='loud': Input should be 'DEBUG'")
    assert problems[1].startswith("SCHEDULER_LOG_FORMAT='xml': Input should be 'json' or 'console'")
    assert problems[2].startswith("SCHEDULER_EVENT_LOOP='tokio': Input should be 'auto'")
    assert "3 configuration problem(s)" in str(error.value)


def test_unknown_scheduler_variables_get_a_suggestion() -> None:
    warnings = unknown_service_variables({"SCHEDULER_TASK_DIR": "x", "SCHEDULER_TASKS_DIR": "y"})
    assert warnings == [
        "environment variable SCHEDULER_TASK_DIR is not a scheduler setting; "
        "did you mean 'SCHEDULER_TASKS_DIR'?"
    ]
