"""What the bridge says and refuses about encrypted rooms (issue 13): the link refusals of
``encryption.allow`` and ``encryption.require``, the notice that relayed messages leave
end-to-end encryption, the bridge-info field that says the same, and the status line.

(The encryption itself is bridge/matrix/crypto.py.)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mautrix.api import Method, Path
from mautrix.errors import MatrixRequestError
from mautrix.types import EventType, RoomID

from bridge.matrix.bridge_info import BRIDGE_INFO_TYPES, state_key
from bridge.matrix.intents import room_encryption

if TYPE_CHECKING:
    from bridge.matrix.side import MatrixSide

log = logging.getLogger("bridge.matrix.encryption")

# The key of the bridge-info content (m.bridge) that says where messages leave end-to-end
# encryption; clients ignore keys they do not know.
BRIDGE_INFO_KEY = "encryption"


def leaves_encryption(side_names: list[str]) -> str:
    where = " and ".join(side_names) if side_names else "the linked networks"
    return (f"🔓 This room is end-to-end encrypted. The bridge decrypts the messages it relays: "
            f"what is relayed to {where} leaves end-to-end encryption there (the bridge's "
            "device in this room is the bridge bot's).")


def bridge_info_field(side_names: list[str]) -> dict[str, Any]:
    return {"end_to_bridge": True, "leaves_end_to_end_encryption": True,
            "note": leaves_encryption(side_names)}


async def link_refusal(side: MatrixSide, room_id: str) -> str | None:
    """Why a room may not be linked as it is (encrypted without encryption.allow, or not
    encrypted with encryption.require), or None."""
    settings = side.hub.config.encryption
    if not settings.allow and not settings.require:
        encrypted = await room_encryption(side, room_id) is not None
        if encrypted:
            return ("This room is end-to-end encrypted, and this bridge does not take part in "
                    "encrypted rooms: it could not read the messages it should relay. Nothing "
                    "was linked. The bridge's operator can set `encryption.allow: true` in its "
                    "config (and give the homeserver the regenerated registration, see the "
                    "README's \"Encrypted rooms\"); or link a room that is not encrypted.")
        return None
    if settings.require and await room_encryption(side, room_id) is None:
        return ("This room is not end-to-end encrypted, and this bridge links only encrypted "
                "rooms (`encryption.require: true` in its config). Nothing was linked. Turn "
                "on encryption in the room's settings, then link it again.")
    return None


async def is_encrypted(side: MatrixSide, room_id: str) -> bool:
    return await room_encryption(side, room_id) is not None


async def status_line(side: MatrixSide, room_id: str) -> str | None:
    """The room's encryption, for `!bridge status` (None: not encrypted)."""
    if await room_encryption(side, room_id) is None:
        return None
    if not side.hub.config.encryption.allow:
        return ("**Encryption**: ⚠️ this room is end-to-end encrypted, but this bridge does "
                "not take part in encrypted rooms (`encryption.allow` is false): its messages "
                "are not bridged. Set `encryption.allow: true` in the bridge's config.")
    crypto = side.crypto
    if crypto is None or not crypto.started.is_set():
        why = crypto.failed if crypto is not None and crypto.failed else "not started yet"
        return (f"**Encryption**: ⚠️ this room is end-to-end encrypted, and the bridge's "
                f"encryption is not working ({why}): its messages are not bridged.")
    return (f"**Encryption**: 🔒 end-to-end encrypted; the bridge decrypts and encrypts with "
            f"its device `{crypto.device_id}`. Relayed messages leave end-to-end encryption.")


async def deliver_turned_on(side: MatrixSide, txn_id: str, room_id: str,
                            payload: dict[str, Any]) -> None:
    """Sent for a linked room that turned encryption on (the hub's "encryption_on")."""
    names = list(payload.get("names") or [])
    if side.hub.config.encryption.allow:
        text = leaves_encryption(names)
    else:
        text = ("⚠️ This room turned on end-to-end encryption, and this bridge does not take "
                "part in encrypted rooms: from now on its messages are not bridged. The "
                "bridge's operator can set `encryption.allow: true` in its config.")
    await side.bot_intent.send_notice(RoomID(room_id), text, txn_id=txn_id)
    if not side.hub.config.encryption.allow:
        return
    for network, remote_id in payload.get("links") or []:
        key = state_key(side.hub.config.appservice.id, network, remote_id)
        for event_type in BRIDGE_INFO_TYPES:
            etype = EventType.find(event_type, EventType.Class.STATE)
            try:
                current = await side.bot_intent.api.request(
                    Method.GET, Path.v3.rooms[RoomID(room_id)].state[event_type][key])
            except MatrixRequestError:
                continue  # no bridge info for this link (withdrawn, or never allowed)
            if not isinstance(current, dict) or not current:
                continue
            content = {**current, BRIDGE_INFO_KEY: bridge_info_field(names)}
            await side.bot_intent.send_state_event(RoomID(room_id), etype, content,
                                                   state_key=key)
