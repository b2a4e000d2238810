"""Slack -> Matrix: what one stored Slack event becomes in the room.

Runs from the outbox (one lane per channel, so a channel's events are handled in order and
channels in parallel), after the event was stored and acknowledged. Every Matrix effect is
queued under a key of its own, so handling an event again after a crash repeats nothing.
"""

from __future__ import annotations

import html
import logging
import mimetypes
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.core.connector import media_msgtype
from bridge.core.errors import PermanentError, TemporaryError
from bridge.core.hub import MATRIX, RemotePart
from bridge.core.origin import Origin
from bridge.db import store
from bridge.db.queues import NewDelivery
from bridge.slack import store as slack_store
from bridge.slack.format import MatrixText, slack_to_matrix
from bridge.slack.ids import NETWORK, message_key, space_of, ts_ms
from bridge.slack.workspace import Workspace

if TYPE_CHECKING:
    from bridge.core.hub import Hub
    from bridge.db.engine import Reader
    from bridge.slack.connector import SlackConnector

log = logging.getLogger("bridge.slack")

# Message subtypes that create a message people see in the channel.
POSTING_SUBTYPES = {None, "thread_broadcast", "me_message", "file_share", "bot_message"}
# Membership shows as member_joined/left_channel events; these messages would double it.
IGNORED_SUBTYPES = {"channel_join", "channel_leave", "group_join", "group_leave",
                    "channel_name", "group_name", "bot_add", "bot_remove", "pinned_item",
                    "unpinned_item", "channel_archive", "channel_unarchive", "ekm_access_denied",
                    "message_replied", "assistant_app_thread"}
# Events that make a linked channel unusable for the bridge (or usable again: None).
CHANNEL_STATE_EVENTS = {
    "channel_archive": "archived", "group_archive": "archived",
    "channel_unarchive": None, "group_unarchive": None,
    "channel_deleted": "deleted", "group_deleted": "deleted",
}
# A message taken in this recently but not yet in the room is still on its way to it.
ARRIVING_SECONDS = 600.0
TOPIC_SUBTYPES = {"channel_topic", "group_topic", "channel_purpose", "group_purpose"}


@dataclass
class _Resolver:
    """Answers the formatter's questions from what was looked up before formatting."""

    users: dict[str, tuple[str, str]] = field(default_factory=dict)
    channels: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    allow_room_mention: bool = False
    via_server: str | None = None

    def user(self, slack_user_id: str) -> tuple[str, str] | None:
        return self.users.get(slack_user_id)

    def channel(self, slack_channel_id: str) -> tuple[str | None, str] | None:
        return self.channels.get(slack_channel_id)


def _mentioned_ids(text: str, blocks: Any) -> tuple[set[str], set[str], bool]:
    """User IDs, channel IDs and whether a broadcast (@here/@channel) appears."""
    users = set(re.findall(r"<@([UW][A-Z0-9]+)", text or ""))
    channels = set(re.findall(r"<#([CGD][A-Z0-9]+)", text or ""))
    broadcast = bool(re.search(r"<!(here|channel|everyone)", text or ""))

    def walk(node: Any) -> None:
        nonlocal broadcast
        if isinstance(node, dict):
            kind = node.get("type")
            if kind == "user" and isinstance(node.get("user_id"), str):
                users.add(node["user_id"])
            elif kind == "channel" and isinstance(node.get("channel_id"), str):
                channels.add(node["channel_id"])
            elif kind == "broadcast":
                broadcast = True
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(blocks)
    return users, channels, broadcast



