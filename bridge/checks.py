"""`bridge check`: is the setup right? One verdict per item, each with what to do about it."""

from __future__ import annotations

import errno
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy.engine import URL

from bridge.config import Config
from bridge.networks import networks


@dataclass(slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    # Works, but probably not as the operator wants (printed as WARN; does not fail the check).
    warning: bool = False

    @property
    def verdict(self) -> str:
        return "FAIL" if not self.ok else "WARN" if self.warning else "OK"


async def _json(session: aiohttp.ClientSession, method: str, url: str,
                **kwargs: Any) -> tuple[int, Any]:
    async with session.request(method, url, **kwargs) as response:
        try:
            return response.status, await response.json(content_type=None)
        except ValueError:
            return response.status, None


async def _check_versions(session: aiohttp.ClientSession, config: Config) -> CheckResult:
    name = "homeserver reachable"
    url = f"{config.homeserver.address}/_matrix/client/versions"
    try:
        status, body = await _json(session, "GET", url)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return CheckResult(name, False, f"{url}: {exc.__class__.__name__} {exc} "
                                        "(check homeserver.address)")
    if status != 200 or not isinstance(body, dict) or "versions" not in body:
        return CheckResult(name, False, f"{url} answered HTTP {status}, not a Matrix homeserver")
    versions = body["versions"]
    return CheckResult(name, True, f"{config.homeserver.address} (spec {versions[-1]})")


async def _check_whoami(session: aiohttp.ClientSession, config: Config) -> CheckResult:
    name = "as_token accepted"
    url = f"{config.homeserver.address}/_matrix/client/v3/account/whoami"
    headers = {"Authorization": f"Bearer {config.appservice.as_token}"}
    try:
        status, body = await _json(session, "GET", url, headers=headers,
                                   params={"user_id": config.bot_mxid})
    except (aiohttp.ClientError, TimeoutError) as exc:
        return CheckResult(name, False, f"homeserver unreachable: {exc.__class__.__name__}")
    if status == 200 and isinstance(body, dict) and body.get("user_id") == config.bot_mxid:
        return CheckResult(name, True, f"the homeserver knows the bot as {config.bot_mxid}")
    errcode = body.get("errcode") if isinstance(body, dict) else None
    hint = ("the homeserver does not know this appservice: add the registration file to its "
            "app_service_config_files and restart it") if errcode == "M_UNKNOWN_TOKEN" else \
        "check homeserver.domain and appservice.bot_username against the registration"
    return CheckResult(name, False, f"HTTP {status} {errcode or ''}: {hint}")


async def _check_double_puppet(session: aiohttp.ClientSession, config: Config,
                               config_path: str) -> CheckResult:
    """Does the homeserver let the second registration's token act as its local users?
    Asked as the bot: a local user of the homeserver that the bridge registers anyway (done
    here first if the bridge never ran; a homeserver refuses to act as unregistered users)."""
    name = "double puppeting"
    url = f"{config.homeserver.address}/_matrix/client/v3/account/whoami"
    headers = {"Authorization": f"Bearer {config.double_puppet.as_token}"}
    try:
        await _json(session, "POST", f"{config.homeserver.address}/_matrix/client/v3/register",
                    headers={"Authorization": f"Bearer {config.appservice.as_token}"},
                    json={"type": "m.login.application_service", "inhibit_login": True,
                          "username": config.appservice.bot_username})
        status, body = await _json(session, "GET", url, headers=headers,
                                   params={"user_id": config.bot_mxid})
    except (aiohttp.ClientError, TimeoutError) as exc:
        return CheckResult(name, False, f"homeserver unreachable: {exc.__class__.__name__}")
    if status == 200 and isinstance(body, dict) and body.get("user_id") == config.bot_mxid:
        return CheckResult(name, True, "the homeserver accepts double_puppet.as_token for its "
                                       "local users")
    errcode = body.get("errcode") if isinstance(body, dict) else None
    if errcode == "M_UNKNOWN_TOKEN":
        hint = ("the homeserver does not know double_puppet.as_token: the second registration "
                "is not registered. Run `bridge generate-registration -c "
                f"{config_path}`, add the -double-puppet.yaml file it writes to the "
                "homeserver's app_service_config_files and restart the homeserver")
    else:
        hint = ("the homeserver does not let double_puppet.as_token act as its local users: "
                "its registration needs the non-exclusive user namespace @.*:"
                f"{config.homeserver.domain} (`bridge generate-registration` writes it)")
    return CheckResult(name, False, f"HTTP {status} {errcode or ''}: {hint}; until then "
                                    "linked people's messages come from their puppets")


async def _check_namespaces(session: aiohttp.ClientSession, config: Config,
                            config_path: str) -> list[CheckResult]:
    """Each enabled network's puppets, as the homeserver's copy of the registration sees
    them: `bridge run` refuses to start a network whose puppets it would refuse."""
    from bridge.registration import HomeserverUnavailable, namespace_refusal, regenerate_hint

    results = []
    for network, section in config.networks().items():
        if not section.enabled:
            continue
        name = f"{network} puppets in the registration"
        namespace = f"@{section.puppet_prefix}…:{config.homeserver.domain}"
        try:
            refusal = await namespace_refusal(session, config, section.puppet_prefix)
        except HomeserverUnavailable as exc:
            results.append(CheckResult(name, False, f"homeserver unreachable: {exc}"))
            continue
        if refusal is None:
            results.append(CheckResult(name, True, f"the homeserver lets the bridge act as "
                                                   f"{namespace}"))
        else:
            results.append(CheckResult(name, False, f"{refusal}; `bridge run` will not start "
                                                    f"{network}: {regenerate_hint(config_path)}"))
    return results


def _check_admins(config: Config) -> CheckResult:
    name = "bridge admins"
    if not config.bridge.admins:
        return CheckResult(name, True, "bridge.admins is empty: nobody can invite the bot, link "
                                       "rooms or use its admin commands; add your Matrix user "
                                       "ID", warning=True)
    return CheckResult(name, True, ", ".join(config.bridge.admins))


async def _ping_responder(config: Config) -> web.AppRunner | None:
    """If the bridge is not running, answer the homeserver's ping ourselves for the check.

    That way the network path homeserver -> appservice.address can be tested before the
    first `bridge run`.
    """
    token = config.appservice.hs_token

    async def ping(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/_matrix/app/v1/ping", ping)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.appservice.hostname, config.appservice.port).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            return None  # the bridge itself is listening: it answers the ping
        raise
    return runner


async def _check_ping(session: aiohttp.ClientSession, config: Config) -> CheckResult:
    name = "homeserver reaches the bridge"
    url = (f"{config.homeserver.address}/_matrix/client/v1/appservice/"
           f"{config.appservice.id}/ping")
    headers = {"Authorization": f"Bearer {config.appservice.as_token}"}
    try:
        runner = await _ping_responder(config)
    except OSError as exc:
        return CheckResult(name, False, f"cannot listen on {config.appservice.hostname}:"
                                        f"{config.appservice.port}: {exc.strerror}")
    try:
        status, body = await _json(session, "POST", url, headers=headers,
                                   json={"transaction_id": f"check-{secrets.token_hex(6)}"})
    except (aiohttp.ClientError, TimeoutError) as exc:
        return CheckResult(name, False, f"homeserver unreachable: {exc.__class__.__name__}")
    finally:
        if runner is not None:
            await runner.cleanup()
    if status == 200:
        took = body.get("duration_ms") if isinstance(body, dict) else None
        return CheckResult(name, True, f"{config.appservice.address} answered the homeserver's "
                                       f"ping in {took} ms")
    errcode = body.get("errcode") if isinstance(body, dict) else None
    error = body.get("error") if isinstance(body, dict) else None
    hints = {
        "M_URL_NOT_SET": "the registration has no url",
        "M_CONNECTION_FAILED": f"the homeserver cannot connect to {config.appservice.address} "
                               "(check appservice.address, appservice.port and firewalls)",
        "M_CONNECTION_TIMEOUT": "the bridge did not answer in time",
        "M_BAD_STATUS": "the bridge answered with an error: are the hs_token of the config "
                        "and of the registration the same?",
        "M_FORBIDDEN": "the homeserver refuses: the as_token does not belong to appservice.id",
    }
    return CheckResult(name, False, f"HTTP {status} {errcode or ''}: "
                                    f"{hints.get(errcode or '', error or 'unexpected answer')}")


def _missing_sqlite_file(url: URL) -> Path | None:
    """The SQLite file the URL names, if it does not exist. Opening it would create an empty
    one, and a check must change nothing."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(url.database or "").resolve()
    return None if path.is_file() else path


async def _check_database(config: Config) -> CheckResult:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from bridge.db.engine import Database, current_revision, head_revision

    name = "database reachable and migrated"
    url = make_url(config.database.url)
    where = url.render_as_string(hide_password=True)
    if config.database_is_default:
        where += " (the default: the config has no database section)"
    if (missing := _missing_sqlite_file(url)) is not None:
        return CheckResult(name, False, f"{where}: {missing} does not exist yet: run "
                                        "`bridge db upgrade` to create it")
    db = Database(config.database.url)
    try:
        async with db.sessions() as session:
            await session.execute(text("SELECT 1"))
        revision = await current_revision(db.engine)
    except Exception as exc:
        return CheckResult(name, False, f"{where}: {str(exc).splitlines()[0]}")
    finally:
        await db.close()
    head = head_revision()
    if revision != head:
        return CheckResult(name, False, f"{where} is at schema {revision or 'empty'}, this "
                                        f"version needs {head}: run `bridge db upgrade`")
    return CheckResult(name, True, f"{where} (schema {revision})")


async def run_checks(config: Config, config_path: str = "config.yaml") -> list[CheckResult]:
    timeout = aiohttp.ClientTimeout(total=20)
    ssl = config.homeserver.verify_tls  # False only for a local test setup
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(ssl=ssl)) as session:
        results = [await _check_versions(session, config)]
        if results[0].ok:
            whoami = await _check_whoami(session, config)
            results += [whoami, await _check_ping(session, config)]
            if whoami.ok:  # else the homeserver does not know the as_token to ask with
                results += await _check_namespaces(session, config, config_path)
            if config.double_puppet.enabled:
                results.append(await _check_double_puppet(session, config, config_path))
        else:
            results.append(CheckResult("as_token accepted", False, "skipped: no homeserver"))
            results.append(CheckResult("homeserver reaches the bridge", False,
                                       "skipped: no homeserver"))
        # Each enabled network's own items, in registry order.
        for network in networks():
            section = config.networks().get(network.name)
            if network.checks is not None and section is not None and section.enabled:
                results += await network.checks(session, config)
        results.append(await _check_database(config))
        if results[0].ok and results[-1].ok:
            results.append(await _check_encrypted_rooms(session, config))
    results.append(_check_admins(config))
    return results


async def _check_encrypted_rooms(session: aiohttp.ClientSession,
                                 config: Config) -> CheckResult:
    from bridge.db import crypto
    from bridge.db.engine import Database
    from bridge.matrix.encryption_check import NAME, check_encryption

    db = Database(config.database.url)
    try:
        async with db.sessions() as db_session:
            rooms = await crypto.linked_room_ids(db_session)
    finally:
        await db.close()
    ok, warning, detail = await check_encryption(session, config, rooms)
    return CheckResult(NAME, ok, detail, warning)
