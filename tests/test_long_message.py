"""Over-long messages: cutting the text for the first event (pure functions), and the
homeserver's own M_TOO_LARGE answer handled the same way."""

from __future__ import annotations

import asyncio
from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.db import store
from bridge.matrix import long_message
from bridge.matrix.long_message import (
    CONTENT_LIMIT,
    CONTINUED,
    beginning,
    content_size,
    cut_html,
    cut_text,
    full_text_file,
)
from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from tests.conftest import Homeserver, RunningBridge


class _Balance(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag not in ("br", "img", "hr"):
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack.pop() == tag, f"</{tag}> does not close an open tag"


def test_text_is_cut_at_a_line_break_and_never_inside_a_character() -> None:
    text = "Grüße aus der Kämmerei\n" * 100
    head = cut_text(text, 1000)
    assert len(head.encode()) <= 1000 and text.startswith(head)
    assert head.endswith("Kämmerei")
    # Without any break: cut at a character boundary, never in the middle of "ü" (2 bytes).
    assert cut_text("ü" * 10, 5) == "üü"


@given(st.text(min_size=0, max_size=300), st.integers(min_value=0, max_value=400))
def test_cut_text_stays_within_bytes_and_is_a_prefix(text: str, limit: int) -> None:
    head = cut_text(text, limit)
    assert len(head.encode()) <= limit or head == text
    assert text.startswith(head)


def test_html_is_cut_between_tags_and_open_elements_are_closed() -> None:
    row = '<tr><td><a href="https://stadt.example/a?x=1&amp;y=2">Antrag</a> &amp; mehr</td></tr>'
    markup = "<p><strong>Liste</strong></p><table>" + row * 200 + "</table>"
    head = cut_html(markup, 2000)
    assert len(head.encode()) <= 2000
    assert head.endswith("</table>")
    balance = _Balance()
    balance.feed(head)
    assert balance.stack == []
    # Never inside an entity: every & starts a whole one.
    assert all(piece.startswith(("amp;", "lt;", "gt;")) for piece in head.split("&")[1:])


def test_the_beginning_fits_and_says_where_the_rest_is() -> None:
    text = ("Sehr geehrte Damen und Herren, " * 20 + "\n") * 400  # ~250 KB
    markup = "<p>" + text.replace("\n", "</p><p>") + "</p>"
    content = {"msgtype": "m.text", "body": text, "format": "org.matrix.custom.html",
               "formatted_body": markup,
               "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}
    short = beginning(content)
    assert content_size(short) <= CONTENT_LIMIT
    assert short["body"].endswith(f"… {CONTINUED}") and CONTINUED in short["formatted_body"]
    assert short["m.relates_to"] == content["m.relates_to"]
    assert len(short["body"]) > 10_000  # a real beginning, not a stub
    data, mimetype, filename = full_text_file(content)
    assert (mimetype, filename) == ("text/html", "message.html")
    assert markup.encode() in data and b'charset="utf-8"' in data
    assert full_text_file({"msgtype": "m.text", "body": text})[:2] == (text.encode(),
                                                                       "text/plain")


def test_an_over_long_edit_is_cut_in_both_its_texts() -> None:
    text = "Neue Fassung der Satzung, Paragraph für Paragraph.\n" * 2000
    content = {"msgtype": "m.text", "body": "* " + text,
               "m.new_content": {"msgtype": "m.text", "body": text},
               "m.relates_to": {"rel_type": "m.replace", "event_id": "$old"}}
    short = beginning(content)
    assert content_size(short) <= CONTENT_LIMIT
    assert short["m.new_content"]["body"].endswith(CONTINUED)
    assert short["m.relates_to"] == content["m.relates_to"]


async def test_the_homeservers_m_too_large_is_answered_by_cutting_deeper(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Should the bridge's estimate of an event's envelope be short, the homeserver's
    refusal (M_TOO_LARGE) leads to the same beginning-plus-file, never to a drop."""
    room = await open_room(homeserver.bot, admin, name="Stadtarchiv", bot_power=100)
    await command(homeserver.bot, admin, room, "!bridge link test C-archiv", expect="Linked")
    monkeypatch.setattr(long_message, "CONTENT_LIMIT", 70_000)  # no check before sending
    puppet = await bridge.hub.ensure_puppet("test", "archiv", "Stadtarchiv")
    text = "Findbuch Bestand A, Akte 17: Bauakten der Altstadt.\n" * 1300
    assert 65_536 < content_size({"msgtype": "m.text", "body": text}) < 70_000
    await bridge.hub.post_to_room(network="test", dedup_key=None, room_id=room,
                                  sender=puppet, content={"msgtype": "m.text", "body": text},
                                  remote_space="C-archiv", remote_id="m-1")
    first = await admin.wait_for_event(
        room, lambda e: CONTINUED in e["content"].get("body", ""), timeout=40)
    assert first["sender"] == puppet and first["content"]["body"].startswith("Findbuch")
    attachment = await admin.wait_for_event(
        room, lambda e: e["content"].get("msgtype") == "m.file", timeout=40)
    assert attachment["content"]["body"] == "message.txt"
    assert await bridge.hub.download_media(attachment["content"]["url"]) == text.encode()
    # The mapping is written with the delivery's success, a moment after the homeserver
    # shows both events.
    for _ in range(100):
        async with bridge.bridge.db.sessions() as session:  # type: ignore[union-attr]
            mapped = await store.mappings_for_remote(session, "test", "C-archiv", "m-1")
        if mapped:
            break
        await asyncio.sleep(0.05)
    assert [m.event_id for m in mapped] == [first["event_id"]]
