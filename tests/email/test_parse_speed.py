"""The parser stays fast and lean on big mails, and its shortcuts change no result.

Timings are not asserted (they depend on the machine). What is asserted is what makes the
parser fast: mail-parser-reply's quote-header patterns run only on the few lines that a cheap
probe picks, never over the whole text; the signature regex is never searched over the whole
text; a big base64 attachment does not go through the email package line by line. And each
shortcut is checked against the plain way it replaces, on tricky input and on the sample
corpus (../shared/email-samples, when it is there).
"""

# German mail text has typographic quotes and dashes; they are the test data, not typos.
# ruff: noqa: RUF001

from __future__ import annotations

import base64
import os
import random
import re
import tracemalloc
from collections import Counter
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

import bridge.email.parse.raw as parse_module
import bridge.email.parse.reply.mail_parser_reply_patterns as fence
import bridge.email.parse.reply.scan as scan_module
from bridge.email.parse import parse_message, split_reply
from bridge.email.parse.reply.attributions import _is_strong_attribution, attribution_candidate
from bridge.email.parse.reply.lines import MAX_LINE, is_quoted
from bridge.email.parse.reply.mail_parser_reply_patterns import RULER_LINE, get_patterns
from bridge.email.parse.reply.quote_headers import (
    FROM_KEY,
    header_candidate,
    header_matches,
    probe_lines,
    probe_lines_by_kind,
)
from bridge.email.parse.reply.regex_source import unroll_first_atom
from bridge.email.parse.reply.scan import scan_lines
from bridge.email.parse.reply.separators import (
    _SEPARATOR,
    _UNDERSCORE_LINE,
    separator_candidate,
)
from bridge.email.parse.reply.signatures import (
    MAX_SIGNATURE_LINES,
    _signoff_anchors,
    signature_start,
)

CORPUS = Path(__file__).parents[2].parent / "shared" / "email-samples"


class Counting:
    """A compiled regex that counts the calls of its methods."""

    def __init__(self, regex: Any) -> None:
        self.regex = regex
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.regex, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


# Words that start no quote header, sign-off or "Sent from" line in any language we know.
WORDS = [
    "Sitzung", "Protokoll", "Bericht", "Gemeinde", "Verwaltung", "Abteilung", "Unterlagen",
    "Beschluss", "bitte", "Frage", "Rückmeldung", "Vorlage", "Stellungnahme", "sowie", "jedoch",
    "außerdem", "gemäß", "bezüglich", "hierzu", "Projekt", "Kosten", "Auftrag", "Haushalt",
    "Förderung", "Antrag", "Schreiben", "zuständig", "Woche", "wir", "haben", "werden", "ist",
    "nicht", "eine", "Entwurf", "Planung", "Zustimmung", "Kenntnis",
]
# Lines that a probe does pick, though none of them opens a quote.
TEMPTING = [
    "Am Montag treffen wir uns im Rathaus.", "An die Kolleginnen der Abteilung", "Datum: 12.03.",
    "Von der Verwaltung kam noch nichts.", "12 Teilnehmer haben zugesagt.",
    "On top of that, the budget is fixed.", "Den Entwurf schicke ich morgen.",
    "Le budget est fixé.", "Il progetto è pronto.", "Op de agenda staat niets.",
]


def prose(size: int, seed: int = 7) -> tuple[str, int]:
    """About `size` characters of German prose wrapped at 72, with a tempting line now and
    then; and how many tempting lines it holds."""
    rnd = random.Random(seed)
    lines: list[str] = []
    tempting = 0
    total = 0
    while total < size:
        if lines and rnd.random() < 0.12:
            lines.append("")
        if rnd.random() < 0.005:
            lines.append(rnd.choice(TEMPTING))
            tempting += 1
        else:
            words: list[str] = []
            while sum(len(w) + 1 for w in words) < 65:
                words.append(rnd.choice(WORDS))
            lines.append(" ".join(words).capitalize() + ".")
        total += len(lines[-1]) + 1
    return "\n".join(lines), tempting


