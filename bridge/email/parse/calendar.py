"""`calendar_summary`: a text/calendar part (an invitation, cancellation, reply …) as a short
readable summary of its events, with title, time, place and organizer (and for a reply the
attendees' answers), to post in place of the iCalendar data.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import date, datetime, timedelta
from typing import Any

log = logging.getLogger("bridge.email.parse")  # one logger for the whole parser


_METHOD_LABEL = {"REQUEST": "Invitation", "CANCEL": "Cancelled", "REPLY": "Reply",
                 "PUBLISH": "Event", "COUNTER": "Counter proposal", "REFRESH": "Refresh request",
                 "ADD": "Added occurrence", "DECLINECOUNTER": "Counter proposal declined"}


def _format_when(start: Any, end: Any, tzid: str | None) -> str:
    if isinstance(start, datetime):
        text = start.strftime("%Y-%m-%d %H:%M")
        if isinstance(end, datetime):
            text += "\u2013" + (end.strftime("%H:%M") if end.date() == start.date()
                           else end.strftime("%Y-%m-%d %H:%M"))
        zone = tzid or (str(start.tzinfo) if start.tzinfo is not None else None)
        if start.tzinfo is not None and getattr(start.tzinfo, "key", None):
            zone = tzid or start.tzinfo.key  # type: ignore[attr-defined]
        return f"{text} ({zone})" if zone else text
    if isinstance(start, date):
        text = start.isoformat()
        if isinstance(end, date) and not isinstance(end, datetime):
            last = end - timedelta(days=1)  # DTEND of an all-day event is exclusive
            if last > start:
                text += "\u2013" + last.isoformat()
        return text + " (all day)"
    return str(start)


def _cal_address(prop: Any) -> str:
    address = str(prop)
    if address.lower().startswith("mailto:"):
        address = address[7:]
    name = None
    with contextlib.suppress(Exception):
        name = prop.params.get("CN")
    return f"{name} <{address}>" if name else address


def calendar_summary(data: bytes | str) -> str | None:
    """A readable summary of an iCalendar object (invitation, cancellation, reply)."""
    try:
        import icalendar

        cal = icalendar.Calendar.from_ical(data)
        method = str(cal.get("method", "") or "").upper()
        lines: list[str] = []
        for event in list(cal.walk("VEVENT"))[:5]:
            label = _METHOD_LABEL.get(method, "Event")
            status = str(event.get("status", "") or "").upper()
            if status == "CANCELLED":
                label = "Cancelled"
            title = str(event.get("summary", "") or "").strip() or "(no title)"
            lines.append(f"{label}: {title}")
            start = end = None
            with contextlib.suppress(Exception):
                start = event.start  # type: ignore[attr-defined]
            with contextlib.suppress(Exception):
                end = event.end  # type: ignore[attr-defined]
            if start is not None:
                tzid = None
                with contextlib.suppress(Exception):
                    tzid = event.get("dtstart").params.get("TZID")
                lines.append(f"When: {_format_when(start, end, tzid)}")
            location = str(event.get("location", "") or "").strip()
            if location:
                lines.append(f"Where: {location}")
            organizer = event.get("organizer")
            if organizer:
                lines.append(f"Organizer: {_cal_address(organizer)}")
            if method == "REPLY":
                attendees = event.get("attendee") or []
                if not isinstance(attendees, list):
                    attendees = [attendees]
                for attendee in attendees[:10]:
                    partstat = str(attendee.params.get("PARTSTAT", "")).lower()
                    lines.append(f"Attendee: {_cal_address(attendee)}"
                                 + (f" ({partstat})" if partstat else ""))
            lines.append("")
        summary = "\n".join(lines).strip()
        return summary or None
    except Exception:
        log.debug("unreadable text/calendar part", exc_info=True)
        return None
