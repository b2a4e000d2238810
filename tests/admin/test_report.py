"""The progress report's arithmetic on the database alone (SQLite and PostgreSQL): the
window's edges, distinct people, the Matrix share, rooms without messages, departments;
and its text and CSV forms. The numbers counted from real traffic: test_report_e2e.py."""

from __future__ import annotations

import csv
import io
from calendar import timegm
from typing import Any

import pytest
from sqlalchemy import update

from bridge.admin.report import build_report, render_csv, render_text
from bridge.core import activity
from bridge.core.errors import CommandError
from bridge.db import store
from bridge.db.engine import Database
from bridge.db.models import Activity, Portal

# The report is asked for at noon UTC on 5 December: a 7-day window is 29 Nov .. 5 Dec.
NOW = timegm((2026, 12, 5, 12, 0, 0))
BAUAMT, SCHULE, ORDNUNG, LOOSE, DIRECT = (
    "!bauamt:x", "!schule:x", "!ordnung:x", "!loose:x", "!direct:x")
ANNA, BEN, CARL = "@anna:x", "@ben:x", "@slack_t_u0carl:x"


def ms(day: str, hour: int = 12) -> int:
    """A time on that UTC day, in milliseconds (as events and remote messages carry it)."""
    year, month, mday = (int(p) for p in day.split("-"))
    return timegm((year, month, mday, hour, 0, 0)) * 1000


async def room(db: Database, room_id: str, links: list[tuple[str, str]], *,
               name: str | None = None, alias: str | None = None,
               department: str | None = None, is_direct: bool = False) -> None:
    async with db.transaction() as session:
        await store.ensure_portal(session, room_id, is_direct=is_direct)
        for network, remote_id in links:
            await store.add_link(session, room_id=room_id, network=network,
                                 remote_id=remote_id, remote_name=None, created_by="@a:x")
        await session.execute(update(Portal).where(Portal.room_id == room_id).values(
            name=name, alias=alias, department=department))


async def wrote(db: Database, room_id: str, side: str, user_id: str, day: str,
                times: int = 1, hour: int = 12) -> None:
    for _ in range(times):
        async with db.transaction() as session:
            activity.note_message(session, room_id=room_id, side=side,
                                  user_id=user_id, timestamp_ms=ms(day, hour))


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["room_id"]: r for d in report["departments"] for r in d["rooms"]}


async def test_window_edges_distinct_people_and_share(db: Database) -> None:
    await room(db, BAUAMT, [("slack", "T:C1"), ("email", "bauamt")], name="Bauamt, Allgemeines",
               alias="#bauamt-allgemein:x", department="Bauamt")
    # Outside the window: the day before it starts, and tomorrow (a clock ahead).
    await wrote(db, BAUAMT, "matrix", ANNA, "2026-11-28", hour=23)
    await wrote(db, BAUAMT, "matrix", ANNA, "2026-12-06", hour=0)
    # Inside: its first day (just after midnight) and its last (today, just before).
    await wrote(db, BAUAMT, "matrix", ANNA, "2026-11-29", times=2, hour=0)
    await wrote(db, BAUAMT, "matrix", ANNA, "2026-12-05", hour=23)
    await wrote(db, BAUAMT, "matrix", BEN, "2026-12-05")
    await wrote(db, BAUAMT, "slack", CARL, "2026-12-01", times=3)

    report = await build_report(db, days=7, now=NOW)
    assert (report["days"], report["since"], report["until"]) == (7, "2026-11-29", "2026-12-05")
    bauamt = by_id(report)[BAUAMT]
    assert bauamt["name"] == "Bauamt, Allgemeines"
    assert bauamt["alias"] == "#bauamt-allgemein:x"
    assert [(lk["network"], lk["remote_id"]) for lk in bauamt["links"]] == [
        ("slack", "T:C1"), ("email", "bauamt")]
    # Anna wrote on two days: one person, three messages. Email is linked but silent.
    assert bauamt["sides"] == {"matrix": {"messages": 4, "people": 2},
                               "slack": {"messages": 3, "people": 1},
                               "email": {"messages": 0, "people": 0}}
    assert bauamt["messages"] == 7
    assert bauamt["matrix_share"] == pytest.approx(4 / 7, abs=1e-4)
    daily = bauamt["daily"]
    assert [d["day"] for d in daily] == ["2026-11-29", "2026-11-30", "2026-12-01",
                                         "2026-12-02", "2026-12-03", "2026-12-04",
                                         "2026-12-05"]
    assert daily[0] == {"day": "2026-11-29", "matrix": 2, "slack": 0, "email": 0}
    assert daily[2] == {"day": "2026-12-01", "matrix": 0, "slack": 3, "email": 0}
    assert daily[6] == {"day": "2026-12-05", "matrix": 2, "slack": 0, "email": 0}

    # A one-day window is today alone.
    today = by_id(await build_report(db, days=1, now=NOW))[BAUAMT]
    assert today["sides"]["matrix"] == {"messages": 2, "people": 2}
    assert today["sides"]["slack"] == {"messages": 0, "people": 0}
    assert [d["day"] for d in today["daily"]] == ["2026-12-05"]
    # Two days back from the day after: Anna's late message counts, the early one does not.
    later = by_id(await build_report(db, days=2, now=NOW + 86400))[BAUAMT]
    assert later["sides"]["matrix"] == {"messages": 3, "people": 2}

    for days in (0, -1, 367, "7", True):
        with pytest.raises(CommandError, match="days"):
            await build_report(db, days=days, now=NOW)  # type: ignore[arg-type]


