"""Shortcuts on the per-mail path give exactly what the general way gives."""

from __future__ import annotations

import html

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

import bridge.email.parse as parse_module
from bridge.email.aiosmtpd_data import SmtpProtocol
from bridge.email.parse.headers import _POLICY, _HeaderClasses
from bridge.email.text import text_to_html

TEXT = st.lists(st.sampled_from(
    ["a", "ü", " ", "\n", "\r", "\r\n", "<", "&", '"', "'", "\x0b", "\x1d", "\x85",
     "\u2028", "\t", "x"]), max_size=40).map("".join)


@settings(max_examples=300)
@given(TEXT)
def test_text_to_html_is_escaping_line_by_line(text: str) -> None:
    text = text.strip()
    assert text_to_html(text) == "<br>".join(html.escape(line) for line in text.splitlines())


ADDRESSES = [
    "<erika@stadt.example>", "<erika.mustermann@stadt.example> SIZE=1234",
    "<a+b=c@x-y.example> BODY=8BITMIME", "<bauamt+t0k3n@bridge.example>", "<a@b>",
    "<'ok'@b.example>", "<a.@b.example>", "<.a@b.example>", "<a..b@b.example>",
    '<"quoted local"@b.example>', "<a@[127.0.0.1]>", "<@route:a@b.example>",
    "erika@stadt.example", "<erika@stadt.example", "<>", "<a@b.example>x", "",
    "<ü@b.example>", "<a@b.example.>", "<a@-b.example>", "<a@b.example>  SIZE=1",
    "<a@b.example> (comment) SIZE=1", "<a@b.example>(c)", "<a@b.example>\tBODY=7BIT",
]


def test_plain_addresses_parse_as_aiosmtpd_parses_them() -> None:
    ours = SmtpProtocol.__new__(SmtpProtocol)
    theirs = SMTP.__new__(SMTP)
    for limit in (0, 5):
        ours.local_part_limit = theirs.local_part_limit = limit
        for arg in ADDRESSES:
            assert ours._getaddr(arg) == theirs._getaddr(arg), arg


def test_header_objects_made_once_give_the_same_mails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser's header objects are shared between mails with the same header (name and
    value): every sample parses to the same result as with a header object of its own, the
    second time (from the cache) too."""
    from tests.email.test_parse_speed import TRICKY_MAILS, corpus_mails

    mails = TRICKY_MAILS + corpus_mails()
    monkeypatch.setattr(_HeaderClasses, "_MAX_VALUE", -1)  # nothing kept
    own = [_parsed(raw) for raw in mails]
    monkeypatch.setattr(_HeaderClasses, "_MAX_VALUE", 512)
    _POLICY.header_factory._made.clear()  # type: ignore[attr-defined]
    for _ in range(2):
        assert [_parsed(raw) for raw in mails] == own


def _parsed(raw: bytes) -> object:
    try:
        return parse_module.parse_message(raw)
    except parse_module.MalformedMail as exc:
        return str(exc)
