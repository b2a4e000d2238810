"""Room actions for rollouts: find or create a room (or a space) by its alias, put a room in
a space, set a room's department. Migration plans call these through the provisioning API
(bridge/admin/api/plan_routes.py).

Same rules as bridge/admin/actions.py: a refusal raises a
:class:`bridge.core.errors.CommandError` subclass and has changed nothing; a success records
its audit entry in the transaction of its change and returns an :class:`Outcome` whose
``changed`` is False when it was so already, so applying a plan twice is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from mautrix.api import Method, Path
from mautrix.errors import IntentError, MatrixRequestError, MForbidden, MNotFound
from mautrix.types import EventType, RoomAlias, RoomID, UserID
from sqlalchemy import select, update

from bridge.admin import audit
from bridge.admin.audit import Actor
from bridge.core.cache import BoundedCache
from bridge.core.errors import CommandError, ConflictError, NotFoundError, UnavailableError
from bridge.db import store
from bridge.db.models import Portal

if TYPE_CHECKING:
    from mautrix.appservice import IntentAPI

    from bridge.core.hub import Hub
    from bridge.matrix.side import MatrixSide

log = logging.getLogger("bridge.admin")

#: Power level the department's admins get in the rooms the bot creates for them.
ADMIN_POWER = 100


@dataclass(slots=True)
class RoomOutcome:
    """What find-or-create did: ``created`` False when the room was there already."""

    room_id: str
    alias: str
    created: bool
    changed: bool
    message: str


def _bot(hub: Hub) -> IntentAPI:
    if hub.matrix is None:
        raise UnavailableError("The bridge is starting; try again in a moment.")
    # The core sees the Matrix side through a small protocol; room actions need the bot's
    # own intent, which the real Matrix side has.
    return cast("MatrixSide", hub.matrix).bot_intent


def full_alias(hub: Hub, localpart: str) -> str:
    return f"#{localpart}:{hub.config.homeserver.domain}"


def checked_localpart(typed: str) -> str:
    """An alias local part (``bauamt-allgemein``; ``#bauamt-allgemein:domain`` is taken too,
    if the domain is this homeserver's: the caller checks that with :func:`full_alias`)."""
    localpart = typed.strip()
    if localpart.startswith("#"):
        localpart = localpart[1:].split(":", 1)[0]
    if not localpart or any(c in localpart for c in " :#@\t\n"):
        raise CommandError(f"`{typed}` is not a room alias local part (like "
                           "`bauamt-allgemein`, without # and domain).")
    return localpart


async def room_by_alias(hub: Hub, localpart: str) -> str | None:
    """The room ``#localpart:<domain>`` names, or None if no room has that alias."""
    try:
        info = await _bot(hub).resolve_room_alias(RoomAlias(full_alias(hub, localpart)))
    except MNotFound:
        return None
    except MatrixRequestError as exc:
        raise UnavailableError(f"The homeserver could not look up {full_alias(hub, localpart)}"
                               f": {exc.message or exc.errcode}") from None
    return str(info.room_id)


async def _bot_is_joined(hub: Hub, room_id: str) -> bool:
    # Asked as a plain request: the intent's own methods would try to join first.
    try:
        answer = await _bot(hub).api.request(Method.GET,
                                             Path.v3.rooms[RoomID(room_id)].joined_members)
    except (MForbidden, MNotFound):
        return False
    return hub.bot_mxid in (answer.get("joined") or {})


async def find_or_create_room(hub: Hub, actor: Actor, localpart: str, name: str | None, *,
                              admins: list[str], department: str | None = None,
                              space: bool = False, parent: str | None = None) -> RoomOutcome:
    """The room (or, with ``space``, the Matrix space) ``#localpart:<domain>``: used as it is
    when it exists (the bot joins it if it may), else created by the bot with that alias and
    name, the ``admins`` invited with power level 100 (and, with ``parent``, the space it
    belongs to in its initial state: one event less than :func:`add_to_space` sends later).
    Either way the bridge records it as a portal with its name, alias and department."""
    localpart = checked_localpart(localpart)
    alias = full_alias(hub, localpart)
    for admin in admins:
        if not admin.startswith("@") or ":" not in admin:
            raise CommandError(f"`{admin}` is not a Matrix user ID (like @anna:stadt.example).")
    bot = _bot(hub)
    what = "space" if space else "room"
    room_id = await room_by_alias(hub, localpart)
    created = False
    if room_id is not None:
        if not await _bot_is_joined(hub, room_id):
            try:
                await bot.join_room(RoomAlias(alias), max_retries=0)
            except (MatrixRequestError, IntentError):
                raise ConflictError(
                    f"{alias} exists, but the bridge bot is not in it and may not join it; "
                    f"invite {hub.bot_mxid} to it (with power level 100 to let the bot manage "
                    "it), or choose another alias.") from None
    else:
        # Checked before anything is made: a room must not be left half set up (created,
        # its admins' invitations failed).
        missing = [admin for admin in admins if not await user_exists(hub, admin)]
        if missing:
            raise NotFoundError(f"The homeserver knows no user {', '.join(missing)}; nothing "
                                f"was created. Correct the admins of {alias}.")
        users = {admin: ADMIN_POWER for admin in admins}
        if not await _creators_are_privileged(hub):
            # The override replaces the creator's default entry: keep the bot's power.
            users[hub.bot_mxid] = ADMIN_POWER
        levels: dict[str, Any] = {"users": users}
        initial_state: list[dict[str, Any]] = [] if parent is None else [{
            "type": str(EventType.SPACE_PARENT), "state_key": parent,
            "content": {"via": [hub.config.homeserver.domain], "canonical": True}}]
        if hub.config.encryption.default and not space:
            # encryption.default: the rooms the bridge makes are end-to-end encrypted.
            initial_state.append({"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        try:
            room_id = str(await bot.create_room(
                alias_localpart=localpart, name=name or None,
                invitees=[UserID(admin) for admin in admins],
                creation_content={"type": "m.space"} if space else None,
                initial_state=initial_state, power_level_override=levels))
        except MatrixRequestError as exc:
            if exc.errcode == "M_ROOM_IN_USE" and await room_by_alias(hub, localpart):
                # Created a moment ago by someone else (or an apply running twice): use it.
                return await find_or_create_room(hub, actor, localpart, name, admins=admins,
                                                 department=department, space=space,
                                                 parent=parent)
            if "reserved" in (exc.message or ""):
                # A registration from before the bridge created rooms: no alias namespace.
                from bridge.registration import regenerate_hint

                raise UnavailableError(f"The homeserver does not let the bridge bot create "
                                       f"{alias}: its copy of the bridge's registration has no "
                                       f"room alias namespace; {regenerate_hint()}.") from None
            raise CommandError(f"The homeserver refused to create {alias}: "
                               f"{exc.message or exc.errcode}") from None
        created = True
    async with hub.db.transaction() as session:
        before = await session.scalar(select(Portal).where(Portal.room_id == room_id))
        old = (before.name, before.alias, before.department) if before is not None else None
        await store.ensure_portal(session, room_id)
        # The name is the plan's for a room the bot made; a room that was there keeps what
        # its state says (recorded as the bridge sees it change).
        new_name = name if created else (before.name if before else None)
        new_department = department if department is not None else (
            before.department if before else None)
        await session.execute(update(Portal).where(Portal.room_id == room_id).values(
            name=new_name, alias=alias, department=new_department))
        changed = created or old != (new_name, alias, new_department)
        if changed:
            await audit.record(session, actor, room_id, f"create_{what}" if created
                               else f"adopt_{what}", alias=alias, name=new_name,
                               department=new_department)
    if created:
        message = f"Created the {what} {alias} ({room_id})."
    elif changed:
        message = f"The {what} {alias} ({room_id}) was there already; the bridge now knows " \
                  "it" + (f" as part of {department}." if department else ".")
    else:
        message = f"The {what} {alias} ({room_id}) is there already."
    return RoomOutcome(room_id, alias, created, changed, message)


# Room versions before 12 give the creator power through the power levels; from 12 on
# (MSC4289) creators are privileged and must not be listed there.
_LISTED_CREATOR_VERSIONS = frozenset(str(n) for n in range(1, 12))


# The homeserver's default room version, by homeserver address: asked once per hour, not
# for each of a plan's 200 rooms (a cache: forgetting it costs one request).
_DEFAULT_VERSION: BoundedCache[str, str] = BoundedCache(16, 3600.0)


async def _creators_are_privileged(hub: Hub) -> bool:
    """Whether rooms the bot creates get a room version with privileged creators (asked of
    the homeserver's capabilities: its default room version)."""
    address = hub.config.homeserver.address
    default = _DEFAULT_VERSION.get(address)
    if default is None:
        try:
            caps = await _bot(hub).api.request(Method.GET, Path.v3.capabilities)
        except MatrixRequestError:
            return False
        versions = caps.get("capabilities", {}).get("m.room_versions", {}) or {}
        default = str(versions.get("default") or "")
        _DEFAULT_VERSION.set(address, default)
    return bool(default) and default not in _LISTED_CREATOR_VERSIONS


async def set_department(hub: Hub, actor: Actor, room_id: str,
                         department: str | None) -> bool:
    """Put the room in a department (the report groups rooms by it); True if it changed."""
    async with hub.db.transaction() as session:
        current = await session.scalar(select(Portal).where(Portal.room_id == room_id))
        if current is None:
            raise NotFoundError(f"The bridge bot is not in the room {room_id}. Invite "
                                f"{hub.bot_mxid} to it first.")
        if current.department == department:
            return False
        current.department = department
        await audit.record(session, actor, room_id, "department", department=department)
    return True


async def add_to_space(hub: Hub, actor: Actor, space_id: str, room_id: str) -> bool:
    """Make the room a child of the space (``m.space.child`` in the space, ``m.space.parent``
    in the room, both through the homeserver's domain); True if anything was missing."""
    bot = _bot(hub)
    domain = hub.config.homeserver.domain
    changed = False
    for where, event_type, state_key in ((space_id, EventType.SPACE_CHILD, room_id),
                                         (room_id, EventType.SPACE_PARENT, space_id)):
        try:
            current = await bot.get_state_event(RoomID(where), event_type, state_key)
        except MNotFound:
            current = None
        except (MForbidden, IntentError):
            raise NotFoundError(f"The bridge bot is not in {where}.") from None
        if current is not None and current.serialize().get("via"):
            continue
        content: dict[str, Any] = {"via": [domain]}
        if event_type == EventType.SPACE_PARENT:
            content["canonical"] = True
        try:
            await bot.send_state_event(RoomID(where), event_type, content, state_key=state_key)
        except MForbidden:
            raise ConflictError(f"The bridge bot may not change {where}: give it power level "
                                "100 there to let it add rooms to the space.") from None
        changed = True
    if changed:
        async with hub.db.transaction() as session:
            await audit.record(session, actor, room_id, "space", space_id=space_id)
    return changed


async def space_children(hub: Hub, space_id: str) -> list[str]:
    """The rooms the space holds (``m.space.child`` events with a ``via``)."""
    try:
        state = await _bot(hub).get_state(RoomID(space_id))
    except (MForbidden, MNotFound, IntentError):
        raise NotFoundError(f"The bridge bot is not in the space {space_id}.") from None
    return [str(event.state_key) for event in state
            if event.type == EventType.SPACE_CHILD and event.content.serialize().get("via")]


async def user_exists(hub: Hub, user_id: str) -> bool:
    """Whether the homeserver knows the user (its profile answers); users on other servers
    count as existing if their server answers for them."""
    if not user_id.startswith("@") or ":" not in user_id:
        raise CommandError(f"`{user_id}` is not a Matrix user ID (like @anna:stadt.example).")
    try:
        await _bot(hub).get_profile(UserID(user_id))
    except (MNotFound, MForbidden):
        return False
    except MatrixRequestError as exc:
        if exc.http_status == 404:
            return False
        raise UnavailableError(f"The homeserver could not say whether {user_id} exists: "
                               f"{exc.message or exc.errcode}") from None
    return True