def test_quote_header_patterns_run_only_on_candidate_lines(
        monkeypatch: pytest.MonkeyPatch) -> None:
    body, tempting = prose(150_000)  # below _MAX_SPLIT_CHARS
    assert tempting >= 5
    patterns = get_patterns()
    headers = [Counting(p) for p in patterns.headers]
    signature = Counting(patterns.signature)
    head = Counting(patterns.signature_head)
    monkeypatch.setattr(patterns, "headers", headers)
    monkeypatch.setattr(patterns, "signature", signature)
    monkeypatch.setattr(patterns, "signature_head", head)

    msg = EmailMessage()
    msg["From"] = "Erika Mustermann <erika@example.org>"
    msg["To"] = "team@example.org"
    msg["Subject"] = "Protokoll"
    msg.set_content("Hallo zusammen,\n\n" + body + "\n\nMit freundlichen Grüßen\nErika\n")
    mail = parse_message(msg.as_bytes())

    assert mail.quoted_text == "Mit freundlichen Grüßen\nErika"  # the sign-off, nothing else
    calls = sum((h.calls for h in headers), Counter())
    # Never over the whole text (24 patterns, 150 000 positions), only at tempting lines:
    # a pattern is tried at a line start and at the line break before it.
    assert calls["finditer"] == calls["search"] == 0
    assert calls["match"] <= 2 * 3 * tempting
    assert signature.calls["search"] == 0
    assert head.calls["match"] <= 10

    # The same patterns still find a quote header where there is one.
    quoted = body + ("\n\nAm 12.03.2024 um 10:15 schrieb Max <max@example.org>:\n"
                     "> Bitte um Rückmeldung.\n")
    split = split_reply(quoted)
    assert split.quote is not None
    assert split.quote.startswith("Am 12.03.2024 um 10:15 schrieb Max")
    assert sum((h.calls for h in headers), Counter())["finditer"] == 0


# --------------------------------------------------------------------------------------------
# The probes find what the whole-text search finds
# --------------------------------------------------------------------------------------------

TRICKY_LINES = [
    "Am 12.03.2024 um 10:15 schrieb Erika <erika@example.org>:", "Erika <e@x.org> wrote:",
    "On Tue, Mar 12, 2024 at 10:15 AM", "Von: Erika", "Gesendet: Dienstag", "An: team",
    "Betreff: Test", "From: a@b", "Sent: now", "To: x", "Subject: y", "*From:* a@b",
    "**Von:** x", "> *Von:* y", "-- ", "--", "__", "_" * 40, "-" * 40, " " + "-" * 35,
    "Mit freundlichen Grüßen", "Viele Grüße", "Thanks,", "Best regards", "Gruß", "Best,",
    "Gesendet von meinem iPhone", "Sent from my iPhone", "Sendt fra min iPad", "> quoted",
    ">> deeper", "-----Ursprüngliche Nachricht-----", "-----Oprindelig meddelelse-----",
    "Fra: a", "Til: b", "Emne: c", "Dato: d", "12 jan 2020 skrev Anna <a@b>:",
    "2020年3月12日(火) 10:15 Taro <t@x.jp>:",
    "2020년 3월 12일 (화) 오전 10:15, 홍길동님이 작성하였습니다:",
    "2020年3月12日 写道：", "보낸", "사람: 홍길동", "보낸 사람: 홍",
    "Le 12 mars 2020 à 10:15, Jean <j@x.fr> a écrit :", "De : Jean", "Envoyé : lundi",
    "Il giorno 12 mar 2020, alle ore 10:15, Gio <g@x.it> ha scritto:",
    "El 12 mar 2020, a las 10:15, Juan <j@x.es> escribió:", "Den 12. mar. 2020 skrev Ole:",
    "Dne 12. 3. 2020 v 10:15 Jan <j@x.cz> napsal(a):", "\ufeff\xa0Von: x", "Grüße\xa0",
    "x" * 450 + " wrote:", "A" * 399 + "\xa0", "\x0bMit freundlichen Grüßen", "Den", "12",
    "ſent from my iPhone", "İl 12 mar ha scritto:", "Kind regards", "  ", "\t", "", "", "",
    "text of the message.", "Noch eine Zeile Text.", "   :",
]


