"""`bridge audit` on its own: what a line says, --since and --room, JSON, and the refusals
(a bad --since, a database that is not there or not migrated) that change nothing.
Run in-process on SQLite and PostgreSQL; test_report_e2e.py runs it on a live bridge."""

from __future__ import annotations

import asyncio
import json
import time
from calendar import timegm
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import update

from bridge.admin import audit
from bridge.admin.audit import Actor, Entry
from bridge.cli import audit_line
from bridge.cli import main as bridge_cli
from bridge.db.engine import Database
from bridge.db.models import AuditEntry

ROOM, OTHER = "!bauamt:stadt.example", "!schule:stadt.example"
ANNA = "@anna.admin:stadt.example"


def config_for(tmp_path: Path, database_url: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "homeserver": {"domain": "stadt.example"}, "database": {"url": database_url},
        "appservice": {"as_token": "a" * 32, "hs_token": "h" * 32}}))
    return str(path)


async def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    def run() -> int:
        try:
            return bridge_cli(list(args))
        except SystemExit as exit_:  # usage errors exit from the argument parser
            return int(exit_.code or 0)

    code = await asyncio.to_thread(run)  # (in a thread: it runs its own event loop)
    out, err = capsys.readouterr()
    return code, out, err


def test_since_is_an_iso_date_or_time() -> None:
    midnight = timegm((2026, 12, 1, 0, 0, 0))
    assert audit.parse_time("2026-12-01") == midnight
    assert audit.parse_time(" 2026-12-01T08:00:00Z ") == midnight + 8 * 3600
    assert audit.parse_time("2026-12-01T08:00:00") == midnight + 8 * 3600  # no zone: UTC
    assert audit.parse_time("2026-12-01T09:00:00+01:00") == midnight + 8 * 3600
    for bad in ("yesterday", "", "01.12.2026", "2026-13-01"):
        with pytest.raises(ValueError, match="ISO 8601"):
            audit.parse_time(bad)


def test_one_line_per_entry() -> None:
    at = timegm((2026, 12, 5, 7, 8, 9)) + 0.5
    line = audit_line(Entry(id=1, at=at, actor=ANNA, via="command", room_id=ROOM,
                            action="subscribe", details={
                                "address": "erika@stadt.example", "name": "Erika Mustermann",
                                "reactivated": False, "note": None}))
    assert line == (f"2026-12-05T07:08:09Z {ANNA} command {ROOM} subscribe "
                    'address=erika@stadt.example name="Erika Mustermann" reactivated=false')
    assert audit_line(Entry(id=2, at=at, actor="operator", via="api", room_id=None,
                            action="retry", details={})) == (
        "2026-12-05T07:08:09Z operator api - retry")


async def test_bridge_audit_reads_the_log(database_url: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    db = Database(database_url)
    await db.upgrade()
    try:
        async with db.transaction() as session:
            await audit.record(session, Actor.command(ANNA), ROOM, "link", network="slack",
                               remote_id="T0RATHAUS:C0BAUAMT", remote_name="bauamt")
            await audit.record(session, Actor(None, "api"), OTHER, "policy",
                               policy="domain", domain="stadt.example")
            await audit.record(session, Actor(None, "plan"), ROOM, "subscribe",
                               address="erika@stadt.example", name="Erika Mustermann")
            # The first entry was written two days ago.
            await session.execute(update(AuditEntry).where(AuditEntry.action == "link")
                                  .values(at=time.time() - 2 * 86400))
    finally:
        await db.close()
    config = config_for(tmp_path, database_url)

    code, out, err = await run_cli(capsys, "audit", "-c", config)
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[1:5] for line in lines] == [
        [ANNA, "command", ROOM, "link"], ["operator", "api", OTHER, "policy"],
        ["operator", "plan", ROOM, "subscribe"]]
    assert lines[0].endswith("network=slack remote_id=T0RATHAUS:C0BAUAMT remote_name=bauamt")

    code, out, _ = await run_cli(capsys, "audit", "-c", config, "--room", ROOM)
    assert [line.split()[4] for line in out.splitlines()] == ["link", "subscribe"]
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    code, out, _ = await run_cli(capsys, "audit", "-c", config, "--since", yesterday,
                                 "--format", "json")
    document: dict[str, Any] = json.loads(out)
    assert [(e["actor"], e["via"], e["room_id"], e["action"]) for e in document["entries"]] == [
        ("operator", "api", OTHER, "policy"), ("operator", "plan", ROOM, "subscribe")]
    assert document["entries"][1]["details"] == {"address": "erika@stadt.example",
                                                 "name": "Erika Mustermann"}

    code, out, err = await run_cli(capsys, "audit", "-c", config, "--since", "last week")
    assert (code, out) == (2, "")
    assert "argument --since: 'last week' is not an ISO 8601 date or time" in err


async def test_a_database_that_is_not_the_bridges_is_refused_untouched(
        sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.db"
    config = config_for(tmp_path, f"sqlite+aiosqlite:///{missing}")
    for command in (["audit"], ["report"]):
        code, _, err = await run_cli(capsys, *command, "-c", config)
        assert code == 1
        assert f"there is no database at {missing}" in err
        assert not missing.exists()  # not created empty by looking

    db = Database(sqlite_url)  # there, but never migrated
    async with db.transaction() as session:
        await session.connection()
    await db.close()
    config = config_for(tmp_path, sqlite_url)
    code, _, err = await run_cli(capsys, "report", "-c", config)
    assert code == 1
    assert "run `bridge db upgrade` with this config first" in err