def render_attachments(attachments: Any) -> tuple[str, str]:
    """Legacy message attachments (bots, integrations) as readable text and HTML."""
    texts: list[str] = []
    htmls: list[str] = []
    if not isinstance(attachments, list):
        return "", ""
    for att in attachments:
        if not isinstance(att, dict):
            continue
        lines: list[str] = []
        parts: list[str] = []
        for key in ("pretext", "author_name"):
            if att.get(key):
                lines.append(str(att[key]))
                parts.append(html.escape(str(att[key])))
        title = att.get("title")
        if title:
            link = att.get("title_link")
            lines.append(f"{title} ({link})" if link else str(title))
            parts.append(f'<strong><a href="{html.escape(str(link), quote=True)}">'
                         f'{html.escape(str(title))}</a></strong>' if link
                         else f"<strong>{html.escape(str(title))}</strong>")
        body = att.get("text") or (att.get("fallback") if not title else None)
        if body:
            lines.append(str(body))
            parts.append(html.escape(str(body)).replace("\n", "<br>"))
        for fld in att.get("fields") or []:
            if isinstance(fld, dict) and (fld.get("title") or fld.get("value")):
                lines.append(f"{fld.get('title', '')}: {fld.get('value', '')}")
                parts.append(f"<strong>{html.escape(str(fld.get('title', '')))}</strong>: "
                             f"{html.escape(str(fld.get('value', '')))}")
        if att.get("footer"):
            lines.append(str(att["footer"]))
            parts.append(f"<em>{html.escape(str(att['footer']))}</em>")
        if lines:
            texts.append("\n".join(lines))
            htmls.append("<blockquote>" + "<br>".join(parts) + "</blockquote>")
    return "\n\n".join(texts), "".join(htmls)


