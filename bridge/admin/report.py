"""The progress report: how far a department's move to Matrix has come.

Per department and room: the linked sides, and over a window of days the messages and the
distinct people on each side (Matrix users who are not puppets, Slack users, email senders,
as counted by :mod:`bridge.core.activity`), and the share of messages written on Matrix.
``bridge report`` prints it (text, JSON, CSV); ``GET /_bridge/api/v1/report`` serves the
JSON; the admin page draws it. The numbers come from the database alone: the report asks
neither the homeserver nor the networks.
"""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import date, timedelta
from typing import Any

from bridge.core.activity import MATRIX_SIDE, utc_day
from bridge.core.errors import CommandError
from bridge.db import activity as activity_store
from bridge.db.activity import ReportRoom
from bridge.db.engine import Database

DEFAULT_DAYS = 7
MAX_DAYS = 366
FORMATS = ("text", "json", "csv")
CSV_COLUMNS = ("department", "room", "alias", "side", "messages", "people", "matrix_share")


def check_days(days: Any) -> int:
    """The window's length, or a :class:`CommandError` saying what is allowed."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise CommandError(f"days must be a whole number from 1 to {MAX_DAYS}, "
                           f"not {days!r}.")
    return days


async def build_report(db: Database, *, days: int = DEFAULT_DAYS,
                       now: float | None = None) -> dict[str, Any]:
    """The report over the last ``days`` UTC days up to and including today (``now``),
    JSON-ready. Rooms are every portal with a link, grouped by the department a plan put
    them in; rooms without one come last, under ``"name": null``."""
    check_days(days)
    until = date.fromisoformat(utc_day(time.time() if now is None else now))
    since = until - timedelta(days=days - 1)
    window = [(since + timedelta(days=n)).isoformat() for n in range(days)]
    async with db.sessions() as session:
        rooms = await activity_store.linked_rooms(session)
        people_rows = await activity_store.people_in_window(session, window[0], window[-1])
        daily_rows = await activity_store.daily_in_window(session, window[0], window[-1])

    # room -> side -> person -> messages; room -> day -> side -> messages
    people: dict[str, dict[str, dict[str, int]]] = {}
    for room_id, side, person, messages in people_rows:
        people.setdefault(room_id, {}).setdefault(side, {})[person] = messages
    daily: dict[str, dict[str, dict[str, int]]] = {}
    for room_id, day, side, messages in daily_rows:
        daily.setdefault(room_id, {}).setdefault(day, {})[side] = messages

    departments: dict[str | None, list[tuple[dict[str, Any], dict[str, dict[str, int]]]]] = {}
    for room in rooms:
        room_people = people.get(room.room_id, {})
        departments.setdefault(room.department, []).append(
            (_room_entry(room, room_people, daily.get(room.room_id, {}), window),
             room_people))

    named = sorted((d for d in departments if d is not None), key=lambda d: (d.casefold(), d))
    order: list[str | None] = [*named, *([None] if None in departments else [])]
    report_departments: list[dict[str, Any]] = []
    everyone: list[dict[str, dict[str, int]]] = []
    for department in order:
        entries = sorted(departments[department], key=lambda e: _room_sort_key(e[0]))
        report_departments.append({
            "name": department,
            "rooms": [entry for entry, _ in entries],
            "totals": _totals([entry for entry, _ in entries], [p for _, p in entries]),
        })
        everyone += [p for _, p in entries]
    all_rooms = [room for d in report_departments for room in d["rooms"]]
    return {"days": days, "since": window[0], "until": window[-1],
            "departments": report_departments, "totals": _totals(all_rooms, everyone)}


def _room_entry(room: ReportRoom, room_people: dict[str, dict[str, int]],
                room_daily: dict[str, dict[str, int]], window: list[str]) -> dict[str, Any]:
    sides = [MATRIX_SIDE]
    for network, _, _ in room.links:
        if network not in sides:
            sides.append(network)
    # A side unlinked during the window still wrote what it wrote.
    sides += sorted(s for s in room_people if s not in sides)
    counted = {side: {"messages": sum(room_people.get(side, {}).values()),
                      "people": len(room_people.get(side, {}))} for side in sides}
    messages = sum(c["messages"] for c in counted.values())
    return {
        "room_id": room.room_id, "name": room.name, "alias": room.alias,
        "links": [{"network": network, "remote_id": remote_id, "remote_name": remote_name}
                  for network, remote_id, remote_name in room.links],
        "sides": counted, "messages": messages,
        "matrix_share": _share(counted[MATRIX_SIDE]["messages"], messages),
        "daily": [{"day": day, **{side: room_daily.get(day, {}).get(side, 0)
                                  for side in sides}} for day in window],
    }


def _totals(rooms: list[dict[str, Any]],
            people: list[dict[str, dict[str, int]]]) -> dict[str, Any]:
    """Sums over rooms; people are counted once however many of the rooms they wrote in."""
    sides: list[str] = [MATRIX_SIDE]
    for room in rooms:
        sides += [side for side in room["sides"] if side not in sides]
    persons: dict[str, set[str]] = {side: set() for side in sides}
    for room_people in people:
        for side, by_person in room_people.items():
            persons.setdefault(side, set()).update(by_person)
    counted = {side: {"messages": sum(room["sides"].get(side, {}).get("messages", 0)
                                      for room in rooms),
                      "people": len(persons.get(side, ()))} for side in sides}
    messages = sum(c["messages"] for c in counted.values())
    return {"rooms": len(rooms), "sides": counted, "messages": messages,
            "matrix_share": _share(counted[MATRIX_SIDE]["messages"], messages)}


def _share(matrix: int, messages: int) -> float | None:
    return round(matrix / messages, 4) if messages else None


def _room_sort_key(room: dict[str, Any]) -> tuple[str, str]:
    label = room["name"] or room["alias"] or room["room_id"]
    return label.casefold(), room["room_id"]


def room_label(room: dict[str, Any]) -> str:
    """The room as people know it: its name, else its alias, else its ID."""
    return str(room["name"] or room["alias"] or room["room_id"])


def percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.0f}%"


# --- renderers ---------------------------------------------------------------------------


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return render_json(report)
    if fmt == "csv":
        return render_csv(report)
    if fmt == "text":
        return render_text(report)
    raise CommandError(f"Unknown report format {fmt!r}: use one of {', '.join(FORMATS)}.")


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def render_csv(report: dict[str, Any]) -> str:
    """One row per room and side; the room's Matrix share (0..1, empty without messages)
    is repeated on each of its rows, so a spreadsheet can filter by side."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for department in report["departments"]:
        for room in department["rooms"]:
            share = "" if room["matrix_share"] is None else room["matrix_share"]
            for side, counted in room["sides"].items():
                writer.writerow([department["name"] or "", room["name"] or room["room_id"],
                                 room["alias"] or "", side, counted["messages"],
                                 counted["people"], share])
    return out.getvalue()


