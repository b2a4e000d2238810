"""The catch-up cursor of a linked channel, on SQLite and PostgreSQL (no homeserver needed):
it only moves forward, in the numeric order of Slack's ts."""

from __future__ import annotations

from bridge.db.engine import Database
from bridge.slack import store as slack_store


async def test_cursor_moves_forward_only_in_numeric_order(db: Database) -> None:
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


async def test_cursors_noted_in_a_transaction_move_when_it_commits(db: Database) -> None:
    """The outbox records several channels' messages in one transaction: each channel's
    cursor ends at the furthest of its messages, forward only, created where missing."""
    async with db.transaction() as session:
        await slack_store.advance_cursor(session, "T1", "C1", "1700000000.000500")

    async with db.transaction() as session:
        for channel, ts in [("C1", "1700000000.000300"), ("C2", "1700000000.0002"),
                            ("C2", "1700000000.000100"), ("C3", "1700000000.000700"),
                            ("C3", "1700000001.000001")]:
            slack_store.note_cursor(session, "T1", channel, ts)
        # Not written before the commit.
        assert await slack_store.cursor(session, "T1", "C2") is None
    async with db.sessions() as session:
        assert await slack_store.cursor(session, "T1", "C1") == "1700000000.000500"
        assert await slack_store.cursor(session, "T1", "C2") == "1700000000.000200"
        assert await slack_store.cursor(session, "T1", "C3") == "1700000001.000001"

    async with db.transaction() as session:  # further on: moved; behind: stays
        slack_store.note_cursor(session, "T1", "C1", "1700000000.000600")
        slack_store.note_cursor(session, "T1", "C2", "999999999.999999")
    async with db.sessions() as session:
        assert await slack_store.cursor(session, "T1", "C1") == "1700000000.000600"
        assert await slack_store.cursor(session, "T1", "C2") == "1700000000.000200"

    try:  # a transaction that fails moves nothing
        async with db.transaction() as session:
            slack_store.note_cursor(session, "T1", "C1", "1700000009.000000")
            raise RuntimeError("the handling failed")
    except RuntimeError:
        pass
    async with db.sessions() as session:
        assert await slack_store.cursor(session, "T1", "C1") == "1700000000.000600"
