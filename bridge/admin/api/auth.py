"""Who is calling the provisioning API.

``Authorization: Bearer <shared secret>`` is the operator. Any other bearer token is taken
for a Matrix access token: the homeserver says whose it is (``/account/whoami``) and
``bridge.admins`` whether that user may administer the bridge. Answers are cached briefly,
so a page polling the API does not turn into load on the homeserver; a token that was
refused is asked again next time (it may have been a homeserver hiccup).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

import aiohttp

from bridge.admin.audit import VIA, Actor
from bridge.core.cache import BoundedCache
from bridge.core.errors import CommandError, UnavailableError

if TYPE_CHECKING:
    from aiohttp import web

    from bridge.app import Bridge

WHOAMI_CACHE_SECONDS = 60.0
WHOAMI_CACHE_ITEMS = 1000


class Unauthorized(CommandError):
    status = 401
    errcode = "M_UNKNOWN_TOKEN"


class MissingToken(Unauthorized):
    errcode = "M_MISSING_TOKEN"


class Forbidden(CommandError):
    status = 403
    errcode = "M_FORBIDDEN"


class Authenticator:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.secret = bridge.config.provisioning.shared_secret.encode()
        # sha256(token) -> user ID: the token itself is not kept in memory.
        self._whoami: BoundedCache[str, str] = BoundedCache(
            WHOAMI_CACHE_ITEMS, WHOAMI_CACHE_SECONDS)

    async def actor(self, request: web.Request) -> Actor:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MissingToken("This API needs `Authorization: Bearer <token>`: the bridge's "
                               "provisioning secret, or the Matrix access token of a bridge "
                               "admin.")
        token = token.strip()
        via = request.headers.get("X-Bridge-Via", "api")
        if via not in VIA or via in ("command", "cli"):
            via = "api"
        if self.is_secret(token):
            return Actor(None, via)
        user_id = await self._user_of(token)
        if not self.bridge.hub.is_admin(user_id):
            raise Forbidden(f"{user_id} is not an admin of this bridge (bridge.admins in its "
                            "config).")
        return Actor(user_id, via)

    def is_secret(self, token: str) -> bool:
        # Constant time, so the secret cannot be guessed byte by byte from response times.
        return hmac.compare_digest(token.encode(), self.secret)

    def forget(self, token: str) -> None:
        """A token that was logged out (the admin page's logout) is refused from now on,
        not only once the cached answer expires."""
        self._whoami.pop(hashlib.sha256(token.encode()).hexdigest())

    async def _user_of(self, token: str) -> str:
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._whoami.get(key)
        if cached is not None:
            return cached
        http = self.bridge.http
        if http is None:
            raise UnavailableError("The bridge is starting; try again in a moment.")
        url = f"{self.bridge.config.homeserver.address}/_matrix/client/v3/account/whoami"
        try:
            async with http.get(url, headers={"Authorization": f"Bearer {token}"},
                                timeout=aiohttp.ClientTimeout(total=10)) as response:
                body = await response.json(content_type=None) if response.status < 500 \
                    else {}
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise UnavailableError(f"Cannot ask the homeserver whose token this is "
                                   f"({exc.__class__.__name__}); try again later.") from None
        if status in (401, 403):
            raise Unauthorized("This token is neither the bridge's provisioning secret nor a "
                               "valid Matrix access token.")
        user_id = body.get("user_id") if isinstance(body, dict) else None
        if status != 200 or not isinstance(user_id, str):
            raise UnavailableError(f"The homeserver answered HTTP {status} when asked whose "
                                   "token this is; try again later.")
        self._whoami.set(key, user_id)
        return user_id