async def test_departments_rooms_and_totals(db: Database) -> None:
    await room(db, BAUAMT, [("slack", "T:C1")], name="Bauamt", department="Bauamt")
    await room(db, SCHULE, [("email", "schule")], alias="#schule:x", department="Amt für Schulen")
    await room(db, ORDNUNG, [("slack", "T:C2")], name="Ordnungsamt", department="Bauamt")
    await room(db, LOOSE, [("email", "loose")])  # no department: listed last
    await room(db, "!unlinked:x", [])  # the bot is there, nothing is linked: not reported
    await room(db, DIRECT, [], is_direct=True)
    for room_id in (BAUAMT, ORDNUNG):
        await wrote(db, room_id, "matrix", ANNA, "2026-12-04")
        await wrote(db, room_id, "slack", CARL, "2026-12-04")
    await wrote(db, ORDNUNG, "matrix", BEN, "2026-12-04", times=2)
    # Ordnungsamt's email link was removed since: what was written there still counts.
    await wrote(db, ORDNUNG, "email", "@email_x:x", "2026-12-03")
    # Messages in a room without links (no longer a portal with links) are not reported.
    await wrote(db, "!unlinked:x", "matrix", ANNA, "2026-12-04")

    report = await build_report(db, now=NOW)
    assert [d["name"] for d in report["departments"]] == ["Amt für Schulen", "Bauamt", None]
    bauamt = report["departments"][1]
    assert [r["room_id"] for r in bauamt["rooms"]] == [BAUAMT, ORDNUNG]
    ordnung = bauamt["rooms"][1]
    assert list(ordnung["sides"]) == ["matrix", "slack", "email"]
    assert ordnung["sides"]["email"] == {"messages": 1, "people": 1}
    # Anna and Carl wrote in both rooms: each is one person in the department's totals.
    assert bauamt["totals"] == {
        "rooms": 2, "messages": 7, "matrix_share": 0.5714,
        "sides": {"matrix": {"messages": 4, "people": 2}, "slack": {"messages": 2, "people": 1},
                  "email": {"messages": 1, "people": 1}}}
    schule = report["departments"][0]
    assert schule["rooms"][0]["name"] is None and schule["rooms"][0]["alias"] == "#schule:x"
    # No messages at all: zeros on every side, and no share rather than 0 %.
    assert schule["rooms"][0]["sides"] == {"matrix": {"messages": 0, "people": 0},
                                           "email": {"messages": 0, "people": 0}}
    assert schule["rooms"][0]["matrix_share"] is None
    assert schule["totals"]["matrix_share"] is None
    assert [r["room_id"] for r in report["departments"][2]["rooms"]] == [LOOSE]
    assert report["totals"]["rooms"] == 4
    assert report["totals"]["messages"] == 7
    assert report["totals"]["sides"]["matrix"] == {"messages": 4, "people": 2}

    text = render_text(report)
    lines = text.splitlines()
    assert lines[0] == "Progress report 2026-11-29 to 2026-12-05 (7 days, UTC)"
    assert "Bauamt: 2 rooms, 7 messages, 57% on Matrix" in lines
    assert any(line.split() == ["Ordnungsamt", "3", "(2)", "1", "(1)", "1", "(1)", "60%"]
               for line in lines), text
    assert "No department: 1 room, 0 messages, - on Matrix" in lines
    assert text.index("Amt für Schulen") < text.index("Bauamt:") < text.index("No department")

    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert {tuple(r.values()) for r in rows if r["room"] == "Ordnungsamt"} == {
        ("Bauamt", "Ordnungsamt", "", "matrix", "3", "2", "0.6"),
        ("Bauamt", "Ordnungsamt", "", "slack", "1", "1", "0.6"),
        ("Bauamt", "Ordnungsamt", "", "email", "1", "1", "0.6"),
    }
    assert [(r["department"], r["room"], r["side"], r["matrix_share"]) for r in rows
            if r["department"] == ""] == [("", LOOSE, "matrix", ""), ("", LOOSE, "email", "")]


