"""The admin page's files as the listener serves them: only its own files, security headers,
nothing from other sites, and no page at all without a shared secret. No network: handlers
are called with aiohttp's mocked requests. The page in a real browser:
tests/admin/test_admin_page.py."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request

from bridge.admin.page import page as admin_page
from bridge.admin.page.page import ASSETS, PAGE_PREFIX, AdminPage

SECRET = "s" * 32


def fake_bridge(secret: str = SECRET) -> Any:
    return SimpleNamespace(config=SimpleNamespace(provisioning=SimpleNamespace(
        shared_secret=secret)), http=None, hub=SimpleNamespace(is_admin=lambda user: False))


def page_paths(app: web.Application) -> set[str]:
    return {resource.canonical for resource in app.router.resources()
            if resource.canonical.startswith(PAGE_PREFIX)}


def test_without_a_shared_secret_there_is_no_page() -> None:
    app = web.Application()
    admin_page.mount(app, fake_bridge(secret=""), auth=None)  # type: ignore[arg-type]
    assert page_paths(app) == set()
    app = web.Application()
    admin_page.mount(app, fake_bridge(), auth=None)  # type: ignore[arg-type]
    assert page_paths(app) == {PAGE_PREFIX, PAGE_PREFIX + "/", PAGE_PREFIX + "/login",
                               PAGE_PREFIX + "/logout", PAGE_PREFIX + "/{asset}"}


async def serve(page: AdminPage, asset: str | None) -> web.Response:
    path = PAGE_PREFIX + "/" + (asset or "")
    request = make_mocked_request("GET", path,
                                  match_info={"asset": asset} if asset is not None else {})
    return await page.asset(request)


async def test_files_are_served_with_security_headers() -> None:
    page = AdminPage(fake_bridge(), auth=None)  # type: ignore[arg-type]
    index = await serve(page, None)
    assert index.content_type == "text/html" and index.charset == "utf-8"
    assert b"<h1>Bridge administration</h1>" in index.body  # type: ignore[operator]
    csp = index.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert index.headers["X-Frame-Options"] == "DENY"
    assert index.headers["X-Content-Type-Options"] == "nosniff"
    assert index.headers["Cache-Control"] == "no-store"  # where a password is typed
    for name, kind in ASSETS.items():
        response = await serve(page, name)
        assert response.content_type == kind
        assert response.headers["Content-Security-Policy"] == csp
    # Only the page's own files: no path reaches the file system.
    for name in ("page.py", "../page.py", "static/app.js", "login", "%2e%2e"):
        with pytest.raises(web.HTTPNotFound):
            await serve(page, name)
    with pytest.raises(web.HTTPPermanentRedirect) as redirect:
        await page.to_page(make_mocked_request("GET", PAGE_PREFIX))
    assert redirect.value.location == PAGE_PREFIX + "/"


def test_nothing_is_loaded_from_other_sites() -> None:
    page = AdminPage(fake_bridge(), auth=None)  # type: ignore[arg-type]
    html = page.assets["index.html"].decode()
    for reference in re.findall(r'(?:src|href)="([^"]*)"', html):
        # data:, is the empty icon: no request for /favicon.ico.
        assert reference in ("style.css", "app.js", "data:,"), reference
    for name in ("app.js", "style.css"):
        text = page.assets[name].decode()
        # The one absolute URL is the SVG namespace, a name, never fetched.
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)
        assert "@import" not in text and "eval(" not in text and "innerHTML" not in text


async def test_login_wants_json_and_both_fields() -> None:
    page = AdminPage(fake_bridge(), auth=None)  # type: ignore[arg-type]

    async def login(body: bytes, content_type: str = "application/json") -> tuple[int, str]:
        request = make_mocked_request("POST", PAGE_PREFIX + "/login",
                                      headers={"Content-Type": content_type},
                                      payload=_payload(body))
        response = await page.login(request)
        return response.status, json.loads(response.body)["error"]  # type: ignore[arg-type]

    status, error = await login(b"user=anna&password=x", "application/x-www-form-urlencoded")
    assert status == 400 and "as JSON" in error
    assert (await login(b"[1]"))[0] == 400
    status, error = await login(b'{"user": " ", "password": "x"}')
    assert status == 400 and "user name" in error
    status, error = await login(b'{"user": "anna"}')
    assert status == 400 and "password" in error
    # Well-formed, but the bridge has no HTTP client yet: it says so instead of failing.
    status, error = await login(b'{"user": "anna", "password": "x"}')
    assert status == 503 and "starting" in error


def _payload(body: bytes) -> Any:
    """A request body as aiohttp reads it, without a socket."""
    stream = streams.StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=mock.Mock())
    stream.feed_data(body)
    stream.feed_eof()
    return stream


class FakeHomeserver:
    """Answers the page's login and logout calls as a homeserver would, and notes them."""

    def __init__(self, login: tuple[int, dict[str, Any]] | Exception) -> None:
        self.login = login
        self.calls: list[tuple[str, str | None]] = []

    def request(self, method: str, url: str, *, json: Any, headers: dict[str, str],
                timeout: Any) -> Any:
        path = url.split("/_matrix/client/v3", 1)[1]
        self.calls.append((path, headers.get("Authorization")))
        answer = self.login if path == "/login" else (200, {})

        class Response:
            status = answer[0] if isinstance(answer, tuple) else 0

            async def json(self, content_type: Any = None) -> Any:
                assert isinstance(answer, tuple)
                return answer[1]

            async def __aenter__(self) -> Any:
                if isinstance(answer, Exception):
                    raise answer
                return self

            async def __aexit__(self, *exc: object) -> None:
                return None

        return Response()


