"""One Slack workspace as the bridge sees it: its Web API client, who the app is there, and
Slack's rate limits.

Slack limits each Web API method per workspace by "tier" (requests per minute), and
chat.postMessage to about one message per second per channel with short bursts. The bridge
paces itself to those limits instead of running into HTTP 429; when Slack answers 429
anyway, the method waits the ``Retry-After`` Slack asked for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bridge.core.errors import PermanentError, TemporaryError
from bridge.slack.config import SlackWorkspace

log = logging.getLogger("bridge.slack")
# The logger slack-sdk's AsyncWebClient writes to (its module's name).
SDK_WEB_LOGGER = "slack_sdk.web.async_base_client"

# Requests per minute of Slack's tiers (https://api.slack.com/apis/rate-limits).
TIER_PER_MINUTE = {1: 1, 2: 20, 3: 50, 4: 100}
# The tiers of the methods the bridge calls (Slack's published rate_limit_tiers metadata).
METHOD_TIER = {
    "apps.connections.open": 1,
    "users.list": 2, "conversations.list": 2, "reactions.remove": 2, "emoji.list": 2,
    "users.lookupByEmail": 3, "bots.info": 3, "team.info": 3, "conversations.info": 3,
    "conversations.history": 3,
    "conversations.replies": 3, "conversations.join": 3, "conversations.open": 3,
    "chat.update": 3, "chat.delete": 3,
    "chat.meMessage": 3, "reactions.add": 3, "files.delete": 3,
    "users.info": 4, "conversations.members": 4, "files.getUploadURLExternal": 4,
    "files.completeUploadExternal": 4, "files.info": 4,
}
# chat.postMessage: one per second per channel, "short bursts" allowed.
POST_PER_SECOND = 1.0
POST_BURST = 10

# Slack errors that retrying cannot fix, with what an admin can do about them.
PERMANENT_HINTS = {
    "channel_not_found": "The channel does not exist (any more) or the app cannot see it.",
    "not_in_channel": "Add the app to the channel in Slack (/invite @<app name>).",
    "is_archived": "The Slack channel is archived.",
    "invalid_auth": "The workspace's bot_token is not valid; check slack.workspaces.",
    "not_authed": "The workspace's bot_token is missing; check slack.workspaces.",
    "account_inactive": "The Slack app was uninstalled or its token revoked.",
    "token_revoked": "The Slack app's token was revoked; reinstall the app.",
    "missing_scope": "The Slack app lacks a scope; recreate it from slack-app-manifest.yaml.",
    "msg_too_long": "The message is longer than Slack accepts.",
    "restricted_action": "A workspace admin restricted posting in this channel.",
}
TRANSIENT_ERRORS = {"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                    "request_timeout"}


def _web_api_logger() -> logging.Logger:
    """slack-sdk's own Web API logger, given the level it would log at anyway: without a
    level of its own, slack-sdk formats each call's whole request and response for a DEBUG
    line that is then dropped (some 8 us per call)."""
    sdk = logging.getLogger(SDK_WEB_LOGGER)
    sdk.setLevel(logging.getLogger(SDK_WEB_LOGGER.rpartition(".")[0]).getEffectiveLevel())
    return sdk


@dataclass
class _Bucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst``."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)
    # Set by a 429: nothing goes out before this moment.
    blocked_until: float = 0.0

    def delay(self) -> float:
        """Take a token; how long to wait before using it."""
        now = time.monotonic()
        if self.tokens < 0:
            self.tokens = self.burst
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1
        wait = 0.0 if self.tokens >= 0 else -self.tokens / self.rate
        return max(wait, self.blocked_until - now)


class RateLimits:
    """Paces calls per method (and chat.postMessage per channel)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, method: str, channel: str | None) -> _Bucket:
        key = f"{method}/{channel}" if method == "chat.postMessage" else method
        bucket = self._buckets.get(key)
        if bucket is None:
            if method == "chat.postMessage":
                bucket = _Bucket(POST_PER_SECOND, POST_BURST)
            else:
                per_minute = TIER_PER_MINUTE[METHOD_TIER.get(method, 3)]
                # A minute's allowance as burst: Slack measures per minute, too.
                bucket = _Bucket(per_minute / 60.0, max(1, per_minute))
            self._buckets[key] = bucket
        return bucket

    async def wait(self, method: str, channel: str | None = None) -> None:
        bucket = self._bucket(method, channel)
        if not self.enabled:
            delay = max(0.0, bucket.blocked_until - time.monotonic())
        else:
            delay = bucket.delay()
        if delay > 0:
            await asyncio.sleep(delay)

    def blocked(self, method: str, channel: str | None, seconds: float) -> None:
        self._bucket(method, channel).blocked_until = time.monotonic() + seconds


