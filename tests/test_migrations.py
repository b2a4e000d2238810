"""The migrations and the models describe one schema, and every migration can be undone.

A model changed without a migration (or the other way round) works in tests that create
tables from the models, then breaks an operator's `bridge db upgrade`; this catches it on
both databases.
"""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from bridge.db.engine import _alembic_config, create_engine, head_revision
from bridge.db.models import Base


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection)
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_build_exactly_the_models_schema(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "head"))
        async with engine.connect() as conn:
            differences = await conn.run_sync(_differences)
        assert differences == [], f"models and migrations disagree: {differences}"
    finally:
        await engine.dispose()


async def test_every_migration_can_be_undone_and_redone(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        for target in ("head", "base", "head"):
            async with engine.begin() as conn:
                await conn.run_sync(
                    lambda c, t=target: (command.upgrade if t == "head" else command.downgrade)(
                        _alembic_config(c), t))
        async with engine.connect() as conn:
            revision = await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision())
        assert revision == head_revision()
    finally:
        await engine.dispose()
