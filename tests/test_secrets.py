"""No secret in any log line: the bridge at DEBUG with every secret set, traffic through every
network, and the whole log searched.

Secrets: the appservice's as_token and hs_token, the PostgreSQL password (with characters
that a URL must encode), a Slack workspace's bot token, app token and signing secret (on the
Slack simulator), the email token secret and the relay's password (a real aiosmtpd relay that
demands SMTP AUTH). Traffic: a Matrix message out to Slack and by mail (with one Slack error on
the way), a Slack message and a mail in, then secrets pasted into the chat on both sides (the
libraries log request bodies at DEBUG: without masking this test fails). The log searched:
every record of every logger as a handler of the test's own sees it (no masking formatter of
ours), and the bridge's stderr as `bridge run` sets it up (setup_logging). Each secret is
looked for as written and in the forms it would take in a URL, JSON or SMTP AUTH.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import smtplib
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any
from urllib.parse import quote

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from sqlalchemy.engine import make_url

from bridge.logs import MASK, setup_logging
from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.synapse import free_port
from tests.conftest import Homeserver
from tests.email.conftest import MAIL_DOMAIN
from tests.slack.conftest import ANNA, CHANNEL, SlackBridge, workspace_config
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.relay_helpers import has_body, posted

HEX = uuid.uuid4().hex
DB_PASSWORD = f"Db:{HEX[:10]}@/%x"
SLACK_BOT_TOKEN = f"xoxb-{HEX[:12]}-geheim"
SLACK_APP_TOKEN = f"xapp-1-{HEX[12:24]}-geheim"
SIGNING_SECRET = f"sign{HEX[:20]}"
TOKEN_SECRET = f"token-secret-{HEX}"
RELAY_USER = "bridge-relay"
RELAY_PASSWORD = f"Relay-{HEX[8:20]}!"
ERIKA = "erika@stadt.example"


def forms(secret: str) -> set[str]:
    """The secret as written and as it would look in a URL, in JSON or in SMTP AUTH."""
    return {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}


class AuthRelay:
    """The mail relay the bridge sends through, which wants a user name and password."""

    def __init__(self) -> None:
        self.host, self.port = "127.0.0.1", free_port()
        self.received: list[bytes] = []
        self.logins: list[bool] = []
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        relay = self

        def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                         data: Any) -> AuthResult:
            ok = (isinstance(data, LoginPassword) and data.login == RELAY_USER.encode()
                  and data.password == RELAY_PASSWORD.encode())
            relay.logins.append(ok)
            return AuthResult(success=ok)

        class Handler:
            async def handle_DATA(self, server: SMTP, session: Session,
                                  envelope: Envelope) -> str:
                relay.received.append(bytes(envelope.original_content or b""))
                return "250 Message accepted"

        def factory() -> SMTP:
            return SMTP(Handler(), hostname="relay.test", decode_data=False,
                        authenticator=authenticate, auth_required=True,
                        auth_require_tls=False)

        self._server = await asyncio.get_running_loop().create_server(
            factory, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class EveryLine(logging.Handler):
    """A handler the bridge knows nothing about: it formats records plainly."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.loggers: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.loggers.add(record.name)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """setup_logging changes process-wide state; the tests after this one get theirs back."""
    root = logging.getLogger()
    handlers, level, factory = list(root.handlers), root.level, logging.getLogRecordFactory()
    noisy = {name: logging.getLogger(name).level
             for name in ("aiohttp.access", "sqlalchemy.engine", "alembic")}
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        logging.setLogRecordFactory(factory)
        for name, old in noisy.items():
            logging.getLogger(name).setLevel(old)


async def send_mail(port: int, text: str) -> None:
    msg = EmailMessage()
    msg["From"] = ERIKA
    msg["To"] = f"geheim@{MAIL_DOMAIN}"
    msg["Subject"] = "Aus dem Postfach"
    msg["Message-ID"] = make_msgid(domain="stadt.example")
    msg.set_content(text)

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.send_message(msg)

    await asyncio.to_thread(send)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
# The relay of this test wants AUTH without TLS, which aiosmtpd rightly warns about.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_no_secret_in_any_log_line_at_debug(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator,
        admin: MatrixTestClient, restored_logging: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    sim = slack_sim
    team = sim.add_team(team_id="T0GEHEIM", name="geheim", domain="geheim",
                        bot_token=SLACK_BOT_TOKEN, app_token=SLACK_APP_TOKEN,
                        signing_secret=SIGNING_SECRET)
    sim.add_user(team, ANNA, name="anna", real_name="Anna Schmidt")
    sim.add_channel(team, CHANNEL, name="bauamt", members=[ANNA])
    relay = AuthRelay()
    await relay.start()
    smtp_port = free_port()
    # The PostgreSQL server trusts local connections, so any password does; the bridge
    # still hands it to the driver.
    url = make_url(database_url).set(password=DB_PASSWORD).render_as_string(
        hide_password=False)
    assert quote(DB_PASSWORD, safe="") in url
    config = homeserver.config(
        url,
        slack__enabled=True, slack__api_url=sim.api_url,
        slack__workspaces=[workspace_config(team)],
        email__enabled=True, email__domain=MAIL_DOMAIN, email__sender_auth="none",
        email__token_secret=TOKEN_SECRET,
        email__smtp_in={"hostname": "127.0.0.1", "port": smtp_port},
        email__smtp_out={"host": relay.host, "port": relay.port, "username": RELAY_USER,
                         "password": RELAY_PASSWORD},
        bridge__outbox={"retry_base_seconds": 0.2, "retry_max_seconds": 1.0,
                        "give_up_after_hours": 1.0},
    )
    secrets = [config.appservice.as_token, config.appservice.hs_token, DB_PASSWORD,
               SLACK_BOT_TOKEN, SLACK_APP_TOKEN, SIGNING_SECRET, TOKEN_SECRET, RELAY_PASSWORD,
               base64.b64encode(f"\0{RELAY_USER}\0{RELAY_PASSWORD}".encode()).decode()]

    # As `bridge run` does it, then one more handler of our own on the root logger.
    setup_logging("DEBUG", "text", config.secrets())
    every_line = EveryLine()
    logging.getLogger().addHandler(every_line)
    running = SlackBridge(homeserver, config, with_connectors=True)
    running.sim = sim
    try:
        await running.start()
        await running.connected()
        bot = homeserver.bot
        room = await open_room(bot, admin, bot_power=100, name="Geheim")
        await command(bot, admin, room, f"!bridge link slack {CHANNEL}", expect="Linked")
        await command(bot, admin, room, "!bridge link email geheim", expect="Linked")
        await command(bot, admin, room, f"!bridge email subscribe {ERIKA}", expect="Subscribed")

        # Matrix -> Slack (after one failed try) and -> mail through the relay with AUTH.
        sim.fail("chat.postMessage", status=500, times=1)
        await admin.send_text(room, "Aus Matrix an alle")
        await posted(sim, team, "Aus Matrix an alle")
        await sim.wait_for(lambda: [m for m in relay.received if b"Aus Matrix an alle" in m],
                           timeout=15)
        assert relay.logins and all(relay.logins)
        # Slack -> Matrix, mail -> Matrix.
        await sim.post_message(team, CHANNEL, ANNA, text="Aus Slack in den Raum")
        await admin.wait_for_event(room, has_body("Aus Slack in den Raum"), timeout=15)
        await send_mail(smtp_port, "Aus dem Postfach in den Raum")
        await admin.wait_for_event(room, has_body("Aus dem Postfach in den Raum"), timeout=15)
        await command(bot, admin, room, "!bridge status", expect="Links of this room")
        # Someone pastes secrets into the chat, in Matrix and in Slack: the libraries' DEBUG
        # lines carry request bodies (mautrix, slack-sdk), and those lines are masked too.
        pasted = " ".join(secrets)
        await admin.send_text(room, f"Versehentlich eingefügt: {pasted}")
        await posted(sim, team, "Versehentlich eingefügt")
        await sim.post_message(team, CHANNEL, ANNA, text=f"Auch hier eingefügt: {pasted}")
        await admin.wait_for_event(room, has_body("Auch hier eingefügt"), timeout=15)
    finally:
        await running.stop()
        await relay.stop()
        logging.getLogger().removeHandler(every_line)
    stderr = capsys.readouterr().err

    # The log is a real DEBUG log of every part, so the search below means something.
    assert len(every_line.lines) > 100 and len(stderr.splitlines()) > 100
    for prefix in ("bridge.matrix.api", "bridge.slack", "bridge.email", "slack_sdk",
                   "mail.log"):
        assert any(name.startswith(prefix) for name in every_line.loggers), prefix
    # The pasted secrets were on their way into slack-sdk's and mautrix's lines, and caught.
    assert any(MASK in line for line in every_line.lines
               if line.startswith(("slack_sdk", "bridge.matrix.api")))
    assert MASK in stderr
    for secret in secrets:
        for form in forms(secret):
            leaks = [line for line in every_line.lines if form in line]
            assert not leaks, (secret, leaks[:3])
            assert form not in stderr, secret


def test_masking_reaches_every_handler_and_every_form(restored_logging: None) -> None:
    """Without a bridge: a foreign handler on a library's logger, an exception text, and the
    encoded forms, at DEBUG."""
    password = "p@ss/wörd:1"
    setup_logging("DEBUG", "json", [SLACK_BOT_TOKEN, password])
    every_line = EveryLine()
    library = logging.getLogger("some.library")
    library.addHandler(every_line)
    try:
        library.debug("headers: %s", {"Authorization": f"Bearer {SLACK_BOT_TOKEN}"})
        library.debug("url: postgresql://u:%s@db/x", quote(password, safe=""))
        library.debug("json: %s", json.dumps({"password": password}))
        library.debug("auth: %s", base64.b64encode(password.encode()).decode())
        try:
            raise RuntimeError(f"refused token {SLACK_BOT_TOKEN}")
        except RuntimeError:
            library.exception("call failed")
        library.info("nothing secret here: %d", 42)
    finally:
        library.removeHandler(every_line)
    text = "\n".join(every_line.lines)
    for form in (*forms(SLACK_BOT_TOKEN), *forms(password), json.dumps(password)[1:-1]):
        assert form not in text, form
    assert text.count(MASK) == 5  # headers, URL, JSON, base64, the exception's text
    assert every_line.lines[-1] == "some.library INFO nothing secret here: 42"
