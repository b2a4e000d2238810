"""The registration file a homeserver loads to know this appservice."""

from __future__ import annotations

import re
from typing import Any

from bridge.config import Config


def build_registration(config: Config) -> dict[str, Any]:
    domain = re.escape(config.homeserver.domain)
    users = [{"exclusive": True,
              "regex": f"@{re.escape(config.appservice.bot_username)}:{domain}"}]
    for section in config.networks().values():
        if section.enabled:
            users.append({"exclusive": True,
                          "regex": f"@{re.escape(section.puppet_prefix)}.*:{domain}"})
    return {
        "id": config.appservice.id,
        "url": config.appservice.address,
        "as_token": config.appservice.as_token,
        "hs_token": config.appservice.hs_token,
        "sender_localpart": config.appservice.bot_username,
        "namespaces": {"users": users, "aliases": [], "rooms": []},
        "rate_limited": False,
        "receive_ephemeral": True,
        # The name under which Synapse read this before MSC2409 became stable.
        "de.sorunome.msc2409.push_ephemeral": True,
    }
