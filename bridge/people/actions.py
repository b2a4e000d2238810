"""Identity links, written once: ``!bridge people …``, ``me …``, the provisioning API's
``/people`` routes and a migration plan's ``people:`` section all call these, so each has one
set of checks, one set of messages and one audit entry.

As in :mod:`bridge.admin.actions`: an action raises
:class:`bridge.core.errors.CommandError` (or a subclass naming the API's status) and then has
changed nothing; otherwise it wrote its change and its audit entries (``people-link``,
``people-unlink``) in ONE transaction and returns an :class:`Outcome`, whose ``changed`` is
False when things were so already. After the commit, :func:`bridge.people.changes.after_change`
tells double puppeting what changed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.admin import audit
from bridge.admin.audit import Actor
from bridge.core.errors import CommandError, ConflictError, NotFoundError, UnavailableError
from bridge.db import people as db
from bridge.db.people import Identity
from bridge.people.changes import Change, after_change

if TYPE_CHECKING:
    from bridge.core.connector import Connector, PersonRef
    from bridge.core.hub import Hub

log = logging.getLogger("bridge.people")

#: A Matrix user ID: ``@`` localpart ``:`` server name (a host, optionally with a port).
#: Historical localparts may hold any printable ASCII but ``:``; a server name is a DNS
#: name, an IPv4 address or an IPv6 literal in brackets.
MATRIX_USER_ID = re.compile(
    r"@[!-9;-~]+:(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")

#: proven_by: a bridge admin (a bot command, the API, a plan) or the person themselves with
#: a one-time code (``me confirm``).
PROVEN_BY = ("admin", "self")


@dataclass(slots=True)
class Outcome:
    """What an action did: ``message`` is the sentence the person is told; ``identities``:
    after a link, the person's links as they are now; after an unlink, the links removed."""

    changed: bool
    message: str
    identities: list[Identity] = field(default_factory=list)


# --- checks --------------------------------------------------------------------------------


def check_user_id(hub: Hub, matrix_user_id: str) -> str:
    """The Matrix user ID, if it can be a person's account; else a clear refusal."""
    user_id = matrix_user_id.strip()
    if not MATRIX_USER_ID.fullmatch(user_id) or len(user_id) > 255:
        raise CommandError(f"`{matrix_user_id}` is not a Matrix user ID (like "
                           "@anna.schmidt:stadt.example).")
    if user_id == hub.bot_mxid:
        raise CommandError(f"{user_id} is the bridge bot; link people to their own Matrix "
                           "account.")
    network = hub.network_of(user_id)
    if network is not None:
        display = hub.connectors[network].display_name
        raise CommandError(f"{user_id} is a {display} puppet of the bridge, not a person's "
                           "Matrix account.")
    return user_id


async def require_user(hub: Hub, user_id: str) -> None:
    """Links are made to accounts the homeserver knows (a typo would link nobody)."""
    from bridge.admin.rooms import user_exists

    if not await user_exists(hub, user_id):
        raise NotFoundError(f"The homeserver knows no user {user_id}; check how it is "
                            "spelt (like @anna.schmidt:stadt.example).")


def people_connector(hub: Hub, network: str, *, started: bool = True) -> Connector:
    """The connector whose identities can be linked; a clear refusal otherwise."""
    connector = hub.connectors.get(network)
    linkable = sorted(n for n, c in hub.connectors.items() if c.links_people)
    choices = (" Networks whose people can be linked: "
               + ", ".join(f"`{n}`" for n in linkable) + ".") if linkable else \
        " No enabled network's people can be linked on this bridge."
    if connector is None:
        raise NotFoundError(f"Unknown or disabled network `{network}`.{choices}")
    if not connector.links_people:
        raise CommandError(f"{connector.display_name} identities cannot be linked to Matrix "
                           f"accounts.{choices}")
    if started and connector.not_started is not None:
        raise UnavailableError(f"{connector.display_name} is not started: "
                               f"{connector.not_started}")
    return connector


def describe(identity: Identity, hub: Hub | None = None) -> str:
    """``Slack `rathaus:U0ANNA``` as answers show an identity."""
    connector = hub.connectors.get(identity.network) if hub is not None else None
    display = connector.display_name if connector is not None else identity.network
    return f"{display} `{identity.label}`"


# --- reading -------------------------------------------------------------------------------


async def people(hub: Hub, matrix_user_id: str | None = None) -> list[Identity]:
    """The links of one person (a valid Matrix user ID; none is an empty list), or of
    everyone, ordered by person, network and label."""
    async with hub.db.sessions() as session:
        if matrix_user_id is None:
            return await db.all_identities(session)
        return await db.identities_of(session, check_user_id(hub, matrix_user_id))


# --- linking -------------------------------------------------------------------------------


async def resolve(hub: Hub, network: str, words: list[str]) -> tuple[Connector, PersonRef]:
    """The remote identity ``words`` name on ``network``, checked with the network."""
    connector = people_connector(hub, network)
    if not words or not any(word.strip() for word in words):
        raise CommandError(f"Name the {connector.display_name} identity to link.")
    return connector, await connector.resolve_person(hub, words)


