"""The Matrix side of deliveries: the bot and the puppets act through mautrix intents.

Every send carries a transaction ID derived from the outbox item, so a delivery repeated
after a crash is deduplicated by the homeserver instead of posted twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from mautrix.api import Method, Path
from mautrix.appservice import AppServiceAPI, IntentAPI
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store import MemoryStateStore
from mautrix.errors import (
    IntentError,
    MatrixRequestError,
    MForbidden,
    MLimitExceeded,
    MNotFound,
)
from mautrix.types import (
    ContentURI,
    EventID,
    EventType,
    Membership,
    PowerLevelStateEventContent,
    RoomID,
    StateEvent,
    UserID,
)
from mautrix.util.logging import TraceLogger

from bridge import json_codec
from bridge.core.cache import BoundedCache
from bridge.core.errors import PermanentError, TemporaryError
from bridge.core.event_size import ENCRYPTED_CONTENT_LIMIT
from bridge.core.origin import ORIGIN_KEY, sign
from bridge.db import store
from bridge.db.queues import Delivery
from bridge.matrix import long_message
from bridge.matrix.intents import FILE_MARK, BridgeAppServiceAPI, download_attachment

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from bridge.core.hub import Hub
    from bridge.matrix.bot import Bot
    from bridge.matrix.crypto import BridgeCrypto

log = logging.getLogger("bridge.matrix")

# In the content of each message a puppet posts: the outbox delivery it came from, so that a
# delivery repeated after its process died finds the event it may have posted already.
DELIVERY_KEY = "net.matrix_hub_bridge.delivery"
# How far back in the room a repeated delivery looks for its earlier attempt's event.
ALREADY_SENT_LOOKBACK = 100


def raw(content: dict[str, Any]) -> Any:
    """Event content as plain JSON: mautrix sends dicts as they are (its types are for
    parsed events; the bridge builds content as JSON and keeps it that way)."""
    return content


def json_body(content: dict[str, Any]) -> Any:
    """Event content as the request body, encoded here: mautrix sends bytes as they are,
    and a long mail's text encodes several times faster than through its json.dumps.
    (mautrix adds a double-puppeting key to dict content only for real users' intents,
    which the bridge does not use.)"""
    return json_codec.dumps_bytes(content)


def _is_too_large(exc: MatrixRequestError) -> bool:
    return exc.errcode == "M_TOO_LARGE" or exc.http_status == 413


# Bounds of the in-process caches (see bridge/core/cache.py): a bridge in many rooms with
# many remote people keeps a steady size, and what ages out is simply looked up again.
CACHE_MAX_USERS = 10_000
CACHE_MAX_ROOMS = 2_000
CACHE_MAX_AGE_SECONDS = 3600.0


class CacheStateStore(MemoryStateStore, ASStateStore):
    """mautrix's in-memory membership and power-level cache, for the intents, holding the
    rooms last seen (at most ``max_rooms``, none unseen for longer than ``max_age_seconds``)
    and the puppets last known to be registered (at most ``max_users``, as long).

    mautrix's own stores only grow. Forgetting is safe: an intent that finds no membership
    joins again (a no-op for a member) and one that finds no registration registers again
    (answered "user in use", which mautrix takes as done)."""

    def __init__(self, max_rooms: int, max_users: int, max_age_seconds: float) -> None:
        MemoryStateStore.__init__(self)
        ASStateStore.__init__(self)
        self._rooms_seen: BoundedCache[str, bool] = BoundedCache(max_rooms, max_age_seconds)
        self._users_seen: BoundedCache[str, bool] = BoundedCache(max_users, max_age_seconds)

    def _rooms(self) -> set[str]:
        return (set(self.members) | set(self.full_member_list) | set(self.power_levels)
                | set(self.encryption) | set(self.create))

    async def update_state(self, evt: StateEvent) -> None:
        await super().update_state(evt)
        self._rooms_seen.set(evt.room_id, True)
        # Forgetting costs a scan of the stores' keys, so it is done only once they hold
        # a quarter more rooms than the bound.
        if len(self.members) > self._rooms_seen.max_items * 5 // 4:
            self.forget_unseen()

    async def registered(self, user_id: UserID) -> None:
        await super().registered(user_id)
        self._users_seen.set(user_id, True)
        if len(self._registered) > self._users_seen.max_items * 5 // 4:
            for user in [u for u in self._registered if self._users_seen.get(u) is None]:
                del self._registered[user]

    async def set_power_levels(
            self, room_id: RoomID, content: PowerLevelStateEventContent | dict[str, Any]
    ) -> None:
        # (Fetched by an intent that is about to check them: keep them among the seen.)
        await super().set_power_levels(room_id, content)
        self._rooms_seen.set(room_id, True)

    async def has_power_level(self, room_id: RoomID, user_id: UserID,
                              event_type: EventType) -> bool | None:
        allowed = await super().has_power_level(room_id, user_id, event_type)
        # mautrix fetches the power levels, then (after another request) checks them; a room
        # forgotten in between is unknown, not "too low". The homeserver decides then, and a
        # refusal from it is reported like any other.
        return True if allowed is None else allowed

    def forget_unseen(self) -> None:
        """Drop every room not among those last seen (or seen too long ago)."""
        for room_id in self._rooms():
            if self._rooms_seen.get(room_id) is None:
                for store_of_room in (self.members, self.full_member_list, self.power_levels,
                                      self.encryption, self.create):
                    store_of_room.pop(RoomID(room_id), None)


STATE_CACHED = {"m.room.power_levels", "m.room.create", "m.room.member", "m.room.encryption"}

UPLOAD_PIECE = 1 << 20


class UploadPieces:
    """A big upload's bytes handed to the HTTP client piece by piece: given them whole,
    aiohttp joins them with the request head and the socket transport keeps what it cannot
    send at once, two more copies (40 MB more for a 20 MB attachment). Iterable again for
    each retry, unlike a generator (mautrix retries only bodies it can send again)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __aiter__(self) -> AsyncIterator[memoryview]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[memoryview]:
        with memoryview(self.data) as view:
            for start in range(0, len(view), UPLOAD_PIECE):
                yield view[start:start + UPLOAD_PIECE]

    def __repr__(self) -> str:  # what mautrix logs as the request body
        return f"<{len(self.data)} bytes>"


