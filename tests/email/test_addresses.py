"""Room/reply/unsubscribe addresses, tokens, Message-IDs, subjects and header text cleaning."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.email.addresses import (
    MAX_ROOM_LOCALPART_LENGTH,
    ForgedAddress,
    Recipient,
    clean_display_name,
    clean_header_text,
    is_our_message_id,
    is_valid_room_localpart,
    make_reply_address,
    make_unsubscribe_address,
    message_id_for,
    new_topic_subject,
    normalize_address,
    parse_recipient,
    reply_subject,
    room_address,
    thread_key_for,
    verify_unsubscribe,
)

DOMAIN = "bridge.stadt-musterstadt.de"
SECRET = b"0123456789abcdef-test-secret"
BIDI_AND_ZERO_WIDTH = (
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
    "\u200b\u200c\u200d\u2060\ufeff"
)

# Text that mixes arbitrary Unicode with the pieces header attacks are made of.
NASTY_PIECES = ["\r", "\n", "\r\n", "\t", "\x00", "\x7f", "\x85", "\u2028", '"', "\u201c",
                "<", ">", "\uff1c", "@", ",", ";", ":", "\\", "(", ")", "=?", "?=",
                "=?utf-8?b?DQpCY2M6IHhAeQ==?=", "Bcc: x@y", *BIDI_AND_ZERO_WIDTH]
nasty_text = st.lists(st.one_of(st.text(max_size=20), st.sampled_from(NASTY_PIECES)),
                      max_size=12).map("".join)


def _unwanted(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Cs") or (char.isspace() and char != " ")


# --- display names and header text -----------------------------------------------------------


def test_display_name_plain_and_umlauts_kept() -> None:
    assert clean_display_name("Jürgen Müller-Lüdenscheidt", "x") == "Jürgen Müller-Lüdenscheidt"
    assert clean_display_name("O'Brien", "x") == "O'Brien"


def test_display_name_line_breaks_and_controls() -> None:
    assert clean_display_name("Evil\r\nBcc: victim@example.org", "x") == (
        "Evil Bcc: victim@example.org"
    )
    assert clean_display_name("a\x00b\x1b[31mc\td", "x") == "ab[31mc d"
    assert clean_display_name("  lots   of\u00a0\u2003space  ", "x") == "lots of space"


def test_display_name_quotes_and_brackets_removed() -> None:
    assert clean_display_name('"Chef" <chef@example.org>', "x") == "Chef chef@example.org"
    assert clean_display_name("\u201eChef\u201c \u00abBoss\u00bb \u2039x\u203a", "x") == (
        "Chef Boss x"
    )
    # Fullwidth lookalikes go as well.
    assert clean_display_name("\uff02Boss\uff02 \uff1cboss@example.org\uff1e", "x") == (
        "Boss boss@example.org"
    )


def test_display_name_bidi_and_zero_width_removed() -> None:
    name = "Ad" + BIDI_AND_ZERO_WIDTH + "min\u2800"
    cleaned = clean_display_name(name, "x")
    assert cleaned.startswith("Admin")
    assert not any(c in cleaned for c in BIDI_AND_ZERO_WIDTH)


def test_display_name_that_looks_like_an_address_is_kept() -> None:
    # Kept on purpose: formataddr/Address quote it, so the real address stays visible.
    assert clean_display_name("boss@example.org", "x") == "boss@example.org"


def test_display_name_encoded_word_is_defused() -> None:
    cleaned = clean_display_name("=?utf-8?q?boss=40example.org?=", "x")
    assert "=?" not in cleaned


def test_display_name_length_limited_with_ellipsis() -> None:
    cleaned = clean_display_name("A" * 200, "x")
    assert len(cleaned) == 64
    assert cleaned.endswith("…")


def test_display_name_fallback() -> None:
    assert clean_display_name(None, "@alice:example.org") == "@alice:example.org"
    assert clean_display_name(" \u200b\r\n\"\" ", "Matrix") == "Matrix"
    assert clean_display_name("", "\n") == ""


@settings(max_examples=300, deadline=None)
@given(name=nasty_text, fallback=st.text(max_size=10))
def test_display_name_never_contains_unwanted_characters(name: str, fallback: str) -> None:
    cleaned = clean_display_name(name, fallback)
    assert not any(_unwanted(c) for c in cleaned)
    assert not any(c in '"<>' for c in cleaned)
    assert "=?" not in cleaned
    assert len(cleaned) <= 64
    assert cleaned == cleaned.strip()
    assert clean_display_name(cleaned, fallback) == cleaned  # idempotent


@settings(max_examples=200, deadline=None)
@given(text=nasty_text)
def test_header_text_never_contains_line_breaks_or_controls(text: str) -> None:
    cleaned = clean_header_text(text)
    assert not any(_unwanted(c) for c in cleaned)
    assert "=?" not in cleaned
    assert len(cleaned) <= 200


def test_header_text_keeps_quotes_but_not_line_breaks() -> None:
    assert clean_header_text('Frage zu "Bauantrag"\r\nBcc: x@y') == (
        'Frage zu "Bauantrag" Bcc: x@y'
    )
    assert clean_header_text(None) == ""
    assert clean_header_text("x" * 300, 50).endswith("…")


# --- subjects --------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", [
    "Bauantrag Müller", "Re: Bauantrag Müller", "RE: Re: Bauantrag Müller",
    "AW: Bauantrag Müller", "Aw: WG: Bauantrag Müller", "Fwd: Bauantrag Müller",
    "FW: Bauantrag Müller", "Re[2]: Bauantrag Müller", "Re(3): Bauantrag Müller",
    "Re : Bauantrag Müller", "Antw: Bauantrag Müller", "  re:aw:Bauantrag Müller",
])
def test_reply_subject_never_stacks_prefixes(topic: str) -> None:
    assert reply_subject(topic) == "Re: Bauantrag Müller"


def test_reply_subject_prefixes_behind_the_room_tag() -> None:
    assert reply_subject("AW: [Bauamt] AW: Frage") == "Re: [Bauamt] Frage"
    assert reply_subject("[Bauamt] Frage") == "Re: [Bauamt] Frage"


def test_reply_subject_keeps_words_that_merely_start_like_prefixes() -> None:
    assert reply_subject("Reparatur der Heizung") == "Re: Reparatur der Heizung"
    assert reply_subject("Wgt: 5 kg") == "Re: Wgt: 5 kg"
    assert reply_subject("") == "Re: (no subject)"
    assert "\n" not in reply_subject("a\r\nBcc: x@y")


def test_new_topic_subject() -> None:
    assert new_topic_subject("Bauamt", "Frage zum Antrag") == "[Bauamt] Frage zum Antrag"
    assert new_topic_subject("Bauamt", "\n\n  Zweite Zeile\nDritte") == "[Bauamt] Zweite Zeile"
    assert new_topic_subject("Bauamt", None) == "[Bauamt] New message"
    assert new_topic_subject("", "Hallo") == "Hallo"
    assert new_topic_subject("Team [intern]", "x") == "[Team (intern)] x"


def test_new_topic_subject_cuts_long_first_lines_at_a_word() -> None:
    line = "Sehr geehrte Damen und Herren, " * 10
    subject = new_topic_subject("Bauamt", line)
    assert subject.endswith("…")
    assert len(subject) <= len("[Bauamt] ") + 70
    assert subject[:-1].endswith(("Damen", "und", "Herren,", "Sehr", "geehrte"))


# --- room, reply and unsubscribe addresses ---------------------------------------------------


def test_thread_key_is_deterministic_short_and_lowercase() -> None:
    key = thread_key_for("$root-event:example.org")
    assert key == thread_key_for("$root-event:example.org")
    assert len(key) == 12
    assert key.isascii() and key == key.lower() and key.isalnum()
    assert key != thread_key_for("$other-event:example.org")


def test_reply_address_round_trip() -> None:
    key = thread_key_for("$root")
    address = make_reply_address("bauamt", DOMAIN, key, SECRET)
    local, _, domain = address.partition("@")
    assert domain == DOMAIN
    assert local.startswith("bauamt+")
    assert local == local.lower()
    assert parse_recipient(address, DOMAIN, SECRET) == Recipient(
        localpart="bauamt", thread_key=key, kind="reply", subscriber=None)


def test_reply_address_survives_case_changes_and_brackets() -> None:
    address = make_reply_address("bauamt", DOMAIN, thread_key_for("$root"), SECRET)
    for variant in (address.upper(), f"<{address}>", f" {address.title()} "):
        recipient = parse_recipient(variant, DOMAIN.upper(), SECRET)
        assert recipient is not None
        assert recipient.kind == "reply"
        assert recipient.thread_key == thread_key_for("$root")


def test_reply_token_of_one_room_is_rejected_for_another() -> None:
    address = make_reply_address("bauamt", DOMAIN, thread_key_for("$root"), SECRET)
    token = address.split("+", 1)[1]
    with pytest.raises(ForgedAddress):
        parse_recipient(f"ordnungsamt+{token}", DOMAIN, SECRET)


def test_tampered_or_made_up_tokens_are_rejected() -> None:
    address = make_reply_address("bauamt", DOMAIN, thread_key_for("$root"), SECRET)
    local, _, domain = address.partition("@")
    base, _, token = local.partition("+")
    tampered = [
        token[:-1] + ("a" if token[-1] != "a" else "b"),  # last tag character
        ("a" if token[0] != "a" else "b") + token[1:],  # thread key, tag unchanged
        token[:-2],  # truncated
        token + "a",  # extended
        "x",
        "",
        "hello-world",
    ]
    for bad in tampered:
        with pytest.raises(ForgedAddress):
            parse_recipient(f"{base}+{bad}@{domain}", DOMAIN, SECRET)
    with pytest.raises(ForgedAddress):  # another secret
        parse_recipient(address, DOMAIN, b"another-secret-of-enough-length")


def test_room_address_and_foreign_addresses() -> None:
    assert room_address("Bauamt", DOMAIN) == f"bauamt@{DOMAIN}"
    assert parse_recipient(f"Bauamt@{DOMAIN}", DOMAIN, SECRET) == Recipient(
        localpart="bauamt", thread_key=None, kind="room", subscriber=None)
    assert parse_recipient("bauamt@example.org", DOMAIN, SECRET) is None
    assert parse_recipient(f"bauamt@sub.{DOMAIN}", DOMAIN, SECRET) is None
    assert parse_recipient("no-at-sign", DOMAIN, SECRET) is None
    assert parse_recipient(f'"quoted local"@{DOMAIN}', DOMAIN, SECRET) is None
    assert parse_recipient(f"+token@{DOMAIN}", DOMAIN, SECRET) is None


def test_long_localpart_stays_within_64_octets() -> None:
    longest = "a" * (MAX_ROOM_LOCALPART_LENGTH - 4) + ".b-c"
    assert is_valid_room_localpart(longest)
    reply = make_reply_address(longest, DOMAIN, thread_key_for("$x"), SECRET)
    unsubscribe = make_unsubscribe_address(longest, DOMAIN, "max@example.org", SECRET)
    for address in (reply, unsubscribe):
        assert len(address.split("@")[0].encode()) <= 64
        assert parse_recipient(address, DOMAIN, SECRET) is not None
    assert len(reply.split("@")[0]) == 64  # the limit is used up exactly

    too_long = "a" * (MAX_ROOM_LOCALPART_LENGTH + 1)
    assert not is_valid_room_localpart(too_long)
    with pytest.raises(ValueError):
        make_reply_address(too_long, DOMAIN, thread_key_for("$x"), SECRET)
    with pytest.raises(ValueError):
        make_unsubscribe_address(too_long, DOMAIN, "max@example.org", SECRET)


@pytest.mark.parametrize("localpart", ["", "a+b", "a b", "a..b", ".a", "a.", "ä", "a@b", '"a"'])
def test_invalid_room_localparts(localpart: str) -> None:
    assert not is_valid_room_localpart(localpart)
    with pytest.raises(ValueError):
        make_reply_address(localpart, DOMAIN, "abc", SECRET)


@pytest.mark.parametrize("key", ["", "ABC", "a-b", "a" * 13, "ä"])
def test_invalid_thread_keys(key: str) -> None:
    with pytest.raises(ValueError):
        make_reply_address("bauamt", DOMAIN, key, SECRET)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        make_reply_address("bauamt", DOMAIN, "abc", b"")
    with pytest.raises(ValueError):
        parse_recipient(f"bauamt@{DOMAIN}", DOMAIN, b"short")


def test_unsubscribe_address_round_trip_and_verification() -> None:
    subscriber = "Max.Mustermann@Stadt-Musterstadt.de"
    address = make_unsubscribe_address("bauamt", DOMAIN, subscriber, SECRET)
    assert address.startswith("bauamt+unsubscribe-")
    assert address.endswith(f"@{DOMAIN}")

    recipient = parse_recipient(address.upper(), DOMAIN, SECRET)
    assert recipient is not None
    assert recipient.kind == "unsubscribe"
    assert recipient.localpart == "bauamt"
    assert recipient.subscriber is None
    token = recipient.thread_key
    assert token is not None

    # The From address of the unsubscribe mail, in whatever case the client writes it.
    assert verify_unsubscribe("bauamt", "max.mustermann@stadt-musterstadt.de", token, SECRET)
    assert verify_unsubscribe("BAUAMT", "<MAX.MUSTERMANN@STADT-MUSTERSTADT.DE>", token, SECRET)
    # Forwarded to someone else, for another room, tampered, or malformed: refused.
    assert not verify_unsubscribe("bauamt", "erika@stadt-musterstadt.de", token, SECRET)
    assert not verify_unsubscribe("ordnungsamt", subscriber, token, SECRET)
    assert not verify_unsubscribe("bauamt", subscriber, token[:-1] + "z", SECRET)
    assert not verify_unsubscribe("bauamt", "not an address", token, SECRET)
    assert not verify_unsubscribe("bauamt", subscriber, "ä" * 16, SECRET)


def test_reply_tag_cannot_be_used_as_unsubscribe_tag() -> None:
    # Same room, a "thread key" that equals the subscriber... the purpose label keeps them apart.
    reply = make_reply_address("bauamt", DOMAIN, "abc", SECRET)
    reply_tag = reply.split("@")[0][-16:]
    assert not verify_unsubscribe("bauamt", "abc@x.de", reply_tag, SECRET)


def test_malformed_unsubscribe_token_is_rejected() -> None:
    with pytest.raises(ForgedAddress):
        parse_recipient(f"bauamt+unsubscribe-xyz@{DOMAIN}", DOMAIN, SECRET)


def test_normalize_address() -> None:
    assert normalize_address(" <Max@München.DE> ") == "max@xn--mnchen-3ya.de"
    for bad in ["", "max", "@x.de", "max@", "a b@x.de", "a..b@x.de", "max@-x.de",
                "ä\u00a0b@x.de", "ä\u200bb@x.de", "ä\x85@x.de", "ü" * 33 + "@x.de"]:
        with pytest.raises(ValueError):
            normalize_address(bad)
    # RFC 6531: a UTF-8 local part is an address (sent with SMTPUTF8), in NFC, lower case.
    assert normalize_address("Jürgen@x.de") == "jürgen@x.de"
    assert normalize_address("Ju\u0308rgen@x.de") == "jürgen@x.de"


@settings(max_examples=100, deadline=None)
@given(
    localpart=st.from_regex(r"[a-z0-9_-]{1,20}(\.[a-z0-9_-]{1,7})?", fullmatch=True),
    event_id=st.text(min_size=1, max_size=80),
)
def test_reply_address_round_trip_property(localpart: str, event_id: str) -> None:
    key = thread_key_for(event_id)
    address = make_reply_address(localpart, DOMAIN, key, SECRET)
    assert len(address.split("@")[0]) <= 64
    assert parse_recipient(address.upper(), DOMAIN, SECRET) == Recipient(
        localpart=localpart, thread_key=key, kind="reply", subscriber=None)


# --- Message-IDs -----------------------------------------------------------------------------


def test_message_id_is_stable_and_per_event() -> None:
    first = message_id_for("$event1:example.org", DOMAIN)
    assert first == message_id_for("$event1:example.org", DOMAIN)
    assert first != message_id_for("$event2:example.org", DOMAIN)
    assert first.startswith("<") and first.endswith(f"@{DOMAIN}>")
    assert first.isascii() and " " not in first


def test_is_our_message_id() -> None:
    ours = message_id_for("$event1:example.org", DOMAIN)
    assert is_our_message_id(ours, DOMAIN)
    assert is_our_message_id(ours.upper().replace("<MATRIX-", "<matrix-").lower(), DOMAIN)
    assert is_our_message_id(ours[1:-1], DOMAIN)  # without brackets
    assert is_our_message_id(f" {ours} ", DOMAIN.upper())
    assert not is_our_message_id(ours, "example.org")
    assert not is_our_message_id("<CAB1234@mail.gmail.com>", DOMAIN)
    assert not is_our_message_id(f"<something@{DOMAIN}>", DOMAIN)
    assert not is_our_message_id("", DOMAIN)
