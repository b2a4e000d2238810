"""docs/architecture.md "Adding a network" holds: a network is one folder plus a registry entry.

tests/support/recording_network/ is a third network that no file outside it names. Added to
the registry, it appears in the config `bridge generate-config` writes and `bridge run`
reads, in the registration's namespaces, in `bridge check`, in `bridge db upgrade` (its own
migration branch and table), in the connectors the bridge starts and in the bot's `help`.
The CLI runs in a subprocess that registers the network first, as a plug-in would.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from sqlalchemy import inspect

from bridge.admin.actions import networks_sentence
from bridge.app import build_connectors
from bridge.config import ConfigError, parse_config
from bridge.core.hub import Hub
from bridge.db.engine import Database, current_revisions
from bridge.matrix.bot import Bot
from bridge.matrix.side import MatrixSide
from bridge.networks import registered
from tests.support.recording_network import RecordingConfig, network

REPO = Path(__file__).resolve().parents[1]
DOMAIN = "bridge.test"

# `bridge ...` with the test network registered, as an installed plug-in would have it.
WITH_TEST_NETWORK = (
    "import sys\n"
    "from bridge.networks import register_network\n"
    "from tests.support.recording_network import network\n"
    "register_network(network)\n"
    "from bridge.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


async def bridge_with_test_network(*args: str) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WITH_TEST_NETWORK, *args, cwd=REPO, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def _config(database_url: str, **test_section: Any) -> dict[str, Any]:
    return {"homeserver": {"domain": DOMAIN, "address": "http://127.0.0.1:9"},
            "appservice": {"as_token": "a" * 32, "hs_token": "h" * 32},
            "database": {"url": database_url},
            "test": {"enabled": True, **test_section}}


async def test_a_third_network_appears_in_config_registration_check_and_migrations(
        tmp_path: Path) -> None:
    generated = tmp_path / "generated.yaml"
    code, _, stderr = await bridge_with_test_network("generate-config", "-o", str(generated))
    assert code == 0, stderr
    example = yaml.safe_load(generated.read_text())
    assert example["test"] == {"enabled": False, "puppet_prefix": "test_",
                               "address": "memory://recording"}
    assert list(example)[-3:] == ["slack", "email", "test"]

    db_file = tmp_path / "bridge.db"
    database_url = f"sqlite+aiosqlite:///{db_file}"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(database_url, address="memory://elsewhere")))

    registration = tmp_path / "registration.yaml"
    code, _, stderr = await bridge_with_test_network(
        "generate-registration", "-c", str(config), "-r", str(registration))
    assert code == 0, stderr
    users = yaml.safe_load(registration.read_text())["namespaces"]["users"]
    assert {"exclusive": True, "regex": r"@test_.*:bridge\.test"} in users

    code, stdout, _ = await bridge_with_test_network("db", "upgrade", "-c", str(config))
    assert code == 0
    assert "test0001" in stdout
    db = Database(database_url)
    try:
        assert "test0001" in await current_revisions(db.engine)
        async with db.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert "recording_note" in tables
    finally:
        await db.close()

    # No homeserver answers here, so the homeserver's items fail; the network's own item
    # runs all the same, with the config it was given.
    code, stdout, _ = await bridge_with_test_network("check", "-c", str(config))
    assert "[  OK] test network: remote side at memory://elsewhere" in stdout.splitlines()
    assert "[  OK] database reachable and migrated" in stdout

    # A bad value in its section is reported under its key, like any other.
    config.write_text(yaml.safe_dump(_config(database_url, adress="typo")))
    code, _, stderr = await bridge_with_test_network("check", "-c", str(config))
    assert code == 2
    assert stderr.strip() == ("bridge: config error: test.adress: unknown key (check the "
                              "spelling; `bridge generate-config` lists every key)")


async def test_a_third_network_is_started_and_has_its_help(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'bridge.db'}"
    with registered(network):
        config = parse_config(_config(database_url), environ={})
        assert config.section(RecordingConfig).enabled
        assert config.networks()["test"].puppet_prefix == "test_"
        connectors = build_connectors(config)
        assert [c.network for c in connectors] == ["test"]
        db = Database(database_url)
        try:
            # The bot's help needs no homeserver: it is built from the declarations alone.
            bot = Bot(Hub(config, db, connectors), cast(MatrixSide, None))
            assert "test break" in [entry.usage for entry in bot.declared()]
            # With no network enabled, the bot says how to enable each, this one too.
            nothing_enabled = Hub(parse_config(_config(database_url, enabled=False),
                                               environ={}), db, [])
            assert "`test.enabled`" in networks_sentence(nothing_enabled)
        finally:
            await db.close()
    # Out of the registry, its section is a key the bridge does not know.
    with pytest.raises(ConfigError, match=r"^test: unknown key"):
        parse_config(_config(database_url), environ={})
