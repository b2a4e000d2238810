"""Slack's own administrative actions, written once for the bot's ``slack`` commands and the
provisioning API (same rules as bridge/admin/actions.py): refuse with a
:class:`bridge.core.errors.CommandError` before changing anything, write the audit entry in
the transaction of the change, answer with an :class:`~bridge.admin.actions.Outcome`.

``finish`` is the cutover of a channel whose people have moved to the Matrix room: Slack is
told where the conversation went (a pinned message with the room's matrix.to link), the link
ends, and the channel is archived if the operator wants that. The room keeps its history.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import select

from bridge.admin import actions
from bridge.admin.actions import Outcome, chosen_link
from bridge.admin.audit import Actor
from bridge.core.errors import (
    CommandError,
    PermanentError,
    TemporaryError,
    UnavailableError,
)
from bridge.db.models import Portal
from bridge.slack.ids import NETWORK

if TYPE_CHECKING:
    from bridge.core.hub import Hub
    from bridge.slack.connector import SlackConnector
    from bridge.slack.workspace import Workspace

log = logging.getLogger("bridge.slack")

#: The Slack message metadata type that marks the app's "this conversation has moved"
#: message: a second ``finish`` finds it (in the channel's recent history) instead of posting
#: it again.
MOVED_EVENT_TYPE = "matrix_bridge_channel_moved"
#: How far back a second ``finish`` looks for that message.
MOVED_LOOKBACK = 200
#: Archive refusals that are the workspace's choice, not a failure of the cutover: the answer
#: says so and the link ends all the same.
ARCHIVE_REFUSALS = {
    "restricted_action": "a workspace setting keeps apps from archiving channels",
    "not_authorized": "the app may not archive channels here",
    "cant_archive_general": "Slack does not let anyone archive the workspace's general channel",
    "cant_archive_required": "it is a required channel of the workspace",
    "missing_scope": "the Slack app lacks the scope (channels:manage, groups:write); "
                     "recreate it from slack-app-manifest.yaml",
    "not_in_channel": "the app is not in the channel",
    "method_not_supported_for_channel_type": "Slack cannot archive this kind of channel",
}


def matrix_to(address: str, via: str) -> str:
    """The room's matrix.to link, encoded as the Matrix spec's examples write it
    (``%23alias%3Aserver``, ``!id%3Aserver?via=server``). A room ID gets a ``via``: a client
    outside the room needs a server to join through."""
    link = "https://matrix.to/#/" + quote(address, safe="!")
    return link if address.startswith("#") else f"{link}?via={quote(via, safe='')}"


def moved_text(address: str, alias: str | None, via: str) -> str:
    """What the Slack channel is told, in Slack's mrkdwn (``<url|label>`` is a link)."""
    where = alias or address
    return (f":arrow_right: This conversation has moved to Matrix: "
            f"<{matrix_to(address, via)}|{where}>. The channel's history is there too. "
            "Messages written here are no longer bridged.")


async def _room_address(hub: Hub, room_id: str) -> tuple[str, str | None]:
    """(what matrix.to points at, the alias if the room has one)."""
    async with hub.db.sessions() as session:
        alias = await session.scalar(select(Portal.alias).where(Portal.room_id == room_id))
    if not alias and hub.matrix is not None:
        # Set before the bot joined (createRoom's room_alias_name): the portal never saw it.
        alias = await hub.matrix.canonical_alias(room_id)
    if alias:
        return str(alias), str(alias)
    return room_id, None


async def _earlier_moved_message(ws: Workspace, channel: str,
                                 room_id: str) -> dict[str, Any] | None:
    """The moved-message an earlier ``finish`` of this room posted (it then failed later)."""
    history = await ws.paginate("conversations.history", "messages", limit=MOVED_LOOKBACK,
                                channel=channel, include_all_metadata=True)
    for message in history:
        metadata = message.get("metadata") or {}
        if (ws.is_own(message) and metadata.get("event_type") == MOVED_EVENT_TYPE
                and (metadata.get("event_payload") or {}).get("room_id") == room_id):
            return message
    return None


def _refused(step: str, exc: PermanentError | TemporaryError) -> CommandError:
    hint = f" {exc.hint}" if isinstance(exc, PermanentError) and exc.hint else ""
    return CommandError(f"Could not finish: {step} ({exc}).{hint} The room is still linked; "
                        "send the command again once that is fixed.")


