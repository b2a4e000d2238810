"""Matrix -> Slack: one relayed Matrix event becomes Web API calls in the linked channel.

The app posts with the Matrix sender's display name and avatar (``username`` and
``icon_url``). What it posted is recorded in the message mapping, so edits, deletions,
reactions and thread replies find their Slack message, and Slack's echo of the post (an
event carrying our ``bot_id``) is recognised and dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from mautrix.types import EventID, RoomID
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.core.errors import PermanentError, TemporaryError
from bridge.db import store
from bridge.db.queues import Delivery
from bridge.db.store import LinkInfo, MappingInfo
from bridge.slack.format import matrix_to_slack
from bridge.slack.ids import NETWORK, space_of
from bridge.slack.workspace import Workspace

if TYPE_CHECKING:
    from bridge.core.hub import Hub
    from bridge.slack.connector import SlackConnector

log = logging.getLogger("bridge.slack")

TEXT_MSGTYPES = {"m.text", "m.notice", "m.emote"}
# Slack message metadata of the app's posts of Matrix messages (names the Matrix event).
RELAYED_EVENT_TYPE = "bridge_matrix_message"
# How many of the channel's latest messages are searched for a post a process that died
# made without recording it.
TAKEN_OVER_LOOKBACK = 200
# A delivery's writes that go with its success (Delivery.with_outcome_sync), or None.
Outcome = list[Callable[[Connection], None]] | None
FILE_MSGTYPES = {"m.image", "m.file", "m.video", "m.audio"}


# The purpose label of the avatar URL key: a key of its own, so a signature handed to Slack
# (and to anyone who reads the channel's messages) reveals nothing usable about the as_token.
AVATAR_KEY_PURPOSE = b"matrix-hub-bridge/slack/avatar-url/v1"


def avatar_key(as_token: str) -> bytes:
    """The key avatar URLs are signed with, derived from the as_token (HMAC as the
    extract-and-expand step of HKDF with one output block)."""
    return hmac.new(as_token.encode(), AVATAR_KEY_PURPOSE, hashlib.sha256).digest()


def avatar_signature(key: bytes, mxc: str) -> str:
    """Signs avatar URLs handed to Slack: the bridge serves only avatars it gave out,
    not any file of the homeserver."""
    return hmac.new(key, mxc.encode(), hashlib.sha256).hexdigest()[:32]


def avatar_signature_valid(key: bytes, mxc: str, signature: str) -> bool:
    """Compared in constant time: the answer must not tell how much of a guess was right."""
    return hmac.compare_digest(avatar_signature(key, mxc).encode(),
                               signature.encode("utf-8", "replace"))


class _Resolver:
    """The formatter's questions about Matrix users and rooms, answered from lookups made
    before formatting."""

    def __init__(self, users: dict[str, str], names: dict[str, str],
                 channels: dict[str, str]) -> None:
        self._users, self._names, self._channels = users, names, channels

    def slack_user(self, matrix_user_id: str) -> str | None:
        return self._users.get(matrix_user_id)

    def display_name(self, matrix_user_id: str) -> str | None:
        return self._names.get(matrix_user_id)

    def slack_channel(self, matrix_room_id: str) -> str | None:
        return self._channels.get(matrix_room_id)


class MatrixToSlack:
    def __init__(self, connector: SlackConnector) -> None:
        self.connector = connector

    @property
    def hub(self) -> Hub:
        return self.connector.hub

    async def deliver(self, delivery: Delivery, link: LinkInfo) -> str | None:
        event = delivery.payload["event"]
        ws = self.connector.workspace_for_link(link)
        channel = str(link.settings.get("channel") or link.remote_id.split(":", 1)[-1])
        etype = event.get("type")
        if etype == "m.room.member":
            self.connector.forget_profile(delivery.room_id, str(event.get("state_key")))
            return None
        if event.get("state_key") is not None:
            return None  # room name and topic stay Matrix-side (Slack would need admin scopes)
        content = event.get("content") or {}
        if etype == "m.room.redaction":
            redacts = event.get("redacts") or content.get("redacts")
            return await self._redact(ws, channel, str(redacts)) if redacts else None
        # Mappings of what was posted are written with the delivery's success (one
        # transaction instead of two per message).
        outcome = delivery.with_outcome_sync
        if etype == "m.reaction":
            return await self._react(ws, channel, delivery.room_id, event, outcome)
        if etype != "m.room.message" or not isinstance(content, dict):
            return None
        relates = content.get("m.relates_to") or {}
        if relates.get("rel_type") == "m.replace":
            return await self._edit(ws, channel, delivery.room_id, event, relates)
        msgtype = content.get("msgtype")
        if msgtype in FILE_MSGTYPES and content.get("url"):
            return await self._file(ws, channel, delivery.room_id, event, relates, outcome)
        if msgtype in TEXT_MSGTYPES:
            if delivery.taken_over:
                posted = await self._posted_before(ws, channel, event, delivery.created_at)
                if posted is not None:
                    _, thread_root = await self._thread_ts(ws, channel, relates)
                    await self._remember(ws, channel, delivery.room_id, event["event_id"],
                                         posted, thread_root, outcome=outcome)
                    return posted
            return await self._post(ws, channel, delivery.room_id, event, relates, outcome)
        return None

    async def _posted_before(self, ws: Workspace, channel: str, event: dict[str, Any],
                             since: float) -> str | None:
        """The ts of the app's post of this Matrix event, if a process that died posted it
        before it could record so (each post names its event in Slack's message metadata);
        None if it is not there. Read from the channel, and from the thread it went to."""
        event_id = str(event.get("event_id") or "")
        found: list[dict[str, Any]] = await ws.paginate(
            "conversations.history", "messages", limit=TAKEN_OVER_LOOKBACK, channel=channel,
            oldest=f"{since - 60:.6f}", include_all_metadata=True)
        relates = (event.get("content") or {}).get("m.relates_to") or {}
        if relates:
            thread_ts, _ = await self._thread_ts(ws, channel, relates)
            if thread_ts:
                found += await ws.paginate(
                    "conversations.replies", "messages", limit=TAKEN_OVER_LOOKBACK,
                    channel=channel, ts=thread_ts, oldest=f"{since - 60:.6f}",
                    include_all_metadata=True)
        for message in found:
            metadata = message.get("metadata") or {}
            if (ws.is_own(message) and metadata.get("event_type") == RELAYED_EVENT_TYPE
                    and (metadata.get("event_payload") or {}).get("matrix_event_id")
                    == event_id):
                log.info("Matrix event %s was posted to Slack by a process that died before "
                         "recording it; not posting it again", event_id)
                return str(message.get("ts") or "") or None
        return None

    # --- who and where -------------------------------------------------------------------

    async def _thread_ts(self, ws: Workspace, channel: str, relates: dict[str, Any]
                         ) -> tuple[str | None, str | None]:
        """(Slack thread_ts, Matrix thread root) for a thread reply or a reply."""
        target = None
        if relates.get("rel_type") == "m.thread":
            target = relates.get("event_id")
        elif (relates.get("m.in_reply_to") or {}).get("event_id"):
            target = relates["m.in_reply_to"]["event_id"]
        if not target:
            return None, None
        async with self.hub.db.sessions() as session:
            mapped = await self._slack_message(session, str(target), ws, channel)
            if mapped is None:
                return None, None
            root_event = mapped.thread_root or mapped.event_id
            root = await self._slack_message(session, root_event, ws, channel)
        root = root or mapped
        return root.remote_id, root_event

    @staticmethod
    async def _slack_message(session: AsyncSession, event_id: str, ws: Workspace,
                             channel: str) -> MappingInfo | None:
        space = space_of(ws.team_id, channel)
        for m in await store.mappings_for_event(session, event_id, NETWORK):
            if m.remote_space == space and "/" not in m.remote_id and \
                    not m.remote_id.startswith("file:"):
                return m
        return None

    async def _sender(self, room_id: str, sender: str) -> dict[str, Any]:
        """``username`` and ``icon_url`` for chat.postMessage."""
        name, avatar = await self.connector.profile(room_id, sender)
        fields: dict[str, Any] = {"username": (name or sender)[:80]}
        icon = self.connector.avatar_url(avatar)
        if icon:
            fields["icon_url"] = icon
        return fields

    async def _mrkdwn(self, ws: Workspace, room_id: str, content: dict[str, Any]) -> str:
        body = str(content.get("body") or "")
        formatted = content.get("formatted_body") \
            if content.get("format") == "org.matrix.custom.html" else None
        users: dict[str, str] = {}
        names: dict[str, str] = {}
        mentioned = (content.get("m.mentions") or {}).get("user_ids") or []
        text = f"{body} {formatted or ''}"
        candidates = set(mentioned) | {
            part.split('"')[0].split("<")[0] for part in text.split("matrix.to/#/")[1:]}
        if candidates:
            await self.hub.people.load()  # a linked person's account names their Slack user
        for user_id in candidates:
            user_id = user_id.replace("%40", "@").replace("%3A", ":")
            if not user_id.startswith("@"):
                continue
            slack_id = self.connector.slack_user_of(ws, user_id)
            if slack_id:
                users[user_id] = slack_id
            else:
                name, _ = await self.connector.profile(room_id, user_id)
                if name:
                    names[user_id] = name
        # Room pills are rare: read the links only for a message that has one.
        channels = dict(await self.connector.linked_channel_ids(ws)) \
            if "matrix.to/#/!" in text or "matrix.to/#/%21" in text else {}
        return matrix_to_slack(body, formatted, _Resolver(users, names, channels))

    # --- messages ------------------------------------------------------------------------

    async def _post(self, ws: Workspace, channel: str, room_id: str, event: dict[str, Any],
                    relates: dict[str, Any], outcome: Outcome = None) -> str:
        content = event["content"]
        text = await self._mrkdwn(ws, room_id, content)
        sender = await self._sender(room_id, event["sender"])
        if content.get("msgtype") == "m.emote":
            # chat.meMessage cannot carry another name; an italic line reads the same.
            text = f"_{sender['username']} {text}_"
        thread_ts, thread_root = await self._thread_ts(ws, channel, relates)
        params: dict[str, Any] = {"channel": channel, "text": text or " ", **sender,
                                  "unfurl_links": False, "unfurl_media": False,
                                  # Which Matrix event this is: a process taking over a
                                  # delivery finds it posted already (_posted_before).
                                  "metadata": {"event_type": RELAYED_EVENT_TYPE,
                                               "event_payload": {
                                                   "matrix_event_id": event["event_id"]}}}
        if thread_ts:
            params["thread_ts"] = thread_ts
        data = await ws.call("chat.postMessage", channel_key=channel, **params)
        ts = str(data.get("ts") or (data.get("message") or {}).get("ts") or "")
        await self._remember(ws, channel, room_id, event["event_id"], ts, thread_root,
                             outcome=outcome)
        return ts

    async def _remember(self, ws: Workspace, channel: str, room_id: str, event_id: str,
                        remote_id: str, thread_root: str | None, part: int = 0,
                        outcome: Outcome = None) -> None:
        """Record what the Slack message stands for; with ``outcome`` (the delivery's
        ``with_outcome_sync``) in the transaction that records the delivery's success."""
        if not remote_id:
            return

        def record(connection: Connection) -> None:
            store.add_mapping_sync(connection, room_id=room_id, event_id=event_id,
                                   network=NETWORK, remote_space=space_of(ws.team_id, channel),
                                   remote_id=remote_id, thread_root=thread_root, part=part)

        if outcome is not None:
            outcome.append(record)
        else:
            async with self.hub.db.transaction() as session:
                await session.run_sync(lambda s: record(s.connection()))

    async def _edit(self, ws: Workspace, channel: str, room_id: str, event: dict[str, Any],
                    relates: dict[str, Any]) -> str | None:
        target = relates.get("event_id")
        new_content = event["content"].get("m.new_content") or event["content"]
        async with self.hub.db.sessions() as session:
            mapped = await self._slack_message(session, str(target), ws, channel)
        if mapped is None:
            if await self._mapping_expired(ws, channel, room_id, str(target)):
                # It reached Slack once, and retention has removed its mapping since: the
                # new text is posted as a new message rather than lost.
                return await self._post(ws, channel, room_id,
                                        {**event, "content": new_content}, {})
            return None  # the edited message never reached Slack
        text = await self._mrkdwn(ws, room_id, new_content)
        if new_content.get("msgtype") == "m.emote":
            name, _ = await self.connector.profile(room_id, event["sender"])
            text = f"_{name or event['sender']} {text}_"
        try:
            await ws.call("chat.update", channel=channel, ts=mapped.remote_id, text=text or " ")
        except PermanentError as exc:
            if "message_not_found" in str(exc):
                return None  # deleted in Slack meanwhile
            raise
        return mapped.remote_id

    async def _mapping_expired(self, ws: Workspace, channel: str, room_id: str,
                               event_id: str) -> bool:
        """Was the Matrix event written while the room was linked to the channel (so it
        was relayed, and only its mapping is gone)? Asked only for an edit without a
        mapping, which is rare."""
        async with self.hub.db.sessions() as session:
            linked_at = await store.link_created_at(session, NETWORK,
                                                    space_of(ws.team_id, channel))
        # (The Matrix side's bot intent; the hub's protocol of it does not name it.)
        intent = getattr(self.hub.matrix, "bot_intent", None)
        if linked_at is None or intent is None:
            return False
        try:
            event = await intent.get_event(RoomID(room_id), EventID(event_id))
        except Exception:
            return False  # gone, or not visible: treated as never relayed, as before
        return event.timestamp / 1000 >= linked_at

    async def _redact(self, ws: Workspace, channel: str, redacts: str) -> str | None:
        space = space_of(ws.team_id, channel)
        async with self.hub.db.sessions() as session:
            mapped = [m for m in await store.mappings_for_event(session, redacts, NETWORK)
                      if m.remote_space == space]
        done = []
        for m in mapped:
            if "/reaction/" in m.remote_id and await self._shared_reaction(space, m, redacts):
                pass  # another Matrix user's same reaction: the app's one in Slack stays
            elif "/reaction/" in m.remote_id:
                ts, _, rest = m.remote_id.partition("/reaction/")
                name = rest.split("/", 1)[1] if "/" in rest else rest
                try:
                    await ws.call("reactions.remove", channel=channel, timestamp=ts, name=name)
                except PermanentError as exc:
                    if "no_reaction" not in str(exc) and "message_not_found" not in str(exc):
                        raise
            elif m.remote_id.startswith("file:"):
                try:
                    await ws.call("files.delete", file=m.remote_id.removeprefix("file:"))
                except PermanentError as exc:
                    if "file_not_found" not in str(exc) and "file_deleted" not in str(exc):
                        raise
            else:
                try:
                    await ws.call("chat.delete", channel=channel, ts=m.remote_id)
                except PermanentError as exc:
                    if "message_not_found" not in str(exc):
                        raise
            done.append(m.remote_id)
        if mapped:
            async with self.hub.db.transaction() as session:
                await store.delete_mappings_for_event(session, redacts, NETWORK)
        return ",".join(done) or None

    async def _react(self, ws: Workspace, channel: str, room_id: str,
                     event: dict[str, Any], outcome: Outcome = None) -> str | None:
        relates = (event.get("content") or {}).get("m.relates_to") or {}
        if relates.get("rel_type") != "m.annotation":
            return None
        async with self.hub.db.sessions() as session:
            mapped = await self._slack_message(session, str(relates.get("event_id")), ws,
                                               channel)
        from bridge.slack.emoji import unicode_to_slack_emoji

        name = unicode_to_slack_emoji(str(relates.get("key") or ""))
        if mapped is None or not name:
            return None  # not a Slack message, or a reaction Slack has no emoji for
        try:
            await ws.call("reactions.add", channel=channel, timestamp=mapped.remote_id,
                          name=name)
        except PermanentError as exc:
            if "invalid_name" in str(exc):
                log.info("Slack has no emoji %s for the reaction %s", name, relates.get("key"))
                return None
            if "already_reacted" not in str(exc):
                raise
        key = f"{mapped.remote_id}/reaction/{ws.bot_user_id}/{name}"
        # Several Matrix users' same reaction is one reaction of the app in Slack: each is
        # remembered (a part each), so it is removed only when the last one is redacted.
        async with self.hub.db.sessions() as session:
            same = await store.mappings_for_remote(session, NETWORK,
                                                   space_of(ws.team_id, channel), key)
        if not any(m.event_id == event["event_id"] for m in same):
            await self._remember(ws, channel, room_id, event["event_id"], key, None,
                                 part=max((m.part for m in same), default=-1) + 1,
                                 outcome=outcome)
        return key

    async def _shared_reaction(self, space: str, mapping: MappingInfo, redacts: str) -> bool:
        """Does another Matrix reaction still stand for the app's reaction in Slack?"""
        async with self.hub.db.sessions() as session:
            same = await store.mappings_for_remote(session, NETWORK, space, mapping.remote_id)
        return any(m.event_id != redacts for m in same)

    async def _file(self, ws: Workspace, channel: str, room_id: str, event: dict[str, Any],
                    relates: dict[str, Any], outcome: Outcome = None) -> str | None:
        content = event["content"]
        name = str(content.get("filename") or content.get("body") or "file")
        data = await self.hub.download_media(str(content["url"]))
        thread_ts, thread_root = await self._thread_ts(ws, channel, relates)
        upload = await ws.call("files.getUploadURLExternal", filename=name, length=len(data))
        try:
            async with self.connector.http.post(
                    str(upload["upload_url"]), data=data,
                    headers={"Content-Type": "application/octet-stream"}) as response:
                if response.status >= 400:
                    raise TemporaryError(f"Slack's file upload answered {response.status}")
        except aiohttp.ClientError as exc:
            raise TemporaryError(f"Slack's file upload failed: {exc!r}") from exc
        sender_name, _ = await self.connector.profile(room_id, event["sender"])
        params: dict[str, Any] = {
            "files": [{"id": upload["file_id"], "title": name}], "channel_id": channel,
            "initial_comment": f"{sender_name or event['sender']} sent {name}",
        }
        if thread_ts:
            params["thread_ts"] = thread_ts
        done = await ws.call("files.completeUploadExternal", **params)
        ts = self._share_ts(done, channel) or f"file:{upload['file_id']}"
        await self._remember(ws, channel, room_id, event["event_id"], ts, thread_root,
                             outcome=outcome)
        return ts

    @staticmethod
    def _share_ts(response: dict[str, Any], channel: str) -> str | None:
        """The ts of the message that shares the uploaded file, if Slack said it."""
        for file in response.get("files") or []:
            shares = (file or {}).get("shares") or {}
            for scope in ("public", "private"):
                for share in (shares.get(scope) or {}).get(channel) or []:
                    if share.get("ts"):
                        return str(share["ts"])
        return None
