"""What an operator meets against a real homeserver: a registration that lacks a network's
namespace, and a homeserver that goes away under a running bridge."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bridge.app import HOMESERVER_PROBE_TTL, Bridge, build_connectors
from bridge.cli import main as bridge_cli
from bridge.config import load_config
from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.synapse import SynapseServer, free_port
from testkit.tcp_proxy import TcpProxy
from tests.conftest import SERVER_NAME, Homeserver, RunningBridge
from tests.test_cli import bridge_cmd

BOT = f"@bridgebot:{SERVER_NAME}"


async def _health(http: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{port}/_bridge/health") as response:
        return response.status, await response.json()


async def test_a_network_missing_from_the_registration_is_not_started(
        tmp_path: Path, sqlite_url: str) -> None:
    synapse_port, bridge_port, smtp_port = free_port(), free_port(), free_port()
    config_path = tmp_path / "config.yaml"
    assert bridge_cli(["generate-config", "-o", str(config_path)]) == 0
    data = yaml.safe_load(config_path.read_text())
    data["homeserver"].update(address=f"http://127.0.0.1:{synapse_port}", domain=SERVER_NAME)
    data["appservice"].update(address=f"http://127.0.0.1:{bridge_port}", port=bridge_port)
    data["database"]["url"] = sqlite_url
    data["bridge"]["admins"] = [f"@admin*:{SERVER_NAME}"]
    config_path.write_text(yaml.safe_dump(data))
    # The registration was made before email was switched on, and not made again after.
    registration = tmp_path / "registration.yaml"
    assert bridge_cli(["generate-registration", "-c", str(config_path),
                       "-r", str(registration)]) == 0
    data["email"].update(enabled=True, domain="mail.bridge.test", sender_auth="none",
                         smtp_in={"hostname": "127.0.0.1", "port": smtp_port})
    config_path.write_text(yaml.safe_dump(data))

    synapse = SynapseServer(tmp_path / "synapse", port=synapse_port, server_name=SERVER_NAME,
                            registration_files=[registration])
    await asyncio.to_thread(synapse.start)
    try:
        check = await asyncio.to_thread(bridge_cmd, "check", "-c", str(config_path))
        assert check.returncode == 1
        assert "[  OK] as_token accepted" in check.stdout, check.stdout
        line = next(line for line in check.stdout.splitlines()
                    if "email puppets in the registration" in line)
        assert line.startswith(
            "[FAIL] email puppets in the registration: the homeserver's registration of "
            "appservice 'hub-bridge' has no namespace for @email_…:bridge.test"), line
        assert f"bridge generate-registration -c {config_path}" in line

        config = load_config(config_path, environ={})
        bridge = Bridge(config, build_connectors(config))
        await bridge.start()
        try:
            # Nothing is accepted from email: its SMTP listener is not even open.
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", smtp_port)
            async with aiohttp.ClientSession() as http:
                _, health = await _health(http, bridge_port)
                # The alert "a network unhealthy" (contrib/prometheus/alerts.yml) sees it.
                async with http.get(f"http://127.0.0.1:{bridge_port}/metrics") as scraped:
                    assert 'bridge_network_up{network="email"} 0.0' in await scraped.text()
                # Its pages too: an unsubscribe link from an old mail gets "not now".
                async with http.get(f"http://127.0.0.1:{bridge_port}/_bridge/email/"
                                    "unsubscribe?room=x&address=a@b.example&token=t") as page:
                    assert page.status == 503
                    assert "try again later" in await page.text()
            email = health["networks"]["email"]
            assert email["ok"] is False
            assert email["detail"].startswith("not started: the homeserver's registration")

            # The rest of the bridge runs, and tells its admins why email does not.
            user_id, token = await synapse.register_user(f"admin{uuid.uuid4().hex[:8]}")
            admin = MatrixTestClient(synapse.url, user_id, token)
            try:
                await admin.initial_sync()
                room = await open_room(BOT, admin, direct=True)
                reply = await command(BOT, admin, room, "status", expect="Links")
                body = reply["content"]["body"]
                assert ("email: ❌ not started: the homeserver's registration of appservice "
                        "'hub-bridge' has no namespace for @email_…:bridge.test") in body
                assert "regenerate the registration (`bridge generate-registration" in body
                await command(BOT, admin, room, "email subscribe bob@example.net",
                              expect="Email is not started")
            finally:
                await admin.close()
        finally:
            await bridge.stop()
    finally:
        await asyncio.to_thread(synapse.stop)


async def test_health_is_not_ready_while_the_homeserver_is_unreachable(
        homeserver: Homeserver, sqlite_url: str) -> None:
    proxy = TcpProxy("127.0.0.1", homeserver.synapse.port)
    await proxy.start()
    running = RunningBridge(homeserver, homeserver.config(sqlite_url,
                                                          homeserver__address=proxy.url))
    await running.start()

    async def health_until(http: aiohttp.ClientSession, status: int) -> dict[str, Any]:
        # The homeserver is asked at most every HOMESERVER_PROBE_TTL seconds.
        deadline = asyncio.get_running_loop().time() + HOMESERVER_PROBE_TTL + 5
        while True:
            got, health = await _health(http, homeserver.bridge_port)
            if got == status:
                return health
            assert asyncio.get_running_loop().time() < deadline, health
            await asyncio.sleep(0.2)

    try:
        async with aiohttp.ClientSession() as http:
            health = await health_until(http, 200)
            assert health["ready"] is True and health["homeserver"] == "ok"

            await proxy.cut()
            health = await health_until(http, 503)
            assert health["ready"] is False
            assert health["homeserver"].startswith("unreachable: "), health
            assert health["database"] == "ok"  # the reason is the homeserver, not the rest

            await proxy.start()
            health = await health_until(http, 200)
            assert health["ready"] is True and health["homeserver"] == "ok"
    finally:
        await running.stop()
        await proxy.stop()


async def test_a_bridge_started_before_its_homeserver_opens_email_once_it_answers(
        homeserver: Homeserver, sqlite_url: str) -> None:
    proxy = TcpProxy("127.0.0.1", homeserver.synapse.port)  # not started: unreachable
    smtp_port = free_port()
    config = homeserver.config(sqlite_url, homeserver__address=proxy.url, email__enabled=True,
                               email__domain="mail.bridge.test", email__sender_auth="none",
                               email__smtp_in={"hostname": "127.0.0.1", "port": smtp_port})
    bridge = Bridge(config, build_connectors(config))
    starting = asyncio.create_task(bridge.start())
    try:
        # Until the bridge got as far as asking the homeserver (the database upgrade before
        # it can take seconds on a busy machine), then a while longer.
        waiting = ("not started: waiting for the homeserver to confirm this network's "
                   "namespace")
        deadline = asyncio.get_running_loop().time() + 30
        while bridge.hub.connectors["email"].state().detail != waiting:
            assert asyncio.get_running_loop().time() < deadline, \
                bridge.hub.connectors["email"].state().detail
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
        # Whether the homeserver accepts email's puppets is not known yet: accept no mail.
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", smtp_port)
        assert bridge.hub.connectors["email"].state().detail == waiting

        await proxy.start()
        await starting
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", smtp_port)
                writer.close()
                break
            except OSError:
                assert asyncio.get_running_loop().time() < deadline, "email never started"
                await asyncio.sleep(0.2)
        assert bridge.hub.connectors["email"].not_started is None
    finally:
        if not starting.done():
            starting.cancel()
        await bridge.stop()
        await proxy.stop()
