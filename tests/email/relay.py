"""A mail relay as strict as a real one, for the bridge's outgoing side: it can require a
login (and refuse it with 535), refuse our sender at MAIL FROM, offer SMTPUTF8 or not, and
it counts connections, so a test sees whether the bridge closes them (and how)."""

from __future__ import annotations

import asyncio
import warnings
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from testkit.smtp_sink import Received, SmtpSink


@dataclass
class StrictRelay(SmtpSink):
    smtputf8: bool = False
    #: Accepted (username, password); None: no login needed.
    login: tuple[str, str] | None = None
    #: The reply to MAIL FROM while set, e.g. "553 5.7.1 not allowed to send as this sender".
    refuse_sender: str | None = None
    #: Seconds the relay waits for a command before it closes the connection (421).
    timeout: float = 300
    open_connections: int = 0
    quits: int = 0
    mail_options: list[list[str]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        relay = self

        class Handler:
            async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                                  address: str, options: list[str]) -> str:
                if relay.refuse_sender:
                    return relay.refuse_sender
                envelope.mail_from = address
                envelope.mail_options.extend(options)
                return "250 OK"

            async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                                  address: str, options: list[str]) -> str:
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: SMTP, session: Session,
                                  envelope: Envelope) -> str:
                async with relay._arrived:
                    relay.mail_options.append(list(envelope.mail_options))
                    relay.received.append(Received(str(envelope.mail_from),
                                                   list(envelope.rcpt_tos),
                                                   bytes(envelope.original_content or b"")))
                    relay._arrived.notify_all()
                return "250 Message accepted"

            async def handle_QUIT(self, server: SMTP, session: Session,
                                  envelope: Envelope) -> str:
                relay.quits += 1
                relay._changed.set()
                return "221 Bye"

        def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                         data: Any) -> AuthResult:
            given = (data.login.decode(), data.password.decode()) \
                if isinstance(data, LoginPassword) else None
            return AuthResult(success=given == relay.login, handled=False)

        class Counted(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                relay.connections += 1
                relay.open_connections += 1
                relay._changed.set()
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                relay.open_connections -= 1
                relay._changed.set()
                super().connection_lost(error)

        def factory() -> SMTP:
            with warnings.catch_warnings():  # AUTH without TLS: fine on the loopback
                warnings.simplefilter("ignore", UserWarning)
                return Counted(Handler(), hostname="relay.test", decode_data=False,
                               timeout=self.timeout,
                               enable_SMTPUTF8=self.smtputf8,
                               auth_required=self.login is not None, auth_require_tls=False,
                               authenticator=authenticate if self.login else None)

        self._server = await asyncio.get_running_loop().create_server(
            factory, self.host, self.port)

    async def until(self, condition: Any, timeout: float = 15) -> None:
        """Wait until ``condition()`` holds (connection counts change without a mail)."""
        async def watch() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(watch(), timeout)
