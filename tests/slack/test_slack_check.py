"""`bridge check` with Slack on: each workspace's tokens as Slack sees them."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import yaml

from testkit.slack_sim import SlackSimulator
from tests.slack.conftest import workspace_config


async def _check(tmp_path: Path, sim: SlackSimulator, workspaces: list[dict[str, Any]]) -> str:
    config = tmp_path / "config.yaml"
    generate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "generate-config", "-o", str(config))
    assert await generate.wait() == 0
    data = yaml.safe_load(config.read_text())
    data["database"]["url"] = f"sqlite+aiosqlite:///{tmp_path / 'bridge.db'}"
    data["homeserver"]["address"] = "http://127.0.0.1:9"  # not the point of this test
    data["slack"].update(enabled=True, api_url=sim.api_url, workspaces=workspaces)
    config.write_text(yaml.safe_dump(data))
    check = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "check", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await check.communicate()
    return out.decode()


async def test_check_reports_each_workspace(tmp_path: Path, slack_sim: SlackSimulator,
                                            team: Any) -> None:
    out = await _check(tmp_path, slack_sim, [workspace_config(team)])
    assert "[  OK] slack workspace rathaus" in out, out
    assert "team T0RATHAUS" in out and "Socket Mode app token accepted" in out


async def test_check_names_a_wrong_token(tmp_path: Path, slack_sim: SlackSimulator,
                                         team: Any) -> None:
    wrong = {**workspace_config(team), "bot_token": "xoxb-not-the-right-one"}
    out = await _check(tmp_path, slack_sim, [wrong])
    assert "[FAIL] slack workspace rathaus" in out, out
    assert "invalid_auth" in out and "bot_token is not valid" in out


async def test_check_warns_when_the_app_cannot_send_people_codes(
        tmp_path: Path, slack_sim: SlackSimulator, team: Any) -> None:
    # Installed from an older manifest: no im:write, no users:read.email.
    team.scopes = {"channels:history", "chat:write", "users:read"}
    out = await _check(tmp_path, slack_sim, [workspace_config(team)])
    assert "[  OK] slack workspace rathaus" in out, out
    assert "[WARN] slack workspace rathaus scopes" in out, out
    assert "im:write, users:read.email" in out and "slack-app-manifest.yaml" in out
    team.scopes |= {"im:write", "users:read.email"}
    again = tmp_path / "again"
    again.mkdir()
    out = await _check(again, slack_sim, [workspace_config(team)])
    assert "scopes" not in out, out
