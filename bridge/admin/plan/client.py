"""The provisioning API as ``bridge plan`` uses it: the running bridge's listener, the
operator's shared secret, ``X-Bridge-Via: plan`` (so the audit log says where an action came
from), and a bound on the requests in flight."""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from bridge.admin.api import PREFIX
from bridge.config import Config

#: Requests in flight at once: enough to keep the bridge and the homeserver busy with many
#: rooms, few enough not to queue up behind Slack's rate limits.
CONCURRENCY = 16
TIMEOUT_SECONDS = 120


class NotConfigured(Exception):
    """The config turns the provisioning API off: the plan commands cannot work."""


class Unreachable(Exception):
    """The bridge's listener does not answer."""


class ApiError(Exception):
    """The API refused a request: ``status``, ``errcode`` and its sentence."""

    def __init__(self, status: int, errcode: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode


def base_url(config: Config) -> str:
    host = config.appservice.hostname
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: ask it on this machine
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.appservice.port}{PREFIX}"


def segment(value: str) -> str:
    """A room ID, alias or address as one path segment."""
    return quote(value, safe="")


class ApiClient:
    def __init__(self, config: Config, *, concurrency: int = CONCURRENCY) -> None:
        secret = config.provisioning.shared_secret
        if not secret:
            raise NotConfigured("provisioning.shared_secret is empty, so the bridge's "
                                "provisioning API is off; set it (bridge generate-config "
                                "writes one) and restart the bridge")
        self.base = base_url(config)
        self.run_hint = "is the bridge running? `bridge run -c <config>`"
        self._headers = {"Authorization": f"Bearer {secret}", "X-Bridge-Via": "plan"}
        self._limit = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        self._session = aiohttp.ClientSession(
            headers=self._headers, timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS))
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                      *, missing_ok: bool = False) -> dict[str, Any] | None:
        """The JSON answer; None for a 404 when ``missing_ok``; else :class:`ApiError`."""
        assert self._session is not None, "use the client as `async with`"
        async with self._limit:
            try:
                async with self._session.request(
                        method, self.base + path,
                        data=None if body is None else json.dumps(body),
                        headers=None if body is None else {"Content-Type":
                                                           "application/json"}) as response:
                    text = await response.text()
                    status = response.status
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise Unreachable(f"cannot reach the bridge at {self.base} "
                                  f"({exc.__class__.__name__}); {self.run_hint}") from None
        try:
            answer = json.loads(text) if text.strip() else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if status < 300:
            return answer
        if status == 404 and missing_ok and answer.get("errcode") != "M_UNRECOGNIZED":
            return None
        if status == 404 and answer.get("errcode") == "M_UNRECOGNIZED":
            raise Unreachable(f"the bridge at {self.base} has no {method} {path}: is it an "
                              "older version, or its provisioning API off "
                              "(provisioning.shared_secret)?")
        if status == 404 and not answer:
            raise Unreachable(f"the bridge at {self.base} does not serve its provisioning API "
                              "(is provisioning.shared_secret set in the config it runs "
                              "with?)")
        raise ApiError(status, str(answer.get("errcode") or f"HTTP {status}"),
                       str(answer.get("error") or f"the bridge answered HTTP {status}"))
