"""Shared fixtures: one real Synapse per test session, a fresh database per test (SQLite and
PostgreSQL), and a bridge running in-process against that Synapse.

Set BRIDGE_TEST_POSTGRES_URL to use another PostgreSQL server than 127.0.0.1:5432.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from bridge.app import Bridge
from bridge.cli import main as bridge_cli
from bridge.config import Config, load_config
from bridge.db.engine import Database
from bridge.registration import double_puppet_registration_path
from testkit.matrix_client import MatrixTestClient
from testkit.synapse import SynapseServer, free_port
from tests.support.recording import TEST_PREFIX, RecordingConnector

# The tiers (unit, integration, e2e) each test belongs to: tests/tiers.py.
pytest_plugins = ["tests.tiers"]

SERVER_NAME = "bridge.test"
POSTGRES_ADMIN_URL = os.environ.get("BRIDGE_TEST_POSTGRES_URL",
                                    "postgresql://postgres@127.0.0.1:5432/postgres")
# Public mail and Slack samples beside the repository, read in place (never copied in).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_PARTS = ("email-samples", "slack-fixtures")


def _missing_shared() -> list[Path]:
    return [SHARED / part for part in SHARED_PARTS if not (SHARED / part).is_dir()]


def pytest_configure(config: pytest.Config) -> None:
    # Without the samples a run still passes, but proves much less: say so where a person
    # reading the output will see it, not only in the skip list.
    missing = _missing_shared()
    if missing:
        config.issue_config_time_warning(pytest.PytestWarning(
            "test samples not found: " + ", ".join(str(p) for p in missing)
            + "; the tests that read them are skipped and the parser corpus tests run "
            "without them"), stacklevel=2)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for path in _missing_shared():
        terminalreporter.write_line(
            f"MISSING TEST SAMPLES: {path} is not there; tests that need it were skipped",
            red=True, bold=True)


class Homeserver:
    """The session's Synapse plus what tests need to know about the bridge registered on it."""

    def __init__(self, synapse: SynapseServer, config_path: Path, bridge_port: int) -> None:
        self.synapse = synapse
        self.config_path = config_path
        self.bridge_port = bridge_port
        self.url = synapse.url
        self.bot = f"@bridgebot:{SERVER_NAME}"
        self.as_id = str(yaml.safe_load(config_path.read_text())["appservice"]["id"])

    def config(self, database_url: str, **overrides: Any) -> Config:
        return load_config(self.config_file(database_url, **overrides), environ={})

    def config_file(self, database_url: str, **overrides: Any) -> Path:
        """The config written to a file of its own (for the commands a test runs)."""
        data = yaml.safe_load(self.config_path.read_text())
        data["database"]["url"] = database_url
        for dotted, value in overrides.items():
            node = data
            *parents, last = dotted.split("__")
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = value
        path = self.config_path.parent / f"config-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def appservice_report(self) -> str:
        return self.synapse.appservice_report(self.as_id)

    async def user(self, localpart: str | None = None) -> MatrixTestClient:
        localpart = localpart or f"user{uuid.uuid4().hex[:8]}"
        user_id, token = await self.synapse.register_user(localpart)
        client = MatrixTestClient(self.url, user_id, token)
        client.diagnose = self.appservice_report
        await client.initial_sync()
        return client


