"""Alembic environment: always run by `scheduler.migrate` with a connection it opened."""

from __future__ import annotations

from alembic import context

from scheduler.tables import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
