"""contrib/systemd/bridge.service as systemd itself reads it: `systemd-analyze verify` (every
key known, the program there) and `systemd-analyze security` (how exposed the service is)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "contrib/systemd/bridge.service"
INSTALLED_BRIDGE = "/opt/matrix-hub-bridge/bin/bridge"  # where the unit's comment installs it
# systemd-analyze security rates exposure from 0 (locked down) to 10; up to 2 it says "OK".
MAX_EXPOSURE = 2.0


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    return path


def _unit_for_this_machine(tmp_path: Path, text: str | None = None) -> Path:
    """The unit as installed, but starting this checkout's `bridge`: verify insists that the
    program in ExecStart exists, and /opt/matrix-hub-bridge is not installed here."""
    text = UNIT.read_text() if text is None else text
    bridge = Path(sys.executable).parent / "bridge"
    assert bridge.is_file(), f"{bridge}: the virtualenv has no bridge command"
    assert text.count(INSTALLED_BRIDGE) == 1, "ExecStart names the installed bridge once"
    path = tmp_path / "matrix-hub-bridge.service"
    path.write_text(text.replace(INSTALLED_BRIDGE, str(bridge)))
    return path


def _verify(analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)


def test_systemd_verifies_the_unit_without_a_warning(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    result = _verify(analyze, _unit_for_this_machine(tmp_path))
    # A misspelt key is only a warning with exit code 0: any output fails the test.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")

    # The check is real: a misspelt sandboxing key is reported by name and line.
    broken = UNIT.read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomme=yes")
    result = _verify(analyze, _unit_for_this_machine(tmp_path, broken))
    assert "Unknown key 'ProtectHomme'" in result.stderr, result.stderr


def test_the_unit_is_sandboxed(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    unit = _unit_for_this_machine(tmp_path)
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read(unit)
    service = parser["Service"]
    for key, value in {"DynamicUser": "yes", "ProtectSystem": "strict",
                       "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes",
                       "StateDirectory": "matrix-hub-bridge",
                       "ConfigurationDirectory": "matrix-hub-bridge",
                       "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
                       "CapabilityBoundingSet": ""}.items():
        assert service.get(key) == value, f"{key}={service.get(key)}"
    # The config with its tokens stays root's; systemd hands it to the dynamic user.
    assert service["LoadCredential"] == "config.yaml:/etc/matrix-hub-bridge/config.yaml"
    assert "-c ${CREDENTIALS_DIRECTORY}/config.yaml" in service["ExecStart"]

    result = subprocess.run([analyze, "security", "--offline=yes",
                             f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit)],
                            capture_output=True, text=True, timeout=60)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    assert result.returncode == 0, summary
    assert "Overall exposure level" in summary, summary
