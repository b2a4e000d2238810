"""Sending mail through the configured relay, with a small pool of reused connections.

A room message to 500 subscribers is 500 mails; opening a connection for each would cost
more than the mails. Failures are sorted for the outbox: 4xx and connection problems are
temporary (retried), 5xx is permanent for that recipient.
"""

from __future__ import annotations

import asyncio
import logging
from email.message import EmailMessage

import aiosmtplib

from bridge.config import SmtpOutConfig
from bridge.core.errors import PermanentError, TemporaryError

log = logging.getLogger("bridge.email.out")


class RelayPool:
    def __init__(self, settings: SmtpOutConfig, local_hostname: str) -> None:
        self.settings = settings
        self.local_hostname = local_hostname
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(settings.max_connections)
        self.last_error: str | None = None

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, local_hostname=self.local_hostname, timeout=60,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
        )
        await client.connect()
        if s.username:
            await client.login(s.username, s.password or "")
        return client

    async def send(self, message: EmailMessage, sender: str, recipient: str) -> str:
        """Send one mail to one recipient; returns the relay's answer."""
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                _refused, answer = await client.send_message(message, sender=sender,
                                                           recipients=[recipient])
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refusal = exc.recipients[0]
                self._keep(client)
                raise self._classify(refusal.code, refusal.message) from exc
            except aiosmtplib.SMTPResponseException as exc:
                self._keep(client)
                raise self._classify(exc.code, exc.message) from exc
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                # The connection is in an unknown state: drop it, try again later.
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                if client is not None:
                    client.close()
                raise TemporaryError(f"mail relay {self.settings.host}:{self.settings.port} "
                                     f"unavailable: {exc}") from exc
            self._keep(client)
            self.last_error = None
            return answer

    def _keep(self, client: aiosmtplib.SMTP | None) -> None:
        if client is not None and client.is_connected:
            self._idle.append(client)

    @staticmethod
    def _classify(code: int, message: str) -> Exception:
        text = f"{code} {message}".strip()
        if 500 <= code < 600:
            return PermanentError(f"the mail relay refused: {text}")
        return TemporaryError(f"the mail relay deferred: {text}")

    async def close(self) -> None:
        for client in self._idle:
            try:
                await client.quit()
            except Exception:
                client.close()
        self._idle.clear()