def texts() -> list[str]:
    rnd = random.Random(3)
    out = []
    for _ in range(250):
        lines = [rnd.choice(TRICKY_LINES) for _ in range(rnd.randint(0, 40))]
        out.append(rnd.choice(["\n", "\n\n"]).join(lines))
    if CORPUS.is_dir():
        for folder in ("alfonsrv-mail-parser-reply", "discourse-email_reply_trimmer",
                       "crisp-email-reply-parser", "zapier-email-reply-parser", "mailgun-talon"):
            for path in sorted((CORPUS / folder).rglob("*")):
                if path.is_file() and path.stat().st_size < 30_000:
                    out.append(path.read_bytes().decode("utf-8", "replace"))
    return out


def work_lines(text: str) -> list[str]:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [line.strip().lstrip("\ufeff\u200b")[:MAX_LINE]
            for line in text.split("\n")]


def test_quote_header_probes_find_every_match() -> None:
    patterns = get_patterns()
    assert all(probe is not None for probe in patterns.header_probes), \
        "a quote-header pattern of mail-parser-reply has a shape the probes do not know"
    for text in texts():
        norm = "\n".join(work_lines(text))
        lines = probe_lines(norm)
        by_kind = probe_lines_by_kind(norm)
        for index, pattern in enumerate(patterns.headers):
            expected = [m.span() for m in pattern.finditer(norm)]
            fast = [m.span() for m in header_matches(index, norm, lines)]
            assert fast == expected, (pattern.pattern, text)
            # Only the lines of the kind of probe it has: the same.
            own_kind = by_kind[patterns.header_probe_chars[index]]
            fast = [m.span() for m in header_matches(index, norm, own_kind)]
            assert fast == expected, (pattern.pattern, text)


def plain_signature_start(work: list[str], end: int) -> int | None:
    """The signature search without shortcuts: every line, the whole regex."""
    patterns = get_patterns()
    sent_from = next((i for i in range(1, end)
                      if any(work[:i]) and patterns.sent_from.match(work[i])), None)
    stop = sent_from if sent_from is not None else end
    norm = "\n".join(work[:stop])
    pos = 0
    for _ in range(20):
        match = patterns.signature.search(norm, pos)
        if not match:
            break
        start = match.start()
        while start < len(norm) and norm[start] in "\n \t":
            start += 1
        line_no = norm.count("\n", 0, start)
        line = work[line_no] if line_no < len(work) else ""
        line_end = norm.find("\n", start)
        pos = len(norm) if line_end < 0 else line_end + 1
        if not any(work[:line_no]):
            continue
        bare = line.lstrip("> ")
        if bare in ("--", "__") or re.fullmatch(r"[-_]{20,}", bare):
            return line_no
        following = sum(1 for w in work[line_no + 1:stop] if w)
        if (len(bare) <= 48 and len(bare.split()) <= 7 and not bare.endswith("?")
                and following <= MAX_SIGNATURE_LINES):
            return line_no
    return sent_from


def test_signature_probes_find_what_the_whole_regex_finds() -> None:
    patterns = get_patterns()
    assert patterns.signature_head is not None, \
        "mail-parser-reply's signature regex has a shape the probes do not know"
    rnd = random.Random(5)
    for text in texts():
        work = work_lines(text)
        for end in {len(work), rnd.randint(0, len(work))}:
            assert signature_start(work, end) == plain_signature_start(work, end), \
                (end, text)
        norm = "\n".join(work)
        assert signature_start(work, len(work), norm, scan_lines(norm)) == \
            plain_signature_start(work, len(work)), text


def plain_separator_candidate(work: list[str]) -> int | None:
    """The separator search without the scan: every line."""
    for i, line in enumerate(work):
        if _SEPARATOR.match(line):
            return i
        following = [ln for ln in work[i + 1:i + 4] if ln]
        if _UNDERSCORE_LINE.match(line) and following and FROM_KEY.match(following[0]):
            return i
    return None


def plain_attribution_candidate(work: list[str]) -> int | None:
    """The attribution search without the scan: every line."""
    for i, line in enumerate(work):
        if not line or is_quoted(line):
            continue
        if _is_strong_attribution(line):
            return i
        if (i + 1 < len(work) and work[i + 1] and not line.endswith((".", "!", "?"))
                and not _is_strong_attribution(work[i + 1])
                and _is_strong_attribution(line + " " + work[i + 1])):
            return i
    return None


