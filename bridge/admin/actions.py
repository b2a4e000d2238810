"""The core's administrative actions, written once: bot commands, the provisioning API and
migration plans all call these, so each action has one set of checks and one set of messages.

An action raises :class:`bridge.core.errors.CommandError` (or a subclass that says which HTTP
status the API answers with) and then has changed nothing; otherwise it returns an
:class:`Outcome` and has written its audit entry in the same transaction as its change.
Doing what is already done is not an error: the outcome says ``changed=False``.

A network's own actions (email subscribers, its policy) live in its folder and follow the
same rules (bridge/email/actions.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.admin import audit
from bridge.admin.audit import Actor
from bridge.core.errors import CommandError, ConflictError, NotFoundError, UnavailableError
from bridge.db import queues, store
from bridge.db.models import Portal
from bridge.db.queues import NewDelivery
from bridge.db.store import LinkInfo
from bridge.matrix import encryption
from bridge.matrix.bridge_info import bridge_info_deliveries

if TYPE_CHECKING:
    from bridge.core.connector import Connector
    from bridge.core.hub import Hub
    from bridge.matrix.side import MatrixSide

log = logging.getLogger("bridge.admin")


@dataclass(slots=True)
class Outcome:
    """What an action did: ``message`` is the sentence the person is told."""

    changed: bool
    message: str
    link: LinkInfo | None = None


def link_label(link: LinkInfo) -> str:
    return f"`{link.remote_id}`" + (f" ({link.remote_name})" if link.remote_name else "")


def link_list(links: list[LinkInfo]) -> str:
    return ", ".join(link_label(lk) for lk in links)


def networks_sentence(hub: Hub) -> str:
    from bridge.networks import networks

    if not hub.connectors:
        switches = " or ".join(f"`{network.name}.enabled`" for network in networks())
        return f" No network is enabled on this bridge yet (set {switches} in its config)."
    return " Networks: " + ", ".join(f"`{n}`" for n in sorted(hub.connectors)) + "."


def started_connector(hub: Hub, network: str) -> Connector:
    """The network's connector, if it is enabled and started; else a clear refusal."""
    connector = hub.connectors.get(network)
    if connector is None:
        raise NotFoundError(f"Unknown or disabled network `{network}`.{networks_sentence(hub)}")
    if connector.not_started is not None:
        raise UnavailableError(f"{connector.display_name} is not started: "
                               f"{connector.not_started}")
    return connector


async def require_portal(hub: Hub, room_id: str) -> None:
    """Links belong to rooms the bot is in: anything else is refused with a way forward."""
    async with hub.db.sessions() as session:
        known = await session.scalar(select(Portal.room_id).where(Portal.room_id == room_id))
    if known is None:
        raise NotFoundError(f"The bridge bot is not in the room {room_id}. Invite "
                            f"{hub.bot_mxid} to it first.")