async def lookup(hub: Hub, network: str,
                 words: list[str]) -> tuple[PersonRef, Identity | None]:
    """Who the words name on the network, and whose account it is linked to (if anyone's),
    without linking it: what ``bridge plan check`` asks."""
    _, person = await resolve(hub, network, words)
    async with hub.db.sessions() as session:
        return person, await db.identity_for(session, network, person.remote_id)


def _conflict(hub: Hub, identity: Identity, wanted_user: str) -> ConflictError:
    return ConflictError(f"{describe(identity, hub)} is already linked to "
                         f"{identity.matrix_user_id}; an identity can be linked to one Matrix "
                         f"account only. Unlink it first to link it to {wanted_user}.")


async def link(hub: Hub, actor: Actor, matrix_user_id: str, network: str, words: list[str],
               proven_by: str = "admin") -> Outcome:
    """Link the remote identity ``words`` name (Slack ``<workspace>:<user id>``, an email
    address; what the network's ``resolve_person`` understands) to ``matrix_user_id``."""
    return await link_many(hub, actor, matrix_user_id, [(network, words)], proven_by=proven_by)


async def link_many(hub: Hub, actor: Actor, matrix_user_id: str,
                    wanted: Iterable[tuple[str, list[str]]], *, proven_by: str = "admin",
                    replace: bool = False) -> Outcome:
    """Make sure every identity of ``wanted`` (network, words) is linked to
    ``matrix_user_id``; with ``replace``, also remove the person's other links. All or
    nothing: every identity is resolved and checked before anything is written."""
    if proven_by not in PROVEN_BY:
        raise CommandError(f"proven_by must be one of {', '.join(PROVEN_BY)}.")
    user_id = check_user_id(hub, matrix_user_id)
    await require_user(hub, user_id)
    resolved: list[tuple[str, PersonRef]] = []
    for network, words in wanted:
        _, person = await resolve(hub, network, words)
        if (network, person.remote_id) not in {(n, p.remote_id) for n, p in resolved}:
            resolved.append((network, person))
    async with hub.db.sessions() as session:
        current = await db.identities_of(session, user_id)
        for network, person in resolved:
            taken = await db.identity_for(session, network, person.remote_id)
            if taken is not None and taken.matrix_user_id != user_id:
                raise _conflict(hub, taken, user_id)
    have = {(i.network, i.remote_id) for i in current}
    to_add = [(n, p) for n, p in resolved if (n, p.remote_id) not in have]
    keep = {(n, p.remote_id) for n, p in resolved}
    to_remove = [i for i in current if (i.network, i.remote_id) not in keep] if replace else []
    change = Change()

    async def write(session: AsyncSession) -> None:
        for identity in to_remove:
            if await db.remove_identity(session, identity.network, identity.remote_id):
                change.unlinked.append(identity)
                await _audit(session, actor, "people-unlink", identity)
        for network, person in to_add:
            made = await db.add_identity(session, matrix_user_id=user_id, network=network,
                                         remote_id=person.remote_id, label=person.label,
                                         proven_by=proven_by, created_by=actor.name)
            change.linked.append(made)
            await _audit(session, actor, "people-link", made)

    if to_add or to_remove:
        try:
            await hub.enqueue([], also=write)
        except IntegrityError:
            # Someone linked one of them meanwhile: say to whom, as if we had been second.
            async with hub.db.sessions() as session:
                for network, person in to_add:
                    taken = await db.identity_for(session, network, person.remote_id)
                    if taken is not None and taken.matrix_user_id != user_id:
                        raise _conflict(hub, taken, user_id) from None
            raise ConflictError("Someone changed these links a moment ago; please look at "
                                "them again and retry.") from None
        await after_change(hub, change)
    async with hub.db.sessions() as session:
        now = await db.identities_of(session, user_id)
    return Outcome(bool(change), _link_message(hub, user_id, resolved, change), now)


def _link_message(hub: Hub, user_id: str, resolved: list[tuple[str, PersonRef]],
                  change: Change) -> str:
    if not change:
        if len(resolved) == 1:
            network, person = resolved[0]
            return f"{_display(hub, network)} `{person.label}` is already linked to {user_id}."
        return f"Nothing to do: {user_id} has these links already."
    sentences = []
    if change.linked:
        named = ", ".join(_named(hub, i, resolved) for i in change.linked)
        sentences.append(f"Linked {named} to {user_id}.")
    if change.unlinked:
        sentences.append("Unlinked " + ", ".join(describe(i, hub) for i in change.unlinked)
                         + f" from {user_id}.")
    return " ".join(sentences)


def _named(hub: Hub, identity: Identity, resolved: list[tuple[str, PersonRef]]) -> str:
    name = next((p.display_name for n, p in resolved
                 if n == identity.network and p.remote_id == identity.remote_id), None)
    return describe(identity, hub) + (f" ({name})" if name and name != identity.label else "")


def _display(hub: Hub, network: str) -> str:
    connector = hub.connectors.get(network)
    return connector.display_name if connector is not None else network


