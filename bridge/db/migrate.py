"""``python -m bridge.db.migrate``: apply the schema migrations in a process of its own.

``bridge run`` starts this (bridge/db/engine.py, ``Database.upgrade_in_subprocess``) so that
alembic and what it imports never stay in the long-running bridge. It reads the database URL
from stdin and prints one JSON line: ``{"before": ..., "after": ...}`` (the revisions, as
``engine.describe`` puts them), or ``{"error": ..., "database": true|false}`` (exit code 1).
"""

from __future__ import annotations

import asyncio
import json
import sys

from bridge.db.engine import Database


async def _upgrade(url: str) -> tuple[str | None, str | None]:
    db = Database(url)
    try:
        return await db.upgrade()
    finally:
        await db.close()


def main() -> int:
    url = sys.stdin.read().strip()
    try:
        before, after = asyncio.run(_upgrade(url))
    except Exception as exc:
        database = isinstance(exc, OSError) or exc.__class__.__module__.startswith(
            ("sqlalchemy", "asyncpg", "sqlite3"))
        if not database:
            raise  # a bug: the traceback goes to stderr, which the bridge reports
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        print(json.dumps({"error": detail, "database": True}), flush=True)
        return 1
    print(json.dumps({"before": before, "after": after}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
