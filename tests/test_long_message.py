"""Cutting an over-long message's text for its first event (pure functions)."""

from __future__ import annotations

from html.parser import HTMLParser

from hypothesis import given
from hypothesis import strategies as st

from bridge.matrix.long_message import (
    CONTENT_LIMIT,
    CONTINUED,
    beginning,
    content_size,
    cut_html,
    cut_text,
    full_text_file,
)


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
