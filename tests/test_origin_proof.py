"""The proof on a double-puppeted event's origin marker: trusted for exactly the event the
bridge signed it for, and for nothing a person could make from it."""

from __future__ import annotations

from typing import Any

from bridge.core.origin import ORIGIN_KEY, Origin, proof_key, read_signed_origin, sign

KEY = proof_key("double-puppet-token-0123456789")
ROOM, ANNA = "!bauamt:stadt.example", "@anna:stadt.example"
MARKED = Origin(network="slack", link_id=7).mark({"msgtype": "m.text", "body": "Hallo"})


def event(content: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"type": "m.room.message", "room_id": ROOM, "sender": ANNA,
            "origin_server_ts": 1_700_000_000_000, "content": content, **fields}


def test_a_signed_marker_is_read_back_for_its_own_event_only() -> None:
    signed = sign(MARKED, KEY, ROOM, ANNA, timestamp_ms=1_700_000_000_000)
    assert MARKED[ORIGIN_KEY] == {"network": "slack", "link": 7}  # the original is kept
    origin = read_signed_origin(event(signed), KEY)
    assert origin is not None and (origin.network, origin.link_id) == ("slack", 7)
    # The same content on another event: another time, room or sender; another key.
    assert read_signed_origin(event(signed, origin_server_ts=1_700_000_000_001), KEY) is None
    assert read_signed_origin(event(signed, room_id="!other:stadt.example"), KEY) is None
    assert read_signed_origin(event(signed, sender="@ben:stadt.example"), KEY) is None
    assert read_signed_origin(event(signed), proof_key("another-token-0123456789")) is None
    # A marker naming another link under the same proof.
    moved = {**signed, ORIGIN_KEY: {**signed[ORIGIN_KEY], "link": 8}}
    assert read_signed_origin(event(moved), KEY) is None


def test_unsigned_and_malformed_markers_are_not_trusted() -> None:
    assert read_signed_origin(event(MARKED), KEY) is None
    for proof in (None, 42, "", "00" * 32):
        marker = {**MARKED[ORIGIN_KEY], "proof": proof}
        assert read_signed_origin(event({**MARKED, ORIGIN_KEY: marker}), KEY) is None
    assert read_signed_origin(event({"body": "no marker"}), KEY) is None
    signed = sign(MARKED, KEY, ROOM, ANNA, timestamp_ms=1_700_000_000_000)
    assert read_signed_origin(event(signed, origin_server_ts="1700000000000"), KEY) is None
    assert read_signed_origin(event(signed, origin_server_ts=True), KEY) is None
    # Nothing to sign: content without a marker stays as it is.
    plain = {"msgtype": "m.text", "body": "x"}
    assert sign(plain, KEY, ROOM, ANNA, timestamp_ms=1) is plain


def test_a_redaction_is_signed_over_the_event_it_redacts() -> None:
    extra = {ORIGIN_KEY: {"network": "slack", "link": 7}}
    signed = sign(extra, KEY, ROOM, ANNA, redacts="$message")
    redaction = {"type": "m.room.redaction", "room_id": ROOM, "sender": ANNA,
                 "origin_server_ts": 1_700_000_000_123, "redacts": "$message",
                 "content": {**signed, "redacts": "$message"}}
    assert read_signed_origin(redaction, KEY) is not None
    # Copied onto the redaction of another event: not trusted.
    other = {**redaction, "redacts": "$other", "content": {**signed, "redacts": "$other"}}
    assert read_signed_origin(other, KEY) is None
