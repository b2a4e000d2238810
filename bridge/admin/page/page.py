"""Serves the admin page and its login.

The page is three static files (``static/``) read from the package once, when mounted. Every
change it makes goes through the provisioning API, with the bearer token the browser holds
in ``sessionStorage``: the shared secret, or a bridge admin's Matrix access token. That token
comes from ``POST /_bridge/admin/login``, which asks the homeserver
(``/_matrix/client/v3/login``, ``m.login.password``) and answers the token only to a bridge
admin; anyone else's fresh token is logged out again at once. ``POST /_bridge/admin/logout``
logs a Matrix token out at the homeserver, so closing the session on the page really ends it.

Nothing is mounted when ``provisioning.shared_secret`` is empty: every path here is a 404,
like the API's.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from bridge.core.errors import CommandError, UnavailableError

if TYPE_CHECKING:
    from bridge.admin.api.auth import Authenticator
    from bridge.app import Bridge

log = logging.getLogger("bridge.admin.page")

PAGE_PREFIX = "/_bridge/admin"

#: The files of the page and how they are served. Only these names are served: the path
#: never reaches the file system.
ASSETS = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}

#: The page loads only its own files and talks only to its own origin; no other site may
#: frame it (clickjacking), and nothing it shows leaks through a Referer.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}

LOGIN_TIMEOUT = aiohttp.ClientTimeout(total=20)
MAX_LOGIN_BODY = 16 * 1024
DEVICE_NAME = "Bridge admin page"


class LoginRefused(CommandError):
    """Wrong user name or password."""

    status = 401
    errcode = "M_FORBIDDEN"


class NotAdmin(CommandError):
    status = 403
    errcode = "M_FORBIDDEN"


class TooManyAttempts(CommandError):
    status = 429
    errcode = "M_LIMIT_EXCEEDED"


class BadLogin(CommandError):
    errcode = "M_BAD_JSON"


def _error(exc: CommandError) -> web.Response:
    return web.json_response({"errcode": exc.errcode, "error": str(exc)}, status=exc.status,
                             headers={"Cache-Control": "no-store"})


def _read_assets() -> dict[str, bytes]:
    static = resources.files(__package__).joinpath("static")
    return {name: static.joinpath(name).read_bytes() for name in ASSETS}


def mount(app: web.Application, bridge: Bridge, auth: Authenticator) -> None:
    """Add the page's routes to the listener (nothing when no shared secret is set)."""
    if not bridge.config.provisioning.shared_secret:
        return
    page = AdminPage(bridge, auth)
    app.router.add_get(PAGE_PREFIX, page.to_page)
    app.router.add_get(PAGE_PREFIX + "/", page.asset)
    app.router.add_post(PAGE_PREFIX + "/login", page.login)
    app.router.add_post(PAGE_PREFIX + "/logout", page.logout)
    app.router.add_get(PAGE_PREFIX + "/{asset}", page.asset)


class AdminPage:
    def __init__(self, bridge: Bridge, auth: Authenticator) -> None:
        self.bridge = bridge
        self.auth = auth
        self.assets = _read_assets()

    async def to_page(self, request: web.Request) -> web.StreamResponse:
        # Relative URLs in the page (app.js, ../api/v1/) need the trailing slash.
        raise web.HTTPPermanentRedirect(PAGE_PREFIX + "/")

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info.get("asset", "index.html")
        if name not in ASSETS:
            raise web.HTTPNotFound()
        # The page itself is never stored (it is where a token is typed); its scripts are
        # revalidated, so an upgraded bridge is not run with last version's app.js.
        cache = "no-store" if name == "index.html" else "no-cache"
        return web.Response(body=self.assets[name], content_type=ASSETS[name], charset="utf-8",
                            headers={**SECURITY_HEADERS, "Cache-Control": cache})

    # --- login and logout --------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        try:
            user, password = await _credentials(request)
            return web.json_response(await self._login(user, password),
                                     headers={"Cache-Control": "no-store"})
        except CommandError as exc:
            return _error(exc)

    async def _login(self, user: str, password: str) -> dict[str, Any]:
        status, body = await self._homeserver("POST", "/login", json_body={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "initial_device_display_name": DEVICE_NAME,
        })
        if status == 429:
            seconds = -(-int(body.get("retry_after_ms", 1000)) // 1000)
            raise TooManyAttempts(f"Too many login attempts; try again in {seconds} s.")
        if status in (401, 403):
            raise LoginRefused("Wrong user name or password.")
        if status == 400:
            raise BadLogin(f"The homeserver refused this login: {body.get('error') or status}")
        token, user_id = body.get("access_token"), body.get("user_id")
        if status != 200 or not isinstance(token, str) or not isinstance(user_id, str):
            raise UnavailableError(f"The homeserver answered HTTP {status} to the login; "
                                   "try again later.")
        if not self.bridge.hub.is_admin(user_id):
            # The password was right, but this page is not for them: the session the login
            # just opened must not outlive the refusal.
            await self._logout_at_homeserver(token)
            log.info("admin page: %s logged in but is not a bridge admin", user_id)
            raise NotAdmin(f"{user_id} is not an admin of this bridge (bridge.admins in its "
                           "config).")
        log.info("admin page: %s logged in", user_id)
        return {"user_id": user_id, "access_token": token,
                "device_id": body.get("device_id")}

    async def logout(self, request: web.Request) -> web.Response:
        """Ends a Matrix session the page opened; the shared secret has nothing to end."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token and not self.auth.is_secret(token):
            try:
                await self._logout_at_homeserver(token)
            except CommandError as exc:
                return _error(exc)
            self.auth.forget(token)
        return web.json_response({}, headers={"Cache-Control": "no-store"})

    async def _logout_at_homeserver(self, token: str) -> None:
        # 401: the token is no longer valid, which is what a logout wants.
        status, _ = await self._homeserver("POST", "/logout", json_body={}, token=token)
        if status not in (200, 401):
            raise UnavailableError(f"The homeserver answered HTTP {status} to the logout; "
                                   "try again later.")

    async def _homeserver(self, method: str, path: str, *, json_body: dict[str, Any],
                          token: str | None = None) -> tuple[int, dict[str, Any]]:
        http = self.bridge.http
        if http is None:
            raise UnavailableError("The bridge is starting; try again in a moment.")
        url = f"{self.bridge.config.homeserver.address}/_matrix/client/v3{path}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with http.request(method, url, json=json_body, headers=headers,
                                    timeout=LOGIN_TIMEOUT) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                return response.status, body if isinstance(body, dict) else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UnavailableError(f"Cannot reach the homeserver ({exc.__class__.__name__}); "
                                   "try again later.") from None


async def _credentials(request: web.Request) -> tuple[str, str]:
    # JSON only: a form on another site cannot post JSON without the browser asking first,
    # so no other site can log a visitor in here.
    if request.content_type != "application/json":
        raise BadLogin("Send the login as JSON: {\"user\": \"...\", \"password\": \"...\"}.")
    raw = await request.content.read(MAX_LOGIN_BODY + 1)
    try:
        body = json.loads(raw) if len(raw) <= MAX_LOGIN_BODY else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise BadLogin("The login must be a JSON object: {\"user\": \"...\", "
                       "\"password\": \"...\"}.")
    user, password = body.get("user"), body.get("password")
    if not isinstance(user, str) or not user.strip():
        raise BadLogin("Give a Matrix user name (like anna) or user ID (like @anna:example.org).")
    if not isinstance(password, str) or not password:
        raise BadLogin("Give the password.")
    return user.strip(), password
