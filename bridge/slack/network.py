"""Slack as the core sees it: the registry entry of this folder (see bridge/networks.py)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

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
)
