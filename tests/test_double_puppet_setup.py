"""Setting up double puppeting as an operator does: the config keys, the second registration
`bridge generate-registration` writes, and what `bridge check` says about it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bridge.config import ConfigError, parse_config
from bridge.registration import double_puppet_registration_path
from tests.conftest import Homeserver
from tests.test_cli import _session_config, _write_config, bridge_cmd


def _minimal(**double_puppet: object) -> dict[str, object]:
    return {"homeserver": {"domain": "stadt.example"},
            "appservice": {"as_token": "a" * 32, "hs_token": "h" * 32},
            "double_puppet": double_puppet}


@pytest.mark.integration
def test_generate_config_writes_a_fresh_double_puppet_token(tmp_path: Path) -> None:
    tokens = []
    for name in ("one.yaml", "two.yaml"):
        result = bridge_cmd("generate-config", "-o", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        data = yaml.safe_load((tmp_path / name).read_text())
        assert data["double_puppet"]["enabled"] is False
        tokens.append(data["double_puppet"]["as_token"])
    assert len(tokens[0]) >= 32 and tokens[0] != tokens[1]
    assert tokens[0] != yaml.safe_load((tmp_path / "one.yaml").read_text())["appservice"][
        "as_token"]


def test_double_puppet_config_is_checked_and_overridden_from_the_environment() -> None:
    assert parse_config(_minimal(), environ={}).double_puppet.enabled is False
    with pytest.raises(ConfigError, match=r"^double_puppet\.as_token: .*at least 16"):
        parse_config(_minimal(enabled=True, as_token="short"), environ={})
    with pytest.raises(ConfigError, match=r"^double_puppet\.enabeld: unknown key"):
        parse_config(_minimal(enabeld=True), environ={})
    config = parse_config(_minimal(enabled=True, as_token="from-the-file-0123456789"),
                          environ={"BRIDGE_DOUBLE_PUPPET__AS_TOKEN": "from-the-env-0123456789"})
    assert config.double_puppet.as_token == "from-the-env-0123456789"
    # A secret: masked in every log line.
    assert "from-the-env-0123456789" in config.secrets()


@pytest.mark.integration
def test_generate_registration_writes_the_second_registration_beside_the_first(
        tmp_path: Path) -> None:
    generated = tmp_path / "config.yaml"
    assert bridge_cmd("generate-config", "-o", str(generated)).returncode == 0
    data = yaml.safe_load(generated.read_text())
    data["homeserver"]["domain"] = "stadt.example"
    config = _write_config(generated, data)
    registration = tmp_path / "registration.yaml"
    second = tmp_path / "registration-double-puppet.yaml"

    # Off (the default): one registration, as before.
    result = bridge_cmd("generate-registration", "-c", str(config), "-r", str(registration))
    assert result.returncode == 0, result.stderr
    assert registration.exists() and not second.exists()

    data["double_puppet"]["enabled"] = True
    _write_config(config, data)
    result = bridge_cmd("generate-registration", "-c", str(config), "-r", str(registration))
    assert result.returncode == 0, result.stderr
    assert double_puppet_registration_path(registration) == second
    assert str(second) in result.stdout
    first = yaml.safe_load(registration.read_text())
    written = yaml.safe_load(second.read_text())
    assert written["url"] is None
    assert written["as_token"] == data["double_puppet"]["as_token"]
    assert written["as_token"] != first["as_token"]
    assert len(written["hs_token"]) >= 32 and written["hs_token"] != first["hs_token"]
    assert written["id"] != first["id"]
    assert written["sender_localpart"] != first["sender_localpart"]
    assert written["namespaces"]["users"] == [{"exclusive": False,
                                               "regex": r"@.*:stadt\.example"}]
    assert written["rate_limited"] is False
    assert second.stat().st_mode & 0o077 == 0  # holds a secret: the owner's only


def test_check_says_whether_the_homeserver_accepts_the_double_puppet_token(
        homeserver: Homeserver, tmp_path: Path, sqlite_url: str) -> None:
    assert bridge_cmd("db", "upgrade", "-c", str(
        _session_config(homeserver, tmp_path, sqlite_url))).returncode == 0
    # The session's homeserver loads the second registration (tests/conftest.py).
    config = _session_config(homeserver, tmp_path, sqlite_url, double_puppet__enabled=True)
    result = bridge_cmd("check", "-c", str(config))
    assert "[  OK] double puppeting" in result.stdout, result.stdout

    unknown = _session_config(homeserver, tmp_path, sqlite_url, double_puppet__enabled=True,
                              double_puppet__as_token="not-registered-0123456789")
    result = bridge_cmd("check", "-c", str(unknown))
    assert result.returncode == 1
    assert "[FAIL] double puppeting" in result.stdout
    assert "not registered" in result.stdout and "app_service_config_files" in result.stdout
    assert "not-registered-0123456789" not in result.stdout

    off = _session_config(homeserver, tmp_path, sqlite_url)
    assert "double puppeting" not in bridge_cmd("check", "-c", str(off)).stdout
