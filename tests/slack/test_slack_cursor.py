"""The catch-up cursor of a linked channel, on SQLite and PostgreSQL (no homeserver needed):
it only moves forward, in the numeric order of Slack's ts."""

from __future__ import annotations

from bridge.db.engine import Database
from bridge.slack import store as slack_store


async def test_cursor_moves_forward_only_in_numeric_order(database_url: str) -> None:
    db = Database(database_url)
    await db.upgrade()
    try:
        async with db.sessions() as session:
            assert await slack_store.cursor(session, "T1", "C1") is None

        async def advance(ts: str) -> str | None:
            async with db.transaction() as session:
                await slack_store.advance_cursor(session, "T1", "C1", ts)
            async with db.sessions() as session:
                return await slack_store.cursor(session, "T1", "C1")

        assert await advance("1700000000.000200") == "1700000000.000200"  # created
        assert await advance("1700000000.000100") == "1700000000.000200"  # older: stays
        assert await advance("1700000000.000300") == "1700000000.000300"
        # Numbers, not text: a shorter micros part is padded, more seconds digits are later.
        assert await advance("1700000000.0004") == "1700000000.000400"
        assert await advance("999999999.999999") == "1700000000.000400"
        assert await advance("17000000000.000001") == "17000000000.000001"
        assert await advance("1700000000.000500") == "17000000000.000001"
        async with db.sessions() as session:  # another channel has its own
            assert await slack_store.cursor(session, "T1", "C2") is None
    finally:
        await db.engine.dispose()
