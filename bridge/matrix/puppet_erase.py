"""The Matrix side of ``bridge erase``: a puppet's rooms and messages, its redaction, profile
and leaving, through the client-server API as the appservice (``?user_id=`` the puppet).

Plain HTTP calls rather than mautrix's intents: the command runs without a running bridge
(no state store, no registration on the fly), and each call here is one request.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp

from bridge.config import Config

REDACT_REASON = "erased at the person's request"


class MatrixError(Exception):
    """The homeserver refused or failed a call; the message says which."""


class PuppetSide:
    def __init__(self, http: aiohttp.ClientSession, config: Config) -> None:
        self.http = http
        self.base = config.homeserver.address
        self.headers = {"Authorization": f"Bearer {config.appservice.as_token}"}

    async def _call(self, method: str, path: str, user_id: str, body: Any = None,
                    query: dict[str, str] | None = None) -> dict[str, Any]:
        params = {"user_id": user_id, **(query or {})}
        try:
            async with self.http.request(method, f"{self.base}/_matrix/client/v3{path}",
                                         params=params, json=body, headers=self.headers) as r:
                data = await r.json(content_type=None) if r.content_length != 0 else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise MatrixError(f"cannot reach the homeserver at {self.base} "
                              f"(homeserver.address): {exc.__class__.__name__}: {exc}") from None
        if r.status != 200:
            data = data if isinstance(data, dict) else {}
            raise MatrixError(f"the homeserver refused {method} {path} as {user_id}: HTTP "
                              f"{r.status} {data.get('errcode', '')} "
                              f"{data.get('error', '')}".rstrip())
        return dict(data or {})

    async def joined_rooms(self, user_id: str) -> list[str]:
        """The rooms the puppet is in; none if the homeserver does not know it (never
        registered: it never posted)."""
        try:
            data = await self._call("GET", "/joined_rooms", user_id)
        except MatrixError as exc:
            if "M_FORBIDDEN" in str(exc) or "M_UNKNOWN_TOKEN" in str(exc):
                return []
            raise
        return sorted(str(room) for room in data.get("joined_rooms", []))

    async def own_events(self, user_id: str, room_id: str) -> list[str]:
        """Every event the puppet sent in the room that still has content (not state, not
        already redacted), newest first."""
        found: list[str] = []
        token: str | None = None
        filter_json = json.dumps({"senders": [user_id]})
        while True:
            query = {"dir": "b", "limit": "100", "filter": filter_json}
            if token:
                query["from"] = token
            data = await self._call("GET", f"/rooms/{quote(room_id)}/messages", user_id,
                                    query=query)
            for event in data.get("chunk", []):
                if event.get("sender") != user_id or "state_key" in event:
                    continue
                if event.get("type") == "m.room.redaction" or not event.get("content"):
                    continue  # a redaction, or redacted already
                found.append(str(event["event_id"]))
            token = data.get("end")
            if not token or not data.get("chunk"):
                return found

    async def redact(self, user_id: str, room_id: str, event_id: str) -> None:
        await self._call("PUT", f"/rooms/{quote(room_id)}/redact/{quote(event_id)}/"
                                f"erase-{uuid.uuid4().hex}", user_id,
                         body={"reason": REDACT_REASON})

    async def clear_profile(self, user_id: str) -> None:
        """No display name, no avatar: the puppet shows as its bare user ID."""
        await self._call("PUT", f"/profile/{quote(user_id)}/displayname", user_id,
                         body={"displayname": ""})
        await self._call("PUT", f"/profile/{quote(user_id)}/avatar_url", user_id,
                         body={"avatar_url": ""})

    async def leave(self, user_id: str, room_id: str) -> None:
        await self._call("POST", f"/rooms/{quote(room_id)}/leave", user_id, body={})
