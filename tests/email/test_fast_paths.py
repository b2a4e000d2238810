"""Shortcuts on the per-mail path give exactly what the general way gives."""

from __future__ import annotations

import binascii
import html
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

import bridge.email.parse as parse_module
from bridge.core.event_size import CONTENT_LIMIT, too_large
from bridge.email.aiosmtpd_data import SmtpProtocol
from bridge.email.connector import EmailConnector
from bridge.email.parse import ParsedMail
from bridge.email.parse.charsets import decode_text
from bridge.email.parse.headers import _MEMO, _POLICY, _HeaderClasses, _param
from bridge.email.parse.parts import _part_text
from bridge.email.parse.raw import _header_block_end, _parse_bytes
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


def _text_content_the_long_way(mail: ParsedMail, new_thread: bool) -> dict[str, Any]:
    """EmailConnector._text_content of a mail without HTML, as it was written before its
    shortcut for long plain-text mail: the HTML copy always written and measured."""
    text = mail.text.strip()
    if mail.calendar:
        text = f"{text}\n\n{mail.calendar}".strip()
    body_html = text_to_html(mail.text.strip())
    if mail.calendar:
        body_html += "<pre>" + html.escape(mail.calendar) + "</pre>"
    if new_thread and mail.topic:
        text = f"{mail.topic}\n\n{text}"
        body_html = f"<p><strong>{html.escape(mail.topic)}</strong></p>{body_html}"
    if mail.quoted_text:
        body_html += ("<details><summary>Quoted text</summary><pre>"
                      f"{html.escape(mail.quoted_text)}</pre></details>")
    content = {"msgtype": "m.text", "body": text.rstrip() or "(empty message)"}
    if not body_html:
        return content
    formatted = content | {"format": "org.matrix.custom.html", "formatted_body": body_html}
    if not mail.quoted_text and too_large(formatted) and not too_large(content):
        return content
    return formatted


# Pieces that make the escaped copy longer or shorter than the text, and the JSON longer
# than the characters (escapes, multi-byte UTF-8).
LONG_TEXT_PIECES = ["Wort ", "ü", "\n", "\r\n", "\u2028", "\x1d", "<", "&", '"', "\\", "\t",
                    "€", " ", "\x01"]


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(st.sampled_from(LONG_TEXT_PIECES), min_size=1, max_size=30),
       size=st.integers(min_value=CONTENT_LIMIT // 4, max_value=CONTENT_LIMIT + 500),
       topic=st.sampled_from(["", "Bauantrag <Müllerstraße>"]),
       calendar=st.sampled_from([None, "Termin: 3. März, 10 Uhr"]),
       quoted=st.sampled_from([None, "> alt"]), new_thread=st.booleans())
