"""The HTTP listener: the appservice API the homeserver calls, plus health and metrics.

Written on aiohttp directly rather than mautrix's server mixin, because the bridge's
guarantees live exactly here: the token is compared in constant time, a transaction is
acknowledged only after its events are committed to the inbox, and a repeated transaction
is recognised from the database, also after a restart (by its ID *and* its events: a
homeserver may use an ID again for other events after it restarts).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from bridge import json_codec, metrics
from bridge.admin.api import server as api_server
from bridge.core.connector import Connector
from bridge.db import queues, store
from bridge.db.engine import current_revision, head_revision
from bridge.db.queues import Delivery
from bridge.matrix.transaction_gaps import (
    CONSECUTIVE_TO_RESUME,
    TransactionGaps,
    transaction_field,
    transaction_number,
)

if TYPE_CHECKING:
    from bridge.app import Bridge
    from bridge.matrix.crypto import BridgeCrypto

log = logging.getLogger("bridge.appservice")

_IN_EVENTS = metrics.EVENTS.labels(network="matrix", direction="in")
# After a gap's 503 Synapse starts a recoverer, which waits 2 s before it sends anything; a
# ping (the appservice ping API) makes it send at once. Sent a moment after the answer, so
# that the recoverer exists: Synapse starts it in the background once the send failed.
NUDGE_AFTER_SECONDS = 0.3


@functools.cache
def _transactions(outcome: str) -> Counter:
    """The transactions counter of one outcome, looked up once (``labels()`` costs several
    microseconds per call: one per transaction) on first use."""
    return metrics.TRANSACTIONS.labels(outcome=outcome)


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _while_started(connector: Connector, handler: Handler) -> Handler:
    """A network's page answers 503 while the network is not started (its state is not set
    up); the reason is for the operator, not for whoever follows a link from a mail."""
    async def guarded(request: web.Request) -> web.StreamResponse:
        if connector.not_started is not None:
            return web.Response(status=503, text=f"{connector.display_name} is not available "
                                                  "on this bridge right now; try again later.")
        return await handler(request)

    return guarded


class AppserviceServer:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.hs_token = bridge.config.appservice.hs_token.encode()
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        routes: list[tuple[str, str, Handler]] = [
            ("PUT", "/_matrix/app/v1/transactions/{txn_id}", self.transaction),
            ("GET", "/_matrix/app/v1/users/{user_id}", self.query_user),
            ("GET", "/_matrix/app/v1/rooms/{alias}", self.query_alias),
            ("POST", "/_matrix/app/v1/ping", self.ping),
            # Legacy unprefixed paths that older homeservers still call.
            ("PUT", "/transactions/{txn_id}", self.transaction),
            ("GET", "/users/{user_id}", self.query_user),
            ("GET", "/rooms/{alias}", self.query_alias),
            ("GET", "/_bridge/health", self.health),
            ("GET", "/metrics", self.metrics),
        ]
        for connector in bridge.hub.connectors.values():
            routes += [(method, path, _while_started(connector, handler))
                       for method, path, handler in connector.http_routes()]
        for method, path, handler in routes:
            self.app.router.add_route(method, path, handler)
        # The provisioning API and the admin page (nothing when no shared secret is set).
        api_server.mount(self.app, bridge)
        self.runner: web.AppRunner | None = None
        # With double puppeting, the homeserver's second registration for this bridge takes
        # a transaction number for every event it is interested in: gaps are the rule.
        self.gaps = TransactionGaps(checking=not bridge.config.double_puppet.enabled)
        self._nudges: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        for task in self._nudges:
            task.cancel()
        await asyncio.gather(*self._nudges, return_exceptions=True)

    # --- authentication --------------------------------------------------------------

    def _auth_error(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.query.get("access_token")
        if not token:
            return _error(401, "M_UNAUTHORIZED", "Missing hs_token")
        # Constant time, so the token cannot be guessed byte by byte from response times.
        if not hmac.compare_digest(token.encode(), self.hs_token):
            return _error(403, "M_FORBIDDEN", "Wrong hs_token")
        return None

    # --- appservice API ----------------------------------------------------------------

    async def transaction(self, request: web.Request) -> web.Response:
        if (refused := self._auth_error(request)) is not None:
            _transactions("refused").inc()
            return refused
        txn_id = request.match_info["txn_id"]
        try:
            body = await request.json(loads=json_codec.loads)
        except ValueError:
            return _error(400, "M_NOT_JSON", "Body is not JSON")
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            return _error(400, "M_BAD_JSON", "'events' must be a list of events")
        number = transaction_number(txn_id)
        if number is not None and (held := await self._held_before(number, body)) is not None:
            return held
        crypto = self.bridge.crypto
        if crypto is not None:
            if not crypto.started.is_set() and crypto.failed is None:
                # Its to-device messages may carry keys: not acknowledged before they can
                # be taken (the homeserver sends the transaction again).
                return _error(503, "M_UNKNOWN", "The bridge's encryption is starting")
            # Keys first, then the events decrypted, all before the bridge's own database
            # transaction (crypto.py says why).
            events = await self._decrypted(crypto, body, events)
        inbox, outbox = self.bridge.inbox, self.bridge.outbox
        claimed: list[Delivery] = []
        room_events = queues.room_events(events)
        if room_events:
            try:
                room_events = await self._needing_work(room_events)
            except Exception:
                return self._not_stored(txn_id, "read the rooms of",
                                        "The bridge could not read its rooms")
            if not room_events:
                # Only events that need nothing (our own puppets' messages coming back):
                # acknowledged without a write. A repeat of it would need nothing either.
                # With other processes, its number is recorded all the same, so that the
                # one that gets the next transaction sees no gap.
                if number is not None and self.bridge.heartbeat.peers:
                    try:
                        async with self.bridge.db.transaction() as session:
                            await queues.record_transaction_id(session, txn_id)
                    except Exception:
                        return self._not_stored(txn_id, "record", "The bridge could not "
                                                "record the transaction")
                _transactions("needed_nothing").inc()
                self._handled(number)
                return web.json_response({})
        try:
            async with self.bridge.db.transaction() as session:
                room_events = await self._ours(session, room_events)
                outcome = None
                fresh = await queues.record_transaction_id(session, txn_id)
                if not fresh and room_events:
                    # A transaction ID is a retry marker, not an identity: Synapse on SQLite
                    # counts from 1 again after a restart. A repeat is a retry only when it
                    # carries events we already have; otherwise handle it (the inbox still
                    # skips any event it has seen, by event ID).
                    new = await queues.unknown_event_ids(session, room_events)
                    if new:
                        log.warning("transaction ID %s was used before for other events "
                                    "(the homeserver restarted and counts anew?); handling "
                                    "its %d new event(s)", txn_id, len(new))
                        _transactions("reused_id").inc()
                        fresh = True
                if fresh:
                    # Handled in the same database transaction when possible: one commit,
                    # and the events' effects are queued (and claimed for delivery) before
                    # the homeserver hears back.
                    outcome = await inbox.handle_transaction(session, room_events)
                if outcome is not None and outcome.enqueued:
                    claimed = await outbox.claim_within(session)
        except Exception:
            return self._not_stored(txn_id, "store", "The bridge could not store the "
                                    "transaction")
        if not fresh:
            _transactions("duplicate").inc()
            log.debug("transaction %s was already stored; ignoring the repeat", txn_id)
        else:
            _transactions("stored").inc()
            if outcome is not None:
                inbox.after_commit(outcome)
            await outbox.dispatch(claimed)
        self._handled(number)
        return web.json_response({})

    def _handled(self, number: int | None) -> None:
        if number is not None:
            self.gaps.handled(number)

    async def _held_before(self, number: int, body: dict[str, Any]) -> web.Response | None:
        """503 when transaction N-1 never arrived: the homeserver may be holding it back
        (bridge/matrix/transaction_gaps.py says how Synapse comes to); the answer makes it
        send the oldest it has first. None to handle N now."""
        gaps = self.gaps
        if gaps.was_refused(number):
            # Refused once: handled now, whatever came before it.
            if gaps.checking and gaps.came_back(number, gaps.seen(number - 1) or (
                    number - 1 in await self._handled_by_any([number - 1], default=True))):
                log.warning("transaction %d came again without %d: the homeserver's "
                            "transaction numbers have gaps of their own (another appservice "
                            "on it uses the same sequence?); gaps are not checked until %d "
                            "consecutive numbers have arrived", number, number - 1,
                            CONSECUTIVE_TO_RESUME)
            return None
        if not gaps.needs_look(number):
            return None
        before = gaps.numbers_before(number)
        handled = {n for n in before if gaps.seen(n)}
        handled |= await self._handled_by_any(before, default=False)
        if not gaps.is_gap(number, handled):
            return None
        if transaction_field(body, "to_device", "de.sorunome.msc2409"):
            # A re-sent transaction has no to-device messages (Synapse keeps only the
            # events), and they may carry keys: taken now rather than lost for order.
            return None
        gaps.refuse(number)
        log.warning("transaction %d arrived before %d, which this bridge has not received; "
                    "answered 503 once so that the homeserver sends the one it holds first",
                    number, number - 1)
        _transactions("gap").inc()
        task = asyncio.create_task(self._nudge(number), name=f"nudge-{number}")
        self._nudges.add(task)
        task.add_done_callback(self._nudges.discard)
        return _error(503, "M_UNKNOWN", f"transaction {number - 1} not received yet")

    async def _nudge(self, number: int) -> None:
        await asyncio.sleep(NUDGE_AFTER_SECONDS)
        try:
            await self.bridge.matrix.bot_intent.appservice_ping(
                self.bridge.config.appservice.id, txn_id=f"gap-{number}")
        except Exception as exc:
            # (Synapse answers an error when its recoverer had already begun: harmless.)
            log.info("the ping after refusing transaction %d failed (%s); the homeserver "
                     "retries by itself", number, exc)

    async def _handled_by_any(self, numbers: list[int], default: bool) -> set[int]:
        """Those of these transactions that this or another process handled. When the
        database cannot say: all of them (``default``) or none, whichever makes the gap
        not acted on (storing the transaction will fail too and be retried)."""
        try:
            async with self.bridge.db.sessions() as session:
                known = await queues.known_transaction_ids(session, [str(n) for n in numbers])
        except Exception:
            log.warning("could not look up transactions %d to %d", numbers[0], numbers[-1],
                        exc_info=True)
            return set(numbers) if default else set()
        return {int(txn_id) for txn_id in known}

    def _not_stored(self, txn_id: str, failed_to: str, answer: str) -> web.Response:
        """Called from an except block: the transaction is not acknowledged, so the
        homeserver keeps it and sends it again."""
        self.bridge.inbox.transaction_failed()
        log.exception("could not %s transaction %s", failed_to, txn_id)
        metrics.FAILURES.labels(network="matrix", direction="in", stage="store").inc()
        return _error(500, "M_UNKNOWN", answer)

    async def _decrypted(self, crypto: BridgeCrypto, body: dict[str, Any],
                         events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The transaction's keys taken, and its events of portals decrypted where they can
        be (the others are left as they are: see :meth:`_ours`)."""
        rooms = {e.get("room_id") for e in events if isinstance(e.get("room_id"), str)}
        async with self.bridge.db.sessions() as session:
            portals = await store.existing_portals(session, cast(set[str], rooms))
        mine = await crypto.handle_transaction(
            body, [e for e in events if e.get("room_id") in portals])
        decrypted = iter(mine)
        return [next(decrypted) if e.get("room_id") in portals else e for e in events]

    async def _needing_work(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events without those that need nothing (``Hub.needs_nothing``): the bridge's
        own puppets' messages, which the homeserver sends back, in rooms where the relay
        rule sends them nowhere (a room with one link, the puppet's own). Those are counted
        as handled and not stored; deciding it costs one read, and only when a transaction
        has such candidates."""
        hub = self.bridge.hub
        candidates = {e["room_id"] for e in events if "state_key" not in e and isinstance(
            sender := e.get("sender"), str) and (sender == hub.bot_mxid
                                                 or hub.network_of(sender) is not None)}
        if not candidates:
            return events
        _, links = await hub.portals.portals_and_links(candidates)
        kept = [e for e in events if e["room_id"] not in candidates
                or not hub.needs_nothing(e, links)]
        if len(kept) < len(events):
            _IN_EVENTS.inc(len(events) - len(kept))
        return kept

    async def _ours(self, session: AsyncSession,
                    events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events the bridge takes part in: those of its portals, and memberships of
        its own users anywhere (the bot's invitation into a new room).

        The registration's alias namespace (which lets migration plans create rooms with
        their aliases, bridge/admin/rooms.py) makes the homeserver send the events of every
        room with a local alias. The others are acknowledged and not stored: the bridge
        keeps nothing of conversations it is not part of. (The hub would ignore them anyway:
        it acts only in portals, which the bot's join delivery records.)"""
        rooms = {event["room_id"] for event in events}
        if not rooms:
            return events
        portals, _ = await self.bridge.hub.portals.portals_and_links(rooms, session)
        if len(portals) == len(rooms):
            return events
        hub = self.bridge.hub

        def ours(event: dict[str, Any]) -> bool:
            if event["room_id"] in portals:
                return True
            member = event.get("state_key")
            return event.get("type") == "m.room.member" and isinstance(member, str) and (
                member == hub.bot_mxid or hub.network_of(member) is not None)

        kept = [event for event in events if ours(event)]
        if len(kept) < len(events):
            metrics.EVENTS_NOT_OURS.inc(len(events) - len(kept))
        return kept

    async def query_user(self, request: web.Request) -> web.Response:
        if (refused := self._auth_error(request)) is not None:
            return refused
        user_id = request.match_info["user_id"]
        if user_id == self.bridge.config.bot_mxid:
            await self.bridge.matrix.bot_intent.ensure_registered()
            return web.json_response({})
        # Puppets exist only for remote people we know; the connector creates them.
        async with self.bridge.db.sessions() as session:
            puppet = await store.get_puppet(session, user_id)
        if puppet is None:
            return _error(404, "M_NOT_FOUND", "No such remote user")
        await self.bridge.matrix.intent(user_id).ensure_registered()
        return web.json_response({})

    async def query_alias(self, request: web.Request) -> web.Response:
        if (refused := self._auth_error(request)) is not None:
            return refused
        # The registration's alias namespace is not exclusive and only lets migration plans
        # name the rooms the bot creates: the bridge makes no room on demand for an alias
        # someone looks up (the homeserver asks for every alias it does not know).
        return _error(404, "M_NOT_FOUND", "The bridge does not provide room aliases")

    async def ping(self, request: web.Request) -> web.Response:
        if (refused := self._auth_error(request)) is not None:
            return refused
        try:
            body = await request.json(loads=json_codec.loads)
        except ValueError:
            return _error(400, "M_NOT_JSON", "Body is not JSON")
        txn = body.get("transaction_id") if isinstance(body, dict) else None
        log.info("ping from the homeserver (transaction %s)", txn)
        return web.json_response({})

    # --- operations --------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        checks: dict[str, Any] = {"started": self.bridge.ready}
        try:
            async with self.bridge.db.sessions() as session:
                await session.execute(text("SELECT 1"))
                inbox, outbox = await queues.count_pending(session)
            revision = await current_revision(self.bridge.db.engine)
            head = self.bridge.db.head or head_revision()
            checks["database"] = "ok" if revision == head else (
                f"schema at {revision}, expected {head}")
            checks["queues"] = {"inbox": inbox, "outbox": outbox}
        except Exception as exc:
            checks["database"] = f"unreachable: {exc.__class__.__name__}"
        # Without the homeserver nothing reaches Matrix: not ready, and why.
        checks["homeserver"] = await self.bridge.homeserver_state()
        if self.bridge.crypto is not None:
            checks["encryption"] = self.bridge.crypto.state()
        beat = self.bridge.heartbeat
        # Several processes (README "High availability"): which one this is, and who else.
        checks["process"] = {"id": beat.process_id, "housekeeper": beat.housekeeper,
                             "others": len(beat.peers)}
        networks = {name: c.state() for name, c in self.bridge.hub.connectors.items()}
        checks["networks"] = {name: {"ok": h.ok, "detail": h.detail}
                              for name, h in networks.items()}
        ready = (checks["started"] is True and checks["database"] == "ok"
                 and checks["homeserver"] == "ok")
        return web.json_response({"ready": ready, **checks}, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        try:
            async with self.bridge.db.reading() as connection:
                inbox, outbox = await queues.count_pending(connection)
                failed = await queues.count_failed(connection)
            metrics.QUEUE_DEPTH.labels(queue="inbox").set(inbox)
            metrics.QUEUE_DEPTH.labels(queue="outbox").set(outbox)
            metrics.FAILED_DELIVERIES.set(failed)
        except Exception:
            log.warning("could not read queue depths for /metrics", exc_info=True)
        for name, connector in self.bridge.hub.connectors.items():
            metrics.NETWORK_UP.labels(network=name).set(1 if connector.state().ok else 0)
        homeserver = await self.bridge.homeserver_state()  # cached: scrapes add no load
        metrics.HOMESERVER_UP.set(1 if homeserver == "ok" else 0)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
