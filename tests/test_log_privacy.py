"""The log at INFO holds no message content and no mail address beyond its domain.

A real run: the bridge's logging set up as ``bridge run`` does (INFO, text), a real Synapse,
the Slack simulator, real SMTP in and out; messages from Slack, from mail and from Matrix,
a mail to an address the bridge refuses, a bounce of a mail to a subscriber. Then the whole
log is read: no text of any message, no subject, no address (as written or escaped in a
puppet's user ID), and the bounce logged with the recipient's domain.
"""

from __future__ import annotations

import asyncio
import io
import logging
import smtplib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.logs import mask_addresses, setup_logging
from testkit.helpers import command
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from tests.conftest import Homeserver
from tests.email.conftest import MAIL_DOMAIN
from tests.email.conftest import sink as sink
from tests.email.test_email_bridge import _dsn
from tests.slack.conftest import ANNA, CHANNEL, linked_room, running_slack_and_email_bridge
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team
from tests.slack.relay_helpers import has_body, posted
from tests.test_all_directions import plain, send_mail

ERIKA = "erika.vertraulich@buerger.example"


@pytest.fixture
def bridge_log() -> Iterator[io.StringIO]:
    """The process's logging as `bridge run` sets it up, into a buffer; put back after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogRecordFactory())
    stream = io.StringIO()
    setup_logging("INFO", "text", [], stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.setLogRecordFactory(saved[2])


def test_addresses_are_reduced_to_their_domain() -> None:
    assert mask_addresses(f"mail from {ERIKA} refused") == "mail from …@buerger.example refused"
    assert mask_addresses("@email_erika=40buerger.example:bridge.test joined") == \
        "@…=40buerger.example:bridge.test joined"
    # Matrix IDs are not addresses.
    for text in ("@anna.admin:stadt.example", "'@anna.admin:stadt.example'",
                 "@slack_t0rathaus_u0anna:bridge.test", "relay 127.0.0.1:25"):
        assert mask_addresses(text) == text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_run_logs_no_content_and_no_addresses(
        bridge_log: io.StringIO, homeserver: Homeserver, database_url: str,
        slack_sim: SlackSimulator, team: Any, sink: SmtpSink,
        admin: MatrixTestClient) -> None:
    tag = uuid.uuid4().hex[:8]
    secret_texts = [f"Slackgeheimnis {tag}", f"Mailgeheimnis {tag}", f"Betreff {tag}",
                    f"Matrixgeheimnis {tag}", f"Slackbearbeitung {tag}"]
    async with running_slack_and_email_bridge(homeserver, database_url, slack_sim, team,
                                              sink) as running:
        bot = homeserver.bot
        room = await linked_room(running, admin)
        localpart = f"amt-{tag}"
        await command(bot, admin, room, f"!bridge link email {localpart}", expect="Linked")
        await command(bot, admin, room, f"!bridge email subscribe {ERIKA} Erika Vertraulich",
                      expect="Subscribed")
        smtp_port = running.smtp_port  # type: ignore[attr-defined]

        ts = await running.sim.post_message(team, CHANNEL, ANNA, text=secret_texts[0])
        await admin.wait_for_event(room, has_body(secret_texts[0]), timeout=15)
        await sink.wait_for(lambda r: secret_texts[0] in plain(r))
        await running.sim.edit_message(team, CHANNEL, ts, secret_texts[4])
        await admin.wait_for_event(room, has_body(secret_texts[4]), timeout=15)

        await send_mail(smtp_port, f"Erika Vertraulich <{ERIKA}>",
                        f"{localpart}@{MAIL_DOMAIN}", secret_texts[2], secret_texts[1])
        await admin.wait_for_event(room, has_body(secret_texts[1]), timeout=20)
        await posted(running.sim, team, secret_texts[1])

        # A mail the bridge refuses: the operator sees that it did, not who sent it.
        def refused() -> None:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
                client.sendmail(ERIKA, [f"niemand-{tag}@{MAIL_DOMAIN}"],
                                f"Subject: x\r\n\r\n{secret_texts[1]}")

        with pytest.raises(smtplib.SMTPRecipientsRefused):
            await asyncio.to_thread(refused)  # (the bridge runs in this event loop)

        await admin.send_text(room, secret_texts[3])
        await posted(running.sim, team, secret_texts[3])
        mailed = (await sink.wait_for(lambda r: secret_texts[3] in plain(r)))[0].message

        # Her mailbox bounces it: a failure the operator must be able to find.
        def bounce() -> None:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
                client.sendmail("", [f"{localpart}@{MAIL_DOMAIN}"],
                                _dsn(mailed, ERIKA, "5.1.1", f"{localpart}@{MAIL_DOMAIN}"))

        await asyncio.to_thread(bounce)

    log = bridge_log.getvalue()
    # The run was logged (else the test would prove nothing).
    assert "receiving mail on" in log and "joined " in log, log[-3000:]
    # The bounce is logged, with the recipient's domain: where to look, not who.
    assert "…@buerger.example failed" in log, log[-3000:]
    leaks = [text for text in secret_texts if text in log]
    assert leaks == [], leaks
    local = ERIKA.split("@")[0]
    for form in (ERIKA, local, local.replace(".", "=2e"), "Vertraulich"):
        assert form not in log, [line for line in log.splitlines() if form in line]
