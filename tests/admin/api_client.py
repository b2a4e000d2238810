"""A small client of the provisioning API for tests: (status, JSON body) of each call."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from bridge.admin.api import PREFIX


class ApiClient:
    """Calls ``/_bridge/api/v1`` on the bridge's listener with one token (or none)."""

    def __init__(self, port: int, token: str | None, via: str | None = None) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}{PREFIX}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        if via:
            self.headers["X-Bridge-Via"] = via
        self.last_headers: dict[str, str] = {}

    def as_(self, token: str | None, via: str | None = None) -> ApiClient:
        """The same API as someone else."""
        return ApiClient(self.port, token, via)

    async def call(self, method: str, path: str, body: Any = None, *,
                   params: dict[str, str] | None = None, raw: bytes | None = None,
                   ) -> tuple[int, Any]:
        async with aiohttp.ClientSession(headers=self.headers) as session, \
                session.request(method, self.base + path, json=body, params=params,
                                data=raw) as response:
            self.last_headers = dict(response.headers)
            text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:  # not the API answering (it is off): the text as it came
            return response.status, text

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        return await self.call("GET", path, params=params or None)

    async def put(self, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.call("PUT", path, {} if body is None else body)

    async def delete(self, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.call("DELETE", path, body)

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.call("POST", path, {} if body is None else body)
