"""A third network in one folder, as docs/architecture.md "Adding a network" describes it.

The test network of tests/support/recording.py, given everything a real network's folder
has: a config section (config.py), a table (models.py) with its migration in its own
version location (migrations/), a `bridge check` item, its puppets' namespace (the config's
puppet_prefix) and its commands for `help` (the connector's). Nothing outside this folder
names it; a test adds it to the registry with ``bridge.networks.register_network``.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from bridge.checks import CheckResult
from bridge.config import Config
from bridge.core.connector import Connector
from bridge.db.retention import StoredData
from bridge.networks import Network
from tests.support.recording_network.config import RecordingConfig

EXAMPLE_CONFIG = """\
test:
  # Bridge the made-up test network. Off by default.
  enabled: false
  # Localpart prefix of the Matrix users that stand for its people.
  puppet_prefix: test_
  # Where its remote side would be.
  address: memory://recording
"""


def _connector(config: Config) -> Connector:
    from tests.support.recording import RecordingConnector

    return RecordingConnector(config.homeserver.domain)


async def _checks(_session: aiohttp.ClientSession, config: Config) -> list[CheckResult]:
    return [CheckResult("test network", True,
                        f"remote side at {config.section(RecordingConfig).address}")]


network = Network(
    name="test",
    prose_name="the test network",
    config_model=RecordingConfig,
    connector=_connector,
    example_config=lambda: EXAMPLE_CONFIG,
    checks=_checks,
    position=1000,
    models="tests.support.recording_network.models",
    migrations=Path(__file__).resolve().parent / "migrations",
    stored_data=(StoredData("recording_note", "a note per room, written by the test network's "
                            "tests", kept="as long as the test database"),),
)
