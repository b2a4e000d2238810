"""A real SMTP server that keeps what it receives: the "mailboxes" of staff on email.

It runs on aiosmtpd in the test's event loop. Failures can be switched on to play a relay
that is down (connection refused), answers 4xx (try later) or 5xx for a recipient.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from testkit.synapse import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    arrived: float = field(default_factory=time.time)  # wall clock, when DATA was accepted

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=policy.default)  # type: ignore[return-value]


@dataclass
class SmtpSink:
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    # recipient (lower case) -> SMTP reply to give at RCPT, e.g. "550 5.1.1 no such user"
    refuse: dict[str, str] = field(default_factory=dict)
    connections: int = 0
    _server: asyncio.base_events.Server | None = None
    _open: list[SMTP] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def start(self) -> None:
        sink = self

        class Handler:
            async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                                  address: str, options: list[str]) -> str:
                reply = sink.refuse.get(address.lower())
                if reply:
                    return reply
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: SMTP, session: Session,
                                  envelope: Envelope) -> str:
                async with sink._arrived:
                    sink.received.append(Received(str(envelope.mail_from),
                                                  list(envelope.rcpt_tos),
                                                  bytes(envelope.original_content or b"")))
                    sink._arrived.notify_all()
                return "250 Message accepted"

        def factory() -> SMTP:
            self.connections += 1
            protocol = SMTP(Handler(), hostname="sink.test", decode_data=False)
            self._open = [p for p in self._open if p.transport is None
                          or not p.transport.is_closing()]
            self._open.append(protocol)
            return protocol

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(factory, self.host, self.port)

    async def stop(self, *, drop_connections: bool = False) -> None:
        """Stop listening. ``drop_connections`` also cuts the connections clients hold
        open (a relay that went down, not one that stopped taking new connections)."""
        if self._server is not None:
            self._server.close()
            if drop_connections:
                for protocol in self._open:
                    if isinstance(protocol.transport, asyncio.Transport):
                        protocol.transport.abort()
                self._open.clear()
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, predicate: Any, count: int = 1,
                       timeout: float = 15) -> list[Received]:
        async def find() -> list[Received]:
            async with self._arrived:
                while True:
                    found = [r for r in self.received if predicate(r)]
                    if len(found) >= count:
                        return found
                    await self._arrived.wait()

        return await asyncio.wait_for(find(), timeout)

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address.lower() in (a.lower() for a in r.rcpt_tos)]
