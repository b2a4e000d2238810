"""End-to-bridge encryption: the bridge takes part in end-to-end encrypted rooms.

No cryptography is written here: mautrix's Olm machine (``mautrix.crypto.OlmMachine``, on
python-olm) does it, with its crypto store (``PgCryptoStore``) in the bridge's own database
(SQLite or PostgreSQL, its ``crypto_*`` tables beside the bridge's; mautrix creates and
upgrades them itself, the bridge's alembic migrations leave them alone). A restart, or a
second bridge process on the same PostgreSQL, finds every session there.

How keys reach the bridge: the homeserver puts the bot device's to-device messages (MSC2409),
device list changes and one-time-key counts (MSC3202) into the appservice transactions
(``AppserviceServer.transaction`` hands them to :meth:`BridgeCrypto.handle_transaction`
before anything else). Synapse does not let the appservice's own bot user ``/sync``.

Inbound: the encrypted events of a transaction are decrypted before they are stored, so the
inbox, the relay rule and the connectors only ever see plain events. One the bridge cannot
decrypt yet (it never got the session) is not relayed: it becomes a ``decrypt`` delivery in
a lane of its own, which asks the sender's device for the key, waits for it up to
``encryption.key_wait_seconds``, then either routes the decrypted event like any other or
tells the room once that the message could not be bridged.

Outbound: every message event the bridge's intents send into an encrypted room (puppets and
the bot alike) is encrypted with the bot device's Megolm session for the room; a puppet sends
the ``m.room.encrypted`` event itself. The connectors' attachments for an encrypted room
are encrypted before they are uploaded (``MatrixSide.upload_attachment``: content names them
by ``file``, no plain copy is stored); content that still names media by ``url`` (queued
before the room turned encrypted) has it uploaded again encrypted (:meth:`encrypt_media`).

SQLite: the crypto store has its own connection to the bridge's file. The bridge's writing
transactions take the write lock up front (BEGIN IMMEDIATE), so nothing here is ever called
inside one (it would wait for a lock its own caller holds).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import orjson
from mautrix.api import Method, Path
from mautrix.appservice import IntentAPI
from mautrix.client import Client
from mautrix.crypto import InboundGroupSession, OlmMachine, PgCryptoStore, StateStore
from mautrix.crypto.attachments import encrypt_attachment
from mautrix.errors import (
    DecryptionError,
    EncryptionError,
    MatrixError,
    MatrixRequestError,
)
from mautrix.types import (
    ASToDeviceEvent,
    DeviceID,
    DeviceLists,
    DeviceOTKCount,
    EncryptedEvent,
    EncryptedMegolmEventContent,
    EventType,
    IdentityKey,
    LoginType,
    Membership,
    RoomEncryptionStateEventContent,
    RoomID,
    Serializable,
    SessionID,
    TrustState,
    UserID,
)
from mautrix.util.async_db import Database
from mautrix.util.async_db.aiosqlite import SQLiteDatabase, TxnConnection, in_transaction
from mautrix.util.logging import TraceLogger
from sqlalchemy.engine import make_url

from bridge import json_codec
from bridge.core.errors import PermanentError, TemporaryError
from bridge.db import crypto as crypto_store
from bridge.db import queues
from bridge.db.queues import Delivery, InboxEntry, NewDelivery

# (In their own module, which does not import Olm: a bridge without encryption.allow never
# loads this one. Also importable from here, as before.)
from bridge.matrix.intents import (  # noqa: F401
    FILE_MARK,
    BridgeAppServiceAPI,
    EncryptingIntent,
    download_attachment,
    room_encryption,
)
from bridge.matrix.transaction_gaps import transaction_field

if TYPE_CHECKING:
    from bridge.config import Config
    from bridge.matrix.side import MatrixSide

log = logging.getLogger("bridge.matrix.crypto")

MATRIX = "matrix"
# mautrix pickles the Olm objects with this key (as its bridges do: the database is the
# secret to guard, a key next to it in the config would add nothing).
PICKLE_KEY = "matrix-hub-bridge"
# Transactions in a row without one-time-key counts before the bridge says that the
# homeserver does not send them (MSC3202 off).
MISSING_COUNTS_BEFORE_ALARM = 3
# Users per /keys/query when the devices of everyone tracked are re-read.
DEVICE_REFRESH_CHUNK = 100
# Wait for a missing key in pieces of this length; the outbox tries again in between.
KEY_WAIT_PIECE_SECONDS = 20.0


class ImmediateTxnConnection(TxnConnection):
    """mautrix's SQLite connection, whose transactions take the write lock up front (BEGIN
    IMMEDIATE) as the bridge's do (bridge/db/engine.py). mautrix begins them deferred: a
    transaction that reads, then writes (storing a user's fetched devices) fails at once with
    "database is locked" when the bridge's connection wrote in between (SQLite cannot move a
    read snapshot forward), where waiting for the lock would have done. A copy of
    ``TxnConnection.transaction`` with that one word; tests/test_workarounds.py notices when
    mautrix changes it."""

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:  # type: ignore[override]
        if in_transaction.get():
            yield
            return
        await self.execute("BEGIN IMMEDIATE")
        token = in_transaction.set(True)
        try:
            yield
        except Exception:
            await self.rollback()
            raise
        else:
            await self.commit()
        finally:
            in_transaction.reset(token)


def _immediate_transactions(db: Database) -> None:
    """Turn the started SQLite pool's connections into :class:`ImmediateTxnConnection`s (it
    adds no state, only the transaction's first statement)."""
    if not isinstance(db, SQLiteDatabase) or db._parent is not None:
        return
    connections = [db._pool.get_nowait() for _ in range(db._pool.qsize())]
    for connection in connections:
        connection.__class__ = ImmediateTxnConnection
        db._pool.put_nowait(connection)


