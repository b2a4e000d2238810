"""The origin marker: which link a puppet's Matrix event came from.

Everything a connector posts into Matrix for a remote message (messages, their files, edits,
reactions, redactions) carries, in its event content, the link it came in through::

    "net.matrix_hub_bridge.origin": {"network": "email", "link": 12,
                                     "also_received": ["b@example.org"]}

The relay rule (:meth:`bridge.core.hub.Hub.route`) reads it back when the event returns
from the homeserver: the event goes to every link of the room except the one it came from.
Without it the rule could only skip the sender's whole *network*, so two email subscribers
of one room, or two Slack channels linked to one room, would never hear each other.

The marker is trusted only on events whose sender is a puppet of the marker's network: a
Matrix user who copies it into a message cannot stop that message from being relayed. The one
exception, double puppeting, is an event the bridge sent as a linked person's own account:
its marker is trusted only with a proof the bridge made for exactly that event (see below).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

#: The key in an event's content (namespaced, as the spec asks of custom keys).
ORIGIN_KEY = "net.matrix_hub_bridge.origin"
#: ``true`` on a puppet's event that brings a remote conversation's *history* into the
#: room (an import): the room's other links never get it relayed (trusted on puppets only).
HISTORY_KEY = "net.matrix_hub_bridge.history"


@dataclass(frozen=True, slots=True)
class Origin:
    """The link a remote message came in through."""

    network: str
    link_id: int
    #: Remote participants of that link who already have the message without the bridge
    #: (for email: the mail's direct To/Cc recipients), so a relay within the link skips them.
    also_received: tuple[str, ...] = field(default=())
    #: The remote thread the message belongs to on that link, for a connector that relays
    #: within its link (for email: the Message-ID that roots the room's mail thread), so
    #: the relayed copies join it without waiting for the message mapping to be written.
    thread: str | None = None

    def marker(self) -> dict[str, Any]:
        """The value stored under :data:`ORIGIN_KEY`."""
        value: dict[str, Any] = {"network": self.network, "link": self.link_id}
        if self.also_received:
            value["also_received"] = list(self.also_received)
        if self.thread is not None:
            value["thread"] = self.thread
        return value

    def mark(self, content: dict[str, Any]) -> dict[str, Any]:
        """``content`` with the marker added (a new dict; the original is left alone)."""
        return {**content, ORIGIN_KEY: self.marker()}


def read_origin(content: Any) -> Origin | None:
    """The marker in an event's content, or None if it has none or a malformed one (the
    content is untrusted input: anything unexpected counts as no marker)."""
    if not isinstance(content, dict):
        return None
    value = content.get(ORIGIN_KEY)
    if not isinstance(value, dict):
        return None
    network, link_id = value.get("network"), value.get("link")
    if not isinstance(network, str) or not isinstance(link_id, int) or \
            isinstance(link_id, bool):
        return None
    received = value.get("also_received")
    also = tuple(a for a in received if isinstance(a, str)) if isinstance(received, list) \
        else ()
    thread = value.get("thread")
    return Origin(network=network, link_id=link_id, also_received=also,
                  thread=thread if isinstance(thread, str) else None)


# --- proof, for events a real account sent for the bridge (double puppeting) -------------
#
# A double-puppeted event comes back from the homeserver with a real user as its sender,
# who could copy a marker into an event of their own. So the bridge signs, besides the room,
# the sender and the link, what ties the proof to one event: for a message or reaction its
# origin_server_ts, which the bridge sets itself (the appservice ``ts`` parameter) and a
# client cannot choose; for a redaction (where homeservers take no ``ts``) the event it
# redacts, which a copy could only redact again, to no effect. A copied marker fails.

#: The key under the marker that holds the proof.
PROOF_KEY = "proof"


def proof_key(secret: str) -> bytes:
    """The HMAC key derived from a bridge secret (double_puppet.as_token)."""
    return hashlib.sha256(b"net.matrix_hub_bridge.origin-proof\0" + secret.encode()).digest()


def _proof(key: bytes, room_id: str, sender: str, anchor: str, origin: Origin) -> str:
    message = "\n".join((room_id, sender, anchor, origin.network, str(origin.link_id)))
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _anchor(timestamp_ms: int | None, redacts: str | None) -> str:
    return f"redacts:{redacts}" if redacts is not None else f"ts:{timestamp_ms}"


def sign(content: dict[str, Any], key: bytes, room_id: str, sender: str, *,
         timestamp_ms: int | None = None, redacts: str | None = None) -> dict[str, Any]:
    """``content`` with its marker (if it has one) signed for the event ``sender`` sends in
    ``room_id``: with origin_server_ts ``timestamp_ms``, or the redaction of ``redacts``
    (a new dict)."""
    origin = read_origin(content)
    if origin is None:
        return content
    marker = {**content[ORIGIN_KEY],
              PROOF_KEY: _proof(key, room_id, sender, _anchor(timestamp_ms, redacts), origin)}
    return {**content, ORIGIN_KEY: marker}


def read_signed_origin(event: dict[str, Any], key: bytes) -> Origin | None:
    """The marker of an event a real account sent, if the bridge signed it for exactly this
    event; else None (a copied or made-up marker)."""
    content = event.get("content")
    origin = read_origin(content)
    if origin is None or not isinstance(content, dict):
        return None
    proof = content[ORIGIN_KEY].get(PROOF_KEY)
    room_id, sender = event.get("room_id"), event.get("sender")
    if not isinstance(proof, str) or not isinstance(room_id, str) or \
            not isinstance(sender, str):
        return None
    if event.get("type") == "m.room.redaction":
        redacts = event.get("redacts") or content.get("redacts")
        if not isinstance(redacts, str):
            return None
        anchor = _anchor(None, redacts)
    else:
        ts = event.get("origin_server_ts")
        if not isinstance(ts, int) or isinstance(ts, bool):
            return None
        anchor = _anchor(ts, None)
    expected = _proof(key, room_id, sender, anchor, origin)
    return origin if hmac.compare_digest(proof, expected) else None
