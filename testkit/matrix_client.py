"""A small async Matrix client for tests, acting as a real (non-appservice) user.

Built directly on aiohttp and the client-server API v3 so failures are easy to read.

Waiting for events
------------------
``wait_for_event`` / ``wait_for_membership`` / ``wait_for_invite`` share one /sync
stream per client. Everything /sync delivers is appended to a per-room *inbox*;
a wait returns the oldest inbox event matching its predicate and removes only that
event, so events that arrive in one batch can be waited for in any order, and each
event is returned at most once per client.

The client's first /sync (``timeout=0``, done by ``__aenter__`` or lazily by the first
wait) fixes the starting point; that sync's recent timeline events (up to
``TIMELINE_LIMIT`` per room) and pending invites also go into the inbox, so events
sent just before the client was created can still be found.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

__all__ = ["MatrixRequestError", "MatrixTestClient"]

JsonDict = dict[str, Any]

# Per-room timeline events requested per /sync; high so incremental syncs are rarely
# "limited" (gappy) in tests.
TIMELINE_LIMIT = 50

_SYNC_FILTER = json.dumps(
    {
        "room": {
            "timeline": {"limit": TIMELINE_LIMIT},
            "ephemeral": {"types": []},
            "account_data": {"types": []},
        },
        "presence": {"types": []},
        "account_data": {"types": []},
    },
    separators=(",", ":"),
)


class MatrixRequestError(Exception):
    """A client-server API call returned a non-2xx status."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        self.errcode: str | None = body.get("errcode") if isinstance(body, dict) else None
        super().__init__(f"{method} {path} -> {status}: {body}")


def _q(part: str) -> str:
    # Room IDs, aliases, event IDs and user IDs contain !, #, $, @ and : escape them all.
    return quote(part, safe="")


def _describe(event: Mapping[str, Any]) -> str:
    """One-line summary of an event for timeout messages."""
    parts = [str(event.get("type")), f"from {event.get('sender')}"]
    if "state_key" in event:
        parts.append(f"state_key={event['state_key']!r}")
    content = event.get("content") or {}
    if "membership" in content:
        parts.append(f"membership={content['membership']}")
    if "body" in content:
        parts.append(f"body={content['body']!r}")
    return " ".join(parts)


