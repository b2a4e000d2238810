"""The API's request checks without a server: a body that does not fit its declared schema
is refused with a sentence naming the field; `since` takes the ISO times people write."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bridge.admin.api.core_routes import parse_since
from bridge.admin.api.routes import BadRequest, check_body
from bridge.email.api import LINK_SCHEMA

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["policy"],
          "properties": {"policy": {"type": "string", "enum": ["open", "domain"]},
                         "domain": {"type": ["string", "null"], "minLength": 1},
                         "ids": {"type": "array", "items": {"type": "integer", "minimum": 1}}}}


@pytest.mark.parametrize(("body", "says"), [
    ({}, "needs the field `policy`"),
    ({"policy": 3}, "`policy` must be a string"),
    ({"policy": "alle"}, "`policy` must be one of `open`, `domain`, not `alle`"),
    ({"policy": "open", "farbe": "rot"}, "Unknown field `farbe`"),
    ({"policy": "open", "domain": ""}, "`domain` must not be empty"),
    ({"policy": "open", "ids": [1, True]}, "`ids[1]` must be a whole number"),
    ({"policy": "open", "ids": [0]}, "`ids[0]` must be at least 1"),
])
def test_a_body_that_does_not_fit_is_refused_naming_the_field(body: dict[str, object],
                                                             says: str) -> None:
    with pytest.raises(BadRequest, match="^.*" + says.replace("[", r"\[").replace("]", r"\]")):
        check_body(SCHEMA, body)


def test_a_body_that_fits_passes() -> None:
    check_body(SCHEMA, {"policy": "domain", "domain": None, "ids": [1, 2]})
    check_body(LINK_SCHEMA, {"localpart": "bauamt"})
    with pytest.raises(BadRequest):
        check_body(LINK_SCHEMA, {"localpart": "bauamt", "domain": "x"})


def test_since_takes_dates_times_and_zones() -> None:
    assert parse_since("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    assert parse_since("2026-03-01T08:00:00Z") == datetime(2026, 3, 1, 8,
                                                           tzinfo=UTC).timestamp()
    assert parse_since("2026-03-01T09:00:00+01:00") == parse_since("2026-03-01T08:00")
    with pytest.raises(BadRequest, match="`since`"):
        parse_since("letzte Woche")


@pytest.mark.integration
async def test_a_matrix_token_is_not_refused_while_the_homeserver_cannot_be_asked() -> None:
    """With no homeserver to ask whose token it is (a closed port), the API answers 503 (try
    again later), not 401: a bridge admin's valid token is not called wrong, and no answer
    is remembered for it."""
    from types import SimpleNamespace

    import aiohttp
    from aiohttp.test_utils import make_mocked_request

    from bridge.admin.api.auth import Authenticator
    from bridge.core.errors import UnavailableError
    from testkit.synapse import free_port

    async with aiohttp.ClientSession() as http:
        bridge = SimpleNamespace(
            http=http, hub=SimpleNamespace(is_admin=lambda user: True),
            config=SimpleNamespace(
                provisioning=SimpleNamespace(shared_secret="s" * 32),
                homeserver=SimpleNamespace(address=f"http://127.0.0.1:{free_port()}")))
        auth = Authenticator(bridge)  # type: ignore[arg-type]
        request = make_mocked_request("GET", "/_bridge/api/v1/status",
                                      headers={"Authorization": "Bearer a-matrix-token"})
        for _ in range(2):  # asked again the second time: nothing was cached
            with pytest.raises(UnavailableError) as caught:
                await auth.actor(request)
            assert caught.value.status == 503
            assert "Cannot ask the homeserver whose token this is" in str(caught.value)
