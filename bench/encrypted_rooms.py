"""Benchmark: encrypted rooms against the same unencrypted workload, in one run (issue 13).

A real Synapse (testkit/synapse.py, with the appservice extensions for encryption on), the
bridge in this process with ``encryption.allow``, the Slack simulator, and one Matrix user
whose client is matrix-nio with end-to-end encryption. Two rooms of that user are linked to
two channels: one room unencrypted, one encrypted. Then, for each room:

- Slack -> room: ``--messages`` messages posted into the channel; the rate is messages over
  the time from the first post to the client having received (and, in the encrypted room,
  decrypted) the last one;
- room -> Slack: the client sends ``--messages`` messages into the room (encrypting them in
  the encrypted room); the rate is messages over the time from the first send to the last
  one's arrival in the simulator.

Target: each encrypted rate at least 0.7 of the unencrypted one. The client's own work
(nio encrypting and decrypting) is in both numbers, as it is for a person's client.

    .venv/bin/python bench/encrypted_rooms.py [--messages 200] [--database URL]

Exit code: 0 targets met, 3 a target missed, 1 the benchmark itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from common import verdict

from bridge.app import Bridge
from bridge.cli import main as bridge_cli
from bridge.config import load_config
from testkit.nio_client import EncryptingUser
from testkit.slack_sim import SlackSimulator
from testkit.synapse import SynapseServer, free_port

SERVER = "bench.test"
TARGET_RATIO = 0.7
PLAIN_CHANNEL, ENCRYPTED_CHANNEL = "C0OFFEN", "C0GEHEIM"
ANNA = "U0ANNA"
WAIT = 120.0


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _bodies(user: EncryptingUser, room: str, tag: str) -> int:
    return sum(1 for s in user.events if s.room_id == room
               and tag in str(s.content.get("body", "")))


async def _link(user: EncryptingUser, bot: str, room: str, channel: str) -> None:
    await user.wait_for(room, lambda s: s.sender == bot and "Hello" in
                        str(s.content.get("body", "")), timeout=WAIT)
    await user.send_text(room, f"!bridge link slack {channel}")
    await user.wait_for(room, lambda s: s.sender == bot and "Linked" in
                        str(s.content.get("body", "")), timeout=WAIT)


async def _slack_to_room(sim: SlackSimulator, team: Any, user: EncryptingUser, room: str,
                         channel: str, count: int) -> float:
    tag = f"s2m-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    for n in range(count):
        await sim.post_message(team, channel, ANNA, text=f"{tag} Nachricht {n}")
    await _until(lambda: _bodies(user, room, tag) >= count, WAIT, f"{count} messages in Matrix")
    return count / (time.monotonic() - started)


async def _room_to_slack(sim: SlackSimulator, team: Any, user: EncryptingUser, room: str,
                         channel: str, count: int) -> float:
    tag = f"m2s-{uuid.uuid4().hex[:6]}"

    def arrived() -> int:
        return sum(1 for m in sim.messages(team, channel) if tag in str(m.get("text")))

    started = time.monotonic()
    for n in range(count):
        await user.send_text(room, f"{tag} Nachricht {n}")
    await _until(lambda: arrived() >= count, WAIT, f"{count} messages in Slack")
    return count / (time.monotonic() - started)


async def run(args: argparse.Namespace, work: Path) -> int:
    sim = SlackSimulator(host="127.0.0.1", port=0)
    await sim.start()
    team = sim.add_team(team_id="T0BENCH", name="bench", domain="bench",
                        bot_token="xoxb-bench-token", app_token="xapp-bench-token",
                        signing_secret="8f742231b10e8888abcd99yyyzzz85a5")
    sim.add_user(team, ANNA, name="anna", real_name="Anna Schmidt", display_name="Anna")
    for channel in (PLAIN_CHANNEL, ENCRYPTED_CHANNEL):
        sim.add_channel(team, channel, name=channel.lower(), members=[ANNA])
    bridge_port, synapse_port = free_port(), free_port()
    config_path, registration = work / "config.yaml", work / "registration.yaml"
    assert bridge_cli(["generate-config", "-o", str(config_path)]) == 0
    data = yaml.safe_load(config_path.read_text())
    data["homeserver"].update(address=f"http://127.0.0.1:{synapse_port}", domain=SERVER)
    data["appservice"].update(address=f"http://127.0.0.1:{bridge_port}", port=bridge_port)
    data["bridge"]["admins"] = [f"@admin*:{SERVER}"]
    data["database"]["url"] = args.database or f"sqlite+aiosqlite:///{work / 'bridge.db'}"
    data["encryption"] = {"allow": True}
    data["logging"] = {"level": "WARNING"}
    data["slack"] = {"enabled": True, "api_url": sim.api_url, "rate_limits": False,
                     "workspaces": [{"name": "bench", "bot_token": team.bot_token,
                                     "app_token": team.app_token,
                                     "signing_secret": team.signing_secret}]}
    config_path.write_text(yaml.safe_dump(data))
    assert bridge_cli(["generate-registration", "-c", str(config_path),
                       "-r", str(registration)]) == 0
    synapse = SynapseServer(work / "synapse", port=synapse_port, server_name=SERVER,
                            registration_files=[registration])
    synapse.start()
    bridge: Bridge | None = None
    user: EncryptingUser | None = None
    try:
        from bridge.app import build_connectors

        config = load_config(config_path, environ={})
        bridge = Bridge(config, connectors=build_connectors(config))
        await bridge.start()
        await synapse.wait_appservice_up(config.appservice.id)
        bot = config.bot_mxid
        user = await EncryptingUser.register(synapse, f"admin{uuid.uuid4().hex[:6]}",
                                             work / "nio")
        plain = await user.client.room_create(name="Offen", invite=[bot],
                                              power_level_override={"users": {bot: 100}})
        plain_room = str(plain.room_id)  # type: ignore[union-attr]
        secret_room = await user.create_encrypted_room([bot], "Geheim", {bot: 100})
        await _link(user, bot, plain_room, PLAIN_CHANNEL)
        await _link(user, bot, secret_room, ENCRYPTED_CHANNEL)
        # A first exchange each way in each room: sessions and puppets are set up.
        for room, channel in ((plain_room, PLAIN_CHANNEL), (secret_room, ENCRYPTED_CHANNEL)):
            await _slack_to_room(sim, team, user, room, channel, 3)
            await _room_to_slack(sim, team, user, room, channel, 3)
        n = args.messages
        rates = {
            ("Slack -> room", "unencrypted"):
                await _slack_to_room(sim, team, user, plain_room, PLAIN_CHANNEL, n),
            ("Slack -> room", "encrypted"):
                await _slack_to_room(sim, team, user, secret_room, ENCRYPTED_CHANNEL, n),
            ("room -> Slack", "unencrypted"):
                await _room_to_slack(sim, team, user, plain_room, PLAIN_CHANNEL, n),
            ("room -> Slack", "encrypted"):
                await _room_to_slack(sim, team, user, secret_room, ENCRYPTED_CHANNEL, n),
        }
    finally:
        if user is not None:
            await user.close()
        if bridge is not None:
            await bridge.stop()
        synapse.stop()
        await sim.stop()
    database = "PostgreSQL" if args.database else "SQLite"
    print(f"Encrypted vs unencrypted rooms, {n} messages each, real Synapse, {database}")
    met = True
    for direction in ("Slack -> room", "room -> Slack"):
        plain_rate = rates[direction, "unencrypted"]
        secret_rate = rates[direction, "encrypted"]
        ratio = secret_rate / plain_rate
        ok = ratio >= TARGET_RATIO
        met = met and ok
        print(f"  {direction}: unencrypted {plain_rate:7.1f}/s, encrypted {secret_rate:7.1f}/s, "
              f"ratio {ratio:.2f} (target >= {TARGET_RATIO}) {verdict(ok)}")
    return 0 if met else 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200,
                        help="messages per direction and room (default 200)")
    parser.add_argument("--database", default=None,
                        help="the bridge's database URL (default: an SQLite file in a temp "
                             "folder); a PostgreSQL database is used as it is")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    # mautrix says of every device nobody cross-signed that it is not: not the benchmark's news.
    logging.getLogger("mau.crypto").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-e2ee-") as tmp:
        try:
            return asyncio.run(run(args, Path(tmp)))
        except Exception as exc:
            print(f"benchmark failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
