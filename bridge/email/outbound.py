"""Sending mail through the configured relay, with a small pool of reused connections.

A room message to 500 subscribers is 500 mails; opening a connection for each would cost
more than the mails. Connections left idle for ``email.smtp_out.idle_seconds`` are closed
with QUIT, before the relay times them out itself.

Failures are sorted for the outbox and for the subscribers' bounce counts:

* the relay refuses *a recipient* (at RCPT, or the message at DATA): 5xx is permanent for
  that recipient (:class:`PermanentError`), 4xx temporary;
* anything else is about *the relay itself*: it cannot be reached, refuses our login (535),
  our sender at MAIL FROM, or TLS fails. That is an outage of the email network, no fault of
  any subscriber: :class:`RelayOutage`, a temporary error, whatever the reply code;
* the recipient's address needs SMTPUTF8 and the relay does not offer it: permanent, but not
  the recipient's mailbox failing either (:class:`Utf8NotOffered`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from email.message import EmailMessage

import aiosmtplib

from bridge.core.errors import PermanentError, TemporaryError
from bridge.email.config import SmtpOutConfig

log = logging.getLogger("bridge.email.out")

QUIT_TIMEOUT = 5.0
# How a connection that the relay closed meanwhile fails on its next use.
_STALE_CONNECTION = (aiosmtplib.SMTPServerDisconnected, ConnectionError)


class RelayOutage(TemporaryError):
    """The relay cannot take mail at all right now; deliveries wait and are retried."""


class Utf8NotOffered(PermanentError):
    """An address needs SMTPUTF8 (a non-ASCII local part) and the relay does not offer it."""


def needs_smtputf8(*addresses: str) -> bool:
    """Whether the envelope needs SMTPUTF8: a non-ASCII local part (a non-ASCII domain is
    written in IDNA form instead, which every relay understands)."""
    return any(not address.rpartition("@")[0].isascii() for address in addresses)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}".strip()
    return f"{exc.__class__.__name__}: {exc}".rstrip(": ")


class RelayPool:
    def __init__(self, settings: SmtpOutConfig, local_hostname: str) -> None:
        self.settings = settings
        self.local_hostname = local_hostname
        # (connection, when it became idle on the loop's clock); the newest is reused first.
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._reaper: asyncio.Task[None] | None = None
        #: What is wrong with the relay as of the last attempt (delivery or probe), or None.
        self.last_error: str | None = None
        #: time.time() of the last attempt that reached a verdict about the relay.
        self.last_checked: float | None = None

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    async def _connect(self) -> aiosmtplib.SMTP:
        """Connected, greeted (EHLO), STARTTLS and logged in as configured."""
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, local_hostname=self.local_hostname, timeout=60,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()  # what the relay offers (SMTPUTF8) is known from here
            if s.username:
                await client.login(s.username, s.password or "")
        except BaseException:
            client.close()  # a half-open connection (greeted, login refused) is not kept
            raise
        return client

    def _outage(self, exc: BaseException) -> RelayOutage:
        detail = _describe(exc)
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            detail += " (check email.smtp_out.username and password)"
        elif isinstance(exc, aiosmtplib.SMTPSenderRefused):
            detail += f" (the relay refuses to send as {exc.sender})"
        self._noted(detail)
        return RelayOutage(f"mail relay {self.where} unusable: {detail}")

    def _noted(self, error: str | None) -> None:
        if error and error != self.last_error:
            log.warning("mail relay %s: %s", self.where, error)
        elif error is None and self.last_error is not None:
            log.warning("mail relay %s works again", self.where)
        self.last_error = error
        self.last_checked = time.time()

    async def send(self, message: EmailMessage | bytes, sender: str, recipient: str) -> str:
        """Send one mail to one recipient; returns the relay's answer. ``message`` may be
        flattened already (compose's ``MailTemplate``), for addresses that need no
        SMTPUTF8: one room message to thousands is flattened once, not once per mail."""
        async with self._slots:
            client = self._take_idle()
            if client is not None:
                try:
                    return await self._send_on(client, message, sender, recipient)
                except _STALE_CONNECTION:
                    # The relay had closed this pooled connection (its idle timeout is
                    # shorter than ours): no outage, just try once on a fresh one.
                    log.info("mail relay %s had closed a pooled connection; reconnecting",
                             self.where)
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    raise self._outage(exc) from exc
            try:
                return await self._send_on(None, message, sender, recipient)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                raise self._outage(exc) from exc

    async def _send_on(self, client: aiosmtplib.SMTP | None, message: EmailMessage | bytes,
                       sender: str, recipient: str) -> str:
        """One attempt on ``client`` (a new connection when None). What is about the
        recipient is raised as Permanent/TemporaryError; what is about the relay as the
        library's exception, for `send` to sort; the connection is closed then."""
        try:
            if client is None:
                client = await self._connect()
            if needs_smtputf8(sender, recipient) and not client.supports_extension("smtputf8"):
                self._keep(client)
                self._noted(None)  # the relay answers; this address is the problem
                raise Utf8NotOffered(
                    f"{recipient} needs a mail relay that offers SMTPUTF8 (an address "
                    f"with non-ASCII characters), and {self.where} does not",
                    hint="Have SMTPUTF8 enabled on the relay (Postfix: smtputf8_enable), "
                         "or subscribe an address of plain ASCII letters instead.")
            if isinstance(message, bytes):
                # The envelope send_message gives an ASCII mail (the bytes are its flattened
                # form already, see compose.flatten).
                options = ["BODY=8BITMIME"] if client.supports_extension("8bitmime") else []
                if needs_smtputf8(sender, recipient):
                    options.append("SMTPUTF8")
                _refused, answer = await client.sendmail(sender, [recipient], message,
                                                         mail_options=options)
            else:
                _refused, answer = await client.send_message(message, sender=sender,
                                                           recipients=[recipient])
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusal = exc.recipients[0]
            self._keep(client)
            self._noted(None)
            raise self._about_recipient(refusal.code, refusal.message) from exc
        except aiosmtplib.SMTPDataError as exc:
            # The relay read the mail and refused it: this message, this recipient.
            self._keep(client)
            self._noted(None)
            raise self._about_recipient(exc.code, exc.message) from exc
        except Utf8NotOffered:
            raise
        except BaseException:
            # Connect, EHLO, STARTTLS, AUTH, MAIL FROM, a dropped connection (the relay's
            # problem), a cancellation or a bug: the connection is in an unknown state.
            if client is not None:
                client.close()
            raise
        self._keep(client)
        self._noted(None)
        return answer

    async def probe(self) -> str:
        """Connect, EHLO, STARTTLS and log in as deliveries do, then QUIT. What the relay
        offers, or :class:`RelayOutage` saying what is wrong (and noted in ``last_error``)."""
        try:
            client = await self._connect()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise self._outage(exc) from exc
        try:
            offers = sorted(name.upper() for name in client.esmtp_extensions)
            tls = {"none": "no TLS", "starttls": "STARTTLS", "tls": "TLS"}[
                self.settings.security]
            login = f"logged in as {self.settings.username}" if self.settings.username \
                else "no login"
            detail = f"{self.where} answers ({tls}, {login}; offers {' '.join(offers)})"
        finally:
            await self._quit(client)
        self._noted(None)
        return detail

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        limit = self.settings.idle_seconds
        now = asyncio.get_running_loop().time()
        while self._idle:
            client, since = self._idle.pop()
            if client.is_connected and now - since < limit:
                return client
            client.close()  # the reaper had not come round to it yet
        return None

    def _keep(self, client: aiosmtplib.SMTP | None) -> None:
        if client is None or not client.is_connected:
            return
        self._idle.append((client, asyncio.get_running_loop().time()))
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._close_idle(), name="smtp-idle-reaper")

    async def _close_idle(self) -> None:
        """QUIT connections idle for longer than idle_seconds, until none is left."""
        loop = asyncio.get_running_loop()
        limit = self.settings.idle_seconds
        while self._idle:
            oldest = min(since for _, since in self._idle)
            wait = oldest + limit - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            now = loop.time()
            expired = [client for client, since in self._idle if now - since >= limit]
            self._idle = [(c, since) for c, since in self._idle if now - since < limit]
            for client in expired:
                await self._quit(client)

    @staticmethod
    async def _quit(client: aiosmtplib.SMTP) -> None:
        try:
            await asyncio.wait_for(client.quit(), QUIT_TIMEOUT)
        except Exception:
            client.close()

    @staticmethod
    def _about_recipient(code: int, message: str) -> Exception:
        text = f"{code} {message}".strip()
        if 500 <= code < 600:
            return PermanentError(f"the mail relay refused: {text}")
        return TemporaryError(f"the mail relay deferred: {text}")

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        idle, self._idle = self._idle, []
        for client, _ in idle:
            await self._quit(client)
