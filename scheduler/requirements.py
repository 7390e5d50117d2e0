"""Named requirements (`requires_twitter=True`) and the providers that satisfy them.

A provider is a function, plain or async, registered with `@requirement("twitter")`. Before each
run of a job that requires "twitter", the provider is called: what it returns is handed to the
run as `context.resources["twitter"]` (a client, credentials, a path); raising
`RequirementUnavailable("why")` keeps the run from starting, and says why. A requirement that
no provider was registered for is unavailable.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .errors import JobDefinitionError, SchedulerError
from .metadata import SourceLocation

ProviderT = TypeVar("ProviderT", bound=Callable[[], Any])

#: How long one provider may take to say whether its requirement is available.
PROVIDER_TIMEOUT_SECONDS = 10.0


class RequirementUnavailable(SchedulerError):
    """Raised by a provider: its requirement cannot be met right now; the message says why."""


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    function: Callable[[], Any]
    source: SourceLocation

    @property
    def module(self) -> str:
        return str(getattr(self.function, "__module__", ""))


class RequirementRegistry:
    """Process-wide providers by requirement name."""

    _providers: ClassVar[dict[str, Provider]] = {}

    @classmethod
    def register(cls, provider: Provider) -> None:
        existing = cls._providers.get(provider.name)
        same = existing is not None and existing.source == provider.source
        if existing is not None and not same:
            raise JobDefinitionError(
                f"requirement {provider.name!r} has two providers: at {existing.source} and at "
                f"{provider.source}"
            )
        cls._providers[provider.name] = provider

    @classmethod
    def get(cls, name: str) -> Provider | None:
        return cls._providers.get(name)

    @classmethod
    def unregister_module(cls, module: str) -> None:
        for name in [n for n, p in cls._providers.items() if p.module == module]:
            del cls._providers[name]

    @classmethod
    def list_providers(cls) -> list[Provider]:
        return list(cls._providers.values())

    @classmethod
    def clear(cls) -> None:
        cls._providers.clear()

    @classmethod
    def restore(cls, providers: Iterable[Provider]) -> None:
        """Hold exactly `providers` (from `list_providers`) again."""
        cls._providers = {provider.name: provider for provider in providers}

    @classmethod
    async def acquire(cls, names: Iterable[str]) -> dict[str, object]:
        """The resource of every requirement in `names`; raises for the first one not met."""
        resources: dict[str, object] = {}
        for name in names:
            resources[name] = await cls._provide(name)
        return resources

    @classmethod
    async def _provide(cls, name: str) -> object:
        provider = cls._providers.get(name)
        if provider is None:
            raise RequirementUnavailable(no_provider(name))
        try:
            if inspect.iscoroutinefunction(provider.function):
                call: Awaitable[Any] = provider.function()
            else:  # a blocking check (a file, a socket) must not stall the runs on the loop
                call = asyncio.to_thread(provider.function)
            result = await asyncio.wait_for(call, PROVIDER_TIMEOUT_SECONDS)
        except RequirementUnavailable as error:
            raise RequirementUnavailable(f"requirement {name!r}: {error}") from None
        except TimeoutError:
            raise RequirementUnavailable(
                f"requirement {name!r}: its provider did not answer within "
                f"{PROVIDER_TIMEOUT_SECONDS:g}s"
            ) from None
        except Exception as error:
            raise RequirementUnavailable(
                f"requirement {name!r}: its provider failed: {type(error).__name__}: {error}"
            ) from None
        return result


def no_provider(name: str) -> str:
    """Why `name` is unavailable when nothing provides it, and the two ways to provide it."""
    return (
        f"requirement {name!r}: no provider is registered; declare one in a task file: "
        f'env_requirement("{name}", "VARIABLE") (available while that environment variable is '
        f'set) or @requirement("{name}") on a function that returns what the run needs'
    )


def requirement(name: str) -> Callable[[ProviderT], ProviderT]:
    """Register the decorated function as the provider of the requirement `name`."""
    caller = sys._getframe(1)
    location = SourceLocation(caller.f_code.co_filename, caller.f_lineno)

    def decorate(function: ProviderT) -> ProviderT:
        RequirementRegistry.register(Provider(name, function, location))
        return function

    return decorate


def env_requirement(name: str, *variables: str) -> None:
    """Declare `name` available when every one of `variables` is set; the run gets their values.

    `env_requirement("twitter", "TWITTER_BEARER_TOKEN")` makes `requires_twitter=True` jobs run
    only where the token is configured, with `context.resources["twitter"]` holding it.
    """
    caller = sys._getframe(1)
    location = SourceLocation(caller.f_code.co_filename, caller.f_lineno)

    def provide() -> dict[str, str]:
        missing = [variable for variable in variables if not os.environ.get(variable)]
        if missing:
            raise RequirementUnavailable(f"environment variable(s) not set: {', '.join(missing)}")
        return {variable: os.environ[variable] for variable in variables}

    provide.__module__ = caller.f_globals.get("__name__", __name__)
    RequirementRegistry.register(Provider(name, provide, location))


async def unavailable_requirements(names: Iterable[str]) -> dict[str, str]:
    """For `list` and `check`: requirement name -> why it is unavailable, for each not met."""
    reasons: dict[str, str] = {}
    for name in names:
        try:
            await RequirementRegistry.acquire([name])
        except RequirementUnavailable as error:
            reasons[name] = str(error)
    return reasons