async def test_counting_adds_up_in_one_row_per_person_and_day(db: Database) -> None:
    """The upsert: a person's messages of a day are one row, however many there are."""
    await wrote(db, BAUAMT, "matrix", ANNA, "2026-12-05", times=3)
    await wrote(db, BAUAMT, "matrix", ANNA, "2026-12-05", hour=1)
    async with db.sessions() as session:
        row = (await session.execute(Activity.__table__.select())).one()
    assert row.room_id == BAUAMT
    assert row.messages == 4
    assert row.day == "2026-12-05"
    assert row.person == activity.pseudonym(ANNA) != ANNA
    assert len(row.person) == 32


async def test_messages_counted_in_one_transaction_are_all_counted(db: Database) -> None:
    """The outbox records several remote messages' successes in one transaction: each is
    counted once, on its own day and room, and only if the transaction commits."""
    async with db.transaction() as session:
        for room_id, user_id, day in [(BAUAMT, CARL, "2026-12-05"), (BAUAMT, CARL, "2026-12-05"),
                                      (SCHULE, CARL, "2026-12-05"), (BAUAMT, CARL, "2026-12-04")]:
            activity.note_message(session, room_id=room_id, side="slack",
                                  user_id=user_id, timestamp_ms=ms(day))
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            activity.note_message(session, room_id=BAUAMT, side="slack",
                                  user_id=CARL, timestamp_ms=ms("2026-12-05"))
            raise RuntimeError("the delivery's success was not recorded")
    async with db.sessions() as session:
        rows = (await session.execute(Activity.__table__.select())).all()
    assert sorted((r.room_id, r.day, r.side, r.messages) for r in rows) == [
        (BAUAMT, "2026-12-04", "slack", 1), (BAUAMT, "2026-12-05", "slack", 2),
        (SCHULE, "2026-12-05", "slack", 1)]


def test_what_counts_as_a_message() -> None:
    assert activity.is_new_message("m.room.message", {"msgtype": "m.text", "body": "hi"})
    assert activity.is_new_message("m.room.message", {
        "msgtype": "m.text", "body": "a reply", "m.relates_to": {
            "m.in_reply_to": {"event_id": "$x"}}})
    assert activity.is_new_message("m.room.message", {
        "msgtype": "m.text", "body": "in a thread", "m.relates_to": {
            "rel_type": "m.thread", "event_id": "$x"}})
    assert not activity.is_new_message("m.room.message", {
        "body": "* fixed", "m.new_content": {"body": "fixed"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}})
    assert not activity.is_new_message("m.reaction", {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "👍"}})
    assert not activity.is_new_message("m.room.redaction", {"redacts": "$x"})
    assert activity.utc_day(timegm((2026, 12, 5, 23, 59, 59))) == "2026-12-05"