async def link(hub: Hub, actor: Actor, room_id: str, network: str, remote_id: str,
               extra: list[str]) -> Outcome:
    """Link ``room_id`` to the remote conversation ``remote_id`` names (``extra``: what else
    the network needs to find it, a Slack workspace)."""
    connector = started_connector(hub, network)
    await require_portal(hub, room_id)
    async with hub.db.sessions() as session:
        existing = await store.links_of_room(session, room_id)
    mine = [lk for lk in existing if lk.network == network]
    limit = connector.max_links_per_room
    if limit is not None and len(mine) >= limit:
        # Refused before the network is asked: resolving may already act there (Slack: the
        # app joins the channel), and a refused request must change nothing.
        same = links_named(mine, remote_id)
        if len(same) == 1:
            return Outcome(False, f"This room is already linked to {connector.display_name} "
                                  f"`{same[0].remote_id}`.", same[0])
        raise ConflictError(f"This room is already linked to {connector.display_name} "
                            f"{link_list(mine)}; a room can have {limit} {network} link"
                            f"{'' if limit == 1 else 's'}. Unlink it first with "
                            f"`{hub.prefix} unlink {network}`.")
    # Encrypted rooms (encryption.allow, encryption.require): refused before the network is
    # asked, like the limit above.
    encrypted = False
    if hub.matrix is not None:
        side = cast("MatrixSide", hub.matrix)
        refusal = await encryption.link_refusal(side, room_id)
        if refusal is not None:
            raise ConflictError(refusal)
        encrypted = await encryption.is_encrypted(side, room_id)
    target = await connector.resolve_link(hub, room_id, remote_id, extra)
    # Checked with the ID the connector resolved (what is stored, e.g. TEAM:CHANNEL), not
    # with what was typed.
    async with hub.db.sessions() as session:
        taken = await store.link_by_remote(session, network, target.remote_id)
    if taken is not None and taken.room_id == room_id:
        return Outcome(False, f"This room is already linked to {connector.display_name} "
                              f"`{taken.remote_id}`.", taken)
    if taken is not None:
        raise ConflictError(f"{connector.display_name} `{target.remote_id}` is already linked "
                            f"to another room ({taken.room_id}); a remote conversation can be "
                            "linked to one room only. Unlink it there first.")
    created: list[LinkInfo] = []

    async def write(session: AsyncSession) -> None:
        new = await store.add_link(session, room_id=room_id, network=network,
                                   remote_id=target.remote_id, remote_name=target.remote_name,
                                   created_by=actor.name, settings=target.settings)
        # The connector's own state for the link (a catch-up cursor) commits with it or
        # not at all: a half-made link would never be caught up.
        await connector.on_link_written(session, new)
        created.append(new)
        info = bridge_info_deliveries(hub, new, actor.name, target)
        if encrypted:
            names = sorted({connector.display_name, *(
                c.display_name for lk in existing if (c := hub.connectors.get(lk.network)))})
            for delivery in info:
                delivery.payload["content"][encryption.BRIDGE_INFO_KEY] = \
                    encryption.bridge_info_field(names)
            info.append(hub.notice(room_id, encryption.leaves_encryption(names)))
        await queues.enqueue(session, info)
        await audit.record(session, actor, room_id, "link", network=network,
                           remote_id=new.remote_id, remote_name=new.remote_name)

    try:
        await hub.enqueue([], also=write)
    except Exception as exc:
        async with hub.db.sessions() as session:
            raced = await store.link_by_remote(session, network, target.remote_id)
        if isinstance(exc, IntegrityError) and raced is not None:
            if raced.room_id == room_id:
                return Outcome(False, f"This room is already linked to "
                                      f"{connector.display_name} `{raced.remote_id}`.", raced)
            raise ConflictError("Someone linked that conversation a moment ago; send "
                                f"`{hub.prefix} status` to see the links.") from None
        log.exception("linking %s to %s %s failed", room_id, network, target.remote_id)
        raise CommandError(f"Could not link this room to {connector.display_name} "
                           f"`{target.remote_id}`: the bridge's log has the details. Nothing "
                           "was linked; please try again later.") from None
    await connector.on_linked(hub, created[0])
    name = f" ({target.remote_name})" if target.remote_name else ""
    return Outcome(True, f"Linked this room to {connector.display_name} "
                         f"`{target.remote_id}`{name}.", created[0])


def links_named(links: list[LinkInfo], wanted: str) -> list[LinkInfo]:
    """The links ``wanted`` names: by stored remote ID (``T0123:C0456``), by the part after
    the workspace (``C0456``, as Slack shows a channel ID; two workspaces may both have it)
    or else by name (``#general``); case does not matter."""
    wanted = wanted.strip().lower()
    by_id = [lk for lk in links
             if wanted in (lk.remote_id.lower(), lk.remote_id.rsplit(":", 1)[-1].lower())]
    return by_id or [lk for lk in links if (lk.remote_name or "").lower() == wanted]


