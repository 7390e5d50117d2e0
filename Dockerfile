# The scheduler service as one always-on container.
# Build: docker build -t taskwarden .    Run: docker run -p 9480:9480 -v taskwarden-data:/data taskwarden
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scheduler ./scheduler
# With the celery extra: the same image runs `scheduler run` and `scheduler worker`.
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[celery]"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SCHEDULER_TASKS_DIR=/app/tasks \
    SCHEDULER_DATABASE_URL=sqlite:////data/scheduler.db \
    SCHEDULER_HTTP_HOST=0.0.0.0 \
    SCHEDULER_HTTP_PORT=9480 \
    SCHEDULER_SHUTDOWN_GRACE_SECONDS=25 \
    EXAMPLES_WORKSPACE=/data/workspace
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin scheduler \
    && mkdir -p /data /app \
    && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
COPY tasks /app/tasks
WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
# 9480: the scheduler's HTTP port; 9481: a `scheduler worker`'s /metrics and /healthz.
EXPOSE 9480 9481
# No curl in a slim image: the health check is a line of Python against /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('SCHEDULER_HTTP_PORT', '9480'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
# SIGTERM drains running jobs for SCHEDULER_SHUTDOWN_GRACE_SECONDS (25 s), within Docker's
# stop timeout: give `docker stop -t 30` / compose `stop_grace_period: 30s`.
STOPSIGNAL SIGTERM
CMD ["scheduler", "run"]