class MatrixTestClient:
    """Async client for one real user (``user_id`` + ``access_token``).

    Use as ``async with MatrixTestClient(...) as client:`` or call ``close()``.
    """

    def __init__(self, base_url: str, user_id: str, access_token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.user_id = user_id
        self.access_token = access_token
        # Created lazily: aiohttp sessions must be created inside a running loop.
        self._session: aiohttp.ClientSession | None = None
        self._next_batch: str | None = None
        self._sync_lock = asyncio.Lock()
        # room_id -> events seen via /sync but not yet returned by a wait_* call.
        self._inbox: dict[str, list[JsonDict]] = {}
        # room_id -> stripped invite state of our currently pending invites.
        self._invites: dict[str, list[JsonDict]] = {}
        # What a timeout's message adds about the server side (the harness sets it: Synapse's
        # appservice state), so a failure far from the cause still says where to look.
        self.diagnose: Callable[[], str] | None = None
        # Pending invites already returned by wait_for_invite.
        self._returned_invites: set[str] = set()
        self._seen_event_ids: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------

    async def __aenter__(self) -> MatrixTestClient:
        await self.initial_sync()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        http_timeout: float = 30,
    ) -> Any:
        """Call ``/_matrix/client/v3{path}``; return the decoded JSON body.

        Raises MatrixRequestError on a non-2xx status.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.access_token}"}
            )
        url = f"{self.base_url}/_matrix/client/v3{path}"
        async with self._session.request(
            method,
            url,
            json=json_body,
            params=params,
            timeout=aiohttp.ClientTimeout(total=http_timeout),
        ) as resp:
            try:
                body = await resp.json(content_type=None)
            except json.JSONDecodeError:
                body = await resp.text()
            if resp.status >= 300:
                raise MatrixRequestError(method, path, resp.status, body)
            return body

    # -- rooms ------------------------------------------------------------------------

    async def create_room(
        self,
        *,
        invite: Iterable[str] = (),
        is_direct: bool = False,
        name: str | None = None,
        room_version: str | None = None,
        power_level_content_override: dict[str, Any] | None = None,
        preset: str = "private_chat",
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Create a room and return its ID. ``extra`` is merged into the request body
        (e.g. ``initial_state``, ``topic``, ``room_alias_name``)."""
        body: JsonDict = {"preset": preset, "invite": list(invite), "is_direct": is_direct}
        if name is not None:
            body["name"] = name
        if room_version is not None:
            body["room_version"] = room_version
        if power_level_content_override is not None:
            body["power_level_content_override"] = power_level_content_override
        body.update(extra or {})
        resp = await self.request("POST", "/createRoom", json_body=body)
        return str(resp["room_id"])

    async def join(self, room_id_or_alias: str) -> str:
        resp = await self.request("POST", f"/join/{_q(room_id_or_alias)}", json_body={})
        return str(resp["room_id"])

    async def leave(self, room_id: str) -> None:
        await self.request("POST", f"/rooms/{_q(room_id)}/leave", json_body={})

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.request("POST", f"/rooms/{_q(room_id)}/invite", json_body={"user_id": user_id})

    # -- events -----------------------------------------------------------------------

    async def send_event(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        """Send a message-like event; returns its event ID."""
        txn_id = uuid.uuid4().hex  # unique per request, else Synapse dedupes the send
        resp = await self.request(
            "PUT",
            f"/rooms/{_q(room_id)}/send/{_q(event_type)}/{txn_id}",
            json_body=content,
        )
        return str(resp["event_id"])

    async def send_text(
        self,
        room_id: str,
        body: str,
        *,
        msgtype: str = "m.text",
        extra: dict[str, Any] | None = None,
    ) -> str:
        content: JsonDict = {"msgtype": msgtype, "body": body, **(extra or {})}
        return await self.send_event(room_id, "m.room.message", content)

    async def send_state(
        self, room_id: str, event_type: str, state_key: str, content: dict[str, Any]
    ) -> str:
        resp = await self.request(
            "PUT",
            f"/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}",
            json_body=content,
        )
        return str(resp["event_id"])

    async def get_state(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        """Content of a state event, or None if the room has no such state (404)."""
        try:
            return await self.request(
                "GET", f"/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}"
            )
        except MatrixRequestError as e:
            if e.status == 404:
                return None
            raise

    async def get_joined_members(self, room_id: str) -> dict[str, Any]:
        """``{user_id: {"display_name": ..., "avatar_url": ...}}`` for joined members."""
        resp = await self.request("GET", f"/rooms/{_q(room_id)}/joined_members")
        return dict(resp.get("joined", {}))

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        body: JsonDict = {} if reason is None else {"reason": reason}
        resp = await self.request(
            "PUT",
            f"/rooms/{_q(room_id)}/redact/{_q(event_id)}/{uuid.uuid4().hex}",
            json_body=body,
        )
        return str(resp["event_id"])

    async def messages(self, room_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The room's latest ``limit`` timeline events, NEWEST FIRST (``dir=b``)."""
        resp = await self.request(
            "GET",
            f"/rooms/{_q(room_id)}/messages",
            params={"dir": "b", "limit": str(limit)},
        )
        return list(resp.get("chunk", []))

    # -- /sync-based waiting -----------------------------------------------------------

    async def initial_sync(self) -> None:
        """Take the starting /sync position (idempotent). Called by ``__aenter__`` and
        lazily by the wait_* methods."""
        async with self._sync_lock:
            if self._next_batch is None:
                await self._sync(timeout_ms=0)

    async def _sync(self, timeout_ms: int) -> None:
        # Caller holds self._sync_lock, so one /sync at a time and batches stay in order.
        params = {"timeout": str(timeout_ms), "filter": _SYNC_FILTER}
        initial = self._next_batch is None
        if self._next_batch is not None:
            params["since"] = self._next_batch
        resp = await self.request(
            "GET", "/sync", params=params, http_timeout=timeout_ms / 1000 + 30
        )
        rooms = resp.get("rooms", {})
        for section in ("join", "leave"):
            for room_id, room in rooms.get(section, {}).items():
                events: list[JsonDict] = []
                # On a gappy incremental sync, state changed inside the gap is only in
                # "state"; keep it so membership changes aren't missed. The initial
                # sync's "state" is the whole (old) room state, so skip it there.
                if not initial and room.get("timeline", {}).get("limited"):
                    events += room.get("state", {}).get("events", [])
                events += room.get("timeline", {}).get("events", [])
                self._add_to_inbox(room_id, events)
        for room_id, room in rooms.get("invite", {}).items():
            self._invites[room_id] = list(room.get("invite_state", {}).get("events", []))
        for room_id in [*rooms.get("join", {}), *rooms.get("leave", {})]:
            # Joined, rejected or rescinded: the invite is no longer pending.
            self._invites.pop(room_id, None)
            self._returned_invites.discard(room_id)
        self._next_batch = resp["next_batch"]

    async def discard_pending(self, room_id: str | None = None) -> None:
        """Sync now and forget unconsumed events (of one room, or all rooms), so later
        waits only see what happens from here on. Pending invites are kept."""
        await self.initial_sync()
        async with self._sync_lock:
            await self._sync(timeout_ms=0)
        if room_id is None:
            self._inbox.clear()
        else:
            self._inbox.pop(room_id, None)

    def _add_to_inbox(self, room_id: str, events: Iterable[JsonDict]) -> None:
        inbox = self._inbox.setdefault(room_id, [])
        for event in events:
            event_id = event.get("event_id")
            if event_id is not None:
                if event_id in self._seen_event_ids:
                    continue
                self._seen_event_ids.add(event_id)
            event.setdefault("room_id", room_id)
            inbox.append(event)

    async def _wait(self, find: Callable[[], Any], seconds: float) -> tuple[bool, Any]:
        """Sync until ``find()`` returns something other than None, or time out."""
        await self.initial_sync()
        deadline = time.monotonic() + seconds
        while True:
            found = find()
            if found is not None:
                return True, found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False, None
            async with self._sync_lock:
                # Another waiter may have synced while we queued for the lock.
                found = find()
                if found is not None:
                    return True, found
                # Long-poll, but in short slices so the deadline is honoured.
                await self._sync(timeout_ms=int(min(remaining, 5.0) * 1000))

    def _take_from_inbox(
        self, room_id: str, predicate: Callable[[dict[str, Any]], bool]
    ) -> JsonDict | None:
        inbox = self._inbox.get(room_id, [])
        for i, event in enumerate(inbox):
            try:
                matched = predicate(event)
            except (KeyError, IndexError, TypeError, AttributeError):
                # e.g. ``e["content"]["body"]`` on a state event: just "no match".
                matched = False
            if matched:
                return inbox.pop(i)
        return None

    def _diagnosis(self) -> str:
        if self.diagnose is None:
            return ""
        try:
            return "\n" + self.diagnose()
        except Exception as exc:  # a diagnosis must never hide the timeout itself
            return f"\n(diagnosis failed: {exc!r})"

    def _inbox_report(self, room_id: str) -> str:
        seen = self._inbox.get(room_id, [])
        lines = "\n".join(f"  - {_describe(e)}" for e in seen) or "  (nothing)"
        report = f"Unconsumed events in {room_id}:\n{lines}"
        others = sorted(r for r, evs in self._inbox.items() if evs and r != room_id)
        if others:
            report += f"\nOther rooms with unconsumed events: {others}"
        if self._invites:
            report += f"\nPending invites: {sorted(self._invites)}"
        return report

    async def wait_for_event(
        self,
        room_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 10,
    ) -> dict[str, Any]:
        """Return (and consume) the oldest unconsumed timeline event in ``room_id``
        matching ``predicate``. Raises TimeoutError listing what was seen instead.

        A predicate raising KeyError/IndexError/TypeError/AttributeError counts as
        "no match", so ``lambda e: e["content"]["body"] == "hi"`` is fine."""
        ok, event = await self._wait(lambda: self._take_from_inbox(room_id, predicate), timeout)
        if ok:
            return event  # type: ignore[no-any-return]
        raise TimeoutError(
            f"{self.user_id}: no matching event in {room_id} within {timeout}s. "
            + self._inbox_report(room_id) + self._diagnosis()
        )

    async def wait_for_membership(
        self,
        room_id: str,
        user_id: str,
        membership: str,
        timeout: float = 10,
    ) -> dict[str, Any]:
        """Wait until ``user_id`` has ``membership`` in ``room_id`` and return the
        m.room.member event: a matching one from /sync (consumed), else the current
        state event if the membership was already in place. Our own pending invite
        counts too (returned from the stripped invite state, not consumed)."""

        def matches(event: JsonDict) -> bool:
            return (
                event.get("type") == "m.room.member"
                and event.get("state_key") == user_id
                and (event.get("content") or {}).get("membership") == membership
            )

        def find() -> JsonDict | None:
            found = self._take_from_inbox(room_id, matches)
            if found is None:
                found = next(filter(matches, self._invites.get(room_id, [])), None)
            return found

        # The membership may predate this client's sync position: check current state.
        current = await self._current_member_event(room_id, user_id)
        if current is not None and matches(current):
            return current
        ok, event = await self._wait(find, timeout)
        if ok:
            return event  # type: ignore[no-any-return]
        current = await self._current_member_event(room_id, user_id)
        now = (current or {}).get("content", {}).get("membership") if current else "unknown"
        raise TimeoutError(
            f"{self.user_id}: {user_id} did not reach membership {membership!r} in "
            f"{room_id} within {timeout}s (current: {now}). " + self._inbox_report(room_id)
        )

    async def _current_member_event(self, room_id: str, user_id: str) -> JsonDict | None:
        try:
            state = await self.request("GET", f"/rooms/{_q(room_id)}/state")
        except MatrixRequestError:
            return None  # e.g. 403: we are not (yet) in the room
        for event in state:
            if event.get("type") == "m.room.member" and event.get("state_key") == user_id:
                return event  # type: ignore[no-any-return]
        return None

    async def wait_for_invite(
        self,
        timeout: float = 10,
        *,
        inviter: str | None = None,
    ) -> str:
        """Return the room ID of a pending invite for this user (optionally only one
        sent by ``inviter``). Each invite is returned once; re-invites count anew."""

        def invited_by(state: list[JsonDict]) -> str | None:
            for event in state:
                if event.get("type") == "m.room.member" and event.get("state_key") == (
                    self.user_id
                ):
                    return event.get("sender")
            return None

        def find() -> str | None:
            for room_id, state in self._invites.items():
                if room_id in self._returned_invites:
                    continue
                if inviter is None or invited_by(state) == inviter:
                    self._returned_invites.add(room_id)
                    return room_id
            return None

        ok, room_id = await self._wait(find, timeout)
        if ok:
            return room_id  # type: ignore[no-any-return]
        pending = {
            r: invited_by(s) for r, s in self._invites.items() if r not in self._returned_invites
        }
        raise TimeoutError(
            f"{self.user_id}: no invite"
            + (f" from {inviter}" if inviter else "")
            + f" within {timeout}s; pending invites (room -> inviter): {pending}"
        )
