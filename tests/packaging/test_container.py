"""The Containerfile: built and run with Debian's podman against the session's Synapse, with
its config and data in the one volume; and read as text where no container can run."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from testkit.synapse import free_port
from tests.conftest import Homeserver
from tests.packaging import podman as pm

CONTAINERFILE = pm.REPO / "Containerfile"
UID = 10001  # the image's user (Containerfile: useradd --uid)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def test_containerfile_is_multi_stage_non_root_with_health_check_and_entry_point() -> None:
    steps = _instructions(CONTAINERFILE.read_text())
    stages = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    assert len(stages) >= 2, "a build stage and a runtime stage"
    runtime = steps[stages[-1]:]
    # The runtime stage takes the built virtualenv, not the sources or a build tool.
    assert any(word == "COPY" and "--from=build" in args for word, args in runtime)
    assert not any(word == "COPY" and args.split()[0] in ("bridge", ".", "/src")
                   for word, args in runtime)
    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    health = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert len(health) == 1 and "CMD" in health[0]
    checker = pm.REPO / "contrib/container/healthcheck.py"
    assert str(checker.relative_to(pm.REPO)) in CONTAINERFILE.read_text()
    assert "/_bridge/health" in checker.read_text()
    assert [json.loads(args) for word, args in runtime if word == "ENTRYPOINT"] == [["bridge"]]
    cmd = [json.loads(args) for word, args in runtime if word == "CMD"][-1]
    assert cmd == ["run", "-c", "/data/config.yaml"]
    assert [json.loads(args) for word, args in runtime if word == "VOLUME"] == [["/data"]]
    assert ("WORKDIR", "/data") in runtime  # the default SQLite file lands in the volume


def _healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "container_healthcheck", pm.REPO / "contrib/container/healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_health_check_asks_the_listener_the_config_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    healthcheck = _healthcheck_module()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "homeserver": {"address": "http://hs:8008", "domain": "example.org"},
        "appservice": {"hostname": "0.0.0.0", "port": 29555, "as_token": "a" * 20,
                       "hs_token": "b" * 20}}))
    for name in [n for n in os.environ if n.startswith("BRIDGE_")]:
        monkeypatch.delenv(name)
    # Listening on every address: asked on the loopback one.
    assert healthcheck.health_url(str(config)) == "http://127.0.0.1:29555/_bridge/health"
    # The environment wins over the file, as for `bridge run`.
    monkeypatch.setenv("BRIDGE_APPSERVICE__PORT", "29556")
    assert healthcheck.health_url(str(config)) == "http://127.0.0.1:29556/_bridge/health"
    # A broken config is unhealthy with the reason, not a traceback.
    monkeypatch.setenv("BRIDGE_CONFIG", str(tmp_path / "missing.yaml"))
    assert healthcheck.main() == 1


# A digest of the bridge package's Python files (the migrations aside: the wheel adds them).
SOURCE_DIGEST = """
import hashlib, pathlib, bridge
root = pathlib.Path(bridge.__file__).parent
files = sorted(p for p in root.rglob("*.py") if "_migrations" not in p.parts)
print(hashlib.sha256(b"".join(str(p.relative_to(root)).encode() + p.read_bytes()
                               for p in files)).hexdigest())
"""


def _logs(name: str, tail: int = 4000) -> str:
    logs = pm.podman("logs", name)
    return (logs.stdout + logs.stderr)[-tail:]


def _health(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_bridge/health",
                                    timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# A fresh machine first makes the base image (1-2 min) and downloads every wheel (the whole
# test took 5 min here under heavy load); after that podman's layer cache keeps the
# dependencies, and a change of the code rebuilds two small layers and the virtualenv's.
@pytest.mark.timeout(1800)
def test_the_image_builds_and_runs_the_bridge_as_non_root_with_its_data_in_the_volume(
        homeserver: Homeserver, tmp_path: Path) -> None:
    pm.require_podman()
    base = pm.base_image(tmp_path)
    options = pm.runtime_options(base)
    image = pm.build(base, options, tmp_path / "build.log")

    inspected = json.loads(pm.podman("image", "inspect", image, check=True).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "bridge"
    assert config["Entrypoint"] == ["bridge"]
    assert "/data" in config["Volumes"]
    assert "healthcheck.py" in " ".join(inspected["Healthcheck"]["Test"])

    # The image runs this checkout's code, not a layer cached from an earlier build.
    in_image = pm.podman("run", "--rm", *options, "--entrypoint", "python3", image,
                         "-c", SOURCE_DIGEST, check=True).stdout.strip()
    here = subprocess.run([sys.executable, "-c", SOURCE_DIGEST], capture_output=True,
                          text=True, check=True, cwd=pm.REPO).stdout.strip()
    assert in_image == here

    # The volume: config.yaml in it, the SQLite database to be made in it. A directory of
    # the host here; it must belong to the image's user, as the README says.
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    source = homeserver.config_file("sqlite+aiosqlite:////data/bridge.db",
                                    appservice__port=port, appservice__hostname="127.0.0.1")
    (data / "config.yaml").write_text(source.read_text())
    for path in (data, data / "config.yaml"):
        os.chown(path, UID, UID)

    name = f"bridge-test-{uuid.uuid4().hex[:8]}"
    # The host's network: the bridge reaches the session's Synapse on 127.0.0.1.
    pm.podman("run", "-d", "--name", name, *options, "--network", "host",
              "-v", f"{data}:/data", image, check=True)
    try:
        # Wait for the state, not for a time: the image's own HEALTHCHECK command, run the
        # way podman runs it (podman's timer needs systemd; this asks it directly).
        while True:
            state = json.loads(pm.podman("inspect", name, check=True).stdout)[0]["State"]
            assert state["Running"], (
                f"the container stopped ({state.get('ExitCode')}):\n"
                + _logs(name))
            if pm.podman("healthcheck", "run", name).returncode == 0:
                break
            time.sleep(0.5)
        status, health = _health(port)
        assert status == 200 and health["ready"] is True, health
        assert health["database"] == "ok" and health["homeserver"] == "ok", health

        # The process runs as the image's user, seen from the host.
        uid_line = next(line for line in Path(f"/proc/{state['Pid']}/status").read_text()
                        .splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(UID)] * 4, uid_line
        # Everything it keeps is in the volume: the database beside the config.
        assert (data / "bridge.db").stat().st_uid == UID

        # podman stop sends SIGTERM: a clean shutdown, exit code 0.
        pm.podman("stop", "-t", "60", name, check=True, timeout=90)
        state = json.loads(pm.podman("inspect", name, check=True).stdout)[0]["State"]
        assert state["ExitCode"] == 0, _logs(name)
        assert "shutting down" in _logs(name, tail=0)
    finally:
        pm.podman("rm", "-f", name)
        # Files the container made belong to its user: hand them back for tmp_path's cleanup.
        for path in [data, *data.rglob("*")]:
            os.chown(path, os.getuid(), os.getgid())

