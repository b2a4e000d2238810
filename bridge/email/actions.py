"""The email network's administrative actions, written once: the bot's ``email`` commands,
the provisioning API's ``/rooms/{room_id}/email/...`` routes and migration plans call these.

Like the core's actions (bridge/admin/actions.py): a refusal raises a
:class:`bridge.core.errors.CommandError` and changes nothing; a success writes its audit entry
in the transaction of its change; doing what is already done reports ``changed=False``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from bridge.admin import audit
from bridge.admin.actions import Outcome
from bridge.admin.audit import Actor
from bridge.core.errors import CommandError, NotFoundError
from bridge.db import store
from bridge.db.store import LinkInfo
from bridge.email import store as email_store
from bridge.email.addresses import normalize_address

if TYPE_CHECKING:
    from bridge.core.hub import Hub

NETWORK = "email"
POLICIES = ("subscribers", "domain", "open")

_ADDRESS = re.compile(r"^[^@\s<>\"]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_DOMAIN = re.compile(r"^[a-z0-9.-]+\.[a-z]{2,}$")


async def room_link(hub: Hub, room_id: str) -> LinkInfo:
    """The room's email link, or a refusal that says how to give the room an address."""
    async with hub.db.sessions() as session:
        links = await store.links_of_room(session, room_id)
    link = next((lk for lk in links if lk.network == NETWORK), None)
    if link is None:
        raise NotFoundError(f"This room has no email address yet. Give it one with "
                            f"`{hub.prefix} link email <name>`.")
    return link


def checked_address(typed: str, room_domain: str) -> str:
    """The subscriber address, lower case; refused if it could not be mailed, or is a room's
    own (a room subscribed to a room would loop)."""
    address = typed.strip().strip("<>").lower()
    try:
        # The address code's validator too: every subscriber can be written to later.
        valid = bool(_ADDRESS.match(address)) and bool(normalize_address(address))
    except ValueError:
        valid = False
    if not valid:
        raise CommandError(f"`{typed}` is not an email address.")
    if address.endswith("@" + room_domain):
        raise CommandError("Room addresses cannot subscribe to rooms (that would loop).")
    return address


async def subscribe(hub: Hub, actor: Actor, room_id: str, typed_address: str,
                    name: str | None, room_domain: str) -> Outcome:
    """Mail the room to an address, which may then write in. An existing subscriber with the
    same name is left as it is; a paused one (after bounces) is made active again."""
    link = await room_link(hub, room_id)
    address = checked_address(typed_address, room_domain)
    name = (name or "").strip() or None
    who = f"{name} <{address}>" if name else address
    async with hub.db.transaction() as session:
        current = await email_store.get_subscriber(session, room_id, address)
        if (current is not None and current.status == "active"
                and (name is None or name == current.display_name)):
            return Outcome(False, f"{who} is already subscribed.")
        new = await email_store.subscribe(session, room_id, address, name, actor.name)
        await audit.record(session, actor, room_id, "subscribe", address=address, name=name,
                           reactivated=current is not None and current.status != "active")
    if new:
        return Outcome(True, f"Subscribed {who}: they receive this room by email and may write "
                             f"to {link.remote_name}.")
    if current is not None and current.status != "active":
        return Outcome(True, f"{who} was already subscribed; their delivery is active again.")
    return Outcome(True, f"{who} was already subscribed; their name is now {name}.")


async def unsubscribe(hub: Hub, actor: Actor, room_id: str, typed_address: str) -> Outcome:
    await room_link(hub, room_id)
    address = typed_address.strip().strip("<>").lower()
    async with hub.db.transaction() as session:
        removed = await email_store.unsubscribe(session, room_id, address)
        if removed:
            await audit.record(session, actor, room_id, "unsubscribe", address=address)
    if not removed:
        raise NotFoundError(f"`{typed_address}` is not subscribed to this room.")
    return Outcome(True, f"Unsubscribed {address}.")


def policy_of(link: LinkInfo) -> tuple[str, str | None]:
    policy = str(link.settings.get("policy", "subscribers"))
    domain = link.settings.get("policy_domain") if policy == "domain" else None
    return policy, (str(domain) if domain else None)


async def set_policy(hub: Hub, actor: Actor, room_id: str, policy: str,
                     domain: str | None) -> Outcome:
    """Who besides subscribers may write to the room's address: nobody (``subscribers``),
    everyone at ``domain``, or anyone (``open``)."""
    link = await room_link(hub, room_id)
    if policy not in POLICIES:
        raise CommandError(f"`{policy}` is not a policy; use one of: "
                           f"{', '.join(POLICIES)}.")
    if policy == "domain":
        if not domain or not _DOMAIN.match(domain.lower()):
            raise CommandError(f"`{domain or ''}` is not a mail domain (like stadt.example); "
                               "the `domain` policy needs one.")
        domain = domain.lower()
    elif domain:
        raise CommandError(f"Only the `domain` policy takes a domain, not `{policy}`.")
    explain = {
        "subscribers": "only subscribers may write to",
        "domain": f"subscribers and everyone at {domain} may write to",
        "open": "anyone may write to",
    }[policy]
    if policy_of(link) == (policy, domain):
        return Outcome(False, f"Already so: {explain} {link.remote_name}.", link)
    changes: dict[str, Any] = {"policy": policy, "policy_domain": domain}
    async with hub.db.transaction() as session:
        await email_store.update_link_settings(session, link.id, changes)
        await audit.record(session, actor, room_id, "policy", policy=policy, domain=domain)
    return Outcome(True, f"From now on {explain} {link.remote_name}; others get a polite "
                         "bounce.", link)