async def chosen_link(hub: Hub, room_id: str, network: str, remote_id: str | None, *,
                      hint: str, usage: str, purpose: str = "") -> LinkInfo:
    """The room's link of ``network`` that ``remote_id`` names (needed when it has several,
    see :func:`links_named`), or a refusal. ``hint`` says how to see the links, ``usage`` how
    to name one, ``purpose`` what for (" to finish")."""
    async with hub.db.sessions() as session:
        links = [lk for lk in await store.links_of_room(session, room_id)
                 if lk.network == network]
    if not links:
        raise NotFoundError(f"This room has no `{network}` link{purpose}. Send {hint} to see "
                            "its links.")
    connector = hub.connectors.get(network)
    display = connector.display_name if connector else network
    if remote_id is not None:
        named = links_named(links, remote_id)
        if len(named) != 1:
            what = "no" if not named else "more than one"
            error = NotFoundError if not named else CommandError
            raise error(f"This room has {what} {display} link `{remote_id}`; its {display} "
                        f"links: {link_list(links)}. Name one of them as shown.")
        return named[0]
    if len(links) > 1:
        raise CommandError(f"This room has {len(links)} {display} links: {link_list(links)}. "
                           f"Say which one{purpose}: {usage}.")
    return links[0]


async def unlink(hub: Hub, actor: Actor, room_id: str, network: str,
                 remote_id: str | None, *, status_hint: str | None = None,
                 audit_action: str = "unlink", audit_details: dict[str, Any] | None = None,
                 also: list[NewDelivery] | None = None) -> Outcome:
    """End the room's link of ``network`` (the one ``remote_id`` names, needed when the room
    has several). ``status_hint`` is how the person sees the links (a command to send).
    An action that ends in an unlink (Slack's ``finish``) names itself in the audit entry
    (``audit_action``, ``audit_details``) and adds its deliveries (``also``: a notice), all
    in the unlink's transaction."""
    hint = status_hint or f"`{hub.prefix} status`"
    chosen = await chosen_link(hub, room_id, network, remote_id, hint=hint,
                               usage=f"`{hub.prefix} unlink {network} <remote-id>`")
    connector = hub.connectors.get(network)
    display = connector.display_name if connector else network
    removed: list[LinkInfo] = []

    async def write(session: AsyncSession) -> None:
        gone = await store.remove_link(session, room_id, network, chosen.remote_id)
        if gone is not None:
            removed.append(gone)
            await queues.enqueue(session, [*bridge_info_deliveries(hub, gone, actor.name, None),
                                           *(also or [])])
            await audit.record(session, actor, room_id, audit_action, network=network,
                               remote_id=gone.remote_id, remote_name=gone.remote_name,
                               **(audit_details or {}))

    await hub.enqueue([], also=write)
    if not removed:  # someone else unlinked it meanwhile
        raise NotFoundError(f"This room has no {display} link `{chosen.remote_id}` any more. "
                            f"Send {hint} to see its links.")
    if connector is not None:
        await connector.on_unlinked(hub, removed[0])
    return Outcome(True, f"Unlinked this room from {display} `{removed[0].remote_id}`.",
                   removed[0])


async def retry(hub: Hub, actor: Actor, *, item_id: int | None,
                room_id: str | None) -> tuple[int, Outcome]:
    """Put failed deliveries back in the queue: one (``item_id``), a room's, or all.
    Returns how many, and the outcome; an ``item_id`` that is not a failed delivery is
    refused (NotFoundError)."""
    lanes: list[str] = []

    async def put_back(session: AsyncSession) -> None:
        put = await queues.retry_failed(session, item_id=item_id, room_id=room_id)
        lanes.extend(lane for lane, _ in put)
        if put:
            details: dict[str, Any] = {"deliveries": len(put)}
            if item_id is not None:
                details["delivery_id"] = item_id
            # One delivery's retry is its room's business: the room's audit log shows it.
            rooms = {room for _, room in put if room}
            where = room_id or (rooms.pop() if len(rooms) == 1 else None)
            await audit.record(session, actor, where, "retry", **details)

    await hub.enqueue([], also=put_back)
    if item_id is not None:
        if not lanes:
            raise NotFoundError(f"There is no failed delivery `{item_id}`.")
        return 1, Outcome(True, f"Delivery `{item_id}` will be tried again now.")
    where = "" if room_id is None else " of this room"
    if not lanes:
        return 0, Outcome(False, f"No failed deliveries{where} to retry.")
    return len(lanes), Outcome(True, f"{len(lanes)} failed delivery(ies){where} will be "
                                     "tried again now.")
