"""The intents the bridge acts through, and encrypted attachments' download.

Kept apart from bridge/matrix/crypto.py, which imports mautrix's Olm machine (python-olm,
pycryptodome and asyncpg, some ten megabytes): a bridge without ``encryption.allow`` never
imports that. What here needs cryptography imports it when it is called.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, cast

import orjson
from mautrix.appservice import AppServiceAPI, IntentAPI
from mautrix.errors import MForbidden, MNotFound
from mautrix.types import (
    ContentURI,
    EventID,
    EventType,
    RoomEncryptionStateEventContent,
    RoomID,
    UserID,
)

from bridge.core.errors import PermanentError

if TYPE_CHECKING:
    from bridge.matrix.crypto import BridgeCrypto
    from bridge.matrix.side import MatrixSide

# An encrypted attachment's key rides in the relayed event's "url" after this marker, so the
# connectors download it like any other (MatrixSide.download decrypts it); it never leaves
# the bridge.
FILE_MARK = "#bridge-encrypted-file="


class EncryptingIntent(IntentAPI):
    """An intent that encrypts what it sends into an encrypted room (when the bridge takes
    part in encrypted rooms at all)."""

    def _crypto(self) -> BridgeCrypto | None:
        root = self.bot.api if self.bot is not None else self.api
        return cast("BridgeCrypto | None", getattr(root, "crypto", None))

    async def send_message_event(  # type: ignore[override]
            self, room_id: RoomID, event_type: EventType, content: Any, **kwargs: Any
    ) -> EventID:
        crypto = self._crypto()
        if crypto is not None:
            event_type, content = await crypto.encrypted_if_needed(self, room_id, event_type,
                                                                   content)
        return await super().send_message_event(room_id, event_type, content, **kwargs)


class BridgeAppServiceAPI(AppServiceAPI):
    """mautrix's appservice API whose intents encrypt (see :class:`EncryptingIntent`);
    ``crypto`` is set on the bridge's one root API when encryption is allowed."""

    crypto: BridgeCrypto | None = None

    def bot_intent(self) -> IntentAPI:
        if self._bot_intent is None:
            self._bot_intent = EncryptingIntent(self.bot_mxid, self,
                                                state_store=self.state_store)
        return self._bot_intent

    def intent(self, user: UserID | None = None, token: str | None = None,
               base_url: str | None = None, real_user_as_token: bool = False) -> IntentAPI:
        if not self.is_real_user and not token and user:
            return EncryptingIntent(user, self.user(user), self.bot_intent(), self.state_store)
        return super().intent(cast(UserID, user), token, base_url, real_user_as_token)



async def download_attachment(intent: IntentAPI, url: str) -> bytes:
    """An encrypted attachment that a relayed event names with its key (see
    :data:`FILE_MARK`), decrypted."""
    mxc, _, packed = url.partition(FILE_MARK)
    try:
        file = orjson.loads(base64.urlsafe_b64decode(packed.encode()))
        key, digest, iv = file["key"]["k"], file["hashes"]["sha256"], file["iv"]
    except (ValueError, KeyError, TypeError):
        raise PermanentError(f"the encrypted attachment {mxc} has no usable key") from None
    from mautrix.crypto.attachments import decrypt_attachment
    from mautrix.errors import DecryptionError

    data = await intent.download_media(ContentURI(mxc))
    try:
        return decrypt_attachment(data, key, digest, iv)
    except DecryptionError as exc:
        raise PermanentError(f"the encrypted attachment {mxc} does not decrypt: {exc}") from None


async def room_encryption(side: MatrixSide,
                          room_id: str) -> RoomEncryptionStateEventContent | None:
    """The room's m.room.encryption content, or None if the room is not encrypted."""
    cache = side.state_store
    if await cache.has_encryption_info_cached(RoomID(room_id)):
        return await cache.get_encryption_info(RoomID(room_id))
    try:
        content = await side.bot_intent.get_state_event(RoomID(room_id),
                                                        EventType.ROOM_ENCRYPTION)
    except MNotFound:
        content = None
    except MForbidden:
        return None  # not in the room (yet): not cached, asked again later
    if not isinstance(content, RoomEncryptionStateEventContent) or not content.algorithm:
        content = None
    cache.encryption[RoomID(room_id)] = content
    return content
