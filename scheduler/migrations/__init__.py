"""Alembic migrations of the scheduler's own tables (the run history)."""
