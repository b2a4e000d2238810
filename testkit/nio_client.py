"""A real encrypting Matrix client for the tests: matrix-nio with its end-to-end extra.

The bridge's encryption is checked against a client this project did not write: nio keeps
its own Olm account and sessions (in ``store_dir``), uploads its keys, shares its Megolm
sessions with every device in the room (the bridge's among them) and decrypts what it gets,
like Element would. ``events`` holds every room event of every sync, decrypted where nio
could (``decrypted`` true), else as nio saw it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    Event,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomKeyRequest,
    RoomSendResponse,
    SyncResponse,
    ToDeviceResponse,
    UploadResponse,
)

from testkit.synapse import SynapseServer

ENCRYPTION = {"type": "m.room.encryption", "state_key": "",
              "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


@dataclass
class Seen:
    """One room event as the client saw it."""

    room_id: str
    event_id: str
    sender: str
    type: str
    content: dict[str, Any]
    decrypted: bool
    # The Megolm session it was encrypted with (None if it came in plain).
    session_id: str | None


class EncryptingUser:
    def __init__(self, client: AsyncClient, password: str) -> None:
        self.client = client
        self.password = password
        self.events: list[Seen] = []
        self.key_requests: list[RoomKeyRequest] = []
        self._sync: asyncio.Task[None] | None = None
        client.add_event_callback(self._on_event, Event)  # type: ignore[arg-type]
        # (nio keeps room key requests from other users away from to-device callbacks and
        # drops them: they are read from the sync responses.)
        client.add_response_callback(self._on_sync, SyncResponse)  # type: ignore[arg-type]

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    @classmethod
    async def register(cls, synapse: SynapseServer, localpart: str,
                       store_dir: Path) -> EncryptingUser:
        password = secrets.token_urlsafe(12)
        user_id, _token = await synapse.register_user(localpart, password=password)
        return await cls.login(synapse, user_id, password, store_dir)

    @classmethod
    async def login(cls, synapse: SynapseServer, user_id: str, password: str,
                    store_dir: Path) -> EncryptingUser:
        """A (new) device of an existing user, started and syncing."""
        await asyncio.to_thread(store_dir.mkdir, parents=True, exist_ok=True)
        client = AsyncClient(synapse.url, user_id, store_path=str(store_dir),
                             config=AsyncClientConfig(encryption_enabled=True,
                                                      store_sync_tokens=True))
        response = await client.login(password, device_name="nio test device")
        assert isinstance(response, LoginResponse), response
        user = cls(client, password)
        await user.start()
        return user

    async def start(self) -> None:
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        await self.client.sync(timeout=0, full_state=True)
        self._sync = asyncio.create_task(self.client.sync_forever(timeout=500,
                                                                  loop_sleep_time=50))

    async def close(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sync
        await self.client.close()

    # --- what arrives --------------------------------------------------------------------

    async def _on_event(self, room: Any, event: Event) -> None:
        source = event.source or {}
        decrypted = bool(getattr(event, "decrypted", False))
        session_id = getattr(event, "session_id", None)
        if decrypted and isinstance(source, dict):
            # nio keeps the decrypted payload apart from the encrypted event's source.
            payload = getattr(event, "source", {})
            content = payload.get("content", {}) if isinstance(payload, dict) else {}
            etype = payload.get("type", "") if isinstance(payload, dict) else ""
        else:
            content = source.get("content", {}) if isinstance(source, dict) else {}
            etype = source.get("type", "") if isinstance(source, dict) else ""
        if isinstance(event, MegolmEvent):  # could not be decrypted
            session_id = event.session_id
        self.events.append(Seen(room.room_id, event.event_id, event.sender, etype,
                                content if isinstance(content, dict) else {}, decrypted,
                                session_id))

    def _on_sync(self, response: SyncResponse) -> None:
        self.key_requests += [e for e in response.to_device_events
                              if isinstance(e, RoomKeyRequest)]

    async def wait_for(self, room_id: str, predicate: Callable[[Seen], bool],
                       timeout: float = 30) -> Seen:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for seen in self.events:
                if seen.room_id == room_id and predicate(seen):
                    return seen
            if loop.time() > deadline:
                recent = [(s.sender, s.type, s.decrypted, s.content.get("body"))
                          for s in self.events[-15:] if s.room_id == room_id]
                raise AssertionError(f"not seen within {timeout} s; last events: {recent}")
            await asyncio.sleep(0.1)

    # --- acting ----------------------------------------------------------------------------

    async def create_encrypted_room(self, invite: list[str], name: str | None,
                                    power: dict[str, int] | None = None,
                                    is_direct: bool = False) -> str:
        response = await self.client.room_create(
            name=name, invite=invite, initial_state=[ENCRYPTION], is_direct=is_direct,
            power_level_override={"users": dict(power or {})})
        assert isinstance(response, RoomCreateResponse), response
        return str(response.room_id)

    async def send(self, room_id: str, content: dict[str, Any],
                   event_type: str = "m.room.message") -> str:
        response = await self.client.room_send(room_id, event_type, content,
                                               ignore_unverified_devices=True)
        assert isinstance(response, RoomSendResponse), response
        return str(response.event_id)

    async def send_text(self, room_id: str, text: str) -> str:
        return await self.send(room_id, {"msgtype": "m.text", "body": text})

    async def send_encrypted_file(self, room_id: str, data: bytes, name: str,
                                  mimetype: str, msgtype: str = "m.image") -> str:
        """An attachment as Element sends it in an encrypted room: encrypted, by ``file``."""
        response, keys = await self.client.upload(io.BytesIO(data), content_type=mimetype,
                                                  filename=name, encrypt=True,
                                                  filesize=len(data))
        assert isinstance(response, UploadResponse), response
        assert keys is not None
        file = {**keys, "url": response.content_uri}
        return await self.send(room_id, {"msgtype": msgtype, "body": name, "file": file,
                                         "info": {"mimetype": mimetype, "size": len(data)}})

    # --- keys withheld and shared later (the bridge's missing-key path) ----------------------

    def withhold_from(self, room_id: str, user_id: str) -> None:
        """The next message starts a new Megolm session that ``user_id``'s devices do not
        get (as if its key never reached them)."""
        olm = self.client.olm
        assert olm is not None
        for device in olm.device_store.active_user_devices(user_id):
            self.client.blacklist_device(device)
        olm.outbound_group_sessions.pop(room_id, None)

    async def answer_key_request(self, request: RoomKeyRequest) -> None:
        """Share the requested session with the requesting device, as a client does that
        accepts a key request (nio itself answers only its own user's devices): the session
        from its first message on, forwarded through the Olm channel to that device."""
        olm = self.client.olm
        assert olm is not None
        device = olm.device_store[request.sender][request.requesting_device_id]
        group_session = olm.inbound_group_store.get(request.room_id, request.sender_key,
                                                    request.session_id)
        assert group_session is not None, "the requested session is not this device's"
        session = olm.session_store.get(device.curve25519)
        assert session is not None, "no Olm channel to the requesting device"
        message = olm._encrypt_forwarding_key(request.room_id, group_session, session, device)
        response = await self.client.to_device(message)
        assert isinstance(response, ToDeviceResponse), response
