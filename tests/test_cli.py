"""The `bridge` command as an operator uses it: files it writes, exit codes, messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from bridge.config import config_model, load_config
from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.synapse import free_port
from tests.conftest import Homeserver

REPO = Path(__file__).resolve().parent.parent
# Every test here runs the bridge program in a process of its own (seconds each, and some reach
# for a homeserver or database that is not there): integration at least, never the fast tier.

SLACK_WORKSPACES = "[{name: rathaus, bot_token: xoxb-1, app_token: xapp-1}]"


def bridge_cmd(*args: str, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd or REPO, timeout=120)


def _write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    result = bridge_cmd("generate-config", "-o", str(path))
    assert result.returncode == 0, result.stderr
    return path


@pytest.mark.integration
def test_generate_config_makes_fresh_tokens_and_keeps_existing_files(
        tmp_path: Path, generated: Path) -> None:
    data = yaml.safe_load(generated.read_text())
    second = tmp_path / "second.yaml"
    bridge_cmd("generate-config", "-o", str(second))
    other = yaml.safe_load(second.read_text())
    assert len(data["appservice"]["as_token"]) >= 32
    assert data["appservice"]["as_token"] != data["appservice"]["hs_token"]
    assert data["appservice"]["as_token"] != other["appservice"]["as_token"]
    # The provisioning API's secret is written fresh too, and the environment overrides it.
    secret = data["provisioning"]["shared_secret"]
    assert len(secret) >= 32 and secret != other["provisioning"]["shared_secret"]
    assert secret not in (data["appservice"]["as_token"], data["appservice"]["hs_token"])
    from_env = "x" * 40
    assert load_config(generated, environ={"BRIDGE_PROVISIONING__SHARED_SECRET": from_env}
                       ).provisioning.shared_secret == from_env
    assert generated.stat().st_mode & 0o077 == 0  # secrets: owner only

    before = generated.read_text()
    refused = bridge_cmd("generate-config", "-o", str(generated))
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert generated.read_text() == before
    assert bridge_cmd("generate-config", "-o", str(generated), "--force").returncode == 0
    assert generated.read_text() != before


@pytest.mark.integration
def test_generated_config_documents_every_key(generated: Path) -> None:
    text = generated.read_text()
    data = yaml.safe_load(text)
    # The config with every registered network's section, as `bridge run` reads it.
    full_config = config_model()
    full_config.model_validate(data)  # valid as written

    def keys(model: type, prefix: str = "") -> list[str]:
        found = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                found += keys(annotation, f"{prefix}{name}.")
            else:
                found.append(f"{prefix}{name}")
        return found

    lines = text.splitlines()
    for dotted in keys(full_config):
        node = data
        for part in dotted.split("."):
            assert part in node, f"{dotted} missing from the generated config"
            node = node[part] if isinstance(node, dict) else node
        leaf = dotted.rsplit(".", 1)[-1]
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{leaf}:"))
        indent = len(lines[index]) - len(lines[index].lstrip())
        # A comment above the key, or above a run of sibling keys it shares a comment with.
        above = index - 1
        while (lines[above].strip() and not lines[above].strip().startswith("#")
               and len(lines[above]) - len(lines[above].lstrip()) == indent):
            above -= 1
        assert lines[above].strip().startswith("#"), f"{dotted} has no comment above it"


@pytest.mark.integration
def test_generate_registration(tmp_path: Path, generated: Path) -> None:
    registration = tmp_path / "registration.yaml"
    result = bridge_cmd("generate-registration", "-c", str(generated), "-r", str(registration),
                        env={"BRIDGE_SLACK__ENABLED": "true",
                             "BRIDGE_SLACK__WORKSPACES": SLACK_WORKSPACES})
    assert result.returncode == 0, result.stderr
    reg = yaml.safe_load(registration.read_text())
    config = yaml.safe_load(generated.read_text())
    assert reg["id"] == config["appservice"]["id"]
    assert reg["url"] == config["appservice"]["address"]
    assert reg["as_token"] == config["appservice"]["as_token"]
    assert reg["hs_token"] == config["appservice"]["hs_token"]
    assert reg["sender_localpart"] == "bridgebot"
    assert reg["rate_limited"] is False
    assert reg["receive_ephemeral"] is True
    assert reg["de.sorunome.msc2409.push_ephemeral"] is True
    users = reg["namespaces"]["users"]
    assert all(ns["exclusive"] for ns in users)
    assert [ns["regex"] for ns in users] == [r"@bridgebot:example\.org",
                                             r"@slack_.*:example\.org"]
    # The example in the repository shows the same shape.
    example = yaml.safe_load((REPO / "registration.yaml.example").read_text())
    assert set(example) == set(reg)


@pytest.mark.integration
@pytest.mark.parametrize(("change", "message"), [
    ({"appservice": {"port": 70000}}, "appservice.port: must be an integer between 1 and 65535"),
    ({"appservice": {"port": "http"}}, "appservice.port: must be an integer between 1 and 65535"),
    ({"appservice": {"prot": 1}}, "appservice.prot: unknown key"),
    ({"homeserver": {"address": "matrix.example.org"}},
     "homeserver.address: must be an http:// or https:// URL"),
    ({"database": {"url": "mysql://x"}}, "database.url: must start with sqlite+aiosqlite://"),
    ({"bridge": {"admins": ["alice"]}}, "bridge.admins: 'alice' is not a Matrix user ID"),
    ({"logging": {"level": "LOUD"}}, "logging.level: must be 'DEBUG', 'INFO', 'WARNING' or"),
    ({"slack": {"enabled": "maybe"}}, "slack.enabled: must be true or false"),
    ({"email": {"enabled": True, "authserv_id": ""}}, "email.authserv_id: must name the MTA"),
    ({"email": {"smtp_out": {"security": "ssl"}}},
     "email.smtp_out.security: must be 'none', 'starttls' or 'tls'"),
    ({"appservice": {"hs_token": "short"}}, "appservice.hs_token: must be set to a random"),
    ({"slack": {"enabled": True}}, "slack.workspaces: list at least one workspace"),
    ({"slack": {"enabled": True, "workspaces": [{"name": "a", "bot_token": "xoxb-1"}]}},
     "slack.workspaces.0: needs an app_token (Socket Mode) or a signing_secret"),
    ({"slack": {"enabled": True, "workspaces": [{"name": "a", "bot_token": "xoxp-1",
                                                 "app_token": "xapp-1"}]}},
     "slack.workspaces.0.bot_token: must be the app's bot token (xoxb-...)"),
    ({"slack": {"enabled": True, "api_url": "slack.com"}},
     "slack.api_url: must be an http:// or https:// URL"),
    ({"slack": {"enabled": True, "puppet_prefix": "x_",
                "workspaces": [{"name": "a", "bot_token": "xoxb-1", "app_token": "xapp-1"}]},
      "email": {"enabled": True, "puppet_prefix": "x_mail_", "sender_auth": "none"}},
     "slack.puppet_prefix: 'x_' overlaps email.puppet_prefix 'x_mail_'"),
])
def test_invalid_config_exits_2_naming_the_key(tmp_path: Path, generated: Path,
                                               change: dict[str, Any], message: str) -> None:
    data = yaml.safe_load(generated.read_text())
    for section, values in change.items():
        data[section].update(values)
    path = _write_config(tmp_path / "bad.yaml", data)
    for args in (["generate-registration", "-c", str(path), "-r", str(tmp_path / "r.yaml")],
                 ["db", "upgrade", "-c", str(path)], ["run", "-c", str(path)],
                 ["check", "-c", str(path)]):
        result = bridge_cmd(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.yaml").exists()


@pytest.mark.integration
def test_config_file_problems_exit_2(tmp_path: Path) -> None:
    missing = bridge_cmd("check", "-c", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "config file not found" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("homeserver:\n  address: [unclosed\n")
    result = bridge_cmd("check", "-c", str(broken))
    assert result.returncode == 2 and "not valid YAML (line" in result.stderr
    usage = bridge_cmd("frobnicate")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


@pytest.mark.integration
def test_secrets_can_come_from_the_environment(tmp_path: Path, generated: Path) -> None:
    data = yaml.safe_load(generated.read_text())
    del data["appservice"]["as_token"]
    path = _write_config(tmp_path / "nosecret.yaml", data)
    registration = tmp_path / "reg.yaml"
    refused = bridge_cmd("generate-registration", "-c", str(path), "-r", str(registration))
    assert refused.returncode == 2 and "appservice.as_token" in refused.stderr
    token = "from-the-environment-0123456789"
    result = bridge_cmd("generate-registration", "-c", str(path), "-r", str(registration),
                        env={"BRIDGE_APPSERVICE__AS_TOKEN": token,
                             "BRIDGE_BRIDGE__ADMINS": '["@it:example.org"]'})
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(registration.read_text())["as_token"] == token


def test_db_upgrade_on_sqlite_and_postgres(tmp_path: Path, generated: Path,
                                           database_url: str) -> None:
    data = yaml.safe_load(generated.read_text())
    data["database"]["url"] = database_url
    path = _write_config(tmp_path / "db.yaml", data)
    first = bridge_cmd("db", "upgrade", "-c", str(path))
    assert first.returncode == 0, first.stderr
    assert "upgraded from empty to revision" in first.stdout
    again = bridge_cmd("db", "upgrade", "-c", str(path))
    assert again.returncode == 0 and "up to date" in again.stdout


@pytest.mark.integration
def test_db_upgrade_reports_an_unreachable_database(tmp_path: Path, generated: Path) -> None:
    data = yaml.safe_load(generated.read_text())
    data["database"]["url"] = "postgresql+asyncpg://bridge:s3cret-pw@127.0.0.1:1/bridge"
    path = _write_config(tmp_path / "db.yaml", data)
    result = bridge_cmd("db", "upgrade", "-c", str(path))
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr
    assert "s3cret-pw" not in result.stderr  # the password is never printed
    assert "Traceback" not in result.stderr


def _session_config(homeserver: Homeserver, tmp_path: Path, database_url: str,
                    **changes: Any) -> Path:
    data = yaml.safe_load(homeserver.config_path.read_text())
    data["database"]["url"] = database_url
    data["logging"]["level"] = "DEBUG"
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data[section][key] = value
    return _write_config(tmp_path / "run.yaml", data)


def _start_bridge(config: Path, cwd: Path = REPO) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    # The log goes to a file: a pipe nobody reads until the end fills up and blocks it.
    log = open(config.with_suffix(".log"), "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "bridge", "run", "-c", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=cwd)


async def _wait_healthy(homeserver: Homeserver, process: subprocess.Popen[str]) -> None:
    import asyncio

    import aiohttp

    url = f"http://127.0.0.1:{homeserver.bridge_port}/_bridge/health"
    # Start-up includes the migrations' child process (python -m bridge.db.migrate): on a
    # busy machine that alone can take several seconds.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    async with aiohttp.ClientSession() as http:
        while loop.time() < deadline:
            assert process.poll() is None, "the bridge exited during start-up"
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the bridge never became healthy")


async def test_run_answers_help_then_stops_cleanly_on_sigterm(
        homeserver: Homeserver, tmp_path: Path, sqlite_url: str,
        admin: MatrixTestClient) -> None:
    config = _session_config(homeserver, tmp_path, sqlite_url)
    process = _start_bridge(config)
    try:
        await _wait_healthy(homeserver, process)
        room = await open_room(homeserver.bot, admin, direct=True)
        started = time.monotonic()
        await command(homeserver.bot, admin, room, "help", expect="Bridge bot commands")
        assert time.monotonic() - started < 2.0

        check = bridge_cmd("check", "-c", str(config))
        assert check.returncode == 0, check.stdout + check.stderr
        for item in ("homeserver reachable", "as_token accepted",
                     "homeserver reaches the bridge", "database reachable and migrated"):
            assert f"[  OK] {item}" in check.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    stderr = config.with_suffix(".log").read_text()
    assert process.returncode == 0, stderr
    assert "shutting down" in stderr
    # DEBUG logging, and still no secret in any line.
    data = yaml.safe_load(config.read_text())
    assert data["appservice"]["as_token"] not in stderr
    assert data["appservice"]["hs_token"] not in stderr


def test_check_before_the_first_run_and_with_a_wrong_token(homeserver: Homeserver,
                                                           tmp_path: Path,
                                                           sqlite_url: str) -> None:
    config = _session_config(homeserver, tmp_path, sqlite_url)
    # Not migrated yet, bridge not running: the check answers the homeserver's ping itself.
    result = bridge_cmd("check", "-c", str(config))
    assert "[  OK] homeserver reaches the bridge" in result.stdout, result.stdout
    assert "[FAIL] database reachable and migrated" in result.stdout
    assert "bridge db upgrade" in result.stdout
    assert result.returncode == 1

    assert bridge_cmd("db", "upgrade", "-c", str(config)).returncode == 0
    wrong = _session_config(homeserver, tmp_path, sqlite_url,
                            appservice__as_token="x" * 40)
    result = bridge_cmd("check", "-c", str(wrong))
    assert result.returncode == 1
    assert "[FAIL] as_token accepted" in result.stdout
    assert "app_service_config_files" in result.stdout


def test_check_reports_an_unreachable_homeserver(tmp_path: Path, generated: Path,
                                                 sqlite_url: str) -> None:
    from testkit.synapse import free_port

    data = yaml.safe_load(generated.read_text())
    data["homeserver"]["address"] = f"http://127.0.0.1:{free_port()}"
    data["database"]["url"] = sqlite_url
    result = bridge_cmd("check", "-c", str(_write_config(tmp_path / "c.yaml", data)))
    assert result.returncode == 1
    assert "[FAIL] homeserver reachable" in result.stdout
    assert "check homeserver.address" in result.stdout


@pytest.mark.integration
def test_a_missing_homeserver_domain_is_an_error_not_example_org(tmp_path: Path,
                                                                 generated: Path) -> None:
    data = yaml.safe_load(generated.read_text())
    del data["homeserver"]["domain"]
    path = _write_config(tmp_path / "nodomain.yaml", data)
    registration = tmp_path / "r.yaml"
    for args in (["check", "-c", str(path)], ["run", "-c", str(path)],
                 ["generate-registration", "-c", str(path), "-r", str(registration)]):
        result = bridge_cmd(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().splitlines() == [
            "bridge: config error: homeserver.domain: is required: the server name of your "
            "homeserver, the part after the colon in its user IDs (@alice:example.org -> "
            "example.org)"]
    assert not registration.exists()


def test_check_warns_about_no_admins_and_creates_no_database_file(
        homeserver: Homeserver, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db_file = tmp_path / "fresh.db"
    # A relay that answers, so that the only things to report are the database and admins.
    relay = Controller(Sink(), hostname="127.0.0.1", port=free_port())
    relay.start()
    request.addfinalizer(relay.stop)
    config = _session_config(homeserver, tmp_path, f"sqlite+aiosqlite:///{db_file}",
                             bridge__admins=[], email__enabled=True,
                             email__domain="mail.bridge.test", email__sender_auth="none",
                             email__smtp_out={"host": "127.0.0.1", "port": relay.port})
    result = bridge_cmd("check", "-c", str(config))
    assert result.returncode == 1
    assert (f"[FAIL] database reachable and migrated: sqlite+aiosqlite:///{db_file}: "
            f"{db_file} does not exist yet: run `bridge db upgrade`") in result.stdout
    assert not db_file.exists()  # a check changes nothing
    assert "[WARN] bridge admins: bridge.admins is empty" in result.stdout

    assert bridge_cmd("db", "upgrade", "-c", str(config)).returncode == 0
    result = bridge_cmd("check", "-c", str(config))
    assert result.returncode == 0, result.stdout
    assert "[WARN] bridge admins" in result.stdout
    # The session homeserver's registration has every network's namespace.
    assert ("[  OK] email puppets in the registration: the homeserver lets the bridge act as "
            "@email_…:bridge.test") in result.stdout
    assert result.stdout.strip().endswith("All checks passed (1 warning(s)).")


async def test_run_states_its_default_database_and_missing_admins(
        homeserver: Homeserver, tmp_path: Path) -> None:
    data = yaml.safe_load(homeserver.config_path.read_text())
    del data["database"]
    data["bridge"]["admins"] = []
    config = _write_config(tmp_path / "defaults.yaml", data)
    # Run from tmp_path: the default SQLite file lands in the working directory.
    process = _start_bridge(config, cwd=tmp_path)
    try:
        await _wait_healthy(homeserver, process)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    output = config.with_suffix(".log").read_text()
    assert process.returncode == 0, output
    assert (f"WARNING bridge: the config has no database section: using the SQLite file "
            f"{tmp_path / 'bridge.db'}") in output
    assert "WARNING bridge: bridge.admins is empty: nobody can invite the bot" in output
    assert (tmp_path / "bridge.db").is_file()


def _busy_port_config(homeserver: Homeserver, tmp_path: Path, key: str,
                      port: int) -> Path:
    from testkit.synapse import free_port

    data = yaml.safe_load(homeserver.config_path.read_text())
    data["database"]["url"] = f"sqlite+aiosqlite:///{tmp_path / 'bridge.db'}"
    data["email"].update(enabled=True, domain="mail.bridge.test", sender_auth="none",
                         smtp_in={"hostname": "127.0.0.1", "port": free_port()})
    # An Events API workspace, so the bridge opens slack.events_api.port; Slack itself is
    # never reached (nothing listens at api_url), which does not stop the start.
    data["slack"].update(enabled=True, api_url=f"http://127.0.0.1:{free_port()}/api/",
                         events_api={"hostname": "127.0.0.1", "port": free_port()},
                         workspaces=[{"name": "t", "bot_token": "xoxb-1",
                                      "signing_secret": "s" * 32}])
    section, _, option = key.rpartition(".")
    node = data
    for part in section.split("."):
        node = node[part]
    node[option] = port
    return _write_config(tmp_path / "busy.yaml", data)


@pytest.mark.parametrize("key", ["appservice.port", "email.smtp_in.port",
                                 "slack.events_api.port"])
def test_a_busy_port_is_named_by_its_own_key(homeserver: Homeserver, tmp_path: Path,
                                             key: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _busy_port_config(homeserver, tmp_path, key, port)
        result = bridge_cmd("run", "-c", str(config))
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("bridge: error")]
    assert errors == [f"bridge: error: cannot listen on 127.0.0.1:{port} ({key}): the address "
                      "is already in use; is another program (or the bridge itself) already "
                      "listening there?"], result.stderr
    assert "Traceback" not in result.stderr
    # Every session and socket opened before the failure was closed again.
    assert "Unclosed" not in result.stderr, result.stderr


@pytest.mark.integration
def test_run_names_an_unreachable_database(tmp_path: Path, generated: Path) -> None:
    data = yaml.safe_load(generated.read_text())
    data["database"]["url"] = "postgresql+asyncpg://bridge:s3cret-pw@127.0.0.1:1/bridge"
    result = bridge_cmd("run", "-c", str(_write_config(tmp_path / "db.yaml", data)))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("bridge: error")]
    assert len(errors) == 1 and errors[0].startswith(
        "bridge: error: cannot use the database postgresql+asyncpg://bridge:***@127.0.0.1:1/"
        "bridge (database.url): "), result.stderr
    assert "s3cret-pw" not in result.stderr
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr


class Sink:
    """An SMTP server that accepts every mail (for commands that only need a relay to
    answer)."""

    async def handle_DATA(self, server: SMTPServer, session: Session,
                          envelope: Envelope) -> str:
        return "250 OK"
