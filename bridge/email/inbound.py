"""The SMTP server that receives mail for room addresses (aiosmtpd, in the bridge's loop).

SMTP's own answers carry the guarantees: an unknown recipient is refused at RCPT (550 5.1.1,
so this is no open relay), an oversized mail at DATA (552), a problem on our side with
451 4.3.0 so that the sending server keeps the mail and retries; 250 only once the mail is
posted or durably queued.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from bridge import metrics
from bridge.email.addresses import ForgedAddress, Recipient, parse_recipient
from bridge.email.aiosmtpd_data import SmtpProtocol, SpooledMail

if TYPE_CHECKING:
    from bridge.email.connector import EmailConnector

log = logging.getLogger("bridge.email.in")

TEMPORARY = "451 4.3.0 Temporary problem on the bridge; please try again later"


@dataclass
class Target:
    """A recipient accepted at RCPT time: which room, and which thread or command."""

    address: str
    recipient: Recipient
    room_id: str
    link_id: int
    settings: dict[str, Any] = field(default_factory=dict)


class _Handler:
    def __init__(self, connector: EmailConnector) -> None:
        self.connector = connector

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        c = self.connector
        try:
            recipient = parse_recipient(address, c.domain, c.secret)
        except ForgedAddress:
            return f"550 5.7.1 <{address}>: invalid or forged reply address"
        if recipient is None:
            return f"550 5.1.1 <{address}>: no such recipient here (relaying denied)"
        try:
            link = await c.link_for(recipient.localpart)
        except Exception:
            log.exception("cannot look up %s", address)
            return TEMPORARY
        if link is None:
            return f"550 5.1.1 <{address}>: no such room address"
        targets: list[Target] = getattr(envelope, "targets", [])
        targets.append(Target(address, recipient, link.room_id, link.id, link.settings))
        envelope.targets = targets  # type: ignore[attr-defined]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # As received from SmtpProtocol, never copied (a copy would cost the mail's size): a
        # bytearray, or for a mail over its spool threshold a SpooledMail, still in its temp
        # file, which SmtpProtocol closes after this handler.
        raw: bytes | bytearray | SpooledMail = envelope.original_content or b""
        targets: list[Target] = getattr(envelope, "targets", [])
        try:
            return await self.connector.receive(raw, targets, str(envelope.mail_from or ""))
        except Exception:
            log.exception("could not take a mail for %s", [t.address for t in targets])
            metrics.FAILURES.labels(network="email", direction="in", stage="receive").inc()
            return TEMPORARY


class SmtpServer:
    def __init__(self, connector: EmailConnector) -> None:
        self.connector = connector
        self.handler = _Handler(connector)
        self._server: asyncio.base_events.Server | None = None

    def _tls_context(self) -> ssl.SSLContext | None:
        settings = self.connector.settings.smtp_in
        if not (settings.tls_cert and settings.tls_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        return context

    async def start(self) -> None:
        settings = self.connector.settings.smtp_in
        tls = self._tls_context()

        def factory() -> SMTP:
            return SmtpProtocol(self.handler, hostname=self.connector.domain, decode_data=False,
                        data_size_limit=settings.max_message_size, enable_SMTPUTF8=True,
                        tls_context=tls, require_starttls=False, ident="matrix-hub-bridge")

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(factory, settings.hostname, settings.port)
        log.info("receiving mail on %s:%d%s", settings.hostname, settings.port,
                 " (STARTTLS offered)" if tls else "")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