@dataclass(slots=True)
class MissingPower:
    feature: str
    what: str
    needed: int


@dataclass(slots=True)
class PowerReport:
    level: int
    missing: list[MissingPower]

    def describe(self) -> str:
        lines = [f"⚠️ My power level here is {self.level}; until it is raised, I cannot:"]
        lines += [f"• {m.feature}: needs power level {m.needed} ({m.what})"
                  for m in self.missing]
        return "\n".join(lines)


class RealSender:
    """A linked person's own account, acting through the double-puppet registration's token
    (``?user_id=``). It only sends events and redactions: unlike a mautrix intent it never
    registers or joins, since the bridge never joins a real user to a room; a room the
    person is not in answers 403 and the puppet posts instead."""

    def __init__(self, api: AppServiceAPI, user_id: str,
                 crypto: BridgeCrypto | None = None, uploader: IntentAPI | None = None) -> None:
        self.api = api
        self.mxid = UserID(user_id)
        # In an encrypted room its events are encrypted with the bridge's device, as the
        # puppets' are (bridge/matrix/crypto.py); media uploads go through ``uploader``.
        self.crypto = crypto
        self.uploader = uploader

    async def send_message_event(self, room_id: RoomID, event_type: EventType, content: Any,
                                 txn_id: str, timestamp: int | None = None) -> EventID:
        if self.crypto is not None and self.uploader is not None:
            event_type, content = await self.crypto.encrypted_if_needed(
                self.uploader, room_id, event_type, content)
        answer = await self.api.request(
            Method.PUT, Path.v3.rooms[room_id].send[str(event_type)][txn_id], content,
            timestamp=timestamp)
        return EventID(answer["event_id"])

    async def redact(self, room_id: RoomID, event_id: str, txn_id: str,
                     reason: str | None, extra_content: dict[str, Any] | None) -> EventID:
        body: dict[str, Any] = dict(extra_content or {})
        if reason:
            body["reason"] = reason
        answer = await self.api.request(
            Method.PUT, Path.v3.rooms[room_id].redact[event_id][txn_id], body)
        return EventID(answer["event_id"])


