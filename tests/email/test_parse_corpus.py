"""The parser against real-world mail from 17 public projects (see its README.md).

The corpus lives beside the repository in ../shared/email-samples and is read in place (its
licences differ from ours, so it is not copied in). Without it these tests are skipped.
"""

# Test data in many scripts (fullwidth marks, Cyrillic, maths letters) is intended.
# ruff: noqa: RUF001

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from bridge.email.parse import MalformedMail, ParsedMail, parse_message, split_reply

CORPUS = Path(__file__).parents[2].parent / "shared" / "email-samples"

pytestmark = pytest.mark.skipif(
    not (CORPUS / "MANIFEST.tsv").is_file(),
    reason=f"email sample corpus not found at {CORPUS} (../shared/email-samples)")

# Files that are not a raw message: reply-parser body texts, expected outputs, HTML fragments.
_NOT_RAW = re.compile(r"^(BODY ONLY|EXPECTED|HTML body fragment|expected |JSON fixture)",
                      re.IGNORECASE)
# Raw messages that have no header block at all. mime4j reads the text as a body; we refuse
# it as "not a mail" (a bridge cannot attribute a message without any header).
NOT_A_MAIL = {"apache-james-mime4j/malformedHeader-noheader.msg"}


def _manifest() -> list[tuple[str, str]]:
    if not (CORPUS / "MANIFEST.tsv").is_file():
        return []
    with (CORPUS / "MANIFEST.tsv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [(row["file"], row["exercises"]) for row in rows]


MANIFEST = _manifest()
FULL_MESSAGES = sorted(name for name, what in MANIFEST if not _NOT_RAW.match(what))


def load(name: str) -> ParsedMail:
    return parse_message((CORPUS / name).read_bytes())


def norm(text: str | None) -> str:
    return " ".join((text or "").split())


def test_manifest_is_understood() -> None:
    assert len(FULL_MESSAGES) > 240
    assert "discourse/quirks_exchange_xars.eml" in FULL_MESSAGES
    assert not any(name.endswith(("_reply_text", ".json", ".html")) for name in FULL_MESSAGES)


@pytest.mark.parametrize("name", FULL_MESSAGES)
def test_every_full_message_parses(name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    if name in NOT_A_MAIL:
        with pytest.raises(MalformedMail):
            parse_message(raw)
        return
    mail = parse_message(raw)
    assert isinstance(mail.text, str) and isinstance(mail.full_text, str)
    for mid in [mail.message_id, *mail.in_reply_to, *mail.references]:
        assert mid is None or ("<" not in mid and ">" not in mid and mid.strip() == mid)
    for attachment in mail.attachments:
        assert attachment.filename and "/" not in attachment.filename
        assert "\\" not in attachment.filename
        assert re.fullmatch(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+", attachment.mimetype)
        assert isinstance(attachment.data, bytes)
    # Text never carries undecoded bytes (lone surrogates).
    assert not re.search("[\ud800-\udfff]", mail.text + mail.full_text + mail.subject)


# --------------------------------------------------------------------------------------------
# Quote stripping against expected outputs
# --------------------------------------------------------------------------------------------

def _trimmer_pairs() -> list[tuple[Path, Path]]:
    emails = CORPUS / "discourse-email_reply_trimmer" / "emails"
    trimmed = CORPUS / "discourse-email_reply_trimmer" / "trimmed"
    if not emails.is_dir():
        return []
    return [(f, trimmed / f.name) for f in sorted(emails.glob("*.txt"))
            if (trimmed / f.name).is_file()]


def test_discourse_reply_trimmer_expected_outputs() -> None:
    """email_reply_trimmer keeps sign-offs ("Thanks,\\nJef") where we split them off as
    signature, so a match is: expected == our text, or our text plus our signature."""
    pairs = _trimmer_pairs()
    assert len(pairs) == 26
    strict = loose = 0
    misses = []
    for email_file, expected_file in pairs:
        split = split_reply(email_file.read_text(encoding="utf-8"))
        expected = norm(expected_file.read_text(encoding="utf-8"))
        if norm(split.text) == expected:
            strict += 1
            loose += 1
        elif split.signature and norm(split.text + "\n" + split.signature) == expected:
            loose += 1
        else:
            misses.append(email_file.name)
    print(f"\ndiscourse email_reply_trimmer: {loose}/{len(pairs)} match "
          f"({loose / len(pairs):.0%}); {strict}/{len(pairs)} without our signature split; "
          f"misses: {misses}")
    assert loose / len(pairs) >= 0.9


def test_talon_standard_replies() -> None:
    """talon's convention: the reply is "Hello" unless a <name>_reply_text file says else
    (those keep the signature, so compare text + signature)."""
    folder = CORPUS / "mailgun-talon" / "standard_replies"
    emls = sorted(folder.glob("*.eml"))
    assert len(emls) >= 12
    matched = []
    for eml in emls:
        mail = parse_message(eml.read_bytes())
        expected_file = folder / f"{eml.stem}_reply_text"
        if expected_file.is_file():
            split = split_reply(mail.full_text)
            got = norm(split.text + "\n" + (split.signature or ""))
            ok = got == norm(expected_file.read_text(encoding="utf-8"))
        else:
            ok = norm(mail.text) == "Hello"
        if ok:
            matched.append(eml.name)
    print(f"\ntalon standard replies: {len(matched)}/{len(emls)} match "
          f"({len(matched) / len(emls):.0%})")
    assert len(matched) / len(emls) >= 0.9


@pytest.mark.parametrize(("name", "text"), [
    ("discourse/multiline_wrote.eml", "Thanks!"),
    ("discourse/gmail_html_reply.eml", "This is a GMAIL reply ;)"),
    ("discourse/exchange_html_body_and_reply.eml", "This is the body of the email."),
    ("discourse/exchange_html_reply.eml", "This is the body !! of the email."),
    ("mikel-mail/raw_email_reply.eml", "Message body"),
    ("mailgun-talon/reply-quotations-share-block.eml", None),
])
def test_client_replies(name: str, text: str | None) -> None:
    mail = load(name)
    if text is not None:
        assert norm(mail.text) == text
    else:
        assert "wrote:" not in mail.text and mail.quoted_text


# --------------------------------------------------------------------------------------------
# Bounces and automatic replies
# --------------------------------------------------------------------------------------------

SOFT_BOUNCES = {
    "sisimai/lhost-exim-38.eml", "sisimai/lhost-gmail-06.eml", "sisimai/lhost-opensmtpd-06.eml",
    "sisimai/lhost-outlook-06.eml", "sisimai/lhost-postfix-05.eml",
    "sisimai/lhost-sendmail-29.eml", "sisimai/rfc3464-07.eml", "sisimai/rhost-microsoft-05.eml",
    "jhillyerd-enmime/dsn/delayed_dsn.raw", "mailgun-flanker/bounce/no-mx.eml",
    "mikel-mail/report_422.eml", "mikel-mail/raw_email_with_mimepart_without_content_type.eml",
    "spamscope-mail-parser/mail_malformed_2",  # Action: failed, but Status: 4.2.2
}
OTHER_BOUNCES = [
    "jhillyerd-enmime/dsn/delayed_dsn.raw",
    "jhillyerd-enmime/dsn/dsn_with_multipart_alternative.raw",
    "jhillyerd-enmime/dsn/multi_recipient_dsn.raw", "mailgun-flanker/bounce/broken-mime.eml",
    "mailgun-flanker/bounce/gmail-invalid-address.eml", "mailgun-flanker/bounce/mailbox-full.eml",
    "mailgun-flanker/bounce/no-mx.eml", "mikel-mail/report_422.eml", "mikel-mail/report_530.eml",
    "mikel-mail/multi_address_bounce1.eml", "mikel-mail/multipart_report_multiple_status.eml",
    "discourse/hard_bounce_via_verp.eml", "python-cpython/msg_25.txt",
    "jstedfast-MimeKit/messages/delivery-status-no-blank-line.txt",
    "spamscope-mail-parser/mail_malformed_2",
]


def _sisimai_bounces() -> list[str]:
    folder = CORPUS / "sisimai"
    if not folder.is_dir():
        return []
    return sorted(f"sisimai/{f.name}" for f in folder.glob("*.eml")
                  if not f.name.startswith(("arf-", "rfc3834-")))


def test_sisimai_bounces_are_detected() -> None:
    names = _sisimai_bounces()
    assert len(names) >= 30
    detected = [name for name in names if load(name).bounce is not None]
    missed = sorted(set(names) - set(detected))
    print(f"\nsisimai bounces detected: {len(detected)}/{len(names)}; missed: {missed}")
    assert len(detected) / len(names) >= 0.9


def test_other_bounces_are_detected_and_classified() -> None:
    names = sorted(set(OTHER_BOUNCES) | set(_sisimai_bounces()))
    wrong = []
    for name in names:
        bounce = load(name).bounce
        if bounce is None or bounce.permanent == (name in SOFT_BOUNCES):
            wrong.append(name)
    print(f"\nbounces detected with the right hard/soft class: {len(names) - len(wrong)}/"
          f"{len(names)}; wrong: {wrong}")
    assert len(wrong) / len(names) <= 0.1


def test_bounce_details() -> None:
    bounce = load("sisimai/lhost-postfix-01.eml").bounce
    assert bounce is not None and bounce.permanent
    assert bounce.status == "5.1.1"
    assert bounce.recipients == ["r@p351355.pool.example.ne.jp"]
    report = load("mikel-mail/report_530.eml").bounce
    assert report is not None
    assert report.original_message_id == "200712232303.lBNN3jDq002941@mail12.rrrr.com.au"
    multi = load("mikel-mail/multi_address_bounce1.eml").bounce
    assert multi is not None and len(multi.recipients) == 5


@pytest.mark.parametrize("name", [
    "sisimai/rfc3834-01.eml", "sisimai/rfc3834-02.eml", "sisimai/rfc3834-03.eml",
    "sisimai/rfc3834-04.eml", "sisimai/rfc3834-05.eml", "sisimai/rfc3834-06.eml",
    "discourse/auto_reply.eml", "php-mime-mail-parser/issue212",
    "mailgun-flanker/disposition-notification.eml", "sisimai/arf-01.eml",
])
def test_automatic_replies_are_detected(name: str) -> None:
    mail = load(name)
    assert mail.auto_reply, name
    if "rfc3834" in name:
        assert mail.bounce is None


@pytest.mark.parametrize("name", [
    "discourse/quirks_exchange_xars.eml",  # X-Auto-Response-Suppress on a human's mail
    "discourse/mailman_1.eml",  # Precedence: list
    "discourse/hebrew_reply.eml", "discourse/reply_with_8bit_encoding.eml",
    "mailgun-talon/standard_replies/outlook.eml", "mailgun-talon/standard_replies/gmail.eml",
    "mailgun-flanker/long-links.eml",  # a person sending from a postmaster@ address
    "mikel-mail/raw_email_reply.eml", "php-mime-mail-parser/m0019",
])
def test_human_mail_is_not_an_auto_reply(name: str) -> None:
    mail = load(name)
    assert mail.auto_reply is None, mail.auto_reply
    assert mail.bounce is None


# --------------------------------------------------------------------------------------------
# Charsets and headers
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "field", "expected"), [
    ("discourse/reply_with_8bit_encoding.eml", "text", "äöüÄÖÜß"),
    ("discourse/reply_with_weird_encoding.eml", "text", "This is a reply with a weird encoding."),
    ("discourse/big5.eml", "text", "媽！我上電視了！"),
    ("discourse/hebrew_reply.eml", "text", "שלום! מה שלומך היום?"),
    ("discourse/encoding_undefined_conversion.eml", "text", "𝗜 𝗮𝗺 𝗮 𝘀𝗶𝗻𝗴𝗹𝗲 person"),
    ("jhillyerd-enmime/low-quality/incorrect-charset.raw", "text", "∮ E⋅da = Q"),
    ("jhillyerd-enmime/low-quality/unk-charset-part.raw", "text", "A text section"),
    ("mikel-mail/japanese_iso_2022.eml", "text", "すみません。"),
    ("mikel-mail/japanese_shift_jis.eml", "text", "このメールはテスト用のメールです。"),
    ("mikel-mail/raw_email10.eml", "text", "Test test. Hi. Waving."),
    ("mailgun-flanker/bilingual-simple.eml", "text", "А эта линия по-русски."),
    ("jstedfast-MimeKit/tnef/ukr.eml", "text", "шостий"),
    ("stalwart-mail-parser/thirdparty/005.eml", "text", "『世界人権宣言』"),
    ("php-mime-mail-parser/issue149", "subject", "מענה 'אני לא נמצא': Invoice 02722027"),
    ("sisimai/lhost-exchange2007-04.eml", "subject",
     "Undeliverable: キジトラ・フラッシュ/ニャーン"),
    ("mikel-mail/invalid_subject_characters.eml", "subject", "Formação FrenetikPolis"),
    ("mikel-mail/utf8_headers.eml", "subject", "Säying Hello"),
    ("mikel-mail/utf8_headers.eml", "from_name", "Jöhn Doe"),
    ("mikel-mail/japanese_attachment_long_name.eml", "subject", "まみむめも"),
    ("mailgun-flanker/long-header.eml", "subject", "Die heiße Zypernsonne quälte Max"),
    ("zbateson-mail-mime-parser/invalid-charset.txt", "text", "The Hare and the Tortoise"),
])
def test_charsets_decode(name: str, field: str, expected: str) -> None:
    value = getattr(load(name), field)
    assert expected in value
    assert "\ufffd" not in value


@pytest.mark.parametrize(("name", "filename"), [
    ("mikel-mail/japanese_attachment_long_name.eml", "かきくけこ" * 5 + ".txt"),
    ("mikel-mail/attachment_with_quoted_filename.eml", "Eelanalüüsi päring.jpg"),
    ("mikel-mail/attachment_with_unquoted_name.eml", "This is a test.txt"),
    ("mikel-mail/attachment_nonascii_filename.eml", "ciële.txt"),
    ("apache-james-mime4j/russian-headers.msg", "Список.doc"),
    ("php-mime-mail-parser/m0027", "1234.txt"),  # "1234/../../1234.txt"
    ("php-mime-mail-parser/m0018", "사진.JPG"),
])
def test_attachment_filenames(name: str, filename: str) -> None:
    assert filename in [a.filename for a in load(name).attachments]


def test_structures() -> None:
    related = load("jhillyerd-enmime/mail/other-multi-related.raw")
    # In multipart/related, but the HTML never shows them: files, or nobody would see them.
    assert [(a.filename, a.inline) for a in related.attachments] == [
        ("image001.png", False), ("image002.png", False)]
    assert related.html is not None and related.text == "Plain text."
    shown = load("jhillyerd-enmime/mail/html-mime-inline.raw")
    assert [(a.filename, a.inline, a.content_id) for a in shown.attachments] == [
        ("favicon.png", True, "8B8481A2-25CA-4886-9B5A-8EB9115DD064@skynet")]
    mhtml = load("jstedfast-MimeKit/messages/multipart-related-mhtml.txt")
    assert mhtml.html is not None  # the root is the HTML part named by type=, not the image
    forwarded = load("mikel-mail/attachment_message_rfc822.eml")
    assert [f.subject for f in forwarded.forwarded] == ["Another PDF"]
    assert "Just attaching another PDF" in forwarded.text
    # The forwarded mail as a file (named as the sender's client named it) and its PDF.
    assert [a.filename for a in forwarded.attachments] == ["ForwardedMessage.eml",
                                                           "broken.pdf"]
    assert b"Subject: Another PDF" in forwarded.attachments[0].data
    calendar = load("php-mime-mail-parser/m0020")
    assert calendar.calendar == (
        "Invitation: 1\nWhen: 2014-03-28 11:03\u201311:33 (FLE Standard Time)\n"
        "Where: Meeting Room\nOrganizer: Finntack Newsletter <newsletter@finntack.com>")
    many = load("php-mime-mail-parser/issue408.eml")
    assert len(many.attachments) > 300
    illegal_boundary = load("mikel-mail/raw_email_with_illegal_boundary.eml")
    assert illegal_boundary.text.startswith("Hello\nThis is an outlook test")
