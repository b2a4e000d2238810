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
