"""The registration file a homeserver loads to know this appservice."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import aiohttp

from bridge.config import Config


def build_registration(config: Config) -> dict[str, Any]:
    domain = re.escape(config.homeserver.domain)
    users = [{"exclusive": True,
              "regex": f"@{re.escape(config.appservice.bot_username)}:{domain}"}]
    for section in config.networks().values():
        if section.enabled:
            users.append({"exclusive": True,
                          "regex": f"@{re.escape(section.puppet_prefix)}.*:{domain}"})
    # Not exclusive: people keep making aliases as before. The homeserver lets an appservice
    # create only aliases in its namespace, and migration plans have the bot create rooms
    # with the aliases the plan names (bridge/admin/rooms.py).
    aliases = [{"exclusive": False, "regex": f"#.*:{domain}"}]
    registration: dict[str, Any] = {
        "id": config.appservice.id,
        "url": config.appservice.address,
        "as_token": config.appservice.as_token,
        "hs_token": config.appservice.hs_token,
        "sender_localpart": config.appservice.bot_username,
        "namespaces": {"users": users, "aliases": aliases, "rooms": []},
        "rate_limited": False,
        "receive_ephemeral": True,
        # The name under which Synapse read this before MSC2409 became stable.
        "de.sorunome.msc2409.push_ephemeral": True,
    }
    if config.encryption.allow:
        # Encrypted rooms (bridge/matrix/crypto.py): the homeserver sends the bot's device
        # its to-device messages (MSC2409, with the ephemeral keys above), the device list
        # changes and its one-time-key counts (MSC3202) in the transactions.
        registration["org.matrix.msc3202"] = True
    return registration


def double_puppet_registration_path(path: Path) -> Path:
    """Where the second registration goes: beside the first, ``<name>-double-puppet.yaml``."""
    return path.with_name(f"{path.stem}-double-puppet{path.suffix or '.yaml'}")


def build_double_puppet_registration(config: Config) -> dict[str, Any]:
    """The second registration, for double puppeting: the homeserver lets its token act as
    any of its local users (``?user_id=``), so a linked person's remote messages can be sent
    as their own account. No URL: the homeserver sends it no events (the first registration
    gets them all). Not exclusive: the users stay the homeserver's own."""
    domain = re.escape(config.homeserver.domain)
    return {
        "id": f"{config.appservice.id}-double-puppet",
        "url": None,
        "as_token": config.double_puppet.as_token,
        # Nothing is ever sent to a registration without URL; still a fresh secret.
        "hs_token": secrets.token_urlsafe(48),
        "sender_localpart": f"{config.appservice.bot_username}-double-puppet",
        "namespaces": {"users": [{"exclusive": False, "regex": f"@.*:{domain}"}],
                       "aliases": [], "rooms": []},
        "rate_limited": False,
    }


# The localpart a network's namespace is probed with. A '-' keeps it apart from every real
# puppet: puppet localparts escape '@' and upper case, and Slack and email IDs give no '-'
# right after the prefix. (Registering it is harmless: it never joins a room.)
PROBE_LOCALPART = "bridge-namespace-probe"


class HomeserverUnavailable(Exception):
    """The homeserver could not be asked (unreachable, timed out, or answered 5xx)."""


def regenerate_hint(config_path: str = "config.yaml") -> str:
    return (f"regenerate the registration (`bridge generate-registration -c {config_path} "
            "-r registration.yaml`), give it to the homeserver (app_service_config_files) "
            "and restart the homeserver")


async def namespace_refusal(http: aiohttp.ClientSession, config: Config,
                            puppet_prefix: str) -> str | None:
    """Would the homeserver let this appservice act as users with ``puppet_prefix``?

    Asks the homeserver itself, since its copy of the registration is the one that counts:
    registering a probe user of that namespace with the as_token succeeds (or finds it taken)
    only if the namespace is ours. Returns None if it is, else why not (a sentence).
    Raises :class:`HomeserverUnavailable` if the homeserver cannot be asked right now.
    """
    user_id = f"@{puppet_prefix}{PROBE_LOCALPART}:{config.homeserver.domain}"
    try:
        async with http.post(
            f"{config.homeserver.address}/_matrix/client/v3/register",
            headers={"Authorization": f"Bearer {config.appservice.as_token}"},
            json={"type": "m.login.application_service",
                  "username": f"{puppet_prefix}{PROBE_LOCALPART}", "inhibit_login": True},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise HomeserverUnavailable(f"{exc.__class__.__name__} {exc}".strip()) from None
    if response.status >= 500 or response.status == 429:
        raise HomeserverUnavailable(f"HTTP {response.status}")
    errcode = body.get("errcode") if isinstance(body, dict) else None
    if response.status == 200 or errcode == "M_USER_IN_USE":
        return None
    if errcode == "M_EXCLUSIVE":
        namespace = f"@{puppet_prefix}…:{config.homeserver.domain}"
        return (f"the homeserver's registration of appservice {config.appservice.id!r} has no "
                f"namespace for {namespace}, so it would refuse every message of this "
                "network's puppets")
    if errcode == "M_UNKNOWN_TOKEN":
        return ("the homeserver does not know the as_token: add the registration file to its "
                "app_service_config_files and restart it")
    error = body.get("error") if isinstance(body, dict) else None
    answer = " ".join(part for part in (f"HTTP {response.status}", errcode, error) if part)
    return f"the homeserver answered {answer} when asked to register {user_id}"
