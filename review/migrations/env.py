"""Alembic environment: runs against the engine ``review.store.alembic_config`` hands over.

Several app replicas may start at once against one PostgreSQL database. Every upgrade runs in
one transaction that first takes a transaction-level advisory lock, so concurrent starts
migrate one after another: the first upgrades, the others then find the schema at head and do
nothing (without the lock they raced to ``CREATE TABLE alembic_version`` and the losers
crashed on start, tests/test_replicas.py). The lock ends with the transaction, also when a
process dies mid-migration. SQLite is unchanged.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from review.schema import Base

config = context.config
target_metadata = Base.metadata
MIGRATION_LOCK = int.from_bytes(b"lungcam", "big")  # any bigint, the same in every replica


def run_migrations_online() -> None:
    engine = config.attributes["engine"]
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; pass an engine")
run_migrations_online()
