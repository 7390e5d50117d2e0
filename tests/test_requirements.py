from __future__ import annotations

import asyncio

import pytest

from scheduler import JobDefinitionError, RequirementUnavailable, env_requirement, requirement
from scheduler.requirements import RequirementRegistry, unavailable_requirements


async def test_sync_and_async_providers_hand_over_their_resource() -> None:
    @requirement("plain")
    def plain() -> str:
        return "client"

    @requirement("awaited")
    async def awaited() -> dict[str, int]:
        await asyncio.sleep(0)
        return {"pool": 3}

    assert await RequirementRegistry.acquire(["plain", "awaited"]) == {
        "plain": "client",
        "awaited": {"pool": 3},
    }


async def test_unavailable_requirements_say_why() -> None:
    @requirement("down")
    def down() -> None:
        raise RequirementUnavailable("API_KEY is not set")

    @requirement("broken")
    def broken() -> None:
        raise ConnectionError("refused")

    assert await unavailable_requirements(["down", "broken", "missing"]) == {
        "down": "requirement 'down': API_KEY is not set",
        "broken": "requirement 'broken': its provider failed: ConnectionError: refused",
        "missing": "requirement 'missing': no provider is registered; declare one in a task file: "
        'env_requirement("missing", "VARIABLE") (available while that environment variable is set) '
        'or @requirement("missing") on a function that returns what the run needs',
    }


async def test_env_requirement(monkeypatch: pytest.MonkeyPatch) -> None:
    env_requirement("twitter", "TWITTER_BEARER_TOKEN")
    monkeypatch.delenv("TWITTER_BEARER_TOKEN", raising=False)
    with pytest.raises(RequirementUnavailable, match="not set: TWITTER_BEARER_TOKEN"):
        await RequirementRegistry.acquire(["twitter"])
    monkeypatch.setenv("TWITTER_BEARER_TOKEN", "t0k")
    resources = await RequirementRegistry.acquire(["twitter"])
    assert resources == {"twitter": {"TWITTER_BEARER_TOKEN": "t0k"}}


def test_two_providers_for_one_requirement_is_an_error() -> None:
    @requirement("wallet")
    def first() -> None: ...

    with pytest.raises(JobDefinitionError, match="requirement 'wallet' has two providers"):

        @requirement("wallet")
        def second() -> None: ...
