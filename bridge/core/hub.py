"""The hub: decides what each Matrix event means and who must receive it.

The relay rule: whatever arrives in a portal (from a Matrix user, or from one link's puppets)
goes to every link of that room except the one it came from. A puppet's event names its
link in the origin marker (:mod:`bridge.core.origin`), trusted only when the sender is a
puppet of that link's network (or, double puppeting, a linked person's account with the
bridge's proof for that very event); a connector whose link stands for many participants
(``relays_within_link``, email) also gets its own link's events and skips their author
itself. Events without a marker (older ones, puppets' membership) skip every link of the
sender's network, as the puppet namespace tells it. Either way echo suppression does not
depend on remembering what we sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from bridge.config import Config
from bridge.core import activity
from bridge.core.cache import BoundedCache
from bridge.core.connector import Connector
from bridge.core.errors import TemporaryError
from bridge.core.heartbeat import Heartbeat
from bridge.core.origin import (
    HISTORY_KEY,
    ORIGIN_KEY,
    Origin,
    read_origin,
    read_signed_origin,
)
from bridge.db import queues, store
from bridge.db.engine import Database
from bridge.db.portal_cache import PortalCache
from bridge.db.queues import Delivery, InboxEntry, NewDelivery
from bridge.people import changes as people_changes
from bridge.people.double_puppet import DoublePuppets, People, on_change

log = logging.getLogger("bridge.hub")

MATRIX = "matrix"

Write = Callable[[AsyncSession], Awaitable[None]]
# A message's writes waiting for the next shared transaction (Hub._commit_together), and
# what its caller waits on.
_Waiting = tuple[Callable[[AsyncSession], Awaitable[bool]], "asyncio.Future[bool]"]


class _OutcomeWrites:
    """The writes to make with an outbox delivery's success (``Delivery.with_outcome``),
    open while its connector handles it (:meth:`Hub.writes_with_outcome`)."""

    __slots__ = ("open", "writes")

    def __init__(self, writes: list[Write]) -> None:
        self.writes = writes
        self.open = True


_OUTCOME: ContextVar[_OutcomeWrites | None] = ContextVar("bridge_hub_outcome", default=None)

# State events the remote sides may care about (room renamed, topic changed).
RELAYED_STATE = {"m.room.name", "m.room.topic", "m.room.avatar", "m.room.member"}
# State that names a portal: kept on the portal row for listings and the report.
NAMING_STATE = {"m.room.name": "name", "m.room.canonical_alias": "alias"}
# Message types a person can type a command in.
COMMAND_MSGTYPES = {"m.text", "m.notice"}
# Puppet profiles remembered as written; older or further ones are compared in the database.
PROFILE_CACHE_MAX_ITEMS = 10_000
PROFILE_CACHE_MAX_AGE_SECONDS = 3600.0
# Turns of the event loop a message's writes wait for those of other messages to join them
# in one transaction (Hub._commit_together).
GROUP_COMMIT_TURNS = 3


@dataclass(slots=True)
class RemotePart:
    """One Matrix event a remote message becomes."""

    sender: str
    content: dict[str, Any]
    event_type: str = "m.room.message"
    # The remote message this event stands for (recorded in the message mapping).
    remote_space: str | None = None
    remote_id: str | None = None
    part: int = 0
    timestamp_ms: int | None = None
    # Put the event into the thread of the remote message ``thread_of`` (in
    # ``remote_space``), resolved when the event is sent: the root may itself still be
    # waiting in the outbox when this part is queued.
    thread_of: str | None = None

    def payload(self, network: str) -> dict[str, Any]:
        payload: dict[str, Any] = {"sender": self.sender, "event_type": self.event_type,
                                   "content": self.content}
        if self.timestamp_ms is not None:
            payload["ts"] = self.timestamp_ms
        if self.remote_space is not None and self.remote_id is not None:
            payload["mapping"] = {"network": network, "remote_space": self.remote_space,
                                  "remote_id": self.remote_id, "part": self.part}
        if self.thread_of is not None:
            payload["thread_of"] = {"network": network, "remote_space": self.remote_space,
                                    "remote_id": self.thread_of}
        return payload


class MatrixSide(Protocol):
    """What the hub needs from the Matrix side (bridge.matrix): deliver and report."""

    # The bot's encryption device (bridge/matrix/crypto.py), None unless encryption.allow:
    # the hub asks it only for the delivery that waits for a missing key.
    crypto: Any

    async def deliver(self, delivery: Delivery) -> str | None: ...

    async def upload(self, data: bytes, mimetype: str, filename: str | None,
                     user_id: str | None) -> str: ...

    async def upload_attachment(self, room_id: str, data: bytes, mimetype: str,
                                filename: str | None, user_id: str | None) -> dict[str, Any]: ...

    async def download(self, mxc: str) -> bytes: ...

    async def member_name(self, room_id: str, user_id: str) -> str | None: ...

    async def member_profile(self, room_id: str,
                             user_id: str) -> tuple[str | None, str | None]: ...

    async def may_mention_room(self, room_id: str, user_id: str) -> bool: ...

    async def is_joined(self, room_id: str, user_id: str) -> bool: ...

    async def set_profile(self, user_id: str, displayname: str | None,
                          avatar_mxc: str | None) -> None: ...

    async def room_name(self, room_id: str) -> str | None: ...

    async def canonical_alias(self, room_id: str) -> str | None: ...

    async def note_state(self, event: dict[str, Any]) -> None: ...


class Hub:
    def __init__(self, config: Config, db: Database, connectors: list[Connector]) -> None:
        self.config = config
        self.db = db
        # The rooms' portals and links, as routing and every relay delivery ask for them.
        self.portals = PortalCache(db)
        self.connectors: dict[str, Connector] = {c.network: c for c in connectors}
        self.bot_mxid = config.bot_mxid
        self.prefix = config.bridge.command_prefix
        self.matrix: MatrixSide | None = None
        # The clock of what expires (one-time codes): tests move it instead of waiting.
        self.clock: Callable[[], float] = time.time
        # Set by the app: wakes the outbox worker after something was enqueued.
        # (Given the lanes it queued in, if known: the outbox need not wake for busy ones.)
        self.wake_outbox: Callable[..., None] = lambda lanes=None: None
        # Set by the app (the outbox's claim_queued and start_claimed): a transaction that
        # queued deliveries also claims the due ones, which start after it commits, instead
        # of the outbox's claim loop looking for them and claiming them in a transaction of
        # its own. Unset (bare tests), the outbox is woken as before.
        self.claim_outbox: Callable[[AsyncSession], Awaitable[list[Delivery]]] | None = None
        self.start_outbox: Callable[[list[Delivery], set[str]], Awaitable[None]] | None = None
        # Set by the app: this process's liveness, leases, and whether remote events are
        # held for order across processes (bridge/core/heartbeat.py). None in bare tests.
        self.heartbeat: Heartbeat | None = None
        # Puppet profiles last written (user ID -> name, avatar source): a cache that saves a
        # write per remote message; the database stays the truth, so an entry that aged out
        # or was pushed out by newer ones costs one write that changes nothing.
        self._profiles: BoundedCache[str, tuple[str | None, str | None]] = BoundedCache(
            PROFILE_CACHE_MAX_ITEMS, PROFILE_CACHE_MAX_AGE_SECONDS)
        # Identity links (cached) and double puppeting: who posts a linked person's messages.
        self.people = People(self)
        self.double_puppets = DoublePuppets(self, self.people)
        # Remote messages' writes waiting for their shared transaction, and its task.
        self._to_commit: list[_Waiting] = []
        self._committer: asyncio.Task[None] | None = None
        people_changes.listen(on_change)

    # --- who is who ---------------------------------------------------------------------

    def network_of(self, user_id: str) -> str | None:
        """The network whose puppet this user is, or None for a real Matrix user."""
        owners = [c for c in self.connectors.values() if c.owns_user(user_id)]
        if not owners:
            return None
        # Longest prefix wins, should one network's prefix start with another's.
        return max(owners, key=lambda c: len(c.puppet_prefix)).network

    def is_admin(self, user_id: str) -> bool:
        return self.config.bridge.is_admin(user_id)

    def is_local(self, user_id: str) -> bool:
        """A user of the bridge's own homeserver (not a puppet, not the bot): who may use
        the bot's self-service commands in a direct chat."""
        server = user_id.partition(":")[2]
        return (user_id.startswith("@") and server == self.config.homeserver.domain
                and user_id != self.bot_mxid and self.network_of(user_id) is None)

    # --- inbound: one Matrix event from the inbox ---------------------------------------

    async def route_batch(
        self, session: AsyncSession, batch: list[InboxEntry]
    ) -> tuple[list[NewDelivery], list[tuple[InboxEntry, str]]]:
        """Route a batch of events in order; returns the deliveries and the events that
        could not be handled (with why), which are recorded and skipped."""
        portals, links = await self.portals.portals_and_links({e.room_id for e in batch},
                                                              session)
        deliveries: list[NewDelivery] = []
        failed: list[tuple[InboxEntry, str]] = []
        for entry in batch:
            try:
                deliveries += await self.route(session, entry, portals, links)
            except Exception as exc:
                # A routing bug must not block the room forever: record it and go on.
                log.exception("could not handle event %s in %s", entry.event.get("event_id"),
                              entry.room_id)
                failed.append((entry, repr(exc)))
        return deliveries, failed

    async def route(self, session: AsyncSession, entry: InboxEntry,
                    portals: dict[str, store.PortalInfo],
                    links: dict[str, list[store.LinkInfo]]) -> list[NewDelivery]:
        """What one event means. ``portals``/``links`` are the batch's view of the rooms and
        are kept current when an event changes them."""
        event = entry.event
        room_id = entry.room_id
        sender = event.get("sender", "")
        etype = event.get("type", "")
        state_key = event.get("state_key")
        raw_content = event.get("content")
        content: dict[str, Any] = raw_content if isinstance(raw_content, dict) else {}
        if state_key is not None and self.matrix is not None:
            await self.matrix.note_state(event)
        if etype == "m.room.member" and isinstance(state_key, str):
            self.double_puppets.note_membership(room_id, state_key, content.get("membership"))
        if state_key == "" and etype in NAMING_STATE:
            # Before the bot's own events are dropped: a plan's rooms are named by the bot.
            await self._note_naming(session, room_id, etype, content)

        if etype == "m.room.member" and state_key == self.bot_mxid:
            routed = await self._bot_membership(session, room_id, sender, content)
            if content.get("membership") in ("leave", "ban"):
                portals.pop(room_id, None)
                links[room_id] = []
            return routed
        if sender == self.bot_mxid:
            return []  # the bot's own notices and state are never relayed

        # A linked person's remote message, sent as their own account (double puppeting):
        # its origin marker is trusted only with the bridge's proof for exactly this event.
        signed = read_signed_origin(event, self.double_puppets.key) \
            if self.double_puppets.enabled and ORIGIN_KEY in content and \
            self.network_of(sender) is None else None
        portal = portals.get(room_id)
        if etype == "m.room.encrypted" and portal is not None:
            # Not decrypted on arrival (bridge/matrix/crypto.py): never relayed as it is.
            crypto = self.matrix.crypto if self.matrix is not None else None
            return [crypto.waiting_delivery(room_id, event)] if crypto is not None else []
        if etype == "m.room.message" and portal is not None and signed is None:
            command = self._command_text(content, portal.is_direct, sender)
            if command is not None:
                return [self._matrix(room_id, "command", {
                    "sender": sender, "command": command, "event_id": event.get("event_id"),
                    "is_direct": portal.is_direct,
                })]

        if etype == "m.room.encryption" and state_key == "" and links.get(room_id):
            # A linked room turned encryption on (bridge/matrix/encryption.py tells it).
            before = (event.get("unsigned") or {}).get("prev_content") or {}
            if not before.get("algorithm"):
                return [self._matrix(room_id, "encryption_on", {
                    "names": sorted({c.display_name for lk in links[room_id]
                                     if (c := self.connectors.get(lk.network))}),
                    "links": [[lk.network, lk.remote_id] for lk in links[room_id]]})]
        if state_key is not None and etype not in RELAYED_STATE:
            return []
        room_links = links.get(room_id) or []
        if not room_links:
            return []
        sender_network = signed.network if signed is not None else self.network_of(sender)
        deliveries = []
        if etype == "m.room.member" and content.get("membership") == "join" and \
                isinstance(state_key, str) and sender_network is None:
            # A person joined: their retired puppets leave (if they are here).
            deliveries += await self.double_puppets.joined(
                session, room_id, state_key, {link.network for link in room_links})
        if signed is None and sender_network is None and \
                activity.is_new_message(etype, content):
            # Written on Matrix (commands and the bot's notices went their own way above).
            # (Written once for the whole batch: route_batch flushes.)
            activity.note_message(session, room_id=room_id, side=activity.MATRIX_SIDE,
                                  user_id=sender, timestamp_ms=event.get("origin_server_ts"))
        if sender_network is not None and content.get(HISTORY_KEY) is True:
            # Imported history (a puppet's, or a double puppet's with the bridge's
            # proof): in the room, relayed to no link.
            return deliveries
        origin = signed or self._puppet_origin(content, sender_network)
        for link in self._relay_links(room_links, origin, sender_network):
            payload: dict[str, Any] = {"link_id": link.id, "event": event}
            if origin is not None:
                payload["origin"] = origin.marker()  # checked: connectors may rely on it
            deliveries.append(NewDelivery(network=link.network, room_id=room_id,
                                          kind="relay", payload=payload))
        return deliveries

    @staticmethod
    def _puppet_origin(content: dict[str, Any], sender_network: str | None) -> Origin | None:
        """The origin marker of a puppet's event, trusted for its own network's links only."""
        origin = read_origin(content) if sender_network is not None else None
        if origin is not None and origin.network != sender_network:
            return None  # a puppet cannot speak for another network's link
        return origin

    def _relay_links(self, room_links: list[store.LinkInfo], origin: Origin | None,
                     sender_network: str | None) -> list[store.LinkInfo]:
        """The relay rule: the links an event goes to (every one but where it came from)."""
        targets = []
        for link in room_links:
            connector = self.connectors.get(link.network)
            if connector is None:
                continue
            if origin is not None:
                if link.id == origin.link_id and not connector.relays_within_link:
                    continue  # the message came from there
            elif link.network == sender_network:
                continue  # unmarked: all we know is the sender's network
            targets.append(link)
        return targets

    def needs_nothing(self, event: dict[str, Any],
                      links: dict[str, list[store.LinkInfo]]) -> bool:
        """Would :meth:`route` do nothing at all with this event, whatever came before it?

        True only for a message-like event (no state, not encrypted) of the bot or of a
        puppet that the relay rule sends to no link: above all the bridge's own puppet's
        message coming back from the homeserver into a room with one link, its own. Such an
        event needs neither the inbox nor any other write (``links``: the rooms' links as
        :func:`store.portals_and_links` reads them). Real users' events never qualify:
        they may be commands, and they are counted for the report."""
        sender = event.get("sender")
        if "state_key" in event or event.get("type") == "m.room.encrypted" or \
                not isinstance(sender, str):
            return False
        if sender == self.bot_mxid:
            return True  # the bot's own notices are never relayed
        sender_network = self.network_of(sender)
        if sender_network is None:
            return False
        raw_content = event.get("content")
        content = raw_content if isinstance(raw_content, dict) else {}
        if content.get(HISTORY_KEY) is True:
            return True  # imported history: in the room, relayed to no link
        origin = self._puppet_origin(content, sender_network)
        return not self._relay_links(links.get(str(event.get("room_id"))) or [], origin,
                                     sender_network)

    @staticmethod
    async def _note_naming(session: AsyncSession, room_id: str, etype: str,
                           content: dict[str, Any]) -> None:
        value = content.get("name" if etype == "m.room.name" else "alias")
        # An emptied name or a removed alias is no name: the portal forgets it.
        await store.set_portal_naming(session, room_id, NAMING_STATE[etype],
                                      value if isinstance(value, str) and value else None)

    def _command_text(self, content: dict[str, Any], is_direct: bool, sender: str) -> str | None:
        if content.get("msgtype") not in COMMAND_MSGTYPES or self.network_of(sender):
            return None
        body = content.get("body")
        if not isinstance(body, str):
            return None
        body = body.strip()
        if body == self.prefix or body.startswith(self.prefix + " "):
            return body[len(self.prefix):].strip()
        if is_direct:
            return body
        return None

    async def _bot_membership(self, session: AsyncSession, room_id: str, sender: str,
                              content: dict[str, Any]) -> list[NewDelivery]:
        membership = content.get("membership")
        if membership == "invite":
            if self.is_admin(sender):
                return [self._matrix(room_id, "join", {
                    "inviter": sender, "is_direct": bool(content.get("is_direct")),
                })]
            if self.is_local(sender) and content.get("is_direct"):
                # Anyone of our homeserver may talk to the bot in a direct chat (their own
                # identity links: `me`); the Matrix side checks that it is one.
                return [self._matrix(room_id, "join", {
                    "inviter": sender, "is_direct": True, "direct_only": True,
                })]
            if self.is_local(sender):
                reason = (f"{sender} may not invite the bot into a room: only the bridge's "
                          "admins (bridge.admins in its config) can. Start a direct chat "
                          "with the bot to link your own accounts.")
            else:
                reason = (f"{sender} may not use this bridge: only the bridge's admins "
                          "(bridge.admins in its config) and, in a direct chat, users of "
                          f"{self.config.homeserver.domain} can invite the bot.")
            return [self._matrix(room_id, "reject_invite", {"reason": reason})]
        if membership in ("leave", "ban"):
            if sender != self.bot_mxid:
                log.info("bot removed from %s by %s; forgetting its links", room_id, sender)
            await store.forget_portal(session, room_id)
        return []

    @staticmethod
    def _matrix(room_id: str, kind: str, payload: dict[str, Any]) -> NewDelivery:
        return NewDelivery(network=MATRIX, room_id=room_id, kind=kind, payload=payload)

    # --- outbound: one outbox item -------------------------------------------------------

    async def deliver(self, delivery: Delivery) -> str | None:
        if delivery.network == MATRIX:
            assert self.matrix is not None
            return await self.matrix.deliver(delivery)
        connector = self.connectors.get(delivery.network)
        if connector is None:
            # The network was switched off in the config: keep the item for when it returns.
            raise TemporaryError(f"network {delivery.network!r} is not enabled")
        if connector.not_started is not None:
            # Kept for when the network starts (registration fixed, bridge restarted).
            raise TemporaryError(f"{connector.display_name} is not started: "
                                 f"{connector.not_started}")
        link_id = delivery.payload.get("link_id")
        link = None
        if isinstance(link_id, int):
            link = await self.portals.link_in_room(delivery.room_id, link_id)
        return await connector.deliver(self, delivery, link)

    async def on_delivery_failed(self, delivery: Delivery, error: str, hint: str | None) -> None:
        """Tell the room, once per failed item, unless the failed item was such a notice."""
        if not delivery.room_id or (
                delivery.network == MATRIX and delivery.kind in ("notice", "reject_invite",
                                                                 "join")):
            return
        where = (self.connectors[delivery.network].display_name
                 if delivery.network in self.connectors else "Matrix")
        text = f"⚠️ Could not deliver to {where}: {error}"
        if hint:
            text += f"\n{hint}"
        text += (f"\nAn admin can send `{self.prefix} retry {delivery.id}` to try again "
                 f"(`{self.prefix} failed` lists what failed).")
        await self.enqueue([self.notice(delivery.room_id, text)])

    # --- inbound from a remote network (called by connectors) ----------------------------

    async def upload_media(self, data: bytes, mimetype: str, filename: str | None = None,
                           user_id: str | None = None) -> str:
        """Upload to the homeserver's media repository (as ``user_id``); returns the mxc URI.
        Not for a message's attachment: :meth:`upload_attachment` (encrypted rooms).

        Called before the message that uses it is queued: an upload is harmless to repeat.
        """
        assert self.matrix is not None
        return await self.matrix.upload(data, mimetype, filename, user_id)

    async def upload_attachment(self, room_id: str, data: bytes, mimetype: str,
                                filename: str | None = None,
                                user_id: str | None = None) -> dict[str, Any]:
        """Upload a file that a message for ``room_id`` will carry (as ``user_id``); returns
        the content keys that name it, to merge into the message's content: ``{"url": mxc}``,
        or in an encrypted room ``{"file": {...}}`` (an encrypted attachment: the file is
        encrypted before it is uploaded, so no plain copy reaches the homeserver).

        For every attachment of a message; :meth:`upload_media` is for what is not a
        room's (avatars). Called before the message is queued: harmless to repeat."""
        assert self.matrix is not None
        return await self.matrix.upload_attachment(room_id, data, mimetype, filename, user_id)

    async def download_media(self, mxc: str) -> bytes:
        """Read a file of the room (through the authenticated media API)."""
        assert self.matrix is not None
        return await self.matrix.download(mxc)

    async def member_name(self, room_id: str, user_id: str) -> str | None:
        """The display name ``user_id`` has in the room, if any."""
        assert self.matrix is not None
        return await self.matrix.member_name(room_id, user_id)

    async def member_profile(self, room_id: str, user_id: str) -> tuple[str | None, str | None]:
        """(display name, avatar mxc) ``user_id`` has in the room."""
        assert self.matrix is not None
        return await self.matrix.member_profile(room_id, user_id)

    async def may_mention_room(self, room_id: str, user_id: str) -> bool:
        """Do the room's power levels let ``user_id`` notify everyone (@room)?"""
        assert self.matrix is not None
        return await self.matrix.may_mention_room(room_id, user_id)

    async def apply_profile(self, user_id: str, displayname: str | None,
                            avatar_mxc: str | None) -> None:
        """Set a puppet's profile on the homeserver right away (the queued profile update
        repeats it harmlessly); homeserver trouble is a :class:`TemporaryError`."""
        assert self.matrix is not None
        if self.double_puppets.enabled:
            await self.people.load()
            displayname = self.double_puppets.retired_name(user_id, displayname)
        await self.matrix.set_profile(user_id, displayname, avatar_mxc)

    async def room_name(self, room_id: str) -> str | None:
        assert self.matrix is not None
        return await self.matrix.room_name(room_id)

    async def ensure_puppet(self, network: str, remote_id: str, displayname: str | None,
                            avatar_source: str | None = None,
                            avatar_mxc: str | None = None) -> str:
        """The puppet's user ID; a changed name or avatar is queued to the homeserver."""
        user_id = self.connectors[network].puppet_user_id(remote_id)
        if self.puppet_known(user_id, displayname, avatar_source):
            return user_id  # known and unchanged: no database write
        async with self.db.transaction() as session:
            await self.write_puppet(session, network, remote_id, displayname, avatar_source,
                                    avatar_mxc)
        self.remember_puppet(user_id, displayname, avatar_source)
        self.wake_outbox()
        return user_id

    def puppet_known(self, user_id: str, displayname: str | None,
                     avatar_source: str | None) -> bool:
        """Was this profile already written (by this process)? Then writing can be skipped."""
        return self._profiles.get(user_id) == (displayname, avatar_source)

    def remember_puppet(self, user_id: str, displayname: str | None,
                        avatar_source: str | None) -> None:
        """Call after the transaction that wrote the profile committed."""
        self._profiles.set(user_id, (displayname, avatar_source))

    async def write_puppet(self, session: AsyncSession, network: str, remote_id: str,
                           displayname: str | None, avatar_source: str | None = None,
                           avatar_mxc: str | None = None) -> str:
        """:meth:`ensure_puppet` inside the caller's transaction (wake the outbox and
        :meth:`remember_puppet` after it commits)."""
        user_id = self.connectors[network].puppet_user_id(remote_id)
        name_changed, avatar_changed = await store.upsert_puppet(
            session, user_id=user_id, network=network, remote_id=remote_id,
            displayname=displayname, avatar_source=avatar_source, avatar_mxc=avatar_mxc)
        if name_changed or avatar_changed:
            payload: dict[str, Any] = {"user": user_id}
            if name_changed and displayname is not None:
                if self.double_puppets.enabled:  # a retired puppet's name points onwards
                    await self.people.load(session)
                    displayname = self.double_puppets.retired_name(user_id, displayname)
                payload["displayname"] = displayname
            if avatar_changed and avatar_mxc:
                payload["avatar_mxc"] = avatar_mxc
            # Profile changes are per user, not per room: their own lane keeps them ordered.
            await queues.enqueue(session, [NewDelivery(
                network=MATRIX, room_id="", kind="profile", payload=payload,
                lane=f"matrix-profile:{user_id}")])
        return user_id

    async def post_to_room(
        self,
        *,
        network: str,
        dedup_key: str | None,
        room_id: str,
        sender: str,
        content: dict[str, Any],
        event_type: str = "m.room.message",
        remote_space: str | None = None,
        remote_id: str | None = None,
        part: int = 0,
        timestamp_ms: int | None = None,
        origin: Origin | None = None,
    ) -> bool:
        """Queue one remote message for the room, exactly once per ``dedup_key``.

        Returns False (and queues nothing) when the key was seen before: the remote side
        re-sent something it already delivered. With ``remote_space``/``remote_id`` the
        resulting Matrix event is recorded in the message mapping.
        """
        return await self.post_parts(
            network=network, dedup_key=dedup_key, room_id=room_id, origin=origin,
            parts=[RemotePart(sender=sender, content=content, event_type=event_type,
                              remote_space=remote_space, remote_id=remote_id, part=part,
                              timestamp_ms=timestamp_ms)])

    @staticmethod
    @contextmanager
    def writes_with_outcome(delivery: Delivery) -> Iterator[None]:
        """While a connector handles the outbox ``delivery`` (a remote event stored for
        handling, such as a Slack event), :meth:`post_parts` adds its writes to the
        transaction that records the delivery's success instead of committing its own: one
        commit less per message, and the item is done exactly when its Matrix events are
        queued (a failed attempt queues nothing; the retry does it). Writes asked for after
        the handling returned (a task it started) commit on their own, as usual."""
        holder = _OutcomeWrites(delivery.with_outcome) \
            if delivery.with_outcome is not None else None
        token = _OUTCOME.set(holder)
        try:
            yield
        finally:
            if holder is not None:
                holder.open = False
            _OUTCOME.reset(token)

    async def post_parts(self, *, network: str, dedup_key: str | None, room_id: str,
                         parts: list[RemotePart], origin: Origin | None = None,
                         also: Write | None = None) -> bool:
        """Queue the Matrix events one remote message becomes (text, then each file), all
        or none, exactly once per ``dedup_key``; ``also`` runs the connector's own writes
        in the same transaction (only when the message is new).

        ``origin`` is the link the message came in through: every part carries it (the
        relay rule sends the events to every other link); give it whenever it is known.

        Returns once the writes are committed (in one transaction with those of the other
        messages posted at the same moment, see :meth:`_commit_together`); False when the
        key was seen before. Within :meth:`writes_with_outcome` the writes join the
        delivery's success and this returns True: the key is checked then (a repeat queues
        nothing)."""
        if origin is not None:
            parts = [replace(p, content=origin.mark(p.content)) for p in parts]
        deliveries = [self._matrix(room_id, "message", p.payload(network)) for p in parts]

        async def write(session: AsyncSession) -> bool:
            if dedup_key is not None and not await store.claim_inbound_key(
                    session, network, dedup_key):
                return False
            if also is not None:
                await also(session)
            first = parts[0] if parts else None
            if first is not None and activity.is_new_message(first.event_type, first.content):
                # One message however many events it becomes, on the day it was written
                # (written at the commit, with the transaction's other messages, in one go).
                activity.note_message(session, room_id=room_id, side=network,
                                      user_id=first.sender, timestamp_ms=first.timestamp_ms)
            await queues.enqueue(session, deliveries)
            return True

        outcome = _OUTCOME.get()
        if outcome is not None and outcome.open:
            async def with_success(session: AsyncSession) -> None:
                await write(session)  # (the outbox wakes for its lanes after the commit)

            outcome.writes.append(with_success)
            return True
        return await self._commit_together(write)

    async def _commit_together(self, write: Callable[[AsyncSession], Awaitable[bool]]) -> bool:
        """Make ``write`` in a transaction shared with the writes of other messages that
        are ready at the same moment (mails arriving over several SMTP connections at once);
        returns its result once that transaction has committed. One transaction, one claim
        of the outbox and one commit for all of them instead of one each; a write that fails
        has the others made without it (see :meth:`_commit_batch`)."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._to_commit.append((write, waiter))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_waiting(),
                                                  name="hub-group-commit")
        return await waiter

    async def finish_commits(self) -> None:
        """Until the messages waiting for a shared transaction are written or refused (when
        the bridge stops: after the connectors, before the database closes)."""
        if self._committer is not None:
            await self._committer

    async def _commit_waiting(self) -> None:
        try:
            while self._to_commit:
                # The writes of other messages that are being handled right now join: a few
                # turns of the event loop, no timer (alone, a message waits for nothing).
                for _ in range(GROUP_COMMIT_TURNS):
                    await asyncio.sleep(0)
                batch = [(w, f) for w, f in self._to_commit if not f.done()]  # (not cancelled)
                self._to_commit = []
                if not batch:
                    continue
                try:
                    await self._commit_batch(batch)
                finally:
                    for _, waiter in batch:  # (only if this task itself was cancelled)
                        if not waiter.done():
                            waiter.cancel()
        finally:
            self._committer = None
            for _, waiter in self._to_commit:  # (likewise)
                waiter.cancel()
            self._to_commit = []

    async def _commit_batch(self, batch: list[_Waiting]) -> None:
        """One transaction for the batch's writes; if it fails, each write in one of its
        own, so that one message's error (its data, a bug) fails only that message."""
        results: list[bool] = []
        error: Exception | None = None
        try:
            async with self.db.transaction() as session:
                results = [await write(session) for write, _ in batch]
                claimed = await self._claim_queued(session)
        except Exception as exc:
            if len(batch) > 1:
                log.debug("a transaction of %d messages failed (%r); one at a time",
                          len(batch), exc)
                for waiting in batch:
                    if not waiting[1].done():  # (a caller gone meanwhile: nothing to keep)
                        await self._commit_batch([waiting])
                return
            error = exc
        else:
            try:
                if any(results):  # (a batch of repeats queued nothing: no outbox to wake)
                    await self._start_queued(claimed, queues.enqueued_lanes(session))
            except Exception as exc:  # committed already: never made again, but told
                error = exc
        for index, (_, waiter) in enumerate(batch):
            if waiter.done():  # its caller was cancelled meanwhile (what it wrote stays)
                continue
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(results[index])

    # --- helpers for connectors and the bot ----------------------------------------------

    def notice(self, room_id: str, text: str, html: str | None = None) -> NewDelivery:
        return self._matrix(room_id, "notice", {"text": text, "html": html})

    async def enqueue(self, deliveries: list[NewDelivery],
                      also: Callable[[AsyncSession], Awaitable[None]] | None = None) -> None:
        """Store deliveries durably (with optional other writes in the same transaction)."""
        async with self.db.transaction() as session:
            if also is not None:
                await also(session)
            await queues.enqueue(session, deliveries)
            claimed = await self._claim_queued(session)
        await self._start_queued(claimed, queues.enqueued_lanes(session))

    async def _claim_queued(self, session: AsyncSession) -> list[Delivery]:
        """The due deliveries, claimed in the transaction that queued them (see
        ``claim_outbox``); none without an outbox."""
        return await self.claim_outbox(session) if self.claim_outbox is not None else []

    async def _start_queued(self, claimed: list[Delivery], lanes: set[str]) -> None:
        """After the commit: start what was claimed; the outbox wakes for the rest."""
        if self.start_outbox is not None:
            await self.start_outbox(claimed, lanes)
        else:
            self.wake_outbox(lanes or None)
