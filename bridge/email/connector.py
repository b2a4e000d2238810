"""The email connector: room addresses, subscribers, and mail both ways.

Inbound, a mail to ``bauamt@<email.domain>`` is posted into the linked room as the sender's
puppet (after the sender is authenticated and allowed by the room's policy). Outbound, every
message of the room is mailed to each active subscriber except its own author, threaded so
that replies come back into the same Matrix thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import logging
import re
import time
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from bridge import json_codec, metrics
from bridge.admin.audit import Actor
from bridge.config import Config
from bridge.core.cache import BoundedCache
from bridge.core.connector import (
    Connector,
    Health,
    LinkTarget,
    PersonRef,
    SubCommand,
    media_msgtype,
)
from bridge.core.errors import CommandError, PermanentError, UsageError
from bridge.core.event_size import CONTENT_LIMIT, too_large
from bridge.core.hub import RemotePart
from bridge.core.origin import ORIGIN_KEY, Origin, read_origin
from bridge.db import queues, store
from bridge.db.queues import Delivery, NewDelivery
from bridge.db.store import LinkInfo
from bridge.email import actions, person_code
from bridge.email import api as email_api
from bridge.email import store as email_store
from bridge.email.addresses import (
    MAX_ROOM_LOCALPART_LENGTH,
    clean_display_name,
    is_our_message_id,
    is_valid_room_localpart,
    make_reply_address,
    make_unsubscribe_address,
    message_id_for,
    new_topic_subject,
    parse_recipient,
    reply_subject,
    thread_key_for,
    verify_unsubscribe,
)
from bridge.email.aiosmtpd_data import SpooledMail
from bridge.email.auth import DnsFunc, authenticate
from bridge.email.config import EmailConfig
from bridge.email.inbound import SmtpServer, Target
from bridge.email.outbound import RelayOutage, RelayPool, Utf8NotOffered, needs_smtputf8
from bridge.email.text import text_to_html

# Mail parsing (bridge/email/parse), composing (compose.py) and HTML cleaning (sanitize.py)
# are imported when the first mail comes in or goes out: with lxml, inscriptis and nh3 they
# are several MB of resident memory that a bridge whose rooms get no mail never needs (issue
# 15: idle RSS).
if TYPE_CHECKING:
    from bridge.admin.api.routes import Route
    from bridge.core.hub import Hub
    from bridge.db.engine import Reader
    from bridge.email.compose import LinkedFile, MailTemplate, OutgoingAttachment
    from bridge.email.parse import ParsedMail

log = logging.getLogger("bridge.email")

NETWORK = "email"
_ADDRESS = re.compile(r"^[^@\s<>\"]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
MEDIA_MSGTYPES = {"m.image": "image", "m.file": "file", "m.video": "video", "m.audio": "audio"}
PARSE_INLINE_MAX = 256 * 1024  # bytes of mail parsed in the event loop rather than a thread
PROBE_SECONDS = 600.0
PROBE_SECONDS_IN_OUTAGE = 60.0
NAME_CACHE_ITEMS = 10_000
NAME_CACHE_SECONDS = 3600.0
FAN_OUT_SLICE = 200  # subscribers' outbox rows written per statement
# Shared copies of fan-out mails kept (each as large as its mail, attachments included):
# a fan-out's deliveries run close together, a few rooms' fan-outs may interleave.
TEMPLATE_CACHE_ITEMS = 4
TEMPLATE_CACHE_SECONDS = 600.0


_MESSAGE_ID_FIELD = re.compile(rb"(?im)^message-id[ \t]*:")


def _content_hash(raw: bytes | bytearray | SpooledMail) -> str:
    return raw.sha256() if isinstance(raw, SpooledMail) else hashlib.sha256(raw).hexdigest()


def _header_end(raw: bytes | bytearray) -> int:
    end = raw.find(b"\r\n\r\n")
    end = raw.find(b"\n\n") if end < 0 else end
    return len(raw) if end < 0 else end


def _headers_of(raw: bytes | bytearray | SpooledMail) -> EmailMessage:
    """Only the header block: sender authentication needs no body, and parsing a 20 MB
    body a second time would cost hundreds of MB."""
    end = raw.find(b"\r\n\r\n")
    end = raw.find(b"\n\n") if end < 0 else end
    if isinstance(raw, SpooledMail):
        header = bytes(raw.read(0, len(raw) if end < 0 else end + 2))
    else:
        header = bytes(raw if end < 0 else raw[:end + 2])
    return message_from_bytes(header, policy=policy.default)  # type: ignore[return-value]


# The SMTP libraries' own loggers: aiosmtpd ("mail.log") logs every command it receives,
# MAIL FROM and RCPT TO with their addresses, at INFO; aiosmtplib may log its side.
SMTP_LIBRARY_LOGGERS = ("mail.log", "aiosmtplib")


def quiet_smtp_library_logs(bridge_level: str) -> None:
    """The SMTP dialogue line by line only when the bridge logs at DEBUG; otherwise the
    libraries' warnings and errors are enough (the bridge logs each mail once itself)."""
    debugging = logging.getLevelName(bridge_level) <= logging.DEBUG
    for name in SMTP_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debugging else logging.WARNING)


class _Unwritable(Exception):
    """A fan-out's mail cannot be written (a malformed bridge-side value, see compose)."""


def _unwritable(recipient: str, exc: Exception) -> PermanentError:
    return PermanentError(f"could not write the mail to {recipient}: {exc}")


def _strip_brackets(message_id: str) -> str:
    return message_id.strip().strip("<>")



