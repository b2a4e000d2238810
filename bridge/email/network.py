"""Email as the core sees it: the registry entry of this folder (see bridge/networks.py)."""

from __future__ import annotations

import secrets
from importlib import resources
from pathlib import Path

import aiohttp

from bridge.checks import CheckResult
from bridge.config import Config
from bridge.core.connector import Connector
from bridge.email.config import EmailConfig
from bridge.networks import Network


def _connector(config: Config) -> Connector:
    from bridge.email.connector import EmailConnector

    return EmailConnector(config)


def _example_config() -> str:
    template = resources.files("bridge.email").joinpath("example-config.yaml").read_text("utf-8")
    return template.replace("@EMAIL_SECRET@", secrets.token_urlsafe(32))


async def _checks(session: aiohttp.ClientSession, config: Config) -> list[CheckResult]:
    from bridge.email.checks import check_relay

    return await check_relay(session, config)


network = Network(
    name="email",
    prose_name="email",
    config_model=EmailConfig,
    connector=_connector,
    example_config=_example_config,
    checks=_checks,
    position=20,
    person_words="<address>",
    models="bridge.email.models",
    migrations=Path(__file__).resolve().parent / "migrations",
)
