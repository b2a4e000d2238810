"""Several bridge processes: SQLite refuses a second one; on PostgreSQL two run together
behind HAProxy and one of them is SIGKILLed mid-stream (README "High availability")."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.conftest import Homeserver
from tests.test_cli import _session_config, _start_bridge, _wait_healthy


async def test_a_second_process_on_one_sqlite_database_refuses_to_start_and_says_why(
        homeserver: Homeserver, tmp_path: Path, sqlite_url: str) -> None:
    config = _session_config(homeserver, tmp_path, sqlite_url)
    first = _start_bridge(config)
    try:
        await _wait_healthy(homeserver, first)
        second_config = config.with_name("second.yaml")
        second_config.write_text(config.read_text())
        second = _start_bridge(second_config)
        assert second.wait(timeout=60) != 0
        said = second_config.with_suffix(".log").read_text()
        assert f"another bridge process (pid {first.pid}) is running on the SQLite " \
               f"database " in said, said
        assert "bridge.db (it holds the lock " in said and "bridge.db.lock)" in said
        assert "SQLite serves one bridge process only" in said and "PostgreSQL" in said
        assert "Traceback" not in said
        assert first.poll() is None  # the first one runs on
        # A SIGKILLed holder does not block the restart: the kernel dropped its lock.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        first = _start_bridge(config)
        await _wait_healthy(homeserver, first)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
    assert first.returncode == 0