def scan_texts() -> list[str]:
    body, _ = prose(20_000)
    rulers = "Text\n\n" + "_" * 40 + "\nx\n\n\n -" + "-" * 35 + "\n\n" + "-" * 20
    return [*texts(), body, "\n".join(TEMPTING + TRICKY_LINES), rulers,
            "\n" + rulers, "\n\n" + rulers, "Am 12.03.2024 schrieb Max <m@x.org>:\n> a"]


def test_the_one_scan_finds_what_each_strategy_finds_alone() -> None:
    assert get_patterns().any_probes is not None, \
        "the quote-header and signature probes can no longer be searched in one pass"
    for text in scan_texts():
        work = work_lines(text)
        norm = "\n".join(work)
        scan = scan_lines(norm)
        assert scan.probed
        assert probe_lines(norm, scan.starts) == probe_lines(norm), text
        assert _signoff_anchors(norm, scan) == _signoff_anchors(norm), text
        assert separator_candidate(work, scan) == plain_separator_candidate(work), text
        assert attribution_candidate(work, scan) == plain_attribution_candidate(work), text
        # Line numbers counted from the scan's lines are those counted from the start.
        for pos in {*range(0, len(norm) + 1, 97), len(norm), *scan.starts}:
            assert scan.line_at(norm, pos) == norm.count("\n", 0, pos)
        rulers = [m.end() for m in RULER_LINE.finditer(norm)]
        assert set(rulers) <= set(scan.starts), text


