"""`bridge check`'s item on encrypted rooms (issue 13).

With ``encryption.allow`` off: names the linked rooms that are end-to-end encrypted (their
messages are not bridged). With it on: the homeserver must offer the appservice login the
bridge's device is made with, and once the bridge has run, that device's keys must be
published. (Whether the homeserver sends to-device messages, device lists and one-time-key
counts (MSC2409, MSC3202) it does not advertise; the README says what to enable.)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

from bridge.config import Config

NAME = "encrypted rooms"
README = "the README's \"Encrypted rooms\""


async def _get(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.get(url, **kwargs) as response:
        try:
            return response.status, await response.json(content_type=None)
        except ValueError:
            return response.status, None


async def check_encryption(session: aiohttp.ClientSession, config: Config,
                           linked_rooms: list[str]) -> tuple[bool, bool, str]:
    """(ok, warning, detail) of the item; ``linked_rooms``: the rooms with a link."""
    base = config.homeserver.address
    auth = {"Authorization": f"Bearer {config.appservice.as_token}"}
    encrypted = []
    for room_id in linked_rooms:
        status, _ = await _get(
            session, f"{base}/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.encryption",
            headers=auth, params={"user_id": config.bot_mxid})
        if status == 200:
            encrypted.append(room_id)
    if not config.encryption.allow:
        if encrypted:
            return False, False, (
                f"{len(encrypted)} linked room(s) are end-to-end encrypted, and "
                f"encryption.allow is false: their messages are not bridged "
                f"({', '.join(encrypted[:5])}{', …' if len(encrypted) > 5 else ''}). Set "
                f"encryption.allow: true and see {README}")
        return True, False, "encryption.allow is false; no linked room is encrypted"
    status, flows = await _get(session, f"{base}/_matrix/client/v3/login")
    types = {f.get("type") for f in (flows or {}).get("flows", []) if isinstance(f, dict)}
    if "m.login.application_service" not in types:
        return False, False, ("encryption.allow is true, but the homeserver does not offer the "
                              "appservice login (m.login.application_service) that the "
                              f"bridge's device is made with; see {README}")
    # What the running bridge saw in the homeserver's transactions.
    try:
        _, health = await _get(session, f"{config.appservice.address}/_bridge/health")
    except (aiohttp.ClientError, TimeoutError):
        health = None
    state = health.get("encryption") if isinstance(health, dict) else None
    rooms = f"{len(encrypted)} linked room(s) encrypted"
    if not isinstance(state, dict):
        return True, True, (f"encryption.allow is true; the homeserver offers the appservice "
                            f"login; {rooms}. Whether the homeserver sends to-device messages, "
                            "device lists and one-time-key counts (MSC2409, MSC3202) shows "
                            f"once the bridge runs: start it and check again ({README})")
    if state.get("failed"):
        return False, False, f"the bridge's encryption did not start: {state['failed']}"
    if state.get("homeserver_extensions") is False:
        return False, False, ("the homeserver's transactions carry no one-time-key counts: "
                              "it does not send the bridge the keys' news (MSC3202) and "
                              "probably not its to-device messages (MSC2409). Enable "
                              "experimental_features msc3202_transaction_extensions and "
                              "msc2409_to_device_messages_enabled (Synapse), regenerate the "
                              f"registration and restart the homeserver; see {README}")
    seen = ("the homeserver sends the keys' news (MSC3202)"
            if state.get("homeserver_extensions") else "no transaction seen yet")
    return True, False, (f"encryption.allow is true; the bridge's device is "
                         f"{state.get('device')}; {seen}; {rooms}")
