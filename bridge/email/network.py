"""Email as the core sees it: the registry entry of this folder (see bridge/networks.py)."""

from __future__ import annotations

import re
import secrets
from importlib import resources
from pathlib import Path

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.checks import CheckResult
from bridge.config import Config
from bridge.core.connector import Connector
from bridge.db.erasure import ErasedPerson
from bridge.db.retention import StoredData
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


async def _find_person(session: AsyncSession, config: Config, words: str) -> list[str]:
    """``bridge erase --email ADDRESS``: the address, as email's puppets know it."""
    address = words.strip().lower()
    if not re.fullmatch(r"[^@\s<>\"]+@[a-z0-9.-]+\.[a-z]{2,}", address):
        raise ValueError(f"{words!r} is not a mail address (like erika@stadt.example)")
    return [address]


async def _erase_person(session: AsyncSession, person: ErasedPerson,
                        dry_run: bool) -> dict[str, int]:
    from bridge.email.store import erase_person

    return await erase_person(session, person, dry_run)


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
    stored_data=(
        StoredData("email_subscriber", "who receives a room by mail: address, name, "
                   "bounce count and the last delivery error, who subscribed them",
                   "created_at", kept="until unsubscribed or erased"),
        # The bridge keeps no raw mail: what it keeps of a mail beyond the relayed message
        # (inbox/outbox, delivered_days) is this, so replies find their thread.
        StoredData("email_thread", "of each mail that started a thread: its subject, "
                   "Message-ID and room, so that replies land in that thread",
                   "created_at", "mail_originals_days"),
    ),
    erase_words="ADDRESS",
    find_person=_find_person,
    erase_person=_erase_person,
)
