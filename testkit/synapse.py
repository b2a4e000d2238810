"""Run a real Synapse homeserver (from the installed ``matrix-synapse`` package) for tests.

Typical use (e.g. from a session-scoped fixture)::

    server = SynapseServer(tmp_path / "synapse", port=free_port(),
                           registration_files=[reg_path])
    server.start()
    try:
        user_id, token = await server.register_user("alice")
        ...
    finally:
        server.stop()

The config is written by hand (``--generate-config`` is slow and noisy) and tuned for
tests: SQLite, one plain-HTTP client listener on 127.0.0.1, no federation listener,
every rate limit raised far out of reach and cheap password hashing.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
import yaml
from signedjson.key import generate_signing_key, write_signing_keys

__all__ = ["SynapseServer", "SynapseStartError", "free_port", "register_user"]

# Effectively "no limit" for every rate limiter; tests send bursts from a handful of users.
_UNLIMITED: dict[str, float] = {"per_second": 100_000, "burst_count": 1_000_000}

log = logging.getLogger("testkit.synapse")


# wait_appservice_up pings an appservice that Synapse still counts as down after this long.
PING_DOWN_APPSERVICE_AFTER = 2.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    There is an unavoidable race between closing the probe socket and the real server
    binding the port; it is good enough for tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SynapseStartError(RuntimeError):
    """Synapse did not come up; the message carries the tail of its log."""


def _ratelimit_config() -> dict[str, Any]:
    # Keys as read by synapse/config/ratelimiting.py (Synapse 1.163). Unknown keys are
    # ignored by Synapse, so listing a few extra is harmless.
    return {
        "rc_message": _UNLIMITED,
        "rc_registration": _UNLIMITED,
        "rc_registration_token_validity": _UNLIMITED,
        "rc_login": {
            "address": _UNLIMITED,
            "account": _UNLIMITED,
            "failed_attempts": _UNLIMITED,
        },
        "rc_admin_redaction": _UNLIMITED,
        "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
        "rc_joins_per_room": _UNLIMITED,
        "rc_key_requests": _UNLIMITED,
        "rc_3pid_validation": _UNLIMITED,
        "rc_invites": {
            "per_room": _UNLIMITED,
            "per_user": _UNLIMITED,
            "per_issuer": _UNLIMITED,
        },
        "rc_third_party_invite": _UNLIMITED,
        "rc_media_create": _UNLIMITED,
        "rc_presence": {"per_user": _UNLIMITED},
        "rc_delayed_event_mgmt": _UNLIMITED,
        "rc_room_creation": _UNLIMITED,
        "rc_reports": _UNLIMITED,
        "rc_user_directory": _UNLIMITED,
        "rc_profile": _UNLIMITED,
    }


class SynapseServer:
    """A Synapse subprocess with its config, database, keys and log under ``workdir``.

    ``start()``/``stop()`` may be called repeatedly (e.g. to test homeserver restarts);
    the database, signing key and shared secret are kept between runs.

    ``extra_config`` is merged (shallowly) over the generated config, e.g.
    ``{"experimental_features": {"msc2409_to_device_messages_enabled": True}}``.
    ``python_path``: directories Synapse imports from besides its own (modules of tests
    listed under ``modules:`` in ``extra_config``); it runs in ``workdir``, not here.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int,
        server_name: str = "bridge.test",
        registration_files: Sequence[Path] = (),
        extra_config: dict[str, Any] | None = None,
        python_path: Sequence[Path] = (),
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.port = port
        self._server_name = server_name
        self.registration_files = [Path(p).resolve() for p in registration_files]
        self.extra_config = dict(extra_config or {})
        self.python_path = [Path(p).resolve() for p in python_path]
        # Generated once so it survives restarts (register_user needs it).
        self._shared_secret = secrets.token_hex(32)
        self._macaroon_secret = secrets.token_hex(32)
        self._form_secret = secrets.token_hex(32)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # -- properties -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_name(self) -> str:
        return self._server_name

    @property
    def registration_shared_secret(self) -> str:
        return self._shared_secret

    @property
    def config_path(self) -> Path:
        return self.workdir / "homeserver.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "homeserver.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- config -----------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The homeserver.yaml contents (as a dict) that ``start()`` writes."""
        config: dict[str, Any] = {
            "server_name": self._server_name,
            "public_baseurl": self.url + "/",
            "pid_file": str(self.workdir / "homeserver.pid"),
            "signing_key_path": str(self.workdir / "signing.key"),
            "listeners": [
                {
                    "port": self.port,
                    "type": "http",
                    "tls": False,
                    "bind_addresses": ["127.0.0.1"],
                    "x_forwarded": False,
                    # "client" also serves /_synapse/admin (needed for register_user).
                    # No "federation" resource: tests run a single homeserver.
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self.workdir / "homeserver.db")},
            },
            "media_store_path": str(self.workdir / "media_store"),
            "app_service_config_files": [str(p) for p in self.registration_files],
            "registration_shared_secret": self._shared_secret,
            "macaroon_secret_key": self._macaroon_secret,
            "form_secret": self._form_secret,
            "enable_registration": False,
            "report_stats": False,
            "enable_metrics": False,
            # Never talk to matrix.org for keys, and don't warn about it.
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "url_preview_enabled": False,
            # Presence only adds ephemeral noise (and AS traffic) in tests.
            "presence": {"enabled": False},
            # Default is 12 rounds (~0.25 s per hash); tests register many users.
            "bcrypt_rounds": 4,
            # default_room_version is deliberately left at Synapse's default ("12").
            # Encrypted rooms (issue 13): to-device messages (MSC2409), device list changes
            # and one-time-key counts (MSC3202) in appservice transactions, for registrations
            # that ask for them ("org.matrix.msc3202": true).
            "experimental_features": {"msc2409_to_device_messages_enabled": True,
                                      "msc3202_transaction_extensions": True},
            **_ratelimit_config(),
        }
        config.update(self.extra_config)
        return config

    def _write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "media_store").mkdir(exist_ok=True)
        key_path = self.workdir / "signing.key"
        if not key_path.exists():
            # Writing the key ourselves avoids a second (slow) Synapse start-up.
            with key_path.open("w") as f:
                write_signing_keys(f, [generate_signing_key("a_" + secrets.token_hex(2))])
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Start Synapse and block until the client API answers."""
        if self.running:
            raise RuntimeError("Synapse is already running")
        self._write_files()
        self._log_file = self.log_path.open("ab")
        env = None
        if self.python_path:
            inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                [*(str(p) for p in self.python_path), *inherited])}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            # cwd matters: running from inside site-packages/synapse would shadow stdlib
            # modules (synapse/types shadows `types`).
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Own process group, so a Ctrl-C aimed at pytest doesn't race our SIGTERM.
            start_new_session=True,
            env=env,
        )
        atexit.register(self.stop)

        deadline = time.monotonic() + timeout
        versions_url = self.url + "/_matrix/client/versions"
        while True:
            code = self._proc.poll()
            if code is not None:
                self._close_log()
                self._proc = None
                raise SynapseStartError(
                    f"Synapse exited with code {code} during start-up; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(versions_url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                self.stop()
                raise SynapseStartError(
                    f"Synapse did not answer {versions_url} within {timeout}s; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM Synapse and wait; SIGKILL if it does not exit in ``timeout`` seconds."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()

    def restart(self, timeout: float = 60) -> None:
        self.stop()
        self.start(timeout)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> SynapseServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ----------------------------------------------------------------------

    def appservice_state(self, as_id: str) -> str | None:
        """What Synapse's database says of an appservice: "up", "down" (recovering from
        failed transactions) or None (none ever failed)."""
        uri = f"file:{self.workdir / 'homeserver.db'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
            row = db.execute("SELECT state FROM application_services_state WHERE as_id = ?",
                             (as_id,)).fetchone()
        return str(row[0]) if row and row[0] else None

    def unsent_appservice_transactions(self, as_id: str) -> int:
        """Transactions to the appservice that Synapse has not seen acknowledged yet."""
        uri = f"file:{self.workdir / 'homeserver.db'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
            row = db.execute("SELECT count(*) FROM application_services_txns WHERE as_id = ?",
                             (as_id,)).fetchone()
        return int(row[0])

    def media_holding(self, data: bytes) -> list[str]:
        """The IDs of the local media (uploads to this homeserver) whose stored bytes contain
        ``data``: is a plain copy of a file anywhere in the media repository?"""
        root = self.workdir / "media_store" / "local_content"
        found = []
        for path in sorted(root.glob("*/*/*")):
            if path.is_file() and data in path.read_bytes():
                found.append("".join(path.relative_to(root).parts))
        return found

    def media_bytes(self, mxc: str) -> bytes:
        """What the media repository stores for a local ``mxc://`` URI, byte for byte (for
        an encrypted attachment: the ciphertext)."""
        server, _, media_id = mxc.removeprefix("mxc://").partition("/")
        assert server == self._server_name, f"{mxc} is not this homeserver's"
        uri = f"file:{self.workdir / 'homeserver.db'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
            row = db.execute("SELECT media_length FROM local_media_repository "
                             "WHERE media_id = ?", (media_id,)).fetchone()
        assert row is not None, f"{mxc} is not in the media repository"
        path = (self.workdir / "media_store" / "local_content" / media_id[0:2]
                / media_id[2:4] / media_id[4:])
        data = path.read_bytes()
        assert len(data) == int(row[0])
        return data

    async def wait_appservice_up(self, as_id: str, timeout: float = 20.0) -> None:
        """Until Synapse counts the appservice as up and holds no transaction for it.

        Between two tests Synapse's transactions to the bridge that just stopped fail, so
        it recovers once the next bridge pings it. An event created at the very end of that
        recovery can land in a transaction nobody sends until the next failure (a race in
        Synapse's appservice scheduler: the recoverer finds no transaction left, the event's
        sender still saw "down" and stored one). Seen as a bot that never got its invitation,
        or never answered a command; a test starts its rooms only after the recovery is over.

        A stored transaction also means a push is on its way: one that Synapse began
        while no bridge listened fails a moment later and sets the state "down" only then
        (on a busy machine, after "up" was read). So the state must read "up" with no
        transaction stored, twice in a row. A transaction left behind by that race earlier
        stays until a newer one reaches the bridge, which then asks for it (answers 503:
        bridge/matrix/transaction_gaps.py); after a few seconds it is accepted, with a
        warning.
        """
        deadline = time.monotonic() + timeout
        settled_since: float | None = None
        quiet_reads = 0
        next_ping = time.monotonic() + PING_DOWN_APPSERVICE_AFTER
        while True:
            state = self.appservice_state(as_id)
            unsent = self.unsent_appservice_transactions(as_id)
            if state == "down" and time.monotonic() >= next_ping:
                # Synapse backs off between its retries (16 s and more after a few failed
                # ones, e.g. while `bridge check` answered in the bridge's place); a
                # successful ping makes it retry at once, as the bridge's own ping at start
                # does when it comes after the failure.
                await self.ping_appservice(as_id)
                next_ping = time.monotonic() + PING_DOWN_APPSERVICE_AFTER
            if state != "down" and unsent == 0:
                quiet_reads += 1
                if quiet_reads >= 2:
                    return
            else:
                quiet_reads = 0
            if state != "down" and unsent:
                settled_since = settled_since or time.monotonic()
                if time.monotonic() - settled_since > 5:
                    log.warning("Synapse holds %d transaction(s) for %s while calling it up "
                                "(left by its recovery race); going on", unsent, as_id)
                    return
            else:
                settled_since = None
            if time.monotonic() > deadline:
                raise TimeoutError(f"Synapse still counts appservice {as_id} as down after "
                                   f"{timeout:.0f} s; its log:\n{self.log_tail(30)}")
            await asyncio.sleep(0.05)

    async def ping_appservice(self, as_id: str) -> None:
        """Synapse's appservice ping (``POST /_matrix/client/v1/appservice/{id}/ping``) as
        the appservice of one of its registration files; a failed ping is only logged."""
        token = next(data["as_token"] for data in
                     (yaml.safe_load(path.read_text()) for path in self.registration_files)
                     if data.get("id") == as_id)
        url = f"{self.url}/_matrix/client/v1/appservice/{as_id}/ping"
        try:
            async with aiohttp.ClientSession() as session, session.post(
                    url, json={}, headers={"Authorization": f"Bearer {token}"},
                    timeout=aiohttp.ClientTimeout(total=10)) as response:
                if response.status != 200:
                    log.info("appservice ping: HTTP %d %s", response.status,
                             await response.text())
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("appservice ping failed: %r", exc)

    def appservice_report(self, as_id: str) -> str:
        """Synapse's view of the appservice, for a test's failure message: its state, the
        transactions it holds, and its last log lines about appservices."""
        try:
            state = self.appservice_state(as_id)
            unsent = self.unsent_appservice_transactions(as_id)
        except sqlite3.Error as exc:
            return f"Synapse's database could not be read: {exc}"
        lines = [line for line in self.log_tail(4000).splitlines()
                 if "synapse.appservice" in line and "query_alias" not in line]
        return (f"Synapse: appservice {as_id} state={state or 'up (never failed)'}, "
                f"{unsent} transaction(s) held; its last appservice log lines:\n"
                + "\n".join(lines[-12:]))

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no log file>"
        return "\n".join(text.splitlines()[-lines:])

    async def register_user(
        self,
        localpart: str,
        *,
        password: str | None = None,
        admin: bool = False,
        displayname: str | None = None,
    ) -> tuple[str, str]:
        """Register a user on this server; see the module-level ``register_user``."""
        return await register_user(
            self.url,
            self._shared_secret,
            localpart,
            password=password,
            admin=admin,
            displayname=displayname,
        )


async def register_user(
    base_url: str,
    shared_secret: str,
    localpart: str,
    *,
    password: str | None = None,
    admin: bool = False,
    displayname: str | None = None,
) -> tuple[str, str]:
    """Register a user through Synapse's shared-secret admin API.

    Returns ``(user_id, access_token)``. The API insists on a password, so a random
    one is used if none is given.
    """
    if password is None:
        password = secrets.token_urlsafe(16)
    url = base_url.rstrip("/") + "/_synapse/admin/v1/register"
    async with aiohttp.ClientSession() as session:
        # The nonce is single-use and expires after 60 s, so fetch one per registration.
        async with session.get(url) as resp:
            resp.raise_for_status()
            nonce: str = (await resp.json())["nonce"]
        mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
        for part in (nonce, localpart, password):
            mac.update(part.encode() + b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        body: dict[str, Any] = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        if displayname is not None:
            body["displayname"] = displayname
        async with session.post(url, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"registering {localpart!r} failed: {resp.status} {data}")
    return data["user_id"], data["access_token"]