class SlackToMatrix:
    def __init__(self, connector: SlackConnector) -> None:
        self.connector = connector

    @property
    def hub(self) -> Hub:
        return self.connector.hub

    async def handle(self, ws: Workspace, room_id: str, payload: dict[str, Any]) -> str | None:
        event = payload["event"]
        kind = event.get("type")
        if kind == "message":
            return await self._message(ws, room_id, event, payload.get("event_id"))
        if kind in ("reaction_added", "reaction_removed"):
            return await self._reaction(ws, room_id, event, payload.get("event_id"))
        if kind in ("member_joined_channel", "member_left_channel"):
            return await self._membership(ws, room_id, event)
        if kind in ("channel_rename", "group_rename"):
            name = (event.get("channel") or {}).get("name")
            if name and room_id:
                await self.hub.enqueue([self._state(room_id, "m.room.name", {"name": name})])
            return "renamed"
        if kind in CHANNEL_STATE_EVENTS:
            channel = str(event.get("channel") or "")
            return await self.connector.channel_state_changed(
                ws, room_id, channel, CHANNEL_STATE_EVENTS[kind], event.get("user"))
        if kind == "user_change":
            user = event.get("user") or {}
            if isinstance(user, dict) and user.get("id"):
                self.connector.users.remember(ws, user)
                puppet = self.connector.puppet_user_id(f"{ws.team_id}_{user['id']}")
                async with self.hub.db.sessions() as session:
                    known = await store.get_puppet(session, puppet) is not None
                if known:  # someone who never wrote in a linked channel needs no puppet
                    await self.puppet(ws, str(user["id"]))
            return "profile"
        return None

    # --- people --------------------------------------------------------------------------

    async def puppet(self, ws: Workspace, user_id: str) -> str:
        """The puppet of a Slack user, its name and avatar kept current."""
        profile = await self.connector.users.get(ws, user_id)
        remote_id = f"{ws.team_id}_{user_id}"
        user_mxid = self.connector.puppet_user_id(remote_id)
        name, avatar = profile.name, profile.avatar_url
        if self.hub.puppet_known(user_mxid, name, avatar):
            return user_mxid
        # Known from before a restart: the picture is on the homeserver already, so it is
        # not fetched and uploaded again.
        async with self.hub.db.sessions() as session:
            stored = await store.get_puppet(session, user_mxid)
        if stored is not None and stored.avatar_mxc and stored.avatar_source == avatar:
            avatar_mxc: str | None = stored.avatar_mxc
        else:
            avatar_mxc = await self._avatar(avatar, user_mxid) if avatar else None
        await self.hub.ensure_puppet(NETWORK, remote_id, name, avatar, avatar_mxc)
        if stored is None or stored.displayname != name or stored.avatar_source != avatar:
            # Now, not only through the queue: clients name a message's sender by the
            # profile they had when it was sent, so a first message must not go out as
            # "@slack_t…_u…".
            await self.hub.apply_profile(user_mxid, name, avatar_mxc)
        return user_mxid

    async def _bot_puppet(self, ws: Workspace, event: dict[str, Any]) -> str:
        """Another app's or integration's message: a puppet per bot, named as it posted."""
        bot_id = str(event.get("bot_id") or "bot")
        profile = event.get("bot_profile") or {}
        name = str(event.get("username") or profile.get("name") or "Slack bot")
        return await self.hub.ensure_puppet(NETWORK, f"{ws.team_id}_{bot_id}", name)

    async def _avatar(self, url: str, user_mxid: str) -> str | None:
        try:
            async with self.connector.http.get(url) as response:
                if response.status != 200:
                    return None
                data = await response.read()
                mimetype = response.content_type or "image/png"
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("could not fetch the Slack avatar %s: %r", url, exc)
            return None
        return await self.hub.upload_media(data, mimetype, "avatar", user_id=user_mxid)

    async def _resolver(self, ws: Workspace, room_id: str, sender: str, text: str,
                        blocks: Any) -> _Resolver:
        users, channels, broadcast = _mentioned_ids(text, blocks)
        resolver = _Resolver(via_server=self.hub.config.homeserver.domain)
        if users:
            await self.hub.people.load()  # a linked person's mention names their account
        for user_id in users:
            try:
                profile = await self.connector.users.get(ws, user_id)
            except PermanentError:
                continue  # an unknown user stays "@U…"
            mxid = self.connector.linked_matrix_user(ws, user_id) or \
                self.connector.puppet_user_id(f"{ws.team_id}_{user_id}")
            resolver.users[user_id] = (mxid, profile.name)
        if channels:
            async with self.hub.db.sessions() as session:
                linked = await slack_store.linked_channels(
                    session, {space_of(ws.team_id, c) for c in channels})
            for channel_id in channels:
                name = await self.connector.channel_name(ws, channel_id)
                resolver.channels[channel_id] = (linked.get(space_of(ws.team_id, channel_id)),
                                                 name or channel_id)
        if broadcast:
            resolver.allow_room_mention = await self.connector.may_mention_room(room_id, sender)
        return resolver

    # --- messages ------------------------------------------------------------------------

    async def _message(self, ws: Workspace, room_id: str, event: dict[str, Any],
                       event_id: str | None) -> str | None:
        subtype = event.get("subtype")
        channel = str(event.get("channel") or "")
        if subtype == "message_changed":
            return await self._edit(ws, room_id, channel, event, event_id)
        if subtype == "message_deleted":
            return await self._delete(ws, room_id, channel, event)
        if subtype in TOPIC_SUBTYPES:
            return await self._topic(ws, room_id, channel, event)
        if subtype in IGNORED_SUBTYPES or subtype not in POSTING_SUBTYPES or not room_id:
            return None
        return await self.post_message(ws, room_id, channel, event)

    async def post_message(self, ws: Workspace, room_id: str, channel: str,
                           message: dict[str, Any]) -> str | None:
        """A new message (live, caught up or backfilled) into the room, exactly once."""
        ts = str(message.get("ts") or "")
        if not ts or ws.is_own(message):
            return None  # our own post: it came from Matrix
        space = space_of(ws.team_id, channel)
        async with self.hub.db.reading() as connection:
            mapped, link_id = await slack_store.arrival(connection, space, ts)
        if mapped:
            return None  # already in the room (posted from Matrix, or bridged before)
        # The link it comes through, for the origin marker (see _origin).
        origin = Origin(network=NETWORK, link_id=link_id) if link_id is not None else None
        if message.get("user") and message.get("subtype") != "bot_message":
            sender = await self.puppet(ws, str(message["user"]))
        else:
            sender = await self._bot_puppet(ws, message)
        text = str(message.get("text") or "")
        blocks = message.get("blocks")
        resolver = await self._resolver(ws, room_id, sender, text, blocks)
        formatted = slack_to_matrix(text, blocks if isinstance(blocks, list) else None, resolver)
        extra_text, extra_html = render_attachments(message.get("attachments"))
        thread_ts = message.get("thread_ts")
        in_thread = bool(thread_ts) and thread_ts != ts
        timestamp = ts_ms(ts)
        parts: list[RemotePart] = []
        files = [f for f in message.get("files") or [] if isinstance(f, dict)]
        content = self._text_content(formatted, extra_text, extra_html,
                                     emote=message.get("subtype") == "me_message")
        if content is not None and not (files and not (formatted.body.strip() or extra_text)):
            parts.append(RemotePart(sender=sender, content=content, remote_space=space,
                                    remote_id=ts, part=0, timestamp_ms=timestamp,
                                    thread_of=str(thread_ts) if in_thread else None))
        for index, file in enumerate(files, start=1):
            file_content = await self._file(ws, room_id, file, sender)
            if file_content is not None:
                parts.append(RemotePart(
                    sender=sender, content=file_content, remote_space=space, remote_id=ts,
                    part=index, timestamp_ms=timestamp,
                    thread_of=str(thread_ts) if in_thread else None))
        if in_thread and message.get("subtype") == "thread_broadcast" and content is not None:
            # "Also send to channel": in the thread, and in the main timeline as a reply.
            broadcast = dict(content)
            root = await self._event_of(space, str(thread_ts))
            if root is not None:
                broadcast["m.relates_to"] = {"m.in_reply_to": {"event_id": root}}
            parts.append(RemotePart(sender=sender, content=broadcast, remote_space=space,
                                    remote_id=ts, part=len(files) + 1, timestamp_ms=timestamp))
        if not parts:
            return None
        team_id = ws.team_id

        async def advance(session: AsyncSession) -> None:
            slack_store.note_cursor(session, team_id, channel, ts)

        await self.hub.post_parts(network=NETWORK, room_id=room_id, parts=parts, also=advance,
                                  dedup_key=f"posted:{message_key(team_id, channel, ts)}",
                                  origin=origin)
        return f"{len(parts)} event(s)"

    @staticmethod
    def _text_content(formatted: MatrixText, extra_text: str, extra_html: str,
                      emote: bool = False) -> dict[str, Any] | None:
        body = formatted.body
        body_html = formatted.html
        if extra_text:
            body = f"{body}\n{extra_text}".strip()
            body_html = (body_html or html.escape(formatted.body).replace("\n", "<br>")) + \
                extra_html
        if not body.strip():
            return None
        content: dict[str, Any] = {"msgtype": "m.emote" if emote else "m.text", "body": body}
        if body_html:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = body_html
        mentions: dict[str, Any] = {}
        if formatted.mentions:
            mentions["user_ids"] = sorted(set(formatted.mentions))
        if formatted.room_mention:
            mentions["room"] = True
        content["m.mentions"] = mentions
        return content

    async def _file(self, ws: Workspace, room_id: str, file: dict[str, Any], sender: str
                    ) -> dict[str, Any] | None:
        url = file.get("url_private_download") or file.get("url_private")
        name = str(file.get("name") or file.get("title") or "file")
        if not url or file.get("mode") in ("tombstone", "hidden_by_limit"):
            return None
        data = await self.connector.download_private(ws, str(url))
        mimetype = str(file.get("mimetype") or mimetypes.guess_type(name)[0]
                       or "application/octet-stream")
        media = await self.hub.upload_attachment(room_id, data, mimetype, name, user_id=sender)
        info: dict[str, Any] = {"mimetype": mimetype, "size": len(data)}
        if file.get("original_w") and file.get("original_h"):
            info["w"], info["h"] = int(file["original_w"]), int(file["original_h"])
        return {"msgtype": media_msgtype(mimetype), "body": name, "filename": name,
                **media, "info": info}

    async def _event_of(self, space: str, ts: str) -> str | None:
        async with self.hub.db.reading() as connection:
            mapped = await store.mappings_for_remote(connection, NETWORK, space, ts)
        return mapped[0].event_id if mapped else None

    @staticmethod
    async def _origin(session: Reader, space: str) -> Origin | None:
        """The link of the channel (``space``) an event came from, for the origin marker: a
        room may be linked to several channels, which must hear each other."""
        link = await store.link_by_remote(session, NETWORK, space)
        return Origin(network=NETWORK, link_id=link.id) if link is not None else None

    async def _edit(self, ws: Workspace, room_id: str, channel: str, event: dict[str, Any],
                    event_id: str | None) -> str | None:
        new = event.get("message") or {}
        old = event.get("previous_message") or {}
        if not room_id or not isinstance(new, dict) or ws.is_own(new) or not new.get("ts"):
            return None
        if new.get("text") == old.get("text") and new.get("blocks") == old.get("blocks") \
                and new.get("attachments") == old.get("attachments"):
            return None  # a link preview or a reply count changed, not the text
        space = space_of(ws.team_id, channel)
        async with self.hub.db.sessions() as session:
            mapped = await store.mappings_for_remote(session, NETWORK, space, str(new["ts"]))
            origin = await self._origin(session, space)
        # The text is part 0; a broadcast reply's copy in the main timeline is the last part.
        last = max((m.part for m in mapped), default=0)
        text_events = [m for m in mapped if m.part == 0 or (
            m.part == last and new.get("subtype") == "thread_broadcast")]
        if not text_events:
            if await self._on_its_way(ws, channel, str(new["ts"])):
                # Taken in moments ago, still on its way to the room (as for reactions):
                # an edit accepted now must not be dropped, so it waits for its message.
                raise TemporaryError("the message edited is not in the room yet")
            if not mapped and await self._mapping_expired(space, str(new["ts"])):
                # Bridged once, but its mapping is gone (retention.message_mappings_days):
                # the edited text is posted as a new message rather than lost.
                return await self.post_message(ws, room_id, channel, new)
            return None  # never bridged (before the link, or the file part only)
        sender = await self.puppet(ws, str(new["user"])) if new.get("user") else \
            await self._bot_puppet(ws, new)
        text = str(new.get("text") or "")
        blocks = new.get("blocks")
        resolver = await self._resolver(ws, room_id, sender, text, blocks)
        formatted = slack_to_matrix(text, blocks if isinstance(blocks, list) else None, resolver)
        extra_text, extra_html = render_attachments(new.get("attachments"))
        content = self._text_content(formatted, extra_text, extra_html,
                                     emote=new.get("subtype") == "me_message")
        if content is None:
            return None
        parts = []
        for target in text_events:
            edit = {**content, "body": f"* {content['body']}",
                    "m.new_content": content,
                    "m.relates_to": {"rel_type": "m.replace", "event_id": target.event_id}}
            if "formatted_body" in content:
                edit["formatted_body"] = f"* {content['formatted_body']}"
            parts.append(RemotePart(sender=sender, content=edit))
        await self.hub.post_parts(network=NETWORK, room_id=room_id, parts=parts,
                                  dedup_key=f"posted:{event_id}" if event_id else None,
                                  origin=origin)
        return "edited"

    async def _delete(self, ws: Workspace, room_id: str, channel: str,
                      event: dict[str, Any]) -> str | None:
        old = event.get("previous_message") or {}
        deleted_ts = event.get("deleted_ts") or old.get("ts")
        if not room_id or not deleted_ts or (isinstance(old, dict) and ws.is_own(old)):
            return None  # we deleted it because it was redacted in Matrix
        space = space_of(ws.team_id, channel)
        async with self.hub.db.sessions() as session:
            mapped = await store.mappings_for_remote(session, NETWORK, space, str(deleted_ts))
            origin = await self._origin(session, space)
        if not mapped:
            return None
        sender = None
        if isinstance(old, dict) and old.get("user"):
            sender = self.connector.puppet_user_id(f"{ws.team_id}_{old['user']}")
        await self.hub.enqueue([
            NewDelivery(network=MATRIX, room_id=room_id, kind="redact",
                        payload={"sender": sender, "event_id": m.event_id,
                                 "reason": "Deleted in Slack",
                                 "origin": origin.marker() if origin else None})
            for m in mapped])
        return f"redacted {len(mapped)}"

    async def _topic(self, ws: Workspace, room_id: str, channel: str,
                     event: dict[str, Any]) -> str | None:
        if not room_id:
            return None
        info = await self.connector.channel_info(ws, channel, fresh=True)
        topic = ((info.get("topic") or {}).get("value") or "").strip()
        purpose = ((info.get("purpose") or {}).get("value") or "").strip()
        # Matrix has one topic; Slack's topic wins, the purpose fills in when there is none.
        text = topic or purpose
        ts = str(event.get("ts") or "")

        async def advance(session: AsyncSession) -> None:
            if ts:
                await slack_store.advance_cursor(session, ws.team_id, channel, ts)

        await self.hub.enqueue([self._state(room_id, "m.room.topic", {"topic": text})],
                               also=advance)
        return "topic"

    @staticmethod
    def _state(room_id: str, event_type: str, content: dict[str, Any]) -> NewDelivery:
        return NewDelivery(network=MATRIX, room_id=room_id, kind="state",
                           payload={"event_type": event_type, "content": content,
                                    "state_key": ""})

    # --- reactions and membership ------------------------------------------------------

    async def _reaction(self, ws: Workspace, room_id: str, event: dict[str, Any],
                        event_id: str | None) -> str | None:
        item = event.get("item") or {}
        user = str(event.get("user") or "")
        name = str(event.get("reaction") or "")
        if not room_id or item.get("type") != "message" or not user or not name:
            return None
        if user == ws.bot_user_id:
            return None  # our own reaction: it came from Matrix
        space = space_of(ws.team_id, str(item.get("channel")))
        key = f"{item.get('ts')}/reaction/{user}/{name}"
        if event["type"] == "reaction_removed":
            async with self.hub.db.sessions() as session:
                mapped = await store.mappings_for_remote(session, NETWORK, space, key)
                origin = await self._origin(session, space)
            if not mapped:
                return None
            sender = self.connector.puppet_user_id(f"{ws.team_id}_{user}")

            async def forget(session: AsyncSession) -> None:
                await store.delete_mappings_for_remote(session, NETWORK, space, key)

            await self.hub.enqueue([
                NewDelivery(network=MATRIX, room_id=room_id, kind="redact",
                            payload={"sender": sender, "event_id": m.event_id,
                                     "origin": origin.marker() if origin else None})
                for m in mapped], also=forget)
            return "unreacted"
        if await self._event_of(space, key) is not None:
            return None  # in the room already (catch-up and a live event may both bring it)
        target = await self._event_of(space, str(item.get("ts")))
        if target is None:
            if await self._on_its_way(ws, str(item.get("channel")), str(item.get("ts"))):
                # Its message was taken in moments ago and waits to be sent to the room
                # (catch-up stores a new message and its reactions together): try again.
                raise TemporaryError("the message reacted to is not in the room yet")
            return None  # a message from before the link
        async with self.hub.db.sessions() as session:
            origin = await self._origin(session, space)
        sender = await self.puppet(ws, user)
        from bridge.slack.emoji import slack_emoji_to_unicode

        emoji = slack_emoji_to_unicode(name) or f":{name}:"
        part = RemotePart(sender=sender, event_type="m.reaction", remote_space=space,
                          remote_id=key, content={"m.relates_to": {
                              "rel_type": "m.annotation", "event_id": target, "key": emoji}})
        await self.hub.post_parts(network=NETWORK, room_id=room_id, parts=[part],
                                  dedup_key=f"posted:{event_id or key}", origin=origin)
        return "reacted"

    async def _mapping_expired(self, space: str, ts: str) -> bool:
        """A message written while the channel was linked, which has no mapping: it was
        bridged, and retention has removed its mapping since (a message from before the
        link never had one, and its edit stays out of the room as before)."""
        async with self.hub.db.sessions() as session:
            linked_at = await store.link_created_at(session, NETWORK, space)
        try:
            return linked_at is not None and float(ts) >= linked_at
        except ValueError:
            return False

    async def _on_its_way(self, ws: Workspace, channel: str, ts: str) -> bool:
        key = message_key(ws.team_id, channel, ts)
        async with self.hub.db.sessions() as session:
            age = await slack_store.seconds_since_claimed(session, key)
        return age is not None and age < ARRIVING_SECONDS

    async def _membership(self, ws: Workspace, room_id: str,
                          event: dict[str, Any]) -> str | None:
        user = str(event.get("user") or "")
        if not room_id or not user or user == ws.bot_user_id:
            return None
        if event["type"] == "member_joined_channel":
            puppet = await self.puppet(ws, user)
            await self.hub.enqueue([NewDelivery(network=MATRIX, room_id=room_id,
                                                kind="puppet_join", payload={"user": puppet})])
            return "joined"
        puppet = self.connector.puppet_user_id(f"{ws.team_id}_{user}")
        await self.hub.enqueue([NewDelivery(network=MATRIX, room_id=room_id, kind="leave",
                                            payload={"user": puppet,
                                                     "reason": "Left the Slack channel"})])
        return "left"