class MatrixSide:
    def __init__(self, hub: Hub, session: aiohttp.ClientSession) -> None:
        self.hub = hub
        config = hub.config
        # A cache only: membership and power levels are re-read from the homeserver when a
        # decision depends on them, so a restart with an empty cache changes nothing.
        self.state_store = CacheStateStore(CACHE_MAX_ROOMS, CACHE_MAX_USERS,
                                           CACHE_MAX_AGE_SECONDS)
        # (Its intents encrypt in encrypted rooms once ``crypto`` is set: bridge/matrix/crypto.py.)
        self.api: AppServiceAPI = BridgeAppServiceAPI(
            base_url=config.homeserver.address,
            bot_mxid=UserID(config.bot_mxid),
            token=config.appservice.as_token,
            log=cast(TraceLogger, logging.getLogger("bridge.matrix.api")),
            state_store=self.state_store,
            client_session=session,
            bridge_name=config.appservice.id,
        )
        self.bot_intent: IntentAPI = self.api.bot_intent()
        self.bot: Bot | None = None
        # The bot's encryption device, when encryption.allow is on (set by the app).
        self.crypto: BridgeCrypto | None = None
        self._intents: BoundedCache[str, IntentAPI] = BoundedCache(CACHE_MAX_USERS,
                                                                    CACHE_MAX_AGE_SECONDS)
        # Profile writes go one at a time per user, and what each last set is remembered:
        # the write made right before a puppet's first message and the queued one would
        # otherwise race, and Synapse answers two concurrent changes of one user's profile
        # with a 500 ("Expected at most one task to cancel").
        self._profile_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = \
            weakref.WeakValueDictionary()
        # Forgetting one costs a profile read: mautrix compares with the homeserver's before
        # it writes, so an aged-out name is not written again (a member event in every room).
        self._profiles_set: BoundedCache[str, tuple[str | None, str | None]] = BoundedCache(
            CACHE_MAX_USERS, CACHE_MAX_AGE_SECONDS)

    async def upload(self, data: bytes, mimetype: str, filename: str | None,
                     user_id: str | None) -> str:
        # A real account (double puppeting) does not upload through the bridge: the bot does.
        intent = self.intent(user_id if user_id and self.hub.network_of(user_id) else None)
        await intent.ensure_registered()
        body: Any = data if len(data) <= UPLOAD_PIECE else UploadPieces(data)
        return str(await intent.upload_media(body, mime_type=mimetype, filename=filename,
                                             size=len(data)))

    async def upload_attachment(self, room_id: str, data: bytes, mimetype: str,
                                filename: str | None, user_id: str | None) -> dict[str, Any]:
        """Upload a file that a message of ``room_id`` will carry; the content keys that
        name it. In an encrypted room (when the bridge takes part in them) the file is
        encrypted before it leaves the bridge and named by ``file`` (no plain copy ever
        reaches the media repository); elsewhere it is uploaded as it is and named by
        ``url``. Without encryption allowed this asks nothing more than :meth:`upload`; with
        it, whether the room is encrypted comes from the state cache."""
        if self.crypto is not None and await self.crypto.is_encrypted(room_id):
            intent = self.intent(user_id if user_id and self.hub.network_of(user_id) else None)
            await intent.ensure_registered()
            from mautrix.crypto.attachments import encrypt_attachment  # (see intents.py)

            ciphertext, file = encrypt_attachment(data)
            body: Any = ciphertext if len(ciphertext) <= UPLOAD_PIECE \
                else UploadPieces(ciphertext)
            file.url = await intent.upload_media(body, mime_type="application/octet-stream",
                                                 size=len(ciphertext))
            return {"file": file.serialize()}
        return {"url": await self.upload(data, mimetype, filename, user_id)}

    async def download(self, mxc: str) -> bytes:
        if FILE_MARK in mxc:  # an attachment of an encrypted room
            return await download_attachment(self.bot_intent, mxc)
        return await self.bot_intent.download_media(ContentURI(mxc))

    async def member_name(self, room_id: str, user_id: str) -> str | None:
        name, _ = await self.member_profile(room_id, user_id)
        return name

    async def member_profile(self, room_id: str, user_id: str) -> tuple[str | None, str | None]:
        """(display name, avatar mxc) the user has in the room."""
        try:
            member = await self.bot_intent.get_state_event(
                RoomID(room_id), EventType.ROOM_MEMBER, user_id)
        except MatrixRequestError:
            return None, None
        name = getattr(member, "displayname", None)
        avatar = getattr(member, "avatar_url", None)
        return (str(name) if name else None), (str(avatar) if avatar else None)

    async def may_mention_room(self, room_id: str, user_id: str) -> bool:
        """May ``user_id`` notify the whole room (@room), by the room's power levels?"""
        try:
            levels: PowerLevelStateEventContent = await self.bot_intent.get_power_levels(
                RoomID(room_id))
        except MatrixRequestError:
            return False
        needed = (levels.notifications.room if levels.notifications else None)
        return levels.get_user_level(UserID(user_id)) >= (50 if needed is None else needed)

    async def is_joined(self, room_id: str, user_id: str) -> bool:
        """Is ``user_id`` joined to the room now (as its state says)?"""
        try:
            member = await self.bot_intent.get_state_event(
                RoomID(room_id), EventType.ROOM_MEMBER, user_id)
        except (MNotFound, MForbidden):  # never in the room, or the bot is not
            return False
        return getattr(member, "membership", None) == Membership.JOIN

    def real_sender(self, user_id: str) -> RealSender:
        """A linked person's own account (double puppeting)."""
        api = self.api.real_user(UserID(user_id), self.hub.config.double_puppet.as_token,
                                 as_token=True)
        return RealSender(api, user_id, getattr(self.api, "crypto", None), self.bot_intent)

    async def _sender_of(self, room_id: str, event_id: str) -> str | None:
        try:
            event = await self.bot_intent.get_event(RoomID(room_id), EventID(event_id))
        except MatrixRequestError:
            return None
        return str(event.sender)

    async def _acting(self, room_id: str, puppet: str | None,
                      changes: str | None = None) -> str | None:
        """The real account that sends this puppet's event (double puppeting), or None for
        the puppet itself. An edit or a redaction (``changes``: the event it changes) comes
        from whoever sent that event, so that clients accept it."""
        people = self.hub.double_puppets
        if not people.enabled or not puppet:
            return None
        if changes is not None:
            if await self.hub.people.account_of(puppet) is None:
                return None  # not a linked person's puppet: no need to ask who sent it
            original = await self._sender_of(room_id, changes)
            return original if original and await people.may_act_for(puppet, original) \
                else None
        return await people.account_for(room_id, puppet)

    async def room_name(self, room_id: str) -> str | None:
        try:
            state = await self.bot_intent.get_state_event(RoomID(room_id), EventType.ROOM_NAME)
        except MatrixRequestError:
            return None
        name = getattr(state, "name", None)
        return str(name) if name else None

    async def canonical_alias(self, room_id: str) -> str | None:
        """The room's canonical alias as its state says now (None: none, or unreadable)."""
        try:
            state = await self.bot_intent.get_state_event(RoomID(room_id),
                                                          EventType.ROOM_CANONICAL_ALIAS)
        except MatrixRequestError:
            return None
        alias = getattr(state, "canonical_alias", None)
        return str(alias) if alias else None

    def intent(self, user_id: str | None) -> IntentAPI:
        if not user_id or user_id == self.hub.bot_mxid:
            return self.bot_intent
        # mautrix builds a new IntentAPI (wrapping some thirty methods) per call: kept per
        # puppet instead, as it holds no state of its own.
        intent = self._intents.get(user_id)
        if intent is None:
            intent = self.bot_intent.user(UserID(user_id))
            self._intents.set(user_id, intent)
        return intent

    async def note_state(self, event: dict[str, Any]) -> None:
        """Keep the intents' membership and power-level cache in step with the room."""
        if event.get("type") not in STATE_CACHED:
            return
        try:
            parsed = StateEvent.deserialize(raw(event))
        except Exception:
            return  # malformed state from the homeserver: the cache just stays as it was
        await self.state_store.update_state(parsed)

    # --- delivery ------------------------------------------------------------------------

    async def deliver(self, delivery: Delivery) -> str | None:
        handler = getattr(self, f"_deliver_{delivery.kind}", None)
        if handler is None:
            raise PermanentError(f"unknown Matrix delivery kind {delivery.kind!r}")
        try:
            return await handler(delivery, delivery.payload)
        except MLimitExceeded as exc:
            # mautrix does not expose retry_after_ms; the outbox backoff takes over instead.
            raise TemporaryError("rate limited by the homeserver") from exc
        except IntentError as exc:
            raise PermanentError(str(exc), hint=await self._power_hint(delivery.room_id)) from exc
        except MForbidden as exc:
            raise PermanentError(f"the homeserver refused: {exc.message}",
                                 hint=await self._power_hint(delivery.room_id)) from exc
        except MatrixRequestError as exc:
            if exc.http_status >= 500 or exc.http_status in (408, 429):
                raise TemporaryError(f"homeserver error {exc.http_status}: {exc.message}") from exc
            raise PermanentError(f"homeserver refused ({exc.errcode}): {exc.message}") from exc

    async def _deliver_notice(self, d: Delivery, p: dict[str, Any]) -> str:
        content: dict[str, Any] = {"msgtype": "m.notice", "body": p["text"]}
        if p.get("html"):
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = p["html"]
        return await self.bot_intent.send_message_event(
            RoomID(d.room_id), EventType.ROOM_MESSAGE, json_body(content),
            txn_id=f"ob{d.id}"
        )

    async def _deliver_message(self, d: Delivery, p: dict[str, Any]) -> str:
        """A message from a puppet (or the bot), with an optional mapping to its remote ID."""
        intent = self.intent(p.get("sender"))
        kwargs: dict[str, Any] = {"txn_id": f"ob{d.id}"}
        if p.get("ts"):
            kwargs["timestamp"] = int(p["ts"])
        # The delivery's mark in the event, for a repeat to find it by (_already_sent).
        content = {**p["content"], DELIVERY_KEY: kwargs["txn_id"]}
        thread_root = await self._thread_root(p.get("thread_of"))
        if thread_root is not None:
            content["m.relates_to"] = {"rel_type": "m.thread", "event_id": thread_root,
                                       "is_falling_back": True,
                                       "m.in_reply_to": {"event_id": thread_root}}
        elif isinstance(content.get("m.relates_to"), dict):
            relates = content["m.relates_to"]
            if relates.get("rel_type") == "m.thread":
                thread_root = relates.get("event_id")
        event_type = p.get("event_type", "m.room.message")
        relates = content.get("m.relates_to")
        edited = relates.get("event_id") if isinstance(relates, dict) and \
            relates.get("rel_type") == "m.replace" else None
        # Only with an origin marker, which the proof makes trusted: an unmarked event
        # from a real account would be relayed back to where it came from.
        acting = await self._acting(d.room_id, p.get("sender"),
                                    str(edited) if edited else None) \
            if ORIGIN_KEY in content else None
        # Taken over from a process that died, or tried before with an error that may
        # have come after Synapse took the event: it may be in the room already.
        event_id = await self._already_sent(
            d, kwargs["txn_id"], {str(intent.mxid), *([acting] if acting else [])}) \
            if d.taken_over or d.attempts else None
        if event_id is not None:
            log.info("delivery %s was posted by an earlier attempt (%s); not posting it "
                     "again", d.id, event_id)
        elif acting is not None:
            # As the linked person (double puppeting), with a timestamp the bridge sets and
            # signs, so the event's origin marker is trusted when it comes back.
            ts = int(kwargs.get("timestamp") or time.time() * 1000)
            signed = sign(content, self.hub.double_puppets.key, d.room_id, acting,
                          timestamp_ms=ts)
            try:
                event_id = await self._send(d, self.real_sender(acting), event_type, signed,
                                            thread_root, {**kwargs, "timestamp": ts})
            except MForbidden as exc:
                # Left the room since it was checked: the puppet posts instead.
                log.info("delivery %s: %s may not post in %s (%s); the puppet posts",
                         d.id, acting, d.room_id, exc.message)
                self.hub.double_puppets.note_membership(d.room_id, acting, "leave")
            else:
                try:
                    await self.hub.double_puppets.posted_as(d.room_id, str(p["sender"]), acting)
                except Exception:  # sent already: finishing the retirement can wait
                    log.exception("delivery %s: could not check %s's retired puppet", d.id,
                                  acting)
        if event_id is None:
            event_id = await self._send(d, intent, event_type, content, thread_root, kwargs)
        mapping = p.get("mapping")
        if mapping:
            def record(connection: Connection) -> None:
                store.add_mapping_sync(connection, room_id=d.room_id, event_id=event_id,
                                       thread_root=thread_root, **mapping)

            if d.with_outcome_sync is not None:
                d.with_outcome_sync.append(record)  # recorded with the delivery's success
            else:
                async with self.hub.db.transaction() as session:
                    await session.run_sync(lambda s: record(s.connection()))
        return str(event_id)

    async def _already_sent(self, d: Delivery, txn_id: str,
                            senders: set[str]) -> EventID | None:
        """The event an earlier attempt of ``d`` posted, if the room's recent timeline has
        it. Synapse dedupes a repeated transaction ID of an appservice only in memory, so
        after a bridge process died mid-delivery, or an attempt failed after Synapse had
        taken the event, and Synapse restarted, sending again would post the message twice.
        (Encrypted events hide their content: not found there.)"""
        try:
            page = await self.bot_intent.api.request(
                Method.GET, Path.v3.rooms[RoomID(d.room_id)].messages,
                query_params={"dir": "b", "limit": str(ALREADY_SENT_LOOKBACK)})
        except MatrixRequestError as exc:
            if exc.http_status >= 500:
                raise
            log.warning("delivery %s: could not read %s to check for an earlier attempt: %s",
                        d.id, d.room_id, exc)
            return None
        for event in page.get("chunk") or []:
            content = event.get("content")
            # Only from whom the bridge would have sent it: anyone could copy the mark.
            if isinstance(content, dict) and content.get(DELIVERY_KEY) == txn_id and \
                    event.get("sender") in senders:
                return EventID(str(event["event_id"]))
        return None

    async def _send(self, d: Delivery, intent: IntentAPI | RealSender, event_type: str,
                    content: dict[str, Any], thread_root: str | None,
                    kwargs: dict[str, Any]) -> EventID:
        long_text = event_type == "m.room.message" and long_message.can_shorten(content)
        encoded = json_body(content)
        limit = long_message.CONTENT_LIMIT
        if long_text and len(encoded) > ENCRYPTED_CONTENT_LIMIT and self.crypto is not None \
                and await self.crypto.is_encrypted(d.room_id):
            limit = ENCRYPTED_CONTENT_LIMIT  # encrypted, the event grows by a third
        if long_text and len(encoded) > limit:
            return await self._send_long_message(d, intent, content, thread_root, kwargs,
                                                 limit=limit)
        try:
            return await intent.send_message_event(
                RoomID(d.room_id), EventType.find(event_type), encoded, **kwargs,
            )
        except MatrixRequestError as exc:
            # Our estimate of the envelope was short for this homeserver: cut deeper.
            if not (long_text and _is_too_large(exc)):
                raise
            return await self._send_long_message(
                d, intent, content, thread_root, kwargs,
                limit=min(limit, len(encoded)) // 2)

    async def _send_long_message(self, d: Delivery, intent: IntentAPI | RealSender,
                                 content: dict[str, Any],
                                 thread_root: str | None, kwargs: dict[str, Any],
                                 limit: int = long_message.CONTENT_LIMIT) -> EventID:
        """A message over the homeserver's event size limit: its beginning, then the whole
        text as a file from the same sender. Returns the first event's ID (the one the
        message mapping points at: replies, edits and deletions refer to it)."""
        data, mimetype, filename = long_message.full_text_file(content)
        # Uploaded first: repeating an upload after a failure is harmless, and the note
        # "continued in the attached file" never stands without its file.
        media = await self.upload_attachment(d.room_id, data, mimetype, filename,
                                             str(intent.mxid))
        first = await intent.send_message_event(
            RoomID(d.room_id), EventType.ROOM_MESSAGE,
            json_body(long_message.beginning(content, limit)), **kwargs)
        attachment: dict[str, Any] = {
            "msgtype": "m.file", "body": filename, "filename": filename, **media,
            "info": {"mimetype": mimetype, "size": len(data)},
        }
        if thread_root is not None:
            attachment["m.relates_to"] = {"rel_type": "m.thread", "event_id": thread_root,
                                          "is_falling_back": True,
                                          "m.in_reply_to": {"event_id": first}}
        else:
            attachment["m.relates_to"] = {"m.in_reply_to": {"event_id": first}}
        if ORIGIN_KEY in content:  # the file came the same way as its beginning
            attachment[ORIGIN_KEY] = content[ORIGIN_KEY]
        await intent.send_message_event(
            RoomID(d.room_id), EventType.ROOM_MESSAGE, json_body(attachment),
            **{**kwargs, "txn_id": f"{kwargs['txn_id']}-file"})
        log.info("delivery %s: message of %d bytes posted as its beginning and %s",
                 d.id, len(data), filename)
        return first

    async def _thread_root(self, ref: dict[str, Any] | None) -> str | None:
        """The Matrix thread root for a part that names its root by remote message ID."""
        if not ref:
            return None
        async with self.hub.db.reading() as connection:
            mapped = await store.mappings_for_remote(connection, ref["network"],
                                                     ref["remote_space"], ref["remote_id"])
        if not mapped:
            return None  # the root never made it to Matrix: post in the main timeline
        return mapped[0].thread_root or mapped[0].event_id

    async def _deliver_state(self, d: Delivery, p: dict[str, Any]) -> str:
        intent = self.intent(p.get("sender"))
        event_id = await intent.send_state_event(
            RoomID(d.room_id), EventType.find(p["event_type"], EventType.Class.STATE), p["content"],
            state_key=p.get("state_key", ""),
        )
        return str(event_id)

    async def _deliver_redact(self, d: Delivery, p: dict[str, Any]) -> str:
        intent = self.intent(p.get("sender"))
        # The origin marker rides in the redaction's content (the homeserver keeps extra
        # keys of the PUT /redact body), so the relay rule knows which link deleted it.
        extra = {ORIGIN_KEY: p["origin"]} if p.get("origin") else None
        acting = await self._acting(d.room_id, p.get("sender"), str(p["event_id"])) \
            if extra else None
        if acting is not None:
            # Removed by whoever sent it: the linked person's own account.
            signed = sign(extra or {}, self.hub.double_puppets.key, d.room_id, acting,
                          redacts=str(p["event_id"]))
            try:
                return str(await self.real_sender(acting).redact(
                    RoomID(d.room_id), str(p["event_id"]), f"ob{d.id}", p.get("reason"),
                    signed or None))
            except MForbidden as exc:
                log.info("delivery %s: %s may not redact in %s (%s); the puppet tries",
                         d.id, acting, d.room_id, exc.message)
        return str(await intent.redact(RoomID(d.room_id), p["event_id"], reason=p.get("reason"),
                                       extra_content=extra))

    async def set_profile(self, user_id: str, displayname: str | None,
                          avatar_mxc: str | None) -> None:
        try:
            await self._set_profile(user_id, displayname, avatar_mxc)
        except MatrixRequestError as exc:
            raise TemporaryError(f"could not set the profile of {user_id}: {exc}") from exc

    async def _set_profile(self, user_id: str, displayname: str | None,
                           avatar_mxc: str | None) -> None:
        lock = self._profile_locks.get(user_id)
        if lock is None:
            lock = self._profile_locks[user_id] = asyncio.Lock()
        async with lock:
            name_set, avatar_set = self._profiles_set.get(user_id) or (None, None)
            intent = self.intent(user_id)
            await intent.ensure_registered()
            if displayname is not None and displayname != name_set:
                await intent.set_displayname(displayname)
                name_set = displayname
                self._profiles_set.set(user_id, (name_set, avatar_set))
            if avatar_mxc and avatar_mxc != avatar_set:
                await intent.set_avatar_url(ContentURI(avatar_mxc))
                self._profiles_set.set(user_id, (name_set, avatar_mxc))

    async def _deliver_profile(self, d: Delivery, p: dict[str, Any]) -> None:
        await self._set_profile(p["user"], p.get("displayname"), p.get("avatar_mxc"))

    async def _deliver_puppet_join(self, d: Delivery, p: dict[str, Any]) -> None:
        """A remote person joined the remote conversation: their puppet joins the room."""
        intent = self.intent(p["user"])
        await intent.ensure_registered()
        await intent.ensure_joined(RoomID(d.room_id))
        return None

    async def _deliver_puppet_retire(self, d: Delivery, p: dict[str, Any]) -> None:
        """A linked person's puppet leaves the room, if their own account is a member (and
        the puppet is, and the link still stands): decided now, not when it was queued."""
        puppet, account = p["user"], p["account"]
        people = self.hub.double_puppets
        if not people.enabled or await self.hub.people.account_of(puppet) != account:
            return None
        if not await self.is_joined(d.room_id, account) or \
                not await self.is_joined(d.room_id, puppet):
            return None
        await self.intent(puppet).leave_room(
            RoomID(d.room_id), reason=f"now writes here as {account}")
        people.note_membership(d.room_id, puppet, "leave")
        log.info("%s left %s: %s writes there with their own account", puppet, d.room_id,
                 account)
        return None

    async def _deliver_leave(self, d: Delivery, p: dict[str, Any]) -> None:
        await self.intent(p["user"]).leave_room(RoomID(d.room_id), reason=p.get("reason"))
        return None

    async def _deliver_join(self, d: Delivery, p: dict[str, Any]) -> None:
        """The bot accepts an admin's invitation, then says what it can and cannot do."""
        await self.bot_intent.join_room_by_id(RoomID(d.room_id))
        if p.get("direct_only") and not await self._only_us(RoomID(d.room_id),
                                                            p.get("inviter")):
            # Someone who is not an admin may only have a direct chat with the bot.
            log.info("leaving %s: %s invited the bot into a room with others", d.room_id,
                     p.get("inviter"))
            await self.bot_intent.leave_room(
                RoomID(d.room_id),
                reason=f"{p.get('inviter')} may not invite the bot into a room with others: "
                       "only the bridge's admins (bridge.admins in its config) can. A direct "
                       "chat with the bot is open to everyone of this homeserver.")
            return None
        is_direct = bool(p.get("is_direct"))
        name = None
        if not is_direct:
            is_direct, name = await self._looks_direct(RoomID(d.room_id), p.get("inviter"))
        # The room's name and alias were set before the bot could see them: read once, so
        # listings and the report name the room; later changes come as state events.
        alias = None if is_direct else await self.canonical_alias(d.room_id)
        async with self.hub.db.transaction() as session:
            await store.ensure_portal(session, d.room_id, is_direct=is_direct)
            if name is not None:
                await store.set_portal_naming(session, d.room_id, "name", name)
            if alias is not None:
                await store.set_portal_naming(session, d.room_id, "alias", alias)
        log.info("joined %s on the invitation of %s%s", d.room_id, p.get("inviter"),
                 " (direct chat)" if is_direct else "")
        if is_direct and p.get("direct_only"):
            text = ("Hello! I am the bridge bot. Here you can link your accounts on other "
                    "networks to your Matrix account: send `help me` to see how.")
        elif is_direct:
            text = "Hello! I am the bridge bot. Send `help` to see what I can do."
        else:
            text = (f"Hello! I am the bridge bot. Send `{self.hub.prefix} help` to see what "
                    "I can do.")
            report = await self.power_report(RoomID(d.room_id))
            if report.missing:
                text += "\n" + report.describe()
        await self.bot_intent.send_notice(RoomID(d.room_id), text, txn_id=f"ob{d.id}")
        return None

    async def _only_us(self, room_id: RoomID, inviter: str | None) -> bool:
        """Whether only the inviter and the bot are in the room (joined or invited)."""
        members = await self.bot_intent.get_room_members(
            room_id, allowed_memberships=(Membership.JOIN, Membership.INVITE))
        return set(members) <= {self.hub.bot_mxid, inviter}

    async def _looks_direct(self, room_id: str, inviter: str | None) -> tuple[bool, str | None]:
        """Some clients start a direct chat without the is_direct flag: an unnamed room
        with only the inviter and the bot in it is treated as one. Also the room's name,
        read on the way (None if it has none)."""
        try:
            state = await self.bot_intent.get_state_event(RoomID(room_id), EventType.ROOM_NAME)
        except MNotFound:
            members = await self.bot_intent.get_room_members(
                RoomID(room_id), allowed_memberships=(Membership.JOIN, Membership.INVITE))
            return set(members) <= {self.hub.bot_mxid, inviter}, None
        name = getattr(state, "name", None)
        return False, str(name) if name else None

    async def _deliver_reject_invite(self, d: Delivery, p: dict[str, Any]) -> None:
        log.info("declining the invitation to %s: %s", d.room_id, p.get("reason"))
        try:
            await self.bot_intent.leave_room(RoomID(d.room_id), reason=p.get("reason"))
        except MatrixRequestError as exc:
            if exc.http_status not in (403, 404):  # invite already withdrawn
                raise
        return None

    async def _deliver_decrypt(self, d: Delivery, p: dict[str, Any]) -> None:
        """An encrypted message whose key had not arrived: wait for it (crypto.py)."""
        if self.crypto is None:
            raise PermanentError("encryption.allow is off: the bridge cannot decrypt")
        await self.crypto.deliver_waiting(d, p)
        return None

    async def _deliver_encryption_on(self, d: Delivery, p: dict[str, Any]) -> None:
        """A linked room turned encryption on: tell it what that means (encryption.py)."""
        from bridge.matrix.encryption import deliver_turned_on

        await deliver_turned_on(self, f"ob{d.id}", d.room_id, p)
        return None

    async def _deliver_command(self, d: Delivery, p: dict[str, Any]) -> None:
        assert self.bot is not None
        await self.bot.run(d, p)
        return None

    # --- power levels --------------------------------------------------------------------

    async def power_report(self, room_id: str) -> PowerReport:
        """What the bot cannot do in the room for lack of power level, read fresh."""
        levels: PowerLevelStateEventContent = await self.bot_intent.get_power_levels(
            RoomID(room_id), ignore_cache=True
        )
        # Room version 12 gives creators unlimited power outside the power-level event.
        create = await self.bot_intent.get_state_event(RoomID(room_id), EventType.ROOM_CREATE,
                                                       format="event")
        mine = levels.get_user_level(UserID(self.hub.bot_mxid),
                                     create if isinstance(create, StateEvent) else None)
        wanted = [
            ("invite remote users (puppets) into the room", "invite", levels.invite),
            ("rename the room when the remote conversation is renamed", "m.room.name",
             levels.get_event_level(EventType.ROOM_NAME)),
            ("change the topic when the remote conversation's topic changes", "m.room.topic",
             levels.get_event_level(EventType.ROOM_TOPIC)),
            ("remove messages that were deleted on the remote side", "redact", levels.redact),
            ("show which remote conversations are linked (m.bridge)", "m.bridge",
             levels.get_event_level(EventType.find("m.bridge", EventType.Class.STATE))),
        ]
        return PowerReport(mine, [MissingPower(feature, what, needed)
                                  for feature, what, needed in wanted if mine < needed])

    async def _power_hint(self, room_id: str) -> str | None:
        try:
            report = await self.power_report(RoomID(room_id))
        except Exception:
            return None
        return report.describe() if report.missing else None