async def login_with(homeserver: FakeHomeserver) -> tuple[int, dict[str, Any]]:
    bridge = fake_bridge()
    bridge.http = homeserver
    bridge.config.homeserver = SimpleNamespace(address="http://hs")
    bridge.hub = SimpleNamespace(is_admin=lambda user: user.startswith("@admin"))
    page = AdminPage(bridge, auth=None)  # type: ignore[arg-type]
    request = make_mocked_request("POST", PAGE_PREFIX + "/login",
                                  headers={"Content-Type": "application/json"},
                                  payload=_payload(b'{"user": "anna", "password": "pw"}'))
    response = await page.login(request)
    assert response.headers["Cache-Control"] == "no-store"
    return response.status, json.loads(response.body)  # type: ignore[arg-type]


async def test_login_answers_what_the_homeserver_said() -> None:
    hs = FakeHomeserver((200, {"user_id": "@admin1:hs", "access_token": "tok-admin",
                               "device_id": "D1"}))
    assert await login_with(hs) == (200, {"user_id": "@admin1:hs", "access_token": "tok-admin",
                                          "device_id": "D1"})
    assert hs.calls == [("/login", None)]

    # The right password of someone who is no bridge admin: refused, and the session the
    # login opened is closed at once.
    hs = FakeHomeserver((200, {"user_id": "@anna:hs", "access_token": "tok-anna"}))
    status, body = await login_with(hs)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    assert "@anna:hs is not an admin" in body["error"]
    assert hs.calls == [("/login", None), ("/logout", "Bearer tok-anna")]

    status, body = await login_with(FakeHomeserver((403, {"errcode": "M_FORBIDDEN"})))
    assert (status, body["error"]) == (401, "Wrong user name or password.")
    status, body = await login_with(FakeHomeserver(
        (429, {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 2500})))
    assert (status, body["error"]) == (429, "Too many login attempts; try again in 3 s.")
    status, body = await login_with(FakeHomeserver((502, {})))
    assert status == 503 and "HTTP 502" in body["error"]
    status, body = await login_with(FakeHomeserver(aiohttp.ClientConnectionError()))
    assert status == 503 and "Cannot reach the homeserver" in body["error"]


async def test_logout_ends_a_matrix_session_and_forgets_it() -> None:
    hs = FakeHomeserver((200, {}))
    bridge = fake_bridge()
    bridge.http = hs
    bridge.config.homeserver = SimpleNamespace(address="http://hs")
    forgotten: list[str] = []
    auth = SimpleNamespace(is_secret=lambda token: token == SECRET, forget=forgotten.append)
    page = AdminPage(bridge, auth=auth)  # type: ignore[arg-type]

    async def logout(token: str) -> int:
        request = make_mocked_request("POST", PAGE_PREFIX + "/logout",
                                      headers={"Authorization": f"Bearer {token}"})
        return (await page.logout(request)).status

    # The shared secret has no session to end.
    assert await logout(SECRET) == 200
    assert hs.calls == [] and forgotten == []
    assert await logout("tok-admin") == 200
    assert hs.calls == [("/logout", "Bearer tok-admin")] and forgotten == ["tok-admin"]