@pytest.fixture(scope="session")
def homeserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homeserver]:
    work = tmp_path_factory.mktemp("homeserver")
    bridge_port, synapse_port = free_port(), free_port()
    config_path = work / "config.yaml"
    registration_path = work / "registration.yaml"
    # The same commands an operator runs: generate the config, adjust it, derive the
    # registration from it.
    assert bridge_cli(["generate-config", "-o", str(config_path)]) == 0
    data = yaml.safe_load(config_path.read_text())
    data["homeserver"].update(address=f"http://127.0.0.1:{synapse_port}", domain=SERVER_NAME)
    data["appservice"].update(address=f"http://127.0.0.1:{bridge_port}", port=bridge_port)
    data["bridge"]["admins"] = [f"@admin*:{SERVER_NAME}"]
    config_path.write_text(yaml.safe_dump(data))
    # Registered with every network's namespace, so tests can switch networks on.
    # And with double puppeting, whose second registration the homeserver loads too (tests
    # switch it on per bridge: homeserver.config(url, double_puppet__enabled=True)), and with
    # encryption allowed, so that the homeserver sends the keys and device news (MSC2409,
    # MSC3202) to the bridges of the tests in encrypted rooms (tests/e2ee/).
    os.environ.update(BRIDGE_ENCRYPTION__ALLOW="true",
                      BRIDGE_EMAIL__ENABLED="true", BRIDGE_EMAIL__SENDER_AUTH="none",
                      BRIDGE_SLACK__ENABLED="true", BRIDGE_DOUBLE_PUPPET__ENABLED="true",
                      BRIDGE_SLACK__WORKSPACES="[{name: t, bot_token: xoxb-t, app_token: xapp-t}]")
    try:
        assert bridge_cli(["generate-registration", "-c", str(config_path),
                           "-r", str(registration_path)]) == 0
    finally:
        for name in ("BRIDGE_ENCRYPTION__ALLOW", "BRIDGE_EMAIL__ENABLED",
                     "BRIDGE_EMAIL__SENDER_AUTH", "BRIDGE_SLACK__ENABLED",
                     "BRIDGE_SLACK__WORKSPACES", "BRIDGE_DOUBLE_PUPPET__ENABLED"):
            del os.environ[name]
    registration = yaml.safe_load(registration_path.read_text())
    # The test network's puppets need a namespace of their own, like Slack's and email's.
    registration["namespaces"]["users"].append(
        {"exclusive": True, "regex": f"@{TEST_PREFIX}.*:bridge\\.test"})
    registration_path.write_text(yaml.safe_dump(registration))
    synapse = SynapseServer(work / "synapse", port=synapse_port, server_name=SERVER_NAME,
                            registration_files=[registration_path,
                                                double_puppet_registration_path(
                                                    registration_path)])
    synapse.start()
    try:
        yield Homeserver(synapse, config_path, bridge_port)
    finally:
        synapse.stop()


async def _create_postgres_database() -> str:
    name = f"bridge_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _drop_postgres_database(name: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _asyncpg_url(name: str) -> str:
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'bridge.db'}"
        return
    name = await _create_postgres_database()
    try:
        yield _asyncpg_url(name)
    finally:
        await _drop_postgres_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'bridge.db'}"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """The bridge's database on a fresh :func:`database_url`, migrated to the head."""
    database = Database(database_url)
    await database.upgrade()
    try:
        yield database
    finally:
        await database.close()


class RunningBridge:
    """A bridge in the test's event loop, with the test network and, if asked, the real
    connectors the config enables."""

    def __init__(self, homeserver: Homeserver, config: Config,
                 with_connectors: bool = False) -> None:
        self.homeserver = homeserver
        self.config = config
        self.connector = RecordingConnector(SERVER_NAME)
        self.with_connectors = with_connectors
        self.bridge: Bridge | None = None

    async def start(self) -> Bridge:
        from bridge.app import build_connectors

        extra = build_connectors(self.config) if self.with_connectors else []
        self.bridge = Bridge(self.config, connectors=[self.connector, *extra])
        try:
            await self.bridge.start()
            await self.homeserver.synapse.wait_appservice_up(self.config.appservice.id)
        except BaseException:
            # Stopped here: a bridge left running would hold the appservice port, and every
            # later test of this worker would fail to start its own.
            with contextlib.suppress(Exception):
                await self.stop()
            raise
        return self.bridge

    async def stop(self) -> None:
        if self.bridge is not None:
            await self.bridge.stop()
            self.bridge = None

    async def restart(self) -> Bridge:
        await self.stop()
        return await self.start()

    @property
    def hub(self) -> Any:
        assert self.bridge is not None
        return self.bridge.hub


@pytest.fixture
async def bridge(homeserver: Homeserver, database_url: str) -> AsyncIterator[RunningBridge]:
    running = RunningBridge(homeserver, homeserver.config(database_url))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def admin(homeserver: Homeserver) -> AsyncIterator[MatrixTestClient]:
    client = await homeserver.user(f"admin{uuid.uuid4().hex[:8]}")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def outsider(homeserver: Homeserver) -> AsyncIterator[MatrixTestClient]:
    client = await homeserver.user()
    try:
        yield client
    finally:
        await client.close()