def test_patterns_whose_probes_pick_no_line_are_left_out_without_changing_the_result(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """header_candidate skips a pattern with no line of its probe's kind; asking each of
    them anyway (a guard that never matches keeps every pattern in) finds the same line."""
    cases = [(work, norm, scan_lines(norm)) for work, norm in
             ((work, "\n".join(work)) for work in map(work_lines, scan_texts()))]
    found = [header_candidate(*case) for case in cases]
    patterns = get_patterns()
    never = re.compile("(?!)")
    monkeypatch.setattr(patterns, "header_guards",
                        [guard or never for guard in patterns.header_guards])
    assert [header_candidate(*case) for case in cases] == found
    assert any(line is not None for line in found)


def test_probes_grouped_into_one_regex_match_where_one_of_them_does() -> None:
    patterns = get_patterns()
    head = fence._signature_head(patterns.signature.pattern)
    assert head is not None
    regexes = [probe.pattern for probe in patterns.header_probes if probe is not None]
    regexes += head[1]
    flags = re.MULTILINE | re.IGNORECASE
    grouped = re.compile(fence._any_of(regexes), flags)
    alone = [re.compile(regex, flags) for regex in regexes]
    for text in scan_texts():
        norm = "\n".join(work_lines(text))
        for start in [0, *(m.end() for m in re.finditer("\n", norm))]:
            assert bool(grouped.match(norm, start)) == \
                any(regex.match(norm, start) for regex in alone), norm[start:start + 80]


# Regexes that start with one character, of every form `_first_characters` takes in: "-"
# and "^" where they would mean something else next to another class, escapes, non-ASCII.
FIRST_CHARACTER_CASES = [r"[-_]x", r"[_-]y", r"[\^a]z", r"[a\-]", r"\d\d年", r"[0-9].+?\s", "보낸",
                         r"[* ][* ]*:", r"\-:", r"\.x", "从", r"[\]a]", r"\s?x"]


def test_the_others_first_characters_match_wherever_one_of_them_does() -> None:
    """The lookahead that the probes not starting with a letter stand behind lets every line
    start through where one of them matches."""
    rnd = random.Random(5)
    flags = re.MULTILINE | re.IGNORECASE
    for size in range(1, len(FIRST_CHARACTER_CASES) + 1):
        cases = rnd.sample(FIRST_CHARACTER_CASES, size)
        firsts = fence._first_characters(cases)
        if firsts is None:
            assert any(c in cases for c in (r"[\]a]", r"\s?x")), cases  # (not one character)
            continue
        lookahead = re.compile(f"(?=[{firsts}])", flags)
        alone = [re.compile(case, flags) for case in cases]
        for _ in range(300):
            size = rnd.randint(1, 4)
            text = "".join(rnd.choice("-_^a\\]0x9y年보낸从 *:.\nz") for _ in range(size))
            if any(regex.match(text) for regex in alone):
                assert lookahead.match(text), (cases, firsts, text)
    # No ranges where classes meet: not "_-a", nor "a-_" backwards.
    assert fence._first_characters(["[-_]", "a"]) == "\\-_a"
    assert fence._first_characters(["a", "[_-]", "b"]) == "a_\\-b"
    assert fence._first_characters(["[^x]"]) is None  # a negated class
    assert fence._first_characters(["x*"]) is None  # a quantified first character


UNROLL_CASES = [r"[0-9]+\s+x", r"\d{2}年", r"[* ]*(?:보낸|제목):", r"[-_]{2}\n", "a*", "a?b",
                "a{2,5}?b", "a{,3}b", "a{3,}b", r"\s*^x", "x{0}y", "(?:ab)+c", "a++b",
                r"[ab]{1,2}?c", r"\-+:", "b*a*:"]


def test_a_regex_unrolled_matches_where_it_does() -> None:
    rnd = random.Random(11)
    flags = re.MULTILINE | re.IGNORECASE
    for src in UNROLL_CASES:
        whole = re.compile(src, flags)
        unrolled = [re.compile(part, flags) for part in unroll_first_atom(src)]
        for _ in range(1500):
            text = "".join(rnd.choice("abAB0x1 *_-\n年보낸제목:") for _ in range(rnd.randint(0, 7)))
            for pos in range(len(text) + 1):
                assert bool(whole.match(text, pos)) == \
                    any(part.match(text, pos) for part in unrolled), (src, text, pos)


def test_without_the_probes_in_the_scan_replies_split_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A mail-parser-reply whose patterns the scan cannot take in: the quote headers and
    sign-offs are looked for in passes of their own, with the same results."""
    cases = scan_texts()
    expected = [split_reply(text) for text in cases]
    monkeypatch.setattr(get_patterns(), "any_probes", None)
    monkeypatch.setattr(scan_module, "_scanner", None)
    assert not scan_lines("Am 12.03.2024 schrieb Max:").probed
    assert [split_reply(text) for text in cases] == expected


# --------------------------------------------------------------------------------------------
# Big attachments
# --------------------------------------------------------------------------------------------

def tree(msg: Message) -> list[Any]:
    """Everything the parser puts into a message tree."""
    out = []
    parts = [msg]
    while parts:
        part = parts.pop(0)
        payload = getattr(part, "_payload", None)
        if isinstance(payload, list):
            parts.extend(payload)
        out.append((list(part.raw_items()), payload if isinstance(payload, str) else None,
                    part.preamble, part.epilogue, [type(d).__name__ for d in part.defects]))
    return out


@pytest.mark.parametrize("shape", ["attachment", "single part"])
def test_big_attachment_is_parsed_lean_and_unchanged(shape: str) -> None:
    data = os.urandom(3 * 1024 * 1024)
    msg = EmailMessage()
    msg["From"] = "Erika Mustermann <erika@example.org>"
    msg["To"] = "team@example.org"
    msg["Subject"] = "Unterlagen"
    if shape == "attachment":
        msg.set_content("Hallo,\n\nanbei die Unterlagen.\n\nGrüße\nErika\n")
        msg.add_attachment(data, maintype="application", subtype="pdf", filename="plan.pdf")
        msg.add_attachment(b"%PDF-1.4 small", maintype="application", subtype="pdf",
                           filename="klein.pdf")
        expected = [("plan.pdf", data), ("klein.pdf", b"%PDF-1.4 small")]
    else:
        msg.set_content(data, maintype="application", subtype="pdf", filename="plan.pdf")
        expected = [("plan.pdf", data)]
    raw = msg.as_bytes()

    tracemalloc.start()
    try:
        mail = parse_message(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(a.filename, a.data) for a in mail.attachments] == expected
    if shape == "attachment":
        assert mail.text == "Hallo,\n\nanbei die Unterlagen."
    # The base64 text (4 MB) and the decoded attachment (3 MB) are all it may take; line by
    # line through the email package it was 13 times the attachment.
    assert peak < 3 * len(data)

    assert tree(parse_module._parse_bytes(raw)) == tree(
        BytesParser(policy=policy.default).parsebytes(raw))


def plain_parse_bytes(raw: bytes) -> Message:
    """`_parse_bytes` the plain way: edit the whole mail, parse it at once."""
    data = raw.lstrip(b" \t\r\n")
    data = parse_module._MBOX_FROM.sub(b"", data, count=1)
    data = parse_module._UNQUOTED_BOUNDARY.sub(rb'\1"\2"', data)
    end = min((i for i in (data.find(b"\n\n"), data.find(b"\n\r\n")) if i >= 0),
              default=len(data))
    data = parse_module._repair_header_block(data[:end]) + data[end:]
    return BytesParser(policy=policy.default).parsebytes(data)


B64 = base64.encodebytes(bytes(range(256)) * 3)
TRICKY_MAILS = [
    # nested multiparts, unquoted Outlook Express boundaries, base64 everywhere
    b"From: a@b\nContent-Type: multipart/mixed; boundary=----=_NextPart_000\n\n"
    + B64 + b"------=_NextPart_000\nContent-Type: multipart/alternative;\n"
    b"\tboundary=----=_NextPart_001\n\n------=_NextPart_001\nContent-Type: text/plain\n"
    b"Content-Transfer-Encoding: base64\n\n" + B64 + b"------=_NextPart_001--\n" + B64
    + b"------=_NextPart_000\nContent-Type: message/rfc822\n\nSubject: inner\n\n" + B64
    + b"------=_NextPart_000--\n" + B64,
    # CRLF and bare CR line ends, a part without a blank line after its headers
    b"From: a@b\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n"
    b"Content-Type: application/pdf\r\n" + B64.replace(b"\n", b"\r\n") + b"--b1\r\n\r\n"
    + B64.replace(b"\n", b"\r") + b"\r\n--b1",
    # no closing boundary, the placeholder's own text in the mail, an mbox line
    b"From sender Tue Mar 12 10:15:00 2024\nFrom: a@b\nSubject: Xb64run0X0\n"
    b"Content-Type: multipart/mixed; boundary=b2\n\nXb64run0X0\n" + B64 + b"--b2\n\n" + B64,
    # a delivery report
    b"From: MAILER-DAEMON@x\nContent-Type: multipart/report; report-type=delivery-status;"
    b" boundary=b3\n\n--b3\n\n" + B64 + b"--b3\nContent-Type: message/delivery-status\n\n"
    + B64 + b"\nAction: failed\n" + B64 + b"--b3--",
    # a single-part body, with 8-bit bytes on its way
    b"From: a@b\nContent-Transfer-Encoding: base64\n\n" + B64 + b"\xc3\xa4\n" + B64,
    # single-part mails whose header block the parser reads its own way: a last line
    # "From …" (goes to the body), a continuation first, a bare CR blank line, leading space
    b"From: a@b\nSubject: x\nFrom somewhere\n\nbody\n",
    b" folded\nFrom: a@b\n\nbody\n",
    b"From: a@b\r\rSubject: x\n\nbody\n",
    b"  \r\nFrom: a@b\nContent-Type: text/plain\n\n" + B64,
    # an unquoted boundary in a single-part body, and one in a text/plain header
    b"From: a@b\nContent-Type: text/plain; boundary=a=b\n\n"
    b"Content-Type: multipart/mixed; boundary=----=_X\n boundary=c=d\n",
    # a content type that only the parser's reading makes a multipart
    b"From: a@b\nContent-Type:\n Multipart/Mixed; boundary=q\n\n--q\n\nx\n--q--\n",
]


def corpus_mails() -> list[bytes]:
    if not CORPUS.is_dir():
        return []
    return [p.read_bytes() for p in sorted(CORPUS.rglob("*"))
            if p.is_file() and p.suffix not in (".json", ".html", ".md", ".tsv")
            and p.stat().st_size < 200_000]


@pytest.mark.parametrize("runs", ["as they are", "every run"])
def test_shortcuts_change_nothing(runs: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Single-part bodies handed over whole, runs of base64 lines taken out of the parser
    (with "every run": however short, in any mail): the same tree as the plain way."""
    if runs == "every run":
        monkeypatch.setattr(parse_module, "_RUN_SCAN_MIN", 0)
        monkeypatch.setattr(parse_module, "_BASE64_RUN",
                            re.compile(rb"\n((?:[A-Za-z0-9+/=]++(?:\r\n|\n|\r)){1,}+)"))
    for raw in TRICKY_MAILS + corpus_mails():
        assert tree(parse_module._parse_bytes(raw)) == tree(plain_parse_bytes(raw)), raw[:300]
