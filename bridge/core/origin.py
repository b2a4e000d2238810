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
Matrix user who copies it into a message cannot stop that message from being relayed.
"""

from __future__ import annotations

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
