"""Email's `bridge check` items."""

from __future__ import annotations

import aiohttp

from bridge.checks import CheckResult
from bridge.config import Config
from bridge.email.config import EmailConfig
from bridge.email.outbound import RelayOutage, RelayPool


async def check_relay(_session: aiohttp.ClientSession, config: Config) -> list[CheckResult]:
    """The relay as deliveries meet it: connect, EHLO, STARTTLS and login when configured."""
    email = config.section(EmailConfig)
    name = "email relay"
    relay = RelayPool(email.smtp_out, local_hostname=email.domain)
    try:
        return [CheckResult(name, True, await relay.probe())]
    except RelayOutage as exc:
        return [CheckResult(name, False, f"{exc} (check email.smtp_out)")]
    finally:
        await relay.close()
