"""Did-you-mean hints for names a person typed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The candidate most like `name`, or None when none is alike enough to be a typo of it."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """`"; did you mean 'x'?"`, or an empty string when nothing is close."""
    match = closest(name, candidates, cutoff)
    return f"; did you mean {match!r}?" if match else ""
