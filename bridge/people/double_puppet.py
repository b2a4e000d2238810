"""Double puppeting and what follows a person's links on the hot paths.

:class:`People` is a cached view of every identity link, asked on every remote message
(whose account is this puppet?) and every relayed mention (which remote user is this
account?). Links are few (one per person and network) and change rarely: the whole set is
read at once and kept for a while; a change made by this process forgets it at once
(:func:`bridge.people.changes.listen`), one made by another process is seen when it ages out.

:class:`DoublePuppets` decides who sends a remote message into a room: with
``double_puppet.enabled``, a linked person's own Matrix account when it is a member of the
room at delivery time, else the puppet as before. The bridge never joins a real user to a
room. It also retires a linked person's puppet (it leaves the rooms where the account is
a member; its name points to the account) and restores it on unlink, all as outbox
deliveries so that a crash loses none of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from bridge.core.cache import BoundedCache
from bridge.core.origin import proof_key
from bridge.db import people as db
from bridge.db import store
from bridge.db.people import Identity
from bridge.db.queues import NewDelivery
from bridge.people.changes import Change

if TYPE_CHECKING:
    from bridge.core.hub import Hub

log = logging.getLogger("bridge.people")

#: How long the set of links is trusted before it is read again (changes made by another
#: bridge process sharing the database show after at most this long).
LINKS_MAX_AGE_SECONDS = 60.0
#: Memberships of real accounts remembered (room, user); kept current by the room's member
#: events, which the hub sees; what ages out is asked of the homeserver again.
MEMBERS_MAX_ITEMS = 20_000
MEMBERS_MAX_AGE_SECONDS = 3600.0

MATRIX = "matrix"


@dataclass(slots=True)
class Links:
    """Every identity link, by remote identity, by puppet and by Matrix account."""

    by_puppet: dict[str, Identity] = field(default_factory=dict)
    by_account: dict[str, list[Identity]] = field(default_factory=dict)

    def account_of(self, puppet_user_id: str) -> str | None:
        identity = self.by_puppet.get(puppet_user_id)
        return identity.matrix_user_id if identity is not None else None

    def identities(self, matrix_user_id: str, network: str | None = None) -> list[Identity]:
        return [i for i in self.by_account.get(matrix_user_id, [])
                if network is None or i.network == network]


class People:
    """The cached view of identity links (see the module's docstring)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._cache: BoundedCache[str, Links] = BoundedCache(1, LINKS_MAX_AGE_SECONDS)
        #: The links last read: for synchronous questions asked right after :meth:`load`.
        self.current = Links()

    def forget(self) -> None:
        """Links changed: read them again when next asked."""
        self._cache.pop("links")

    async def load(self, session: AsyncSession | None = None) -> Links:
        """Every link (from the cache, or read in ``session`` or a session of its own)."""
        links = self._cache.get("links")
        if links is not None:
            return links
        if session is None:
            async with self.hub.db.sessions() as own:
                identities = await db.all_identities(own)
        else:
            identities = await db.all_identities(session)
        links = Links()
        for identity in identities:
            connector = self.hub.connectors.get(identity.network)
            if connector is not None:
                links.by_puppet[connector.puppet_user_id(identity.remote_id)] = identity
            links.by_account.setdefault(identity.matrix_user_id, []).append(identity)
        self._cache.set("links", links)
        self.current = links
        return links

    async def account_of(self, puppet_user_id: str) -> str | None:
        """The Matrix account a puppet's remote identity is linked to, if any."""
        return (await self.load()).account_of(puppet_user_id)


class DoublePuppets:
    """Who posts a remote message, and the retired puppets (see the module's docstring)."""

    def __init__(self, hub: Hub, people: People) -> None:
        self.hub = hub
        self.people = people
        settings = hub.config.double_puppet
        self.enabled = settings.enabled
        self.token = settings.as_token
        self.key = proof_key(settings.as_token) if settings.enabled else b""
        self.domain = hub.config.homeserver.domain
        self._members: BoundedCache[tuple[str, str], bool] = BoundedCache(
            MEMBERS_MAX_ITEMS, MEMBERS_MAX_AGE_SECONDS)
        # Retired puppets whose name this process has set to point onwards.
        self._renamed: BoundedCache[str, bool] = BoundedCache(MEMBERS_MAX_ITEMS,
                                                              MEMBERS_MAX_AGE_SECONDS)

    # --- membership ------------------------------------------------------------------------

    def is_local(self, user_id: str) -> bool:
        return user_id.rpartition(":")[2] == self.domain and \
            self.hub.network_of(user_id) is None and user_id != self.hub.bot_mxid

    def note_membership(self, room_id: str, user_id: str, membership: Any) -> None:
        """A member event the hub saw (kept current without asking the homeserver)."""
        self._members.set((room_id, user_id), membership == "join")

    async def is_member(self, room_id: str, user_id: str) -> bool:
        """Is ``user_id`` joined to the room (cached; else asked of the homeserver)?"""
        known = self._members.get((room_id, user_id))
        if known is not None:
            return known
        assert self.hub.matrix is not None
        joined = await self.hub.matrix.is_joined(room_id, user_id)
        self._members.set((room_id, user_id), joined)
        return joined

    # --- who posts -------------------------------------------------------------------------

    async def account_for(self, room_id: str, puppet_user_id: str | None) -> str | None:
        """The real account that posts for this puppet in the room now, or None (the
        puppet posts): double puppeting on, the puppet linked to a local account, and that
        account a member of the room."""
        if not self.enabled or not puppet_user_id or \
                self.hub.network_of(puppet_user_id) is None:
            return None
        account = await self.people.account_of(puppet_user_id)
        if account is None or not self.is_local(account):
            return None
        return account if await self.is_member(room_id, account) else None

    async def may_act_for(self, puppet_user_id: str | None, user_id: str) -> bool:
        """May an edit or a redaction of this puppet's remote message be sent as
        ``user_id`` (the sender of the event it changes)?"""
        if not self.enabled or not puppet_user_id or not self.is_local(user_id):
            return False
        return await self.people.account_of(puppet_user_id) == user_id

    # --- retiring puppets ------------------------------------------------------------------

    def retired_name(self, puppet_user_id: str, displayname: str | None) -> str | None:
        """The name a puppet shows: its remote name, pointing to the account it retired for
        (after :meth:`People.load`)."""
        if not self.enabled or displayname is None:
            return displayname
        account = self.people.current.account_of(puppet_user_id)
        if account is None or not self.is_local(account):
            return displayname
        return f"{displayname} (now {account})"

    async def retire(self, identity: Identity) -> None:
        """The person is linked: their puppet leaves the portals where their account is a
        member (checked when each delivery runs) and its name points to the account."""
        if not self.enabled or not self.is_local(identity.matrix_user_id):
            return
        connector = self.hub.connectors.get(identity.network)
        if connector is None:
            return
        puppet = connector.puppet_user_id(identity.remote_id)
        async with self.hub.db.sessions() as session:
            rooms = await store.rooms_linked_to(session, identity.network)
            row = await store.get_puppet(session, puppet)
        deliveries = [self.retire_in(room_id, puppet, identity.matrix_user_id)
                      for room_id in rooms]
        if row is not None and row.displayname:
            deliveries.append(self._profile(puppet, f"{row.displayname} "
                                                    f"(now {identity.matrix_user_id})"))
            self._renamed.set(puppet, True)
        await self.hub.enqueue(deliveries)

    @staticmethod
    def retire_in(room_id: str, puppet: str, account: str) -> NewDelivery:
        """The puppet leaves the room if the account is a member there (a delivery)."""
        return NewDelivery(network=MATRIX, room_id=room_id, kind="puppet_retire",
                           payload={"user": puppet, "account": account})

    async def restore(self, identity: Identity) -> None:
        """The person is unlinked: the puppet gets its own name back (and joins the rooms
        again when it next posts)."""
        if not self.enabled:
            return
        connector = self.hub.connectors.get(identity.network)
        if connector is None:
            return
        puppet = connector.puppet_user_id(identity.remote_id)
        async with self.hub.db.sessions() as session:
            row = await store.get_puppet(session, puppet)
        self._renamed.pop(puppet)
        if row is not None and row.displayname:
            await self.hub.enqueue([self._profile(puppet, row.displayname)])

    async def posted_as(self, room_id: str, puppet: str, account: str) -> None:
        """A message of ``puppet`` was just sent as ``account`` in the room. Retiring is
        queued after the link's commit; should that have been lost (a crash in between, or
        double puppeting switched on after the links were made), this finishes it: the
        puppet leaves this room, and its name points onwards (once per process)."""
        deliveries = []
        if await self.is_member(room_id, puppet):
            deliveries.append(self.retire_in(room_id, puppet, account))
        if self._renamed.get(puppet) is None:
            self._renamed.set(puppet, True)
            async with self.hub.db.sessions() as session:
                row = await store.get_puppet(session, puppet)
            if row is not None and row.displayname:
                deliveries.append(self._profile(puppet, f"{row.displayname} (now {account})"))
        if deliveries:
            await self.hub.enqueue(deliveries)

    @staticmethod
    def _profile(puppet: str, displayname: str) -> NewDelivery:
        return NewDelivery(network=MATRIX, room_id="", kind="profile",
                           payload={"user": puppet, "displayname": displayname},
                           lane=f"matrix-profile:{puppet}")

    async def joined(self, session: AsyncSession, room_id: str, user_id: str,
                     networks: set[str]) -> list[NewDelivery]:
        """A real account joined a portal whose links are of ``networks``: its retired
        puppets of those networks leave it."""
        if not self.enabled or not self.is_local(user_id):
            return []
        links = await self.people.load(session)
        out = []
        for identity in links.identities(user_id):
            connector = self.hub.connectors.get(identity.network)
            if connector is not None and identity.network in networks:
                out.append(self.retire_in(room_id, connector.puppet_user_id(identity.remote_id),
                                          user_id))
        return out

    async def after_change(self, change: Change) -> None:
        """After a committed link change (:func:`on_change`): forget the cached links, then
        retire the newly linked people's puppets and restore the unlinked ones."""
        self.people.forget()
        await self.people.load()
        for identity in change.unlinked:
            await self.restore(identity)
        for identity in change.linked:
            await self.retire(identity)


async def on_change(hub: Hub, change: Change) -> None:
    """The listener of :mod:`bridge.people.changes` (registered by the hub)."""
    await hub.double_puppets.after_change(change)
