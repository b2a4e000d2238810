"""The migrations and the models describe one schema, and every migration can be undone.

A model changed without a migration (or the other way round) works in tests that create
tables from the models, then breaks an operator's `bridge db upgrade`; this catches it on
both databases.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from bridge.db.engine import _alembic_config, create_engine, current_revisions, head_revisions
from bridge.db.models import Base
from bridge.networks import load_models, networks

REPO = Path(__file__).resolve().parents[1]

# Base.metadata describes the whole schema only with every network's tables imported.
load_models()


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection)
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_build_exactly_the_models_schema(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "heads"))
        async with engine.connect() as conn:
            differences = await conn.run_sync(_differences)
        assert differences == [], f"models and migrations disagree: {differences}"
    finally:
        await engine.dispose()


async def test_every_migration_can_be_undone_and_redone(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        for target in ("heads", "base", "heads"):
            async with engine.begin() as conn:
                await conn.run_sync(
                    lambda c, t=target: (command.upgrade if t == "heads" else command.downgrade)(
                        _alembic_config(c), t))
        assert await current_revisions(engine) == head_revisions()
    finally:
        await engine.dispose()


def test_every_network_has_its_own_migration_branch() -> None:
    heads = set(head_revisions())
    for network in networks():
        assert network.migrations is not None, f"{network.name} has no migrations folder"
    # One head per network branch (the core's trunk ends where the branches start).
    assert len(heads) >= len(networks()), heads


# Rows as the bridge before issue 10 wrote them, in every table of its last schema (0005).
LEGACY_ROWS = {
    "portal": "INSERT INTO portal (room_id, is_direct, created_at) VALUES ('!r:x', false, 1)",
    "link": "INSERT INTO link (id, room_id, network, remote_id, remote_name, settings, "
            "created_by, created_at) VALUES (1, '!r:x', 'email', 'bauamt', NULL, "
            "'{\"policy\": \"subscribers\"}', '@a:x', 1), (2, '!r:x', 'slack', 'T1:C1', "
            "'#general', '{}', '@a:x', 1)",
    "puppet": "INSERT INTO puppet (user_id, network, remote_id, displayname, avatar_source, "
              "avatar_mxc, created_at, updated_at) VALUES ('@email_b:x', 'email', 'b@y.example',"
              " 'B', NULL, NULL, 1, 1)",
    "message_mapping": "INSERT INTO message_mapping (room_id, event_id, network, remote_space, "
                       "remote_id, part, thread_root, created_at) VALUES ('!r:x', '$e', "
                       "'slack', 'T1:C1', '1700000000.000100', 0, NULL, 1)",
    "inbox": "INSERT INTO inbox (room_id, event_id, event, received_at, state, attempts) "
             "VALUES ('!r:x', '$i', '{}', 1, 'pending', 0)",
    "outbox": "INSERT INTO outbox (lane, network, room_id, kind, payload, created_at, state, "
              "attempts, next_attempt_at, claimed_until, failed_at, failure_reported) VALUES "
              "('email:!r:x:b@y.example', 'email', '!r:x', 'relay', '{}', 1, 'failed', 3, 1, 0,"
              " 2, true)",
    "inbound_key": "INSERT INTO inbound_key (network, key, received_at) VALUES ('email', "
                   "'<m@y.example>', 1)",
    "appservice_transaction": "INSERT INTO appservice_transaction (txn_id, received_at) "
                              "VALUES ('t1', 1)",
    "email_subscriber": "INSERT INTO email_subscriber (room_id, address, display_name, status, "
                        "bounces, last_error, created_by, created_at) VALUES ('!r:x', "
                        "'b@y.example', 'B', 'paused', 3, 'mailbox full', '@a:x', 1)",
    "email_thread": "INSERT INTO email_thread (thread_key, room_id, root_event_id, "
                    "root_message_id, topic, created_at) VALUES ('k1', '!r:x', '$e', "
                    "'<m@y.example>', 'Parking', 1)",
    "slack_channel": "INSERT INTO slack_channel (team_id, channel_id, last_ts, updated_at) "
                     "VALUES ('T1', 'C1', '1700000000.000100', 1)",
}


def _table_contents(connection: Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {table: sorted(tuple(str(v) for v in row) for row in
                          connection.execute(text(f"SELECT * FROM {table}")).all())
            for table in LEGACY_ROWS}


async def test_a_database_of_the_shared_history_upgrades_in_place(database_url: str,
                                                                   tmp_path: Path) -> None:
    """A database migrated and filled by the bridge before the networks had their own
    migration folders (revision 0005) keeps every row through `bridge db upgrade`."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "0005"))
            for statement in LEGACY_ROWS.values():
                await conn.execute(text(statement))
        async with engine.connect() as conn:
            before = await conn.run_sync(_table_contents)
        assert all(before.values()), before  # every table has its row

        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "homeserver": {"domain": "x"}, "database": {"url": database_url},
            "appservice": {"as_token": "a" * 32, "hs_token": "h" * 32}}))
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "db", "upgrade", "-c", str(config), env=environ,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode == 0, stderr.decode()
        assert stdout.decode().strip() == (f"Database upgraded from 0005 to revision "
                                           f"{', '.join(head_revisions())}.")

        assert await current_revisions(engine) == head_revisions()
        await engine.dispose()  # new connections: PostgreSQL's cached plans saw old tables
        async with engine.connect() as conn:
            after = await conn.run_sync(_table_contents)
        # Later migrations may add columns (at the end): the old ones keep their values.
        width = {table: len(rows[0]) for table, rows in before.items()}
        assert {table: sorted(row[:width[table]] for row in rows)
                for table, rows in after.items()} == before
    finally:
        await engine.dispose()


async def test_two_databases_upgrade_at_once_in_one_process(tmp_path: Path) -> None:
    # Two bridges (or a bridge and `bridge db upgrade` in a test) starting together in one
    # process: alembic's module-level context must not be shared by two runs at once.
    from bridge.db.engine import Database

    databases = [Database(f"sqlite+aiosqlite:///{tmp_path / f'bridge{i}.db'}") for i in range(3)]
    try:
        results = await asyncio.gather(*(db.upgrade() for db in databases))
        assert [after for _, after in results] == [", ".join(head_revisions())] * 3
        for db in databases:
            assert await current_revisions(db.engine) == head_revisions()
    finally:
        for db in databases:
            await db.close()
