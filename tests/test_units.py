"""Small pure pieces: escaping, log masking."""

from __future__ import annotations

import json
import logging

from hypothesis import given
from hypothesis import strategies as st

from bridge import json_codec
from bridge.core.connector import escape_localpart
from bridge.logs import _SecretMasking


@given(st.text(min_size=1, max_size=80))
def test_escaped_localparts_are_valid_and_distinct(value: str) -> None:
    escaped = escape_localpart(value)
    assert escaped and all(c in "abcdefghijklmnopqrstuvwxyz0123456789._-=" for c in escaped)
    # Different lower-cased inputs never share a puppet.
    assert escape_localpart(value + "x") != escaped


def test_escape_examples() -> None:
    assert escape_localpart("U024BE7LH") == "u024be7lh"
    assert escape_localpart("Jörg.Schmidt@Stadt.example") == "j=c3=b6rg.schmidt=40stadt.example"


def test_secrets_are_masked_in_text_and_json_logs() -> None:
    record = logging.LogRecord("bridge", logging.INFO, __file__, 1,
                               "token %s in url https://hs/?access_token=%s", ("as-secret-1",
                                                                               "hs-secret-22"),
                               None)
    for as_json in (False, True):
        line = _SecretMasking(["as-secret-1", "hs-secret-22", ""], as_json).format(record)
        assert "as-secret-1" not in line and "hs-secret-22" not in line
        assert "***" in line
        if as_json:
            assert json.loads(line)["level"] == "INFO"


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@given(_JSON_VALUES)
def test_json_codec_reads_back_what_it_wrote_as_the_standard_library_would(value: object
                                                                          ) -> None:
    # Integers beyond 64 bits (orjson refuses them) go through the fallback both ways.
    # Compared as the standard library writes them, so that an int read back as a float
    # (equal to it only when the float happens to be exact) counts as a difference.
    encoded = json_codec.dumps(value)
    assert json.dumps(json_codec.loads(encoded)) == json.dumps(value) \
        == json.dumps(json.loads(encoded))
    assert json.dumps(json_codec.loads(json.dumps(value))) == json.dumps(value)


def test_json_codec_keeps_integers_beyond_64_bits_exact() -> None:
    # An event as the inbox stores it (text column) and as the appservice reads a
    # transaction (bytes): the numbers come back as the same ints, not as floats.
    for number in (2**70, -(2**70), 2**70 + 1, -(2**70) - 1, 2**64, 2**63, -(2**63) - 1,
                   10**30 + 7):
        event = {"type": "m.room.message", "content": {"body": "x", "n": number,
                                                       "list": [1, number, 2.5]}}
        for data in (json_codec.dumps(event), json_codec.dumps_bytes(event),
                     json.dumps(event)):
            back = json_codec.loads(data)
            assert back == event
            assert type(back["content"]["n"]) is int and back["content"]["n"] == number
            assert back["content"]["list"] == [1, number, 2.5]
    # What fits into 64 bits still goes the fast way and comes back the same.
    for number in (2**63 - 1, -(2**63), 2**64 - 1, 10**18):
        assert json_codec.loads(json_codec.dumps({"n": number})) == {"n": number}


def test_json_codec_keeps_umlauts_and_refuses_what_is_not_json() -> None:
    assert json_codec.dumps({"body": "Grüße aus dem Bauamt"}) == '{"body":"Grüße aus dem Bauamt"}'
    for bad in ("{", "", "{'a': 1}", b"\xff"):
        try:
            json_codec.loads(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