def render_text(report: dict[str, Any]) -> str:
    """A table per department: one row per room, a column per side with
    "messages (people)", and the share written on Matrix."""
    days = report["days"]
    lines = [f"Progress report {report['since']} to {report['until']} "
             f"({days} day{'' if days == 1 else 's'}, UTC)",
             "Each side: messages (distinct people); on Matrix: share of messages written "
             "on Matrix."]
    if not report["departments"]:
        lines += ["", "No linked rooms yet."]
    for department in report["departments"]:
        totals = department["totals"]
        name = department["name"] or "No department"
        rooms = totals["rooms"]
        lines += ["", f"{name}: {rooms} room{'' if rooms == 1 else 's'}, "
                      f"{totals['messages']} message{'' if totals['messages'] == 1 else 's'}, "
                      f"{percent(totals['matrix_share'])} on Matrix"]
        sides = list(totals["sides"])
        header = ["room", *sides, "on Matrix"]
        rows = []
        for room in department["rooms"]:
            label = room_label(room)
            if room["name"] and room["alias"]:
                label += f" ({room['alias']})"
            rows.append([label, *(_cell(room["sides"].get(side)) for side in sides),
                         percent(room["matrix_share"])])
        rows.append(["total", *(_cell(totals["sides"][side]) for side in sides),
                     percent(totals["matrix_share"])])
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width
                                                 in zip(row[1:], widths[1:], strict=True)]
            lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _cell(counted: dict[str, int] | None) -> str:
    return "-" if counted is None else f"{counted['messages']} ({counted['people']})"
