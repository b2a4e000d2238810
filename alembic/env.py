"""Alembic environment.

The bridge runs migrations itself (`bridge db upgrade`, `bridge run`) and hands over an open
connection. Running plain `alembic` from the repository top also works: it reads the database
URL from the BRIDGE_DATABASE__URL environment variable or `-x url=...`.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from bridge.db.engine import create_engine
from bridge.db.models import Base
from bridge.networks import load_models

# The core's tables and every network's (each network keeps its models in its folder).
load_models()
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(url: str) -> None:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "BRIDGE_DATABASE__URL", "sqlite+aiosqlite:///bridge.db"
    )
    asyncio.run(_run_standalone(url))