def crypto_database_url(url: str) -> str:
    """The bridge's SQLAlchemy database URL as mautrix's database layer names it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path in ("", ":memory:"):
            raise ValueError("encryption.allow needs a database file or PostgreSQL: keys kept "
                             "in an in-memory SQLite database would be lost on restart")
        return f"sqlite:{path}"
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


# The plaintext of the Megolm event last decrypted in this task: the content is relayed as the
# sender wrote it (mautrix's parsed event, serialized again, adds and reorders keys).
_PLAINTEXT: ContextVar[str | None] = ContextVar("bridge_megolm_plaintext", default=None)


class _RecordingGroupSession(InboundGroupSession):
    """mautrix's inbound Megolm session, noting what it decrypts in :data:`_PLAINTEXT`."""

    def decrypt(self, ciphertext: str) -> tuple[str, int]:  # type: ignore[override]
        plaintext, index = super().decrypt(ciphertext)
        _PLAINTEXT.set(plaintext)
        return plaintext, index


class BridgeCryptoStore(PgCryptoStore):
    """mautrix's crypto store, handing out sessions that note their plaintext (the class
    swap adds no state: the subclass only overrides ``decrypt``)."""

    async def get_group_session(self, room_id: RoomID,
                                session_id: SessionID) -> InboundGroupSession | None:
        session = await super().get_group_session(room_id, session_id)
        if session is not None and type(session) is InboundGroupSession:
            session.__class__ = _RecordingGroupSession
        return session


class RoomEncryption(StateStore):
    """Which rooms are encrypted, for the Olm machine: read from the homeserver, kept in the
    intents' state cache (which the room's m.room.encryption events update)."""

    def __init__(self, side: MatrixSide) -> None:
        self.side = side

    async def is_encrypted(self, room_id: RoomID) -> bool:
        return await self.get_encryption_info(room_id) is not None

    async def get_encryption_info(self, room_id: RoomID) -> RoomEncryptionStateEventContent | None:
        return await room_encryption(self.side, room_id)

    async def find_shared_rooms(self, user_id: UserID) -> list[RoomID]:
        # Every encrypted portal: a device change of a user makes the bridge start new
        # sessions there (a room the user is not in costs only a new session).
        async with self.side.hub.db.sessions() as session:
            rooms = await crypto_store.portal_room_ids(session)
        return [RoomID(r) for r in rooms if await self.is_encrypted(RoomID(r))]


