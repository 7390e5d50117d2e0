"""Secrets out of every text the service keeps or shows: logs, run errors, pages, responses.

`mask_secrets` replaces, in free text, the password of a URL (`scheme://user:***@host`), a
bearer token (`Bearer ***`), the value of a secret-named key in `key=value`, `key: value` and
dict forms (`'api_key': '***'`), and every value registered with `register_secret` (what a
requirement provider handed a run). It imports nothing of the package: records.py, at the
bottom, uses it for every stored error.
"""

from __future__ import annotations

import functools
import re
import threading

MASK = "***"

#: Names whose values are secrets, as whole words of a key (`db_password`, `X-Api-Key`).
SECRET_NAMES = (
    r"password|passwd|pwd|secret|token|api[_-]?key|authorization|credentials?|private[_-]?key"
)

_URL_CREDENTIALS = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@/\s]+@", re.IGNORECASE)
_BEARER = re.compile(r"(?P<head>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
# A secret-named key (the search anchors on the name: fast on texts without one), the rest of
# the key and its closing quote if quoted (a dict's repr, JSON), `=` or `:`, then the value:
# quoted, an authorization scheme and its credentials, or bare up to a separator.
_KEY_VALUE = re.compile(
    r"""(?P<head>(?<![a-z])(?:"""
    + SECRET_NAMES
    + r""")(?![a-z])[\w.-]*['"]?\s*[=:]\s*)"""
    + r"""(?P<value>'[^']*'|"[^"]*"|(?:bearer|basic)\s+[^\s,;&}\]'"]+|[^\s,;&}\]'"]+)""",
    re.IGNORECASE,
)
#: A text that holds none of these (lowercased) holds none of the above.
_HINTS = (
    "://",
    "bearer",
    "basic",
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "authoriz",
    "credential",
)
#: Shorter registered values are not masked: they would mask ordinary words.
MIN_SECRET_LENGTH = 6

_lock = threading.Lock()
_known: frozenset[str] = frozenset()


def register_secret(value: object) -> None:
    """Mask `value` (a string handed to a run, such as a token) wherever it appears from now on
    in this process."""
    global _known
    if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH and value not in _known:
        with _lock:
            _known = _known | {value}
            _mask_short.cache_clear()  # what it remembered may hold the new secret


def _masked_value(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('head')}{quote}{MASK}{quote}"


def _may_hold_secret(text: str) -> bool:
    """The cheap test first (plain substring searches): the logs run this on every text."""
    lowered = text.lower()
    return any(hint in lowered for hint in _HINTS)


def mask_secrets(text: str) -> str:
    """`text` with every secret it holds replaced by `***`."""
    # Short texts repeat (log events, outcomes, names): remembered, they cost a lookup.
    return _mask_short(text) if len(text) <= SHORT_TEXT else _mask(text)


#: Texts up to this long are remembered by `_mask_short`.
SHORT_TEXT = 80


@functools.lru_cache(maxsize=4096)
def _mask_short(text: str) -> str:
    return _mask(text)


def _mask(text: str) -> str:
    for value in _known:
        if value in text:
            text = text.replace(value, MASK)
    if not _may_hold_secret(text):
        return text
    if "://" in text and "@" in text:
        text = _URL_CREDENTIALS.sub(rf"\g<head>:{MASK}@", text)
    text = _BEARER.sub(rf"\g<head>{MASK}", text)
    return _KEY_VALUE.sub(_masked_value, text)
