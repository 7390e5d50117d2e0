"""Benchmarks against raw APScheduler (`make bench`)."""

import os
import sys

#: The interpreter of every measured process. `make bench` points it at a virtualenv with the
#: runtime dependencies only, as the container ships: the development extras (rich, pygments,
#: pytest) would otherwise be imported by libraries that find them, and counted.
MEASURED_PYTHON = os.path.abspath(os.environ.get("BENCH_PYTHON", sys.executable))  # not resolved