@dataclass(slots=True)
class _Pending:
    """An encrypted event the bridge could not decrypt when it arrived."""

    session_id: str
    sender_key: str
    device_id: str


class BridgeCrypto:
    """The bot's encryption device: its Olm machine, crypto store and login."""

    def __init__(self, side: MatrixSide, config: Config) -> None:
        self.side = side
        self.config = config
        self.db = Database.create(crypto_database_url(config.database.url),
                                  upgrade_table=PgCryptoStore.upgrade_table,
                                  log=logging.getLogger("bridge.matrix.crypto.db"))
        self.store = BridgeCryptoStore(config.bot_mxid, PICKLE_KEY, self.db)
        self.client = Client(
            mxid=UserID(config.bot_mxid),
            base_url=config.homeserver.address,
            token=config.appservice.as_token,
            client_session=side.api.session,
            sync_store=self.store,
            state_store=side.state_store,
            log=cast(TraceLogger, logging.getLogger("bridge.matrix.crypto.client")),
        )
        self.machine = OlmMachine(self.client, self.store, RoomEncryption(side))
        # Bridges encrypt for and accept messages from devices nobody verified: the people
        # of a public administration seldom verify each other, and a message that silently
        # does not reach them would be worse.
        self.machine.send_keys_min_trust = TrustState.UNVERIFIED
        self.machine.share_keys_min_trust = TrustState.UNVERIFIED
        self._room_locks: dict[str, asyncio.Lock] = {}
        self.started = asyncio.Event()
        self.failed: str | None = None
        # Whether the homeserver's transactions carry the MSC3202 fields (it adds the bot's
        # one-time-key counts to every one when it does); None until the first transaction.
        self.extensions_seen: bool | None = None
        self._without_counts = 0
        # A re-read of every tracked user's devices, waiting to run (see _refresh_devices),
        # and the loop that asks for one every encryption.device_refresh_seconds.
        self._refresh: asyncio.Task[None] | None = None
        self._refresh_loop: asyncio.Task[None] | None = None

    @property
    def device_id(self) -> str:
        return str(self.client.device_id or "")

    # --- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, log the bot's device in (the same device as last time) and
        publish its keys. Raises if the homeserver refuses."""
        await self.db.start()
        _immediate_transactions(self.db)
        await self.store.open()
        device_id = await self.store.get_device_id()
        name = self.config.encryption.device_name
        self.client.api.token = self.config.appservice.as_token
        await self.client.login(login_type=LoginType.APPSERVICE, device_name=name,
                                device_id=device_id, store_access_token=True,
                                update_hs_url=False)
        await self.machine.load()
        if not device_id:
            await self.store.put_device_id(self.client.device_id)
            log.info("encryption: new device %s for %s", self.client.device_id,
                     self.config.bot_mxid)
            await self.machine.share_keys()
        elif self.machine.account is None or not self.machine.account.shared \
                or not await self._keys_on_server():
            await self.machine.share_keys()
        # The name is set on every start, so a changed encryption.device_name shows.
        await self.client.api.request(Method.PUT, Path.v3.devices[self.client.device_id],
                                      {"display_name": name})
        self.started.set()
        # Devices that people added while the bridge was away: Synapse drops device-list
        # news while it counts the bridge as down, so the news of then never comes.
        self._refresh_devices()
        if self.config.encryption.device_refresh_seconds > 0:
            self._refresh_loop = asyncio.create_task(
                self._refresh_every(self.config.encryption.device_refresh_seconds),
                name="crypto-refresh-loop")
        log.info("encryption: device %s of %s ready (identity key %s)", self.client.device_id,
                 self.config.bot_mxid,
                 self.machine.account.identity_key if self.machine.account else None)

    async def _keys_on_server(self) -> bool:
        resp = await self.client.query_keys([self.client.mxid])
        device = resp.device_keys.get(self.client.mxid, {}).get(self.client.device_id)
        return device is not None and len(device.keys) > 0

    def _refresh_devices(self, delay: float = 1.0) -> None:
        """Soon, ask the homeserver again for the devices of everyone the bridge encrypts
        for. Synapse leaves device-list news out of what it re-sends after the bridge was
        unreachable (a transaction that arrives without the MSC3202 fields is such a
        re-sent one), so a device added meanwhile would never get the bridge's keys: its
        owner could not read what the bridge posts. Several calls close together make one
        re-read."""
        if self._refresh is not None and not self._refresh.done():
            return
        self._refresh = asyncio.create_task(self._refresh_after(delay),
                                            name="crypto-refresh-devices")

    async def _refresh_every(self, interval: float) -> None:
        """Re-read the devices now and then, whatever the homeserver pushed: Synapse drops
        device-list news in more cases than the re-sent transactions _refresh_devices
        notices (seen: a device that logged in while the bridge was busy never reached it),
        and a device the bridge does not know cannot read what the bridge posts."""
        while True:
            await asyncio.sleep(interval)
            self._refresh_devices(delay=0)

    async def _refresh_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            rows = await self.db.fetch("SELECT user_id FROM crypto_tracked_user")
            users = [UserID(row["user_id"]) for row in rows]
            for start in range(0, len(users), DEVICE_REFRESH_CHUNK):
                # The public way to have mautrix re-read them: as if they were "changed".
                await self.machine.handle_device_lists(
                    DeviceLists(changed=users[start:start + DEVICE_REFRESH_CHUNK], left=[]))
            log.info("encryption: re-read the devices of %d user(s)", len(users))
        except Exception:
            log.warning("encryption: could not re-read the devices of the tracked users",
                        exc_info=True)

    async def stop(self) -> None:
        for task in (self._refresh_loop, self._refresh):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            await self.store.close()
        finally:
            await self.db.stop()

    # --- what the transactions bring ------------------------------------------------------

    async def handle_transaction(self, body: dict[str, Any],
                                 events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Take the keys and device news of a transaction, then return its events with each
        encrypted one that can be decrypted now replaced by its plain form."""
        for raw in transaction_field(body, "to_device", "de.sorunome.msc2409") or []:
            try:
                await self.machine.handle_as_to_device_event(
                    cast(ASToDeviceEvent, ASToDeviceEvent.deserialize(raw)))
            except Exception:
                log.exception("could not handle a to-device event of type %s from %s",
                              raw.get("type") if isinstance(raw, dict) else None,
                              raw.get("sender") if isinstance(raw, dict) else None)
        lists = transaction_field(body, "device_lists", "org.matrix.msc3202")
        if isinstance(lists, dict):
            try:
                await self.machine.handle_as_device_lists(DeviceLists.deserialize(cast(Any, lists)))
            except Exception:
                log.exception("could not handle the device list changes %s", lists)
        counts = transaction_field(body, "device_one_time_keys_count", "org.matrix.msc3202")
        self._note_extensions(counts is not None)
        if counts is None and self.started.is_set():
            self._refresh_devices()  # a re-sent transaction: its device news were dropped
        # Only this device's: the bot's older devices (a database that was reset) are not ours.
        mine = counts.get(self.client.mxid, {}).get(self.client.device_id) \
            if isinstance(counts, dict) and isinstance(counts.get(self.client.mxid), dict) \
            else None
        if isinstance(mine, dict):
            try:
                await self.machine.handle_as_otk_counts({self.client.mxid: {
                    self.client.device_id: DeviceOTKCount.deserialize(cast(Any, mine))}})
            except Exception:
                log.exception("could not handle the one-time key counts")
        result = []
        for event in events:
            etype = event.get("type")
            if etype == "m.room.member":
                await self._member_changed(event)
            elif etype == "m.room.encryption" and event.get("state_key") == "":
                content = event.get("content")
                if isinstance(content, dict) and content.get("algorithm"):
                    self.side.state_store.encryption[RoomID(event["room_id"])] = \
                        RoomEncryptionStateEventContent.deserialize(cast(Any, content))
            elif etype == "m.room.encrypted":
                decrypted = await self.decrypt(event)
                if decrypted is not None:
                    event = decrypted
            result.append(event)
        return result

    def _note_extensions(self, seen: bool) -> None:
        # The homeserver computes a transaction's counts when it queues it: one queued before
        # the device existed has none. Only several in a row without any mean "not sent".
        self._without_counts = 0 if seen else self._without_counts + 1
        if not seen and self._without_counts < MISSING_COUNTS_BEFORE_ALARM:
            return
        if seen == self.extensions_seen:
            return
        self.extensions_seen = seen
        if seen:
            log.info("encryption: the homeserver sends one-time-key counts and device lists "
                     "(MSC3202)")
        else:
            log.error("encryption: the homeserver's transactions carry no one-time-key counts: "
                      "it does not send the bridge its keys' news (MSC3202) and probably not "
                      "its to-device messages (MSC2409) either; encrypted rooms will not work. "
                      "Enable them (see the README's \"Encrypted rooms\") and regenerate the "
                      "registration")

    def state(self) -> dict[str, Any]:
        """For /_bridge/health (and so `bridge check`)."""
        return {"device": self.device_id or None, "started": self.started.is_set(),
                "failed": self.failed, "homeserver_extensions": self.extensions_seen}

    async def _member_changed(self, event: dict[str, Any]) -> None:
        """Someone joined or left an encrypted room: the bridge's session for it is not
        used again (a newcomer must not read older messages, someone gone no newer ones).
        Puppets have no devices and change nothing."""
        user = event.get("state_key")
        if not isinstance(user, str) or self.side.hub.network_of(user) is not None \
                or user == self.side.hub.bot_mxid:
            return
        try:
            content = event.get("content") or {}
            prev = (event.get("unsigned") or {}).get("prev_content") or {}
            if prev.get("membership") == content.get("membership"):
                return
            room_id = RoomID(str(event.get("room_id")))
            if await self.is_encrypted(room_id):
                await self.store.remove_outbound_group_session(room_id)
        except Exception:
            log.exception("could not handle the membership change of %s", user)

    # --- decrypting -------------------------------------------------------------------------

    async def decrypt(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The plain form of an encrypted room event, or None if it cannot be decrypted
        (yet): the key never arrived, or the event is broken."""
        try:
            parsed = EncryptedEvent.deserialize(cast(Any, dict(event)))
            _PLAINTEXT.set(None)
            decrypted = await self.machine.decrypt_megolm_event(parsed)
        except (DecryptionError, MatrixError) as exc:
            log.info("cannot decrypt %s in %s from %s yet: %s", event.get("event_id"),
                     event.get("room_id"), event.get("sender"), exc)
            return None
        except Exception:
            log.warning("cannot decrypt %s in %s", event.get("event_id"), event.get("room_id"),
                        exc_info=True)
            return None
        content = _raw_content(_PLAINTEXT.get(), event)
        if content is None:
            content = decrypted.content.serialize()
        if not isinstance(content, dict):
            return None
        _attachment_urls(content)
        plain = {key: value for key, value in event.items() if key != "content"}
        plain.update(type=decrypted.type.t, content=content)
        return plain

    def pending(self, event: dict[str, Any]) -> _Pending | None:
        content = event.get("content")
        if not isinstance(content, dict):
            return None
        session_id, sender_key = content.get("session_id"), content.get("sender_key")
        if not isinstance(session_id, str) or not isinstance(sender_key, str):
            return None
        return _Pending(session_id, sender_key, str(content.get("device_id") or ""))

    # --- encrypting -------------------------------------------------------------------------

    async def is_encrypted(self, room_id: str) -> bool:
        return await room_encryption(self.side, room_id) is not None

    async def encrypt(self, room_id: RoomID, event_type: EventType,
                      content: dict[str, Any]) -> dict[str, Any]:
        lock = self._room_locks.setdefault(room_id, asyncio.Lock())
        async with lock:  # one session share per room at a time (mautrix requires it)
            try:
                encrypted = await self.machine.encrypt_megolm_event(room_id, event_type, content)
            except EncryptionError:
                await self.machine.share_group_session(room_id, await self._recipients(room_id))
                encrypted = await self.machine.encrypt_megolm_event(room_id, event_type, content)
        result = encrypted.serialize()
        assert isinstance(encrypted, EncryptedMegolmEventContent) and isinstance(result, dict)
        return result

    async def encrypted_if_needed(self, uploader: IntentAPI, room_id: RoomID,
                                  event_type: EventType, content: Any) -> tuple[EventType, Any]:
        """(type, content) to send: as they are in an unencrypted room, else encrypted (its
        media uploaded again encrypted, by ``uploader``)."""
        if event_type == EventType.ROOM_ENCRYPTED or not await self.is_encrypted(room_id):
            return event_type, content
        if isinstance(content, bytes | bytearray):
            plain = json_codec.loads(bytes(content))
        elif isinstance(content, Serializable):
            plain = content.serialize()
        else:
            plain = dict(content)
        plain = await self.encrypt_media(uploader, plain)
        return EventType.ROOM_ENCRYPTED, await self.encrypt(room_id, event_type, plain)

    async def _recipients(self, room_id: RoomID) -> list[UserID]:
        """The room's people whose devices get the bridge's session: members and invitees,
        except the puppets (they have no devices)."""
        members = await self.side.bot_intent.get_room_members(
            room_id, allowed_memberships=(Membership.JOIN, Membership.INVITE))
        hub = self.side.hub
        return [m for m in members if hub.network_of(m) is None]

    async def encrypt_media(self, intent: IntentAPI, content: dict[str, Any]) -> dict[str, Any]:
        """Content that refers to media by ``url`` refers to an encrypted copy by ``file``."""
        url = content.get("url")
        if not isinstance(url, str) or not url.startswith("mxc://") or "file" in content:
            return content
        data = await self.side.download(url)
        ciphertext, file = encrypt_attachment(data)
        file.url = await intent.upload_media(ciphertext, mime_type="application/octet-stream",
                                             size=len(ciphertext))
        content = dict(content)
        del content["url"]
        content["file"] = file.serialize()
        info = content.get("info")
        if isinstance(info, dict) and ("thumbnail_url" in info or "thumbnail_info" in info):
            # The thumbnail is not worth a second encrypted upload: clients make their own.
            content["info"] = {k: v for k, v in info.items()
                               if k not in ("thumbnail_url", "thumbnail_info")}
        return content

    # --- messages whose key is missing --------------------------------------------------------

    def waiting_delivery(self, room_id: str, event: dict[str, Any]) -> NewDelivery:
        """An encrypted event that could not be decrypted on arrival: a delivery of its own
        lane waits for its key (other messages of the room go on meanwhile)."""
        deadline = time.time() + self.config.encryption.key_wait_seconds
        return NewDelivery(network=MATRIX, room_id=room_id, kind="decrypt",
                           payload={"event": event, "deadline": deadline},
                           lane=f"{MATRIX}:{room_id}:key:{event.get('event_id')}")

    async def deliver_waiting(self, d: Delivery, p: dict[str, Any]) -> None:
        event = p["event"]
        if not self.started.is_set():
            # The device is not logged in (yet): nothing can be decrypted or asked for.
            if time.time() < float(p["deadline"]):
                raise TemporaryError("the bridge's encryption is not started"
                                     + (f": {self.failed}" if self.failed else ""))
            await self._tell_not_bridged(d, event)
            return None
        pending = self.pending(event)
        if pending is None:
            raise PermanentError("the encrypted event has no Megolm session to wait for")
        decrypted = await self.decrypt(event)
        if decrypted is None:
            await self._request_key(event, pending)
            remaining = float(p["deadline"]) - time.time()
            if remaining > 0 and await self.machine.wait_for_session(
                    RoomID(d.room_id), SessionID(pending.session_id),
                    timeout=min(remaining, KEY_WAIT_PIECE_SECONDS)):
                decrypted = await self.decrypt(event)
        if decrypted is None:
            if time.time() < float(p["deadline"]):
                raise TemporaryError(f"waiting for the key of {event.get('event_id')} "
                                     f"from {event.get('sender')}")
            await self._tell_not_bridged(d, event)
            return None
        log.info("decrypted %s in %s once its key arrived", event.get("event_id"), d.room_id)
        await self._route(d, decrypted)
        return None

    async def _request_key(self, event: dict[str, Any], pending: _Pending) -> None:
        sender = UserID(str(event.get("sender")))
        devices = [DeviceID(pending.device_id or "*")]
        try:
            await self.machine.request_room_key(
                RoomID(str(event.get("room_id"))), IdentityKey(pending.sender_key),
                SessionID(pending.session_id),
                {sender: devices}, timeout=0)
        except MatrixRequestError as exc:
            log.warning("could not ask %s for the key of %s: %s", sender,
                        event.get("event_id"), exc)

    async def _tell_not_bridged(self, d: Delivery, event: dict[str, Any]) -> None:
        sender = str(event.get("sender"))
        name = await self.side.member_name(d.room_id, sender)
        who = f"{name} ({sender})" if name and name != sender else sender
        wait = self.config.encryption.key_wait_seconds
        text = (f"⚠️ A message from {who} could not be bridged: it is encrypted with a key "
                f"that the bridge did not receive within {wait:g} seconds. Please send it "
                "again.")
        log.warning("%s in %s from %s not bridged: its key never arrived",
                    event.get("event_id"), d.room_id, sender)
        await self.side.bot_intent.send_notice(RoomID(d.room_id), text, txn_id=f"ob{d.id}")

    async def _route(self, d: Delivery, event: dict[str, Any]) -> None:
        """The decrypted event goes through the relay rule like any event of the room."""
        hub = self.side.hub
        entry = InboxEntry(id=0, room_id=d.room_id, event=event, received_at=time.time(),
                           attempts=0)

        async def record(session: Any) -> None:
            deliveries, failed = await hub.route_batch(session, [entry])
            if failed:
                raise PermanentError(f"could not handle the decrypted event: {failed[0][1]}")
            await queues.enqueue(session, deliveries)

        if d.with_outcome is not None:
            d.with_outcome.append(record)  # recorded with the delivery's success
        else:
            async with hub.db.transaction() as session:
                await record(session)
            hub.wake_outbox()


def _raw_content(plaintext: str | None, event: dict[str, Any]) -> dict[str, Any] | None:
    """The decrypted content as the sender wrote it (None: use mautrix's parsed form). The
    relation rides outside the encryption in the encrypted event; mautrix copies it in too."""
    try:
        data = orjson.loads(plaintext) if plaintext else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("content"), dict):
        return None
    content: dict[str, Any] = data["content"]
    relates = (event.get("content") or {}).get("m.relates_to")
    if isinstance(relates, dict) and "m.relates_to" not in content:
        content["m.relates_to"] = relates
    return content


def _attachment_urls(content: dict[str, Any]) -> None:
    """An encrypted attachment (``file``) is also named by ``url`` with its key appended, so
    the connectors, which download by ``url``, need not know about encryption."""
    file = content.get("file")
    if "url" in content or not isinstance(file, dict) or not isinstance(file.get("url"), str):
        return
    packed = base64.urlsafe_b64encode(orjson.dumps(
        {"key": file.get("key"), "iv": file.get("iv"), "hashes": file.get("hashes")})).decode()
    content["url"] = f"{file['url']}{FILE_MARK}{packed}"
