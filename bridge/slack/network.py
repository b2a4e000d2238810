"""Slack as the core sees it: the registry entry of this folder (see bridge/networks.py)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.checks import CheckResult
from bridge.config import Config
from bridge.core.connector import Connector
from bridge.db.retention import StoredData
from bridge.networks import Network
from bridge.slack.config import SlackConfig

if TYPE_CHECKING:
    from bridge.cli import CommandGroups


def _connector(config: Config) -> Connector:
    from bridge.slack.connector import SlackConnector

    return SlackConnector(config)


def _example_config() -> str:
    return resources.files("bridge.slack").joinpath("example-config.yaml").read_text("utf-8")


async def _checks(session: aiohttp.ClientSession, config: Config) -> list[CheckResult]:
    from bridge.slack.checks import check_workspaces

    return await check_workspaces(session, config)


def _cli(groups: CommandGroups) -> None:
    from bridge.slack.export.command import add_commands

    add_commands(groups)


async def _find_person(session: AsyncSession, config: Config, words: str) -> list[str]:
    """``bridge erase --slack WORKSPACE:USER``: the Slack user's remote ID (``T…_U…``), from
    the puppets and identity links the bridge holds, without asking Slack. The workspace is
    its team ID or a configured workspace's name."""
    from bridge.db.erasure import identity_remote_ids, puppet_remote_ids
    from bridge.slack.config import SlackConfig

    workspace, _, user = (part.strip() for part in words.partition(":"))
    user = user.upper()
    if not workspace or not re.fullmatch(r"[UW][A-Z0-9]{2,}", user):
        raise ValueError(f"{words!r} does not name a Slack user: write WORKSPACE:USER, like "
                         "rathaus:U0123ABCD (the workspace's name in the config, or its team "
                         "ID)")
    names = [ws.name for ws in config.section(SlackConfig).workspaces]
    if workspace not in names and re.fullmatch(r"T[A-Z0-9]{2,}", workspace):
        return [f"{workspace}_{user}"]  # a team ID, as Slack writes it
    if workspace not in names:
        raise ValueError(f"{workspace!r} is not a workspace of slack.workspaces "
                         f"({', '.join(names) or 'none configured'}); name it by its team ID "
                         "(T…) instead")
    # Which team a configured name is, only Slack knows; the user ID is enough: Slack's
    # user IDs do not repeat across workspaces, and in an Enterprise Grid one person has
    # one ID in all of its workspaces (then every one of their puppets goes).
    found = set(await puppet_remote_ids(session, "slack", suffix=f"_{user}"))
    found |= set(await identity_remote_ids(session, "slack", f"{workspace}:{user}"))
    return sorted(found)


network = Network(
    name="slack",
    prose_name="Slack",
    config_model=SlackConfig,
    connector=_connector,
    example_config=_example_config,
    checks=_checks,
    position=10,
    models="bridge.slack.models",
    migrations=Path(__file__).resolve().parent / "migrations",
    link_hint="Slack: name the workspace when there are several",
    person_words="<workspace>:<user id>",
    cli=_cli,
    stored_data=(
        StoredData("slack_channel", "how far each linked Slack channel has been bridged "
                   "(team, channel, the newest message's ts)", "updated_at",
                   kept="while the channel is linked"),
    ),
    erase_words="WORKSPACE:USER",
    find_person=_find_person,
)
