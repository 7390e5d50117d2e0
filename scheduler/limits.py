"""Process limits the service raises for itself at start."""

from __future__ import annotations

import sys

# Where the hard limit is "unlimited", the most Linux allows by default (fs.nr_open).
_UNLIMITED_FALLBACK = 1_048_576


def raise_open_file_limit() -> int | None:
    """Raise the soft limit on open files to the hard limit; return the soft limit now in force
    (None on Windows, which has no such limit).

    Every run's database connection, worker pipe, log file and HTTP client is a descriptor,
    and the usual soft limit (1,024) is far below the usual hard one: raising it needs no
    privilege. Where the system refuses (macOS caps it below "unlimited"), it stays as it was.
    """
    if sys.platform == "win32":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_FALLBACK if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
