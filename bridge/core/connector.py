"""The small interface every network connector (Slack, email, ...) implements.

A connector owns its remote side: its puppets' namespace, formatting, and how to deliver a
Matrix event to its remote conversation. Inbound traffic goes into core through
:class:`bridge.core.hub.Hub`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.core.errors import CommandError
from bridge.db.queues import Delivery
from bridge.db.store import LinkInfo

if TYPE_CHECKING:
    from bridge.admin.api.routes import Route
    from bridge.core.hub import Hub


_LOCALPART_SAFE = set("abcdefghijklmnopqrstuvwxyz0123456789._-")


def escape_localpart(value: str) -> str:
    """Lower-case, with every other character as ``=xx`` (UTF-8 bytes), so it is reversible
    and valid in a Matrix user ID (an email address or a Slack ID both fit)."""
    out = []
    for char in value.lower():
        if char in _LOCALPART_SAFE:
            out.append(char)
        else:
            out.extend(f"={byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out)


def media_msgtype(mimetype: str) -> str:
    """The Matrix msgtype a remote file of this MIME type becomes."""
    kind = mimetype.split("/", 1)[0]
    return {"image": "m.image", "video": "m.video", "audio": "m.audio"}.get(kind, "m.file")


@dataclass(slots=True)
class Health:
    ok: bool
    detail: str


@dataclass(slots=True)
class LinkTarget:
    """What ``!bridge link <network> <remote-id>`` resolved to."""

    remote_id: str
    remote_name: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    # Shown in the bridge-info state event (MSC2346): the remote conversation's page, if any.
    external_url: str | None = None


@dataclass(frozen=True, slots=True)
class PersonRef:
    """A remote identity a person can be linked to (``!bridge people link``, ``me``)."""

    #: As the network's puppets know it (the puppet's ``remote_id``): Slack
    #: ``<team id>_<user id>``, an email address in lower case.
    remote_id: str
    #: How people write it, and how lists show it: ``rathaus:U0ANNA``, the address.
    label: str
    #: The remote name, if the network knows one (Slack's display name).
    display_name: str | None = None


# A bot sub-command a connector adds: (hub, room_id, sender, args) -> reply text.
CommandHandler = Callable[["Hub", str, str, list[str]], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class SubCommand:
    """One ``!bridge <network> <name> ...`` command a connector adds: everything ``help``
    shows about it, and the handler, in one declaration."""

    name: str
    #: What follows the name, in usage notation (bridge/core/commands.py):
    #: ``<address> [name...]``; "" for none. The bot checks the words against it.
    arguments: str
    summary: str
    handler: CommandHandler
    admin_only: bool = True

    def usage(self, network: str) -> str:
        """``email subscribe <address> [name...]``: the command as a user types it."""
        return " ".join(part for part in (network, self.name, self.arguments) if part)


class Connector(ABC):
    #: Short lower-case name used in commands, lanes and the database ("slack", "email").
    network: str
    #: Human name ("Slack").
    display_name: str
    #: Does one link stand for many remote participants who cannot see each other's
    #: messages without the bridge (email: one room address, many subscribers)? Then the
    #: relay rule hands the connector its own link's messages too, and the connector skips
    #: their author (and whoever the origin marker says already has them).
    relays_within_link: bool = False
    #: How many links of this network one room may have (None: any number).
    max_links_per_room: int | None = None

    def __init__(self, puppet_prefix: str, homeserver_domain: str) -> None:
        self.puppet_prefix = puppet_prefix
        self.homeserver_domain = homeserver_domain
        # Why the bridge did not start this connector (set by the app), or None once started:
        # a network whose puppets the homeserver would refuse must accept nothing.
        self.not_started: str | None = None

    def puppet_user_id(self, remote_id: str) -> str:
        """The Matrix user standing for a remote person: prefix plus the escaped remote ID."""
        return f"@{self.puppet_prefix}{escape_localpart(remote_id)}:{self.homeserver_domain}"

    def owns_user(self, user_id: str) -> bool:
        """Is this Matrix user one of our puppets? Decides echo suppression."""
        localpart, _, server = user_id[1:].partition(":")
        return server == self.homeserver_domain and localpart.startswith(self.puppet_prefix)

    async def start(self, hub: Hub) -> None:  # noqa: B027 - optional hook
        """Connect to the remote side. Inbound traffic flows into ``hub`` from now on."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Disconnect; anything not yet delivered stays in the outbox."""

    @abstractmethod
    async def deliver(self, hub: Hub, delivery: Delivery, link: LinkInfo | None) -> str | None:
        """Send one relayed Matrix event to the remote side.

        ``delivery.payload["event"]`` is the Matrix event. Return an identifier of what was
        sent (stored as the outbox result), raise :class:`TemporaryError` to be retried or
        :class:`PermanentError` to give up. ``link`` is None if the room was unlinked while
        the delivery waited; then usually nothing is sent.
        """

    @abstractmethod
    async def resolve_link(self, hub: Hub, room_id: str, remote_id: str,
                           args: list[str]) -> LinkTarget:
        """Check that ``remote_id`` names a conversation this bridge can reach.

        ``room_id`` is empty when the caller only checks (``POST /networks/<network>/resolve``,
        ``bridge plan check``): then nothing may be done on the remote side.

        Raise :class:`bridge.core.errors.CommandError` with a helpful sentence if not.
        """

    async def on_link_written(self, session: AsyncSession, link: LinkInfo) -> None:  # noqa: B027
        """Runs inside the transaction that writes the new link: the connector's own state
        for it (a catch-up cursor, for example) is written with the link or not at all.
        Raising here leaves no link behind."""

    async def on_linked(self, hub: Hub, link: LinkInfo) -> None:  # noqa: B027
        """The room was just linked, the link committed (bring in recent history, for
        example)."""

    async def on_unlinked(self, hub: Hub, link: LinkInfo) -> None:  # noqa: B027
        """The room was unlinked; release remote resources if any."""

    def health(self) -> Health:
        return Health(True, "running")

    def state(self) -> Health:
        """What status and health show: why it is not started, else its own health."""
        if self.not_started is not None:
            return Health(False, f"not started: {self.not_started}")
        return self.health()

    def http_routes(self) -> list[tuple[str, str, Callable[[web.Request],
                                                         Awaitable[web.StreamResponse]]]]:
        """Extra (method, path, handler) on the bridge's listener, under /_bridge/<network>/."""
        return []

    def api_routes(self) -> list[Route]:
        """Extra endpoints of the provisioning API (paths below /_bridge/api/v1, such as
        ``/rooms/{room_id}/email/subscribers``); see bridge/admin/api/routes.py."""
        return []

    # --- the provisioning API's /rooms/{room_id}/links/<network> ------------------------
    # The core declares PUT and DELETE of that path for every enabled network; these say
    # what its body holds and what its answers add. The default fits a network whose
    # conversations one ID names.

    def api_link_schema(self) -> dict[str, Any]:
        """JSON Schema of the body of ``PUT /rooms/{room_id}/links/<network>``. ``DELETE``
        takes the same fields, none required, to say which link when there are several."""
        return {"type": "object", "additionalProperties": False, "required": ["remote_id"],
                "properties": {"remote_id": {
                    "type": "string", "minLength": 1,
                    "description": f"the {self.display_name} conversation's ID"}}}

    def api_link_request(self, body: dict[str, Any]) -> tuple[str, list[str]]:
        """What ``!bridge link <network>`` would be given for this (checked) body: the
        remote ID and the further words (:meth:`resolve_link`'s ``args``)."""
        return str(body["remote_id"]), []

    def api_unlink_selector(self, body: dict[str, Any]) -> str | None:
        """Which of the room's links a ``DELETE`` body names, as ``!bridge unlink <network>
        <remote-id>`` would be given it (None: the room's only link of this network)."""
        value = body.get("remote_id")
        return str(value) if value else None

    def api_link_fields_schema(self) -> dict[str, Any]:
        """JSON Schema properties that :meth:`api_link_fields` adds to a link's answer."""
        return {}

    def api_link_fields(self, link: LinkInfo) -> dict[str, Any]:
        """A link as the network's API users know it (Slack: workspace and channel; email:
        the address), beside the core's network, remote_id and remote_name."""
        return {}

    def api_room_schema(self) -> dict[str, Any] | None:
        """JSON Schema of what :meth:`api_room_details` adds to ``GET /rooms/{room_id}``."""
        return None

    async def api_room_details(self, hub: Hub, room_id: str,
                               links: list[LinkInfo]) -> dict[str, Any] | None:
        """The network's own state of a room for ``GET /rooms/{room_id}`` (email: its
        subscribers and policy), under the network's name; None for nothing."""
        return None

    # --- people (identity links) ------------------------------------------------------------
    #: Whether this network's identities can be linked to Matrix accounts.
    links_people = False
    #: The words after ``me <network>`` (a person linking their own identity with a
    #: one-time code, :mod:`bridge.people.self_service`), as help and usage answers show
    #: them: ``<address>``. Each ``<…>`` is one word.
    me_words = "<identity>"

    async def resolve_person(self, hub: Hub, words: list[str]) -> PersonRef:
        """The remote identity the words name, as typed after ``people link <network>`` (Slack:
        ``<workspace>:<user id>``; email: an address) or after ``me <network>`` (Slack:
        ``<workspace> <user id or e-mail address>``). Checked with the network where it can
        be; raise :class:`bridge.core.errors.CommandError` with a helpful sentence if it
        names nobody."""
        raise CommandError(f"{self.display_name} identities cannot be linked to Matrix "
                           "accounts.")

    async def send_person_code(self, hub: Hub, person: PersonRef, code: str,
                               matrix_user_id: str) -> str:
        """Send a one-time code to the remote identity (a Slack direct message, a mail) that
        proves ``matrix_user_id`` owns it; return where it went, for the bot's answer ("a
        direct message in Slack"). Raise :class:`bridge.core.errors.CommandError` if it
        cannot be sent."""
        raise CommandError(f"The bridge cannot send codes to {self.display_name} identities.")

    def commands(self) -> list[SubCommand]:
        """Extra ``!bridge <network> ...`` sub-commands. A handler raises
        :class:`bridge.core.errors.UsageError` when the arguments do not fit; the bot then
        answers with the declared usage."""
        return []