class EmailConnector(Connector):
    network = NETWORK
    display_name = "Email"
    # One room address, many subscribers: a subscriber's mail goes to the others.
    relays_within_link = True
    max_links_per_room = 1
    links_people = True
    me_words = "<address>"

    def __init__(self, config: Config) -> None:
        settings = config.section(EmailConfig)
        super().__init__(settings.puppet_prefix, config.homeserver.domain)
        self.config = config
        self.settings = settings
        self.domain = settings.domain.lower()
        self.secret = settings.token_secret.encode()
        self.relay = RelayPool(settings.smtp_out, local_hostname=self.domain)
        self.server = SmtpServer(self)
        self._sending = asyncio.Semaphore(settings.smtp_out.max_connections)
        self._hub: Hub | None = None
        self._rooms_told_of_outage: set[str] = set()
        # DKIM key look-ups (name -> TXT record) for email.sender_auth: verify; None is the
        # system's DNS. Blocking either way: called in a thread.
        self.dns_lookup: DnsFunc | None = None
        self._probing: asyncio.Task[None] | None = None
        # (room, user) -> display name in the From of mails. Bounded: a big deployment has
        # many members; aged: a rename the bridge missed is picked up within the hour.
        self._names: BoundedCache[tuple[str, str], str] = BoundedCache(
            max_items=NAME_CACHE_ITEMS, max_age_seconds=NAME_CACHE_SECONDS)
        # A fan-out's payload without its recipient -> the shared copy of its mail.
        self._templates: BoundedCache[str, asyncio.Future[MailTemplate]] = BoundedCache(
            max_items=TEMPLATE_CACHE_ITEMS, max_age_seconds=TEMPLATE_CACHE_SECONDS)

    @property
    def hub(self) -> Hub:
        assert self._hub is not None, "the email connector is not started"
        return self._hub

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, hub: Hub) -> None:
        self._hub = hub
        quiet_smtp_library_logs(self.config.logging.level)
        await self.server.start()
        self._probing = asyncio.create_task(self._probe_relay(), name="email-relay-probe")

    async def stop(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing
        await self.server.stop()
        await self.relay.close()

    async def _probe_relay(self) -> None:
        """Ask the relay now and then whether it answers, so health is true between mails too
        (often while it is down, rarely while deliveries show it works)."""
        while True:
            checked = self.relay.last_checked
            if checked is None or time.time() - checked >= PROBE_SECONDS / 2:
                with contextlib.suppress(RelayOutage):  # noted in relay.last_error
                    await self.relay.probe()
            await asyncio.sleep(PROBE_SECONDS if self.relay.last_error is None
                                else PROBE_SECONDS_IN_OUTAGE)

    def health(self) -> Health:
        s = self.settings
        where = f"receiving on {s.smtp_in.hostname}:{s.smtp_in.port}, relay " \
                f"{s.smtp_out.host}:{s.smtp_out.port}"
        if self.relay.last_error:
            return Health(False, f"{where} does not take mail: {self.relay.last_error}; "
                                 "mail to subscribers waits")
        if self.relay.last_checked is None:
            return Health(True, f"{where} (not asked yet)")
        return Health(True, f"{where} answers")

    # --- links and commands --------------------------------------------------------------

    def address_of(self, localpart: str) -> str:
        return f"{localpart}@{self.domain}"

    async def link_for(self, localpart: str) -> LinkInfo | None:
        # (A plain connection: asked at every RCPT, where an ORM session costs more than
        # the look-up.)
        async with self.hub.db.reading() as connection:
            return await store.link_by_remote(connection, NETWORK, localpart.lower())

    async def resolve_person(self, hub: Hub, words: list[str]) -> PersonRef:
        """An email address, lower case: as the email puppets know it
        (:meth:`puppet_user_id` of the sender's address). A room's own address names
        nobody."""
        if len(words) != 1:
            raise CommandError("Name one email address, like anna.schmidt@stadt.example.")
        typed = words[0]
        try:
            address = actions.checked_address(typed, self.domain)
        except CommandError:
            if typed.strip().strip("<>").lower().endswith("@" + self.domain):
                raise CommandError(f"`{typed}` is an address of the bridge's rooms "
                                   f"(@{self.domain}), not a person's.") from None
            raise CommandError(f"`{typed}` is not an email address (like "
                               "anna.schmidt@stadt.example).") from None
        return PersonRef(remote_id=address, label=address)

    async def send_person_code(self, hub: Hub, person: PersonRef, code: str,
                               matrix_user_id: str) -> str:
        """A plain mail from the bridge's no-reply address (``me email``)."""
        from bridge.people.self_service import CODE_LIFETIME_SECONDS

        message = person_code.code_mail(
            domain=self.domain, address=person.remote_id, code=code,
            matrix_user_id=matrix_user_id, bot_mxid=hub.bot_mxid,
            minutes=CODE_LIFETIME_SECONDS // 60)
        return await person_code.send_code_mail(self.relay, message, domain=self.domain,
                                                address=person.remote_id)

    async def resolve_link(self, hub: Hub, room_id: str, remote_id: str,
                           args: list[str]) -> LinkTarget:
        localpart = remote_id.lower()
        if "@" in localpart:
            name, _, domain = localpart.partition("@")
            if domain != self.domain:
                raise CommandError(f"Room addresses end in `@{self.domain}`; give just the "
                                   f"part before the @, e.g. `{name}`.")
            localpart = name
        # The address code's own validator: whatever is linked here can be mailed later.
        if args or not is_valid_room_localpart(localpart):
            typed = " ".join([remote_id, *args])
            raise CommandError(
                f"`{typed}` cannot be a room address: use one word of a-z, 0-9, '.', '_' and "
                f"'-' (up to {MAX_ROOM_LOCALPART_LENGTH} characters, dots only between "
                "letters or digits), e.g. `bauamt`.")
        return LinkTarget(remote_id=localpart, remote_name=self.address_of(localpart),
                          settings={"policy": "subscribers"})

    # --- one-click unsubscribe (RFC 8058), when bridge.public_url is set ----------------

    def unsubscribe_url(self, localpart: str, subscriber: str) -> str | None:
        base = self.config.bridge.public_url
        if not base:
            return None
        address = make_unsubscribe_address(localpart, self.domain, subscriber, self.secret)
        token = address.split("+", 1)[1].split("@", 1)[0]
        query = urlencode({"room": localpart, "address": subscriber, "token": token})
        return f"{base}/_bridge/email/unsubscribe?{query}"

    def http_routes(self) -> list[tuple[str, str, Any]]:
        return [("GET", "/_bridge/email/unsubscribe", self._unsubscribe_page),
                ("POST", "/_bridge/email/unsubscribe", self._unsubscribe_post)]

    def _unsubscribe_request(self, request: web.Request) -> tuple[str, str, str] | None:
        """(room, address, token) of a valid one-click link, else None (whatever is wrong
        with it: a link from a mail is untrusted input)."""
        room, address = request.query.get("room", ""), request.query.get("address", "")
        token = request.query.get("token", "")
        try:
            recipient = parse_recipient(f"{room}+{token}@{self.domain}", self.domain,
                                        self.secret) if room and token else None
        except Exception:
            return None
        if recipient is None or recipient.kind != "unsubscribe" or not verify_unsubscribe(
                room, address, recipient.thread_key or "", self.secret):
            return None
        return room, address, token

    async def _unsubscribe_page(self, request: web.Request) -> web.Response:
        """GET only shows a button: link scanners open every URL, and must not unsubscribe."""
        found = self._unsubscribe_request(request)
        if found is None:
            return web.Response(status=400, text="This unsubscribe link is not valid.")
        room, address, _ = found
        page = (f"<!doctype html><meta charset=utf-8><title>Unsubscribe</title>"
                f"<p>Stop sending {html.escape(self.address_of(room))} to "
                f"{html.escape(address)}?</p><form method=post>"
                f"<input type=hidden name=List-Unsubscribe value=One-Click>"
                f"<button>Unsubscribe</button></form>")
        return web.Response(text=page, content_type="text/html")

    async def _unsubscribe_post(self, request: web.Request) -> web.Response:
        found = self._unsubscribe_request(request)
        if found is None:
            return web.Response(status=400, text="This unsubscribe link is not valid.")
        room, address, _ = found
        link = await self.link_for(room)
        if link is not None:
            async with self.hub.db.transaction() as session:
                removed = await email_store.unsubscribe(session, link.room_id, address)
            if removed:
                await self.hub.enqueue([self.hub.notice(
                    link.room_id, f"{address} unsubscribed (one-click link).")])
        return web.Response(text=f"{address} will no longer receive {self.address_of(room)}.")

    # --- the provisioning API (bridge/email/api.py) ---------------------------------------

    def api_routes(self) -> list[Route]:
        return email_api.routes(self)

    def api_link_schema(self) -> dict[str, Any]:
        return email_api.LINK_SCHEMA

    def api_link_request(self, body: dict[str, Any]) -> tuple[str, list[str]]:
        return str(body["localpart"]), []

    def api_unlink_selector(self, body: dict[str, Any]) -> str | None:
        # A room has one address: naming it is optional, and checked when given.
        localpart = str(body.get("localpart") or "").lower()
        return localpart.removesuffix("@" + self.domain) or None

    def api_link_fields_schema(self) -> dict[str, Any]:
        return email_api.LINK_FIELDS_SCHEMA

    def api_link_fields(self, link: LinkInfo) -> dict[str, Any]:
        return {"address": link.remote_name or self.address_of(link.remote_id),
                "localpart": link.remote_id}

    def api_room_schema(self) -> dict[str, Any] | None:
        return email_api.ROOM_SCHEMA

    async def api_room_details(self, hub: Hub, room_id: str,
                               links: list[LinkInfo]) -> dict[str, Any] | None:
        link = next((lk for lk in links if lk.network == NETWORK), None)
        return None if link is None else await email_api.room_state(hub, room_id, link)

    def commands(self) -> list[SubCommand]:
        return [
            SubCommand("subscribe", "<address> [name...]",
                       "mail this room to an address, which may then write in",
                       self._cmd_subscribe),
            SubCommand("unsubscribe", "<address>", "stop mailing this room to an address",
                       self._cmd_unsubscribe),
            SubCommand("list", "", "this room's address, its subscribers and who may write in",
                       self._cmd_list),
            SubCommand("policy", "subscribers|domain <domain>|open",
                       "who besides subscribers may write to this room's address",
                       self._cmd_policy),
        ]

    async def _cmd_subscribe(self, hub: Hub, room_id: str, sender: str,
                             args: list[str]) -> str:
        if not args:
            raise UsageError()
        outcome = await actions.subscribe(hub, Actor.command(sender), room_id, args[0],
                                          " ".join(args[1:]), self.domain)
        return outcome.message

    async def _cmd_unsubscribe(self, hub: Hub, room_id: str, sender: str,
                               args: list[str]) -> str:
        if len(args) != 1:
            raise UsageError()
        return (await actions.unsubscribe(hub, Actor.command(sender), room_id, args[0])).message

    async def _cmd_list(self, hub: Hub, room_id: str, sender: str, args: list[str]) -> str:
        link = await actions.room_link(hub, room_id)
        async with hub.db.sessions() as session:
            subs = await email_store.subscribers(session, room_id)
        policy, domain = actions.policy_of(link)
        shown = f"domain {domain}" if domain else policy
        lines = [f"**{link.remote_name}** (who may write in: {shown})"]
        if not subs:
            lines.append("- no subscribers yet")
        for sub in subs:
            name = f"{sub.display_name} " if sub.display_name else ""
            state = "" if sub.status == "active" else \
                f" — paused after {sub.bounces} failed deliveries"
            lines.append(f"- {name}<{sub.address}>{state}")
        return "\n".join(lines)

    async def _cmd_policy(self, hub: Hub, room_id: str, sender: str, args: list[str]) -> str:
        await actions.room_link(hub, room_id)
        if not args or args[0] not in actions.POLICIES or len(args) != (
                2 if args[0] == "domain" else 1):
            raise UsageError()
        try:
            outcome = await actions.set_policy(hub, Actor.command(sender), room_id, args[0],
                                               args[1] if len(args) == 2 else None)
        except CommandError as exc:
            raise UsageError(str(exc)) from None
        return outcome.message

    # --- inbound: a mail arrived over SMTP -----------------------------------------------

    async def receive(self, raw: bytes | bytearray | SpooledMail, targets: list[Target],
                      mail_from: str) -> str:
        """Handle one mail for the accepted recipients; returns the SMTP answer.

        ``raw`` may be the bytearray the SMTP server collected the mail in: it is read, never
        changed, and not copied (a big mail would take its size again). A big mail comes in
        its temp file (`SpooledMail`) and is read from there in pieces; OSError where that
        file cannot be read (the SMTP server answers 451: the sender tries again).
        """
        from bridge.email.parse import MalformedMail, parse_message

        digest: str | None = None
        if isinstance(raw, SpooledMail) and self.settings.sender_auth == "verify":
            # DKIM hashes the whole body after the parse: the mail read back in one piece.
            raw = await asyncio.to_thread(raw.read_back)
        try:
            # Parsing a big mail takes a while; in a thread it does not stall the bridge. A
            # small one (a few ms) costs less right here than the hand-over to a thread and
            # back, and than the two threads taking turns at the interpreter meanwhile.
            if len(raw) <= PARSE_INLINE_MAX and not isinstance(raw, SpooledMail):
                mail = parse_message(raw)
            else:
                mail, digest = await asyncio.to_thread(self._parse_big, raw)
        except MalformedMail as exc:
            return f"550 5.6.0 The message could not be read: {exc}"
        if mail.bounce is not None:
            await self._handle_bounce(mail)
            return "250 2.0.0 Delivery report received"
        if mail.auto_reply:
            log.info("dropped an automatic reply from %s: %s", mail.from_address,
                     mail.auto_reply)
            return "250 2.0.0 Automatic reply dropped"
        if mail.message_id and is_our_message_id(f"<{mail.message_id}>", self.domain):
            log.warning("dropped a mail loop: our own message %s came back", mail.message_id)
            return "250 2.0.0 Loop detected; dropped"
        if not mail.from_address or not _ADDRESS.match(mail.from_address):
            return "550 5.1.7 The message has no valid From address"
        mode = self.settings.sender_auth
        if mode == "verify":
            assert not isinstance(raw, SpooledMail)  # (read back above)
            # DNS look-ups and hashing up to the whole mail: in a thread, so the bridge
            # does not stall meanwhile.
            verdict = await asyncio.to_thread(authenticate, mode, None, bytes(raw),
                                              mail.from_address, self.settings.authserv_id,
                                              self.dns_lookup)
        else:
            verdict = authenticate(
                mode, _headers_of(raw) if mode == "authentication_results" else None,
                b"", mail.from_address, self.settings.authserv_id)
        if not verdict.ok:
            log.warning("refused mail claiming to be from %s: %s", mail.from_address,
                        verdict.reason)
            return ("550 5.7.1 The sender could not be authenticated "
                    f"({verdict.reason}); the message was not posted")
        refused: list[str] = []
        for target in targets:
            if target.recipient.kind == "unsubscribe":
                await self._unsubscribe_by_mail(target, mail)
            elif not await self._post(target, mail, raw, digest):
                refused.append(target.address)
        if refused and len(refused) == len(targets):
            return (f"550 5.7.1 Sorry, {mail.from_address} may not write to "
                    f"{', '.join(refused)}: only its subscribers can. Ask someone in the "
                    "room to subscribe you.")
        return "250 2.0.0 Message accepted for the room"

    def _parse_big(self, raw: bytes | bytearray | SpooledMail) -> tuple[ParsedMail, str | None]:
        """A big mail parsed (in a thread) with its attachments decoded into its own buffer
        (``consume``: a 20 MB attachment then needs no 20 MB beside the 27 MB mail), where
        nothing reads the mail's body afterwards: not when DKIM verifies it. Also the
        content hash that names a mail without a Message-ID, taken before the buffer
        changes. (A Message-ID too garbled to read is rare; that mail's name is then the
        hash of the changed buffer, which the same mail always changes in the same way.)
        A mail in its temp file is read from there in pieces, its attachments decoded into
        buffers of their own; the file does not change, and its hash is the mail's."""
        from bridge.email.parse import MalformedMail, parse_message

        if isinstance(raw, SpooledMail):
            try:
                mail = parse_message(raw, consume=True)
            except MalformedMail:
                raw.raise_read_error()  # not the sender's fault: 451, not 550
                raise
            raw.raise_read_error()  # (the parser may have made do without what it read)
            return mail, None if mail.message_id else raw.sha256()
        consume = isinstance(raw, bytearray) and self.settings.sender_auth != "verify"
        digest = None
        if consume and not _MESSAGE_ID_FIELD.search(raw, 0, _header_end(raw)):
            digest = hashlib.sha256(raw).hexdigest()
        return parse_message(raw, consume=consume), digest

    @staticmethod
    def _may_write(target: Target, address: str,
                   subscriber: email_store.Subscriber | None) -> bool:
        policy = target.settings.get("policy", "subscribers")
        if policy == "open" or subscriber is not None:
            return True
        return policy == "domain" and address.lower().endswith(
            "@" + str(target.settings.get("policy_domain")))

    async def _unsubscribe_by_mail(self, target: Target, mail: ParsedMail) -> None:
        token = target.recipient.thread_key or ""
        if not verify_unsubscribe(target.recipient.localpart, mail.from_address, token,
                                  self.secret):
            log.warning("unsubscribe mail from %s does not match its token", mail.from_address)
            return
        async with self.hub.db.transaction() as session:
            removed = await email_store.unsubscribe(session, target.room_id, mail.from_address)
        if removed:
            await self.hub.enqueue([self.hub.notice(
                target.room_id, f"{mail.from_address} unsubscribed by mail.")])

    @staticmethod
    async def _thread_for(session: Reader, target: Target, mail: ParsedMail) -> str | None:
        """Message-ID of the mail that roots the Matrix thread this mail belongs to."""
        localpart = target.recipient.localpart
        if target.recipient.kind == "reply" and target.recipient.thread_key:
            thread = await email_store.get_thread(session, target.recipient.thread_key)
            if thread is not None and thread.room_id == target.room_id:
                return thread.root_message_id
        refs = [*reversed(mail.in_reply_to), *reversed(mail.references)]
        for ref in refs:
            mapped = await store.mappings_for_remote(session, NETWORK, localpart, ref)
            if mapped:
                root_event = mapped[0].thread_root or mapped[0].event_id
                return await email_store.mailed_as(session, root_event, NETWORK) or ref
        # A mail that started a thread is known from the moment it was queued; its Matrix
        # event (the mapping) only once it is posted, which a quick reply can overtake.
        for ref in refs:
            # (Such a thread's key is made from that Message-ID: a primary-key look-up.)
            thread = await email_store.get_thread(session, thread_key_for(ref))
            if thread is not None and thread.room_id == target.room_id and \
                    thread.root_message_id == ref:
                return ref
        return None

    async def _post(self, target: Target, mail: ParsedMail,
                    raw: bytes | bytearray | SpooledMail, digest: str | None = None) -> bool:
        """Post the mail into the target's room; False if the sender may not write there.

        One read connection before and one write transaction after the uploads, however
        many things a mail touches (puppet, bounce count, thread): mail arrives in bursts.
        """
        hub = self.hub
        room_id, localpart = target.room_id, target.recipient.localpart
        address = mail.from_address.lower()
        message_id = mail.message_id or \
            f"sha256-{(digest or _content_hash(raw))[:32]}@{self.domain}"
        # Subscribers the mail was addressed to directly (To/Cc) have it already: the copy
        # the room's other subscribers get through the relay skips them.
        addressed = {a.lower() for a in [*mail.to, *mail.cc]} - {address}
        addressed = {a for a in addressed if not a.endswith("@" + self.domain)}
        async with hub.db.reading() as connection:
            subscriber = await email_store.get_subscriber(connection, room_id, address)
            if not self._may_write(target, address, subscriber):
                return False
            if addressed:  # (only then: most mail is addressed to the room alone)
                addressed &= set(await email_store.active_addresses(connection, room_id))
            # Already in the room? post_parts knows for sure (the dedup key); asking here
            # too only saves uploading the attachments again.
            if mail.attachments and await store.mappings_for_remote(connection, NETWORK,
                                                                    localpart, message_id):
                return True
            root = await self._thread_for(connection, target, mail)
        name = mail.from_name or mail.from_address
        puppet = self.puppet_user_id(address)
        cid_map: dict[str, str] = {}
        files: list[dict[str, Any]] = []
        for attachment in mail.attachments:
            media = await hub.upload_attachment(room_id, attachment.data, attachment.mimetype,
                                                attachment.filename, user_id=puppet)
            # An inline image shows in the text by its mxc; an encrypted one (``file``: an
            # encrypted room) cannot, and follows the text as an attachment of its own.
            if "url" in media and attachment.inline and attachment.content_id and \
                    mail.html and attachment.content_id in mail.html:
                cid_map[attachment.content_id] = media["url"]
                continue
            files.append({
                "msgtype": media_msgtype(attachment.mimetype), "body": attachment.filename,
                "filename": attachment.filename, **media,
                "info": {"mimetype": attachment.mimetype, "size": len(attachment.data)},
            })
        content = self._text_content(mail, new_thread=root is None, cid_map=cid_map)
        parts = [RemotePart(sender=puppet, content=content, remote_space=localpart,
                            remote_id=message_id, part=0, thread_of=root)]
        parts += [RemotePart(sender=puppet, content=file, remote_space=localpart,
                             remote_id=message_id, part=index, thread_of=root or message_id)
                  for index, file in enumerate(files, start=1)]
        write_profile = not hub.puppet_known(puppet, name, None)

        async def also(session: AsyncSession) -> None:
            if write_profile:
                await hub.write_puppet(session, NETWORK, address, name)
            if subscriber is not None and subscriber.bounces:
                # Their mailbox evidently works: earlier bounces no longer count.
                await email_store.clear_bounces(session, room_id, address)
            if root is None:
                await email_store.add_thread(
                    session, thread_key=thread_key_for(message_id), room_id=room_id,
                    root_event_id=None, root_message_id=message_id,
                    topic=mail.topic or "(no subject)")

        # The other subscribers get the mail through the room (the relay rule hands it back
        # to this link), except those it was addressed to directly.
        origin = Origin(network=NETWORK, link_id=target.link_id,
                        also_received=tuple(sorted(addressed)), thread=root or message_id)
        if await hub.post_parts(network=NETWORK, dedup_key=f"{room_id}/{message_id}",
                                room_id=room_id, parts=parts, also=also, origin=origin):
            if write_profile:
                hub.remember_puppet(puppet, name, None)
            metrics.EVENTS.labels(network=NETWORK, direction="in").inc()
        return True

    @staticmethod
    def _text_content(mail: ParsedMail, *, new_thread: bool,
                      cid_map: dict[str, str]) -> dict[str, Any]:
        from bridge.email.sanitize import sanitize_html

        text = mail.text.strip()
        if mail.calendar:
            text = f"{text}\n\n{mail.calendar}".strip()
        if new_thread and mail.topic:
            # The subject once, as the first line of a new thread.
            text = f"{mail.topic}\n\n{text}"
        content = {"msgtype": "m.text", "body": text.rstrip() or "(empty message)"}
        plain_only = not mail.html and not mail.quoted_text
        if plain_only and len(content["body"]) + len(mail.text.strip()) > CONTENT_LIMIT and \
                not too_large(content):
            # A long plain-text mail (below): its HTML copy, at least as long as the text it
            # escapes, makes the event too large for sure; the text alone fits. Decided
            # without writing that copy and measuring it as JSON.
            return content
        # No HTML part, or one with nothing Matrix may show: the plain text.
        body_html = (sanitize_html(mail.html, cid_map) if mail.html else "") or \
            text_to_html(mail.text.strip())
        if mail.calendar:
            body_html += "<pre>" + html.escape(mail.calendar) + "</pre>"
        if new_thread and mail.topic:
            body_html = f"<p><strong>{html.escape(mail.topic)}</strong></p>{body_html}"
        if mail.quoted_text:
            body_html += ("<details><summary>Quoted text</summary><pre>"
                          f"{html.escape(mail.quoted_text)}</pre></details>")
        if not body_html:  # an empty formatted_body would show as an empty message
            return content
        formatted = content | {"format": "org.matrix.custom.html", "formatted_body": body_html}
        if plain_only and too_large(formatted) and not too_large(content):
            # A long plain-text mail: its HTML copy says nothing more than its text (line
            # breaks, the subject in bold), but would double the event past the homeserver's
            # limit and have the mail cut into a beginning and a file. The text alone fits.
            return content
        return formatted

    async def _handle_bounce(self, mail: ParsedMail) -> None:
        bounce = mail.bounce
        assert bounce is not None
        if not bounce.permanent or not bounce.original_message_id or not is_our_message_id(
                f"<{_strip_brackets(bounce.original_message_id)}>", self.domain):
            log.info("ignored a delivery report (permanent=%s, ours=%s)", bounce.permanent,
                     bool(bounce.original_message_id))
            return
        original = _strip_brackets(bounce.original_message_id)
        async with self.hub.db.sessions() as session:
            mapped = await store.mappings_for_remote_any_space(session, NETWORK, original)
        if not mapped:
            log.info("delivery report for %s, which is not in the database", original)
            return
        room_id = mapped[0].room_id
        log.info("delivery of %s to %s failed: %s", original, ", ".join(bounce.recipients),
                 bounce.status)
        for address in bounce.recipients:
            await self._record_failure(room_id, address,
                                       bounce.diagnostic or bounce.status or "bounced")

    async def _record_failure(self, room_id: str, address: str, error: str) -> None:
        metrics.BOUNCES.labels(network=NETWORK).inc()
        async with self.hub.db.transaction() as session:
            paused = await email_store.record_delivery_failure(
                session, room_id, address, error, self.settings.max_bounces)
        if paused:
            await self.hub.enqueue([self.hub.notice(
                room_id, f"⚠️ Mail to {address} keeps failing ({error}); their delivery is "
                         f"paused after {self.settings.max_bounces} failures. Send "
                         f"`{self.hub.prefix} email subscribe {address}` to resume it.")])

    # --- outbound: a room message to the subscribers -------------------------------------

    async def deliver(self, hub: Hub, delivery: Delivery, link: LinkInfo | None) -> str | None:
        if delivery.kind == "mail":
            return await self._send(delivery)
        if link is None:
            return None  # unlinked while the message waited
        return await self._fan_out(delivery, link)

    async def _display_name(self, room_id: str, user_id: str) -> str:
        key = (room_id, user_id)
        name = self._names.get(key)
        if name is None:
            name = await self.hub.member_name(room_id, user_id) or \
                user_id.split(":", 1)[0].lstrip("@")
            self._names.set(key, name)
        return name

    async def _fan_out(self, delivery: Delivery, link: LinkInfo) -> str | None:
        event = delivery.payload["event"]
        if event.get("type") == "m.room.member" and event.get("state_key"):
            # Keep the From names current when someone renames themselves.
            self._names.pop((delivery.room_id, event["state_key"]))
        if event.get("type") != "m.room.message" or event.get("state_key") is not None:
            return None  # reactions, redactions and state are not mailed
        content = event.get("content") or {}
        relates = content.get("m.relates_to") or {}
        correction = relates.get("rel_type") == "m.replace"
        if correction:
            content = content.get("m.new_content") or content
        event_id, room_id, sender = event["event_id"], delivery.room_id, event["sender"]
        localpart = link.remote_id
        hub = self.hub

        # A subscriber's own mail, handed back by the relay rule for the other subscribers
        # (the origin marker, checked by the hub, says so). It is in the room's mail
        # already: its thread and message mapping were written when it came in.
        origin = read_origin({ORIGIN_KEY: delivery.payload.get("origin")})
        own_mail = origin is not None and origin.link_id == link.id
        async with hub.db.sessions() as session:
            root = await self._root_of(session, relates, event_id)
            thread = None
            if own_mail and origin is not None and origin.thread is not None:
                thread = await email_store.thread_by_message_id(session, room_id,
                                                                origin.thread)
            if thread is None:
                thread = await self._thread(session, room_id, root)
            recipients = await email_store.active_addresses(session, room_id)
            authors: set[str] = set()
            if hub.network_of(sender) == NETWORK:
                puppet = await store.get_puppet(session, sender)
                if puppet is not None:
                    authors.add(puppet.remote_id)
            else:
                # A person's own Matrix message (or their mail, sent as their account by
                # double puppeting) is not mailed to their own linked addresses.
                links = await hub.people.load(session)
                authors.update(i.remote_id for i in links.identities(sender, NETWORK))
        # Its author has the message, and so have those a subscriber's mail was addressed
        # to directly (the marker names them).
        received = set(origin.also_received) if own_mail and origin is not None else set()
        recipients = [r for r in recipients if r.lower() not in authors and r not in received]
        if own_mail and not recipients:
            return "0 recipient(s)"

        message_id = message_id_for(event_id, self.domain)
        room_name = await self._room_name(room_id)
        new_thread = thread is None
        if thread is None:  # a new topic: this message starts the mail thread
            first_line = (content.get("body") or "").strip().splitlines()[:1]
            topic = new_topic_subject(room_name, first_line[0] if first_line else None)
            thread = email_store.MailThread(thread_key=thread_key_for(event_id),
                                            room_id=room_id, root_event_id=event_id,
                                            root_message_id=_strip_brackets(message_id),
                                            topic=topic)
            subject, in_reply_to = topic, None
        else:
            subject = reply_subject(thread.topic)
            in_reply_to = f"<{thread.root_message_id}>"
        sender_name = await self._display_name(room_id, sender)
        mail = {
            "localpart": localpart, "room_name": room_name,
            "sender_name": sender_name, "subject": subject,
            "message_id": message_id, "in_reply_to": in_reply_to,
            "references": [in_reply_to] if in_reply_to else [],
            "reply_to": make_reply_address(localpart, self.domain, thread.thread_key,
                                           self.secret),
            "correction": correction, "event_id": event_id,
            # The mail's Date is when the message was written (the remote time for
            # a relayed message, whose event carries it), not when the outbox sends it.
            "date_ms": event.get("origin_server_ts"),
            **self._mail_body(content, sender_name, room_id, event_id),
        }

        async def write(session: Any) -> None:
            # Once per relayed event, even if this delivery is repeated after a crash.
            if not await store.claim_inbound_key(session, "email-fanout", event_id):
                return
            if new_thread or not own_mail:  # (a subscriber's mail has its thread already)
                await email_store.add_thread(session, thread_key=thread.thread_key,
                                             room_id=room_id,
                                             root_event_id=thread.root_event_id,
                                             root_message_id=thread.root_message_id,
                                             topic=thread.topic)
            if not own_mail:  # (and its mapping: the mail it came as)
                await store.add_mapping(session, room_id=room_id, event_id=event_id,
                                        network=NETWORK, remote_space=localpart,
                                        remote_id=_strip_brackets(message_id),
                                        thread_root=None if root == event_id else root)
            # In slices: each subscriber's row holds the whole mail, and thousands of them
            # at once would make the memory this takes grow with the subscribers.
            for start in range(0, len(recipients), FAN_OUT_SLICE):
                await queues.enqueue(session, [
                    NewDelivery(network=NETWORK, room_id=room_id, kind="mail",
                                payload={**mail, "to": address},
                                lane=f"email:{room_id}:{address}")
                    for address in recipients[start:start + FAN_OUT_SLICE]
                ])

        await hub.enqueue([], also=write)
        return f"{len(recipients)} recipient(s)"

    async def _root_of(self, session: Any, relates: dict[str, Any], event_id: str) -> str:
        """The Matrix thread root this event belongs to (itself for a new topic)."""
        target = relates.get("event_id")
        if relates.get("rel_type") in ("m.thread", "m.replace") and target:
            if relates.get("rel_type") == "m.thread":
                return str(target)
            mapped = await store.mappings_for_event(session, target, NETWORK)
            return (mapped[0].thread_root or target) if mapped else str(target)
        reply_to = (relates.get("m.in_reply_to") or {}).get("event_id")
        if reply_to:
            mapped = await store.mappings_for_event(session, reply_to, NETWORK)
            return (mapped[0].thread_root or reply_to) if mapped else str(reply_to)
        return event_id

    async def _thread(self, session: Any, room_id: str,
                      root: str) -> email_store.MailThread | None:
        thread = await email_store.thread_by_root(session, root)
        if thread is not None:
            return thread
        mapped = await store.mappings_for_event(session, root, NETWORK)
        if mapped:  # the thread started with a mail
            return await email_store.thread_by_message_id(session, room_id,
                                                          mapped[0].remote_id)
        return None

    async def _room_name(self, room_id: str) -> str:
        return await self.hub.room_name(room_id) or "Matrix room"

    def _mail_body(self, content: dict[str, Any], sender_name: str, room_id: str,
                   event_id: str) -> dict[str, Any]:
        from bridge.email.compose import matrix_html_to_text

        msgtype = content.get("msgtype", "m.text")
        body = str(content.get("body") or "")
        formatted = content.get("formatted_body") \
            if content.get("format") == "org.matrix.custom.html" else None
        files: list[dict[str, Any]] = []
        if msgtype in MEDIA_MSGTYPES and content.get("url"):
            info = content.get("info") or {}
            name = str(content.get("filename") or body or "file")
            files.append({"mxc": content["url"], "filename": name,
                          "mimetype": info.get("mimetype") or "application/octet-stream",
                          "size": info.get("size"),
                          "link": f"https://matrix.to/#/{room_id}/{event_id}"})
            text = f"{sender_name} sent {MEDIA_MSGTYPES[msgtype]} {name}"
            return {"text": text, "html": None, "files": files}
        if msgtype == "m.emote":
            text = f"* {sender_name} {body}"
            return {"text": text, "html": None, "files": files}
        text = matrix_html_to_text(formatted) if formatted and not body else body
        return {"text": text, "html": formatted, "files": files}

    async def _tell_outage(self, room_id: str, exc: RelayOutage) -> None:
        """Each room whose mail waits hears once per outage (not once per mail)."""
        if room_id in self._rooms_told_of_outage:
            return
        self._rooms_told_of_outage.add(room_id)
        try:
            await self.hub.enqueue([self.hub.notice(
                room_id, f"⚠️ Mail to this room's subscribers is delayed: {exc}. It is kept "
                         "and sent when the relay works again; no subscriber is blamed for "
                         f"it. `{self.hub.prefix} status` shows the relay's state.")])
        except Exception:
            self._rooms_told_of_outage.discard(room_id)  # not told: the next attempt tells
            raise

    async def _relay_recovered(self) -> None:
        told, self._rooms_told_of_outage = self._rooms_told_of_outage, set()
        if told:
            await self.hub.enqueue([self.hub.notice(
                room_id, "✅ The mail relay works again; delayed mail is being sent.")
                for room_id in sorted(told)])

    async def _files(self, p: dict[str, Any]) -> tuple[list[OutgoingAttachment],
                                                        list[LinkedFile]]:
        """A delivery's files: attached (downloaded here), or linked when too large."""
        from bridge.email.compose import LinkedFile, OutgoingAttachment

        attachments: list[OutgoingAttachment] = []
        linked: list[LinkedFile] = []
        for file in p.get("files", []):
            size = file.get("size")
            if size is not None and size > self.settings.max_attachment_size:
                linked.append(LinkedFile(file["filename"], file["link"], size))
                continue
            data = await self.hub.download_media(file["mxc"])
            if len(data) > self.settings.max_attachment_size:
                linked.append(LinkedFile(file["filename"], file["link"], len(data)))
            else:
                attachments.append(OutgoingAttachment(file["filename"], file["mimetype"], data))
        return attachments, linked

    def _mail_arguments(self, p: dict[str, Any], attachments: list[OutgoingAttachment],
                        linked: list[LinkedFile]) -> dict[str, Any]:
        """What build_email needs for a delivery's mail besides the subscriber's own
        values (ValueError for a date out of range)."""
        date_ms = p.get("date_ms")
        return {
            "room_localpart": p["localpart"], "domain": self.domain,
            "room_name": p["room_name"],
            "sender_name": clean_display_name(p["sender_name"], "Matrix"),
            "subject": p["subject"], "text": p["text"], "html": p.get("html"),
            "message_id": p["message_id"], "in_reply_to": p.get("in_reply_to"),
            "references": p.get("references", []), "reply_to": p["reply_to"],
            "attachments": attachments, "linked_files": linked,
            # The mail's Date is when the message was written, not when it is sent.
            "date": datetime.fromtimestamp(date_ms / 1000, UTC) if date_ms else None,
            "is_correction": bool(p.get("correction")),
        }

    async def _template(self, p: dict[str, Any], unsubscribe_address: str,
                        unsubscribe_url: str | None) -> MailTemplate:
        """The shared copy of a fan-out's mail: built (attachments downloaded, MIME written
        and flattened) by the first of its deliveries, reused by the others. The payloads of
        one fan-out differ only in "to"; concurrent deliveries wait for one build."""
        key = json_codec.dumps({k: v for k, v in p.items() if k != "to"})
        building = self._templates.get(key)
        if building is None:
            building = asyncio.ensure_future(self._build_template(
                p, unsubscribe_address, unsubscribe_url))
            self._templates.set(key, building)
        try:
            return await asyncio.shield(building)
        except Exception:
            if self._templates.get(key) is building:
                self._templates.pop(key)  # the next delivery tries afresh
            raise

    async def _build_template(self, p: dict[str, Any], unsubscribe_address: str,
                              unsubscribe_url: str | None) -> MailTemplate:
        from bridge.email.compose import MailTemplate

        attachments, linked = await self._files(p)
        try:
            return MailTemplate(unsubscribe_address=unsubscribe_address,
                                unsubscribe_url=unsubscribe_url,
                                **self._mail_arguments(p, attachments, linked))
        except ValueError as exc:
            raise _Unwritable(str(exc)) from exc

    async def _send(self, delivery: Delivery) -> str:
        # As many mails built at once (their attachments downloaded, their message trees
        # made) as the relay has connections: the other deliveries of a fan-out to
        # thousands wait here as their payloads, so memory does not grow with them.
        async with self._sending:
            return await self._send_now(delivery)

    async def _send_now(self, delivery: Delivery) -> str:
        from bridge.email.compose import build_email

        p = delivery.payload
        recipient = p["to"]
        sender = self.address_of(p["localpart"])
        message: EmailMessage | bytes | None = None
        # A ValueError in writing the mail recurs on every retry: it fails for good, and the
        # room is told (a download's failure is the media repository's, and temporary).
        try:
            unsubscribe_address = make_unsubscribe_address(p["localpart"], self.domain,
                                                           recipient, self.secret)
            unsubscribe_url = self.unsubscribe_url(p["localpart"], recipient)
        except ValueError as exc:
            raise _unwritable(recipient, exc) from exc
        if not needs_smtputf8(sender, recipient):
            # Most mails: the fan-out's shared copy with this subscriber's headers and footer
            # address. What it cannot carry (an SMTPUTF8 address, whose mail the relay
            # library writes differently) is built on its own below.
            try:
                template = await self._template(p, unsubscribe_address, unsubscribe_url)
            except _Unwritable as exc:
                raise _unwritable(recipient, exc) from exc
            try:
                message = template.render(recipient, unsubscribe_address, unsubscribe_url)
            except ValueError as exc:
                raise _unwritable(recipient, exc) from exc
        if message is None:
            attachments, linked = await self._files(p)
            try:
                message = build_email(recipient=recipient,
                                      unsubscribe_address=unsubscribe_address,
                                      unsubscribe_url=unsubscribe_url,
                                      **self._mail_arguments(p, attachments, linked))
            except ValueError as exc:
                raise _unwritable(recipient, exc) from exc
        started = time.perf_counter()
        try:
            answer = await self.relay.send(message, sender=sender, recipient=recipient)
        except RelayOutage as exc:
            # Our relay's fault, not the subscriber's: no bounce is counted; the mail waits.
            await self._tell_outage(delivery.room_id, exc)
            raise
        except Utf8NotOffered:
            raise  # for good, and the room is told; their mailbox did not fail
        except PermanentError as exc:
            # A hard failure for this recipient: counted; the room hears once on pausing.
            await self._record_failure(delivery.room_id, p["to"], str(exc))
            return f"refused: {exc}"
        await self._relay_recovered()
        metrics.HANDLING_SECONDS.labels(network=NETWORK, direction="out").observe(
            time.perf_counter() - started)
        # The relay's 250 is no proof of delivery (a smarthost accepts everything and the
        # bounce comes later), so it does not clear the subscriber's bounce count; mail
        # *from* the subscriber does.
        return answer