def test_long_plain_text_mail_content_as_the_long_way_gives_it(
        pieces: list[str], size: int, topic: str, calendar: str | None, quoted: str | None,
        new_thread: bool) -> None:
    unit = "".join(pieces)
    text = (unit * (size // len(unit) + 1))[:size]
    mail = ParsedMail(message_id=None, in_reply_to=[], references=[], subject=topic,
                      topic=topic, from_address="a@b.example", from_name=None, to=[], cc=[],
                      date=None, text=text, html=None, quoted_text=quoted, full_text=text,
                      calendar=calendar)
    assert EmailConnector._text_content(mail, new_thread=new_thread, cid_map={}) == \
        _text_content_the_long_way(mail, new_thread)


@settings(max_examples=500)
@given(data=st.lists(st.sampled_from([b"\r", b"\n", b"a", b"\r\n"]), max_size=16).map(b"".join),
       start=st.integers(min_value=0, max_value=20))
def test_the_header_block_ends_at_the_first_blank_line_of_either_kind(data: bytes,
                                                                       start: int) -> None:
    first = min((i for i in (data.find(b"\n\n", start), data.find(b"\n\r\n", start))
                 if i >= 0), default=len(data))
    assert _header_block_end(data, start) == first
    assert _header_block_end(bytearray(data), start) == first


def _param_the_long_way(part: Message, name: str, header: str) -> str | None:
    """headers._param as it was before it read each field's parameters once: a new
    Message.get_param for each name."""
    raw = [v for k, v in part.raw_items() if k.lower() == header]
    if not raw:
        return None
    try:
        holder = Message()
        holder[header] = raw[0]
        value = holder.get_param(name, header=header)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, tuple):
        try:
            charset, _, decoded = value
            return decode_text(str(decoded).encode("latin-1", "replace"), charset or None)
        except Exception:
            return str(value[2])
    return str(value).strip().strip('"')


PARAMETER_PIECES = [
    '; charset="utf-8"', "; charset=UTF-8", "; Charset=iso-8859-1", "; format=flowed",
    '; delsp="yes"', "; name*=utf-8''%C3%BCbersicht.pdf", "; name*0*=utf-8''%C3%BC",
    '; name*1="ber.pdf"', '; name="a\\"b.pdf"', "; filename=<x.pdf>", "; name=", ";;", "; =x",
    '; boundary="----=_NextPart_000"', "; boundary=----=_NextPart_001", " ; NAME=\"Plan.pdf\"",
    "; filename*=iso-8859-1'de'%FCber.txt", '; charset="', "; x=1; x=2", "; name=Bericht 3.pdf",
]
PARAMETER_NAMES = ["charset", "format", "delsp", "name", "filename", "boundary", "x", "NAME"]


@settings(max_examples=300)
@given(main=st.sampled_from(["text/plain", "application/pdf", "multipart/mixed", "attachment",
                             "", "text/plain name=a.pdf"]),
       pieces=st.lists(st.sampled_from(PARAMETER_PIECES), max_size=5),
       header=st.sampled_from(["content-type", "content-disposition"]),
       memo=st.booleans())
def test_parameters_read_once_per_field_as_get_param_reads_each(
        main: str, pieces: list[str], header: str, memo: bool) -> None:
    part = Message()
    part[header] = main + "".join(pieces)
    token = _MEMO.set({}) if memo else None
    try:
        for name in PARAMETER_NAMES:
            assert _param(part, name, header) == _param_the_long_way(part, name, header), name
    finally:
        if token is not None:
            _MEMO.reset(token)


@settings(max_examples=400)
@given(text=st.lists(st.sampled_from(["\r", "\n", "\r\n", "ü", "a", " ", "\u2028"]),
                     max_size=24).map("".join),
       cte=st.sampled_from(["8bit", "quoted-printable", "base64"]))
def test_a_text_part_has_its_line_breaks_as_the_replace_gives_them(text: str, cte: str) -> None:
    """Line breaks of a text part, CRLF, CR or LF in any mix, all become "\\n": dropping
    the "\\r" of a mail whose every "\\r" ends a CRLF gives what replacing gives."""
    part = Message()
    part["Content-Type"] = 'text/plain; charset="utf-8"'
    part["Content-Transfer-Encoding"] = cte
    data = text.encode("utf-8")
    if cte == "base64":
        import base64
        part.set_payload(base64.encodebytes(data).decode("ascii"))
    elif cte == "quoted-printable":
        part.set_payload(binascii.b2a_qp(data, istext=False).decode("ascii"))
    else:
        part.set_payload(data.decode("ascii", "surrogateescape"))
    assert _part_text(part) == text.replace("\r\n", "\n").replace("\r", "\n")


def _fields(name: str, value: str) -> Message:
    """A message whose header block holds ``name: value`` as the parser would keep it."""
    return _parse_bytes(
        f"From: a@b.example\r\n{name}: {value}\r\n\r\nx\r\n".encode("utf-8", "surrogateescape"))


ATOM_PIECES = ["a", "Z", "0", ".", "..", "-", "_", "=", "+", "$", "'", "`", "{", "~", "!", "#"]
MESSAGE_ID_PIECES = [*ATOM_PIECES, "@", "<", ">", " ", "(c)", '"', "\r\n ", "\t", "ü", "[1]",
                     "=?utf-8?q?x?="]


@settings(max_examples=600)
@given(left=st.lists(st.sampled_from(ATOM_PIECES), min_size=1, max_size=8).map("".join),
       right=st.lists(st.sampled_from(ATOM_PIECES), min_size=1, max_size=8).map("".join),
       wrapped=st.booleans(),
       other=st.lists(st.sampled_from(MESSAGE_ID_PIECES), max_size=10).map("".join))
def test_a_message_id_read_without_its_header_object_reads_the_same(
        left: str, right: str, wrapped: bool, other: str) -> None:
    """Message-IDs that `_read_header` takes as they are: the header object's text is the
    same; the others still go through it."""
    from bridge.email.parse import headers

    for value in (f"<{left}@{right}>" if wrapped else f"{left}@{right}", other):
        msg = _fields("Message-ID", value)
        quick = headers._read_header(msg, "message-id")
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(headers, "_KEPT_AS_THEY_ARE", {})
            assert headers._read_header(msg, "message-id") == quick, value


DATE_PIECES = ["Sat, ", "5 ", "05 ", "Dec ", "dec ", "2026 ", "26 ", "0 ", "20:", "07", ":59",
               ":60", " +0100", " -0000", " GMT", " EST", " (CET)", " +2500", "\r\n ", ",",
               "99999 ", "x", " ", "ü", "=?utf-8?q?x?="]


@settings(max_examples=1500)
@given(pieces=st.lists(st.sampled_from(DATE_PIECES), max_size=10))
def test_a_date_read_without_its_header_object_reads_the_same(pieces: list[str]) -> None:
    from bridge.email.parse import headers

    values = ["".join(pieces), "Sat, 05 Dec 2026 20:07:59 " + "".join(pieces[:2]),
              "".join(pieces[:3]) + "5 Dec 2026 20:07:59 +0100"]
    for value in values:
        msg = _fields("Date", value)
        token = _MEMO.set({})
        try:
            quick = headers._date(msg)
        finally:
            _MEMO.reset(token)
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(headers, "_readable_date", lambda _msg: None)
            token = _MEMO.set({})
            try:
                assert headers._date(msg) == quick, value
            finally:
                _MEMO.reset(token)


SUBJECT_PIECES = ["=?utf-8?q?", "=?UTF-8?Q?", "=?utf-8?b?", "=?iso-8859-1?q?", "?=", "?= ", " ",
                  "\t", "\r\n ", "a", "AW:", "_", "=C3=BC", "=c3=bc", "=C3", "=BC", "=3D", "=3F",
                  "=0D=0A", "=FF", "=", "?", "=?", "\u00fc", "(x)", '"', "=E2=82=AC"]


@settings(max_examples=3000)
@given(pieces=st.lists(st.sampled_from(SUBJECT_PIECES), max_size=14))
def test_a_subject_of_q_words_read_without_its_header_object_reads_the_same(
        pieces: list[str]) -> None:
    """Subjects that `_read_header` decodes itself (UTF-8 "Q" words and plain words): the
    same text as the email package's header object gives; the others go through it."""
    from bridge.email.parse import headers

    words = "".join(pieces)
    for value in (words, f"=?utf-8?q?{words}?=", f"AW: =?utf-8?q?{words}?= x"):
        msg = _fields("Subject", value)
        quick = headers._read_header(msg, "subject")
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(headers, "_q_words_text", lambda _value: None)
            assert headers._read_header(msg, "subject") == quick, value