async def finish(hub: Hub, actor: Actor, room_id: str, remote_id: str | None, *,
                 status_hint: str | None = None, usage: str | None = None,
                 notify_room: bool = False) -> Outcome:
    """Close the room's Slack channel for good: post and pin the moved-message, end the link
    (bridge-info and the audit entry ``finish`` as for unlink), archive the channel if
    ``slack.archive_on_finish``. ``notify_room``: also tell the room in a notice (the API;
    a command's answer is the room's notice already)."""
    connector: SlackConnector = actions.started_connector(hub, NETWORK)  # type: ignore[assignment]
    hint = status_hint or f"`{hub.prefix} status`"
    link = await chosen_link(hub, room_id, NETWORK, remote_id, hint=hint,
                             usage=usage or f"`{hub.prefix} slack finish <channel>`",
                             purpose=" to finish")
    try:
        ws = connector.workspace_for_link(link)
    except TemporaryError as exc:
        raise UnavailableError(f"Could not finish: {exc}. Nothing was changed.") \
            from None
    channel = str(link.settings.get("channel") or link.remote_id.rsplit(":", 1)[-1])
    address, alias = await _room_address(hub, room_id)

    # 1. The moved-message, once: a finish that failed after posting it finds it again.
    try:
        info = await connector.channel_info(ws, channel, fresh=True)
    except (PermanentError, TemporaryError) as exc:
        raise _refused("Slack did not describe the channel", exc) from None
    already_archived = bool(info.get("is_archived"))
    posted: dict[str, Any] | None = None
    if not already_archived:
        try:
            posted = await _earlier_moved_message(ws, channel, room_id)
            if posted is None:
                answer = await ws.call(
                    "chat.postMessage", channel_key=channel, channel=channel,
                    text=moved_text(address, alias, connector.homeserver_domain),
                    unfurl_links=False,
                    metadata={"event_type": MOVED_EVENT_TYPE,
                              "event_payload": {"room_id": room_id}})
                posted = {"ts": str(answer.get("ts") or "")}
        except (PermanentError, TemporaryError) as exc:
            raise _refused("Slack refused the message that the conversation has moved",
                           exc) from None
        # 2. Pinned, so it stays on top of the channel (a second finish finds it pinned).
        try:
            await ws.call("pins.add", channel=channel, timestamp=posted["ts"])
        except PermanentError as exc:
            if "already_pinned" not in str(exc):
                raise _refused("the message that the conversation has moved is posted, but "
                               "Slack refused to pin it", exc) from None
        except TemporaryError as exc:
            raise _refused("the message that the conversation has moved is posted, but "
                           "Slack did not pin it", exc) from None

    # 3. The link ends as an unlink does; the audit entry says it was a finish.
    label = link.remote_name or link.remote_id
    unlinked = await actions.unlink(
        hub, actor, room_id, NETWORK, link.remote_id, status_hint=hint,
        audit_action="finish",
        audit_details={"slack_message_ts": posted["ts"] if posted else None,
                       "archive": connector.settings.archive_on_finish})

    # 4. Archived, if wanted and allowed; a refusal is said, not an error: the cutover is done.
    archive_note = ""
    if already_archived:
        archive_note = f" The Slack channel {label} was already archived."
    elif connector.settings.archive_on_finish:
        try:
            await ws.call("conversations.archive", channel=channel)
            archive_note = f" The Slack channel {label} is archived."
        except PermanentError as exc:
            code = str(exc).rsplit(": ", 1)[-1]
            if code == "already_archived":
                archive_note = f" The Slack channel {label} was already archived."
            else:
                why = ARCHIVE_REFUSALS.get(code, f"Slack answered {code}")
                archive_note = (f" The Slack channel {label} was not archived: {why}; "
                                "archive it in Slack if you want to.")
        except TemporaryError as exc:
            archive_note = (f" The Slack channel {label} was not archived (Slack was not "
                            f"reachable: {exc}); archive it in Slack if you want to.")
    told = (" Slack's channel now points here (a pinned message with this room's link)."
            if posted else "")
    message = (f"Finished the Slack channel {label}: it is no longer bridged with this room."
               f"{told}{archive_note} The history stays in this room.")
    if notify_room:
        await hub.enqueue([hub.notice(room_id, message)])
    log.info("finished Slack channel %s of %s (%s)", link.remote_id, room_id,
             unlinked.message)
    return Outcome(True, message, unlinked.link)