class Workspace:
    """A configured workspace; ``team_id`` and the app's identity come from ``auth.test``."""

    def __init__(self, settings: SlackWorkspace, api_url: str, session: aiohttp.ClientSession,
                 rate_limits: bool = True) -> None:
        self.settings = settings
        self.name = settings.name
        self.client = AsyncWebClient(token=settings.bot_token, base_url=api_url,
                                     session=session, timeout=30, logger=_web_api_logger())
        self.limits = RateLimits(rate_limits)
        self.team_id = ""
        self.team_name = ""
        self.team_url = ""
        self.bot_user_id = ""
        self.bot_id = ""
        self.app_id = ""
        self.connected = False
        self.last_error: str | None = None
        # The scopes Slack says the bot token has (its x-oauth-scopes header), once known.
        self.scopes: set[str] | None = None
        # Set when Slack says the app was uninstalled or its bot token revoked.
        self.access_lost: str | None = None

    @property
    def socket_mode(self) -> bool:
        return self.settings.app_token is not None

    async def identify(self) -> None:
        """Learn the team ID and the app's own user, bot and app IDs (for echo suppression)."""
        auth = await self.call("auth.test")
        self.team_id = str(auth["team_id"])
        self.team_name = str(auth.get("team") or self.name)
        self.team_url = str(auth.get("url") or "")
        self.bot_user_id = str(auth.get("user_id") or "")
        self.bot_id = str(auth.get("bot_id") or "")
        if self.bot_id:
            info = await self.call("bots.info", bot=self.bot_id)
            self.app_id = str((info.get("bot") or {}).get("app_id") or "")

    def is_own(self, message: dict[str, Any]) -> bool:
        """Did this app post it? Then it came from Matrix and must not go back."""
        if self.bot_id and message.get("bot_id") == self.bot_id:
            return True
        if self.app_id and message.get("app_id") == self.app_id:
            return True
        return bool(self.bot_user_id) and message.get("user") == self.bot_user_id

    async def call(self, method: str, *, channel_key: str | None = None,
                   **params: Any) -> dict[str, Any]:
        """Call a Web API method, paced; Slack's answers become the outbox's errors:
        :class:`TemporaryError` (retry, after Retry-After if given) or
        :class:`PermanentError` (with a hint for the room)."""
        await self.limits.wait(method, channel_key)
        try:
            # slack-sdk's own method wrappers: they encode each parameter as Slack expects.
            response = await getattr(self.client, method.replace(".", "_"))(**params)
        except SlackApiError as exc:
            raise self._error(method, channel_key, exc) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.last_error = f"{method}: {exc!r}"
            raise TemporaryError(f"Slack is not reachable ({method}: {exc!r})") from exc
        self.last_error = None
        scopes = response.headers.get("x-oauth-scopes") if response.headers else None
        if isinstance(scopes, str):
            self.scopes = {scope.strip() for scope in scopes.split(",") if scope.strip()}
        return dict(response.data) if isinstance(response.data, dict) else {}

    def _error(self, method: str, channel_key: str | None,
               exc: SlackApiError) -> TemporaryError | PermanentError:
        status = exc.response.status_code
        data = exc.response.data if isinstance(exc.response.data, dict) else {}
        code = str(data.get("error") or f"HTTP {status}")
        if status == 429 or code == "ratelimited":
            retry_after = _retry_after(exc.response.headers)
            self.limits.blocked(method, channel_key, retry_after)
            log.info("Slack rate-limited %s in %s; waiting %.0fs", method, self.name,
                     retry_after)
            return TemporaryError(f"Slack rate limit on {method}", retry_after=retry_after)
        if status >= 500 or code in TRANSIENT_ERRORS:
            self.last_error = f"{method}: {code}"
            return TemporaryError(f"Slack error on {method}: {code}")
        return PermanentError(f"Slack refused {method}: {code}", hint=PERMANENT_HINTS.get(code))

    async def read(self, method: str, **params: Any) -> dict[str, Any]:
        """A call made while reading (catch-up, commands): 429 and 5xx are waited out here,
        a few times, instead of failing the caller."""
        for attempt in range(5):
            try:
                return await self.call(method, **params)
            except TemporaryError as exc:
                if attempt == 4:
                    raise
                await asyncio.sleep(exc.retry_after or min(2 ** attempt, 10))
        raise AssertionError("unreachable")

    async def paginate(self, method: str, key: str, limit: int | None = None,
                       **params: Any) -> list[dict[str, Any]]:
        """All items of a cursor-paginated method (up to ``limit``)."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page_size = 200 if limit is None else max(1, min(200, limit - len(items)))
            data = await self.read(method, limit=page_size,
                                   **({"cursor": cursor} if cursor else {}), **params)
            items.extend(data.get(key) or [])
            cursor = (data.get("response_metadata") or {}).get("next_cursor")
            if not cursor or (limit is not None and len(items) >= limit):
                return items if limit is None else items[:limit]


def _retry_after(headers: Any) -> float:
    try:
        return max(1.0, float(headers.get("Retry-After") or headers.get("retry-after") or 1))
    except (TypeError, ValueError):
        return 1.0