async def _audit(session: AsyncSession, actor: Actor, action: str, identity: Identity) -> None:
    await audit.record(session, actor, None, action, network=identity.network,
                       label=identity.label, remote_id=identity.remote_id,
                       matrix_user=identity.matrix_user_id, proven_by=identity.proven_by)


# --- unlinking -----------------------------------------------------------------------------


async def find(hub: Hub, network: str, words: list[str]) -> Identity | None:
    """The link the words name, looked up as written (label or remote ID, any case) without
    asking the network; if none matches, the network says what the words mean (so a Slack
    user written another way is still found) when it is started."""
    typed = " ".join(words).strip()
    if not typed:
        raise CommandError(f"Name the {_display(hub, network)} identity to unlink.")
    people_connector(hub, network, started=False)
    async with hub.db.sessions() as session:
        for identity in await db.all_identities(session, network):
            if typed.lower() in (identity.label.lower(), identity.remote_id.lower()):
                return identity
    connector = hub.connectors[network]
    if connector.not_started is not None:
        return None
    person = await connector.resolve_person(hub, words)
    async with hub.db.sessions() as session:
        return await db.identity_for(session, network, person.remote_id)


async def unlink(hub: Hub, actor: Actor, network: str, words: list[str],
                 matrix_user_id: str | None = None) -> Outcome:
    """Remove the link of the identity ``words`` name (as :func:`find` reads them). With
    ``matrix_user_id``, only if it is that person's (else 409 naming whose it is). An
    identity that is not linked: unchanged."""
    user_id = check_user_id(hub, matrix_user_id) if matrix_user_id is not None else None
    identity = await find(hub, network, words)
    typed = " ".join(words).strip()
    if identity is None:
        whose = f" to {user_id}" if user_id else ""
        return Outcome(False, f"{_display(hub, network)} `{typed}` is not linked{whose}.")
    if user_id is not None and identity.matrix_user_id != user_id:
        raise ConflictError(f"{describe(identity, hub)} is linked to "
                            f"{identity.matrix_user_id}, not to {user_id}; nothing was "
                            "unlinked.")
    return await _remove(hub, actor, [identity], identity.matrix_user_id)


async def unlink_person(hub: Hub, actor: Actor, matrix_user_id: str,
                        wanted: Iterable[tuple[str, list[str]]] | None = None) -> Outcome:
    """Remove all of a person's links, or those ``wanted`` (network, words) names; each must
    be this person's (else 409, nothing removed). Links that are not there: unchanged."""
    user_id = check_user_id(hub, matrix_user_id)
    if wanted is None:
        async with hub.db.sessions() as session:
            chosen = await db.identities_of(session, user_id)
    else:
        chosen = []
        for network, words in wanted:
            identity = await find(hub, network, words)
            if identity is None:
                continue
            if identity.matrix_user_id != user_id:
                raise ConflictError(f"{describe(identity, hub)} is linked to "
                                    f"{identity.matrix_user_id}, not to {user_id}; nothing "
                                    "was unlinked.")
            if identity not in chosen:
                chosen.append(identity)
    return await _remove(hub, actor, chosen, user_id)


async def _remove(hub: Hub, actor: Actor, chosen: list[Identity], user_id: str) -> Outcome:
    change = Change()

    async def write(session: AsyncSession) -> None:
        for identity in chosen:
            if await db.remove_identity(session, identity.network, identity.remote_id):
                change.unlinked.append(identity)
                await _audit(session, actor, "people-unlink", identity)

    if chosen:
        await hub.enqueue([], also=write)
        await after_change(hub, change)
    if not change:
        return Outcome(False, f"Nothing to unlink: {user_id} has no such link.")
    return Outcome(True, "Unlinked " + ", ".join(describe(i, hub) for i in change.unlinked)
                   + f" from {user_id}.", change.unlinked)


def link_forms(hub: Hub) -> str:
    """``!bridge people link <network> <its words> <@user:domain>`` for every enabled network
    whose people can be linked, as a sentence lists them."""
    from bridge.networks import networks

    forms = [f"`{hub.prefix} people link {n.name} {n.person_words} <@user:domain>`"
             for n in networks()
             if n.person_words and n.name in hub.connectors
             and hub.connectors[n.name].links_people]
    return " or ".join(forms) or "`people link` once a network whose people can be linked " \
        "is enabled"


def listing(hub: Hub, identities: list[Identity], matrix_user_id: str | None = None) -> str:
    """The links as the bot answers ``people list``: one line per link, by person."""
    if not identities:
        if matrix_user_id is not None:
            return f"{matrix_user_id} has no linked identities."
        return f"Nobody is linked yet. Link someone with {link_forms(hub)}."
    lines = []
    for identity in identities:
        how = "proven by the person" if identity.proven_by == "self" else \
            f"linked by {identity.created_by}"
        lines.append(f"- {identity.matrix_user_id}: {describe(identity, hub)} ({how})")
    head = (f"{matrix_user_id}'s linked identities:" if matrix_user_id is not None else
            f"{len({i.matrix_user_id for i in identities})} linked people:")
    return "\n".join([head, *lines])
