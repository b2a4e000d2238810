"""``bridge erase``: remove everything the bridge holds about one person, on request.

The order is chosen so that a run that stops half way can simply be run again:

1. find the person (their network names them: ``Network.find_person``) and their puppets;
2. in Matrix, find what each puppet sent in the rooms it is in; with ``--redact`` redact it;
3. in one transaction, delete what the database holds (the core's tables here, the
   network's own through ``Network.erase_person``), scrub their identity from earlier
   audit entries, and record the erasure in the audit log without the erased data;
4. in Matrix, the puppets leave every room, then their display name and avatar are
   cleared.

``--dry-run`` reads the same and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from bridge.admin import audit
from bridge.config import Config
from bridge.core.activity import pseudonym
from bridge.core.connector import escape_localpart
from bridge.db.engine import Database
from bridge.db.erasure import ErasedPerson, erase_core, message_ids_of
from bridge.matrix.puppet_erase import MatrixError, PuppetSide
from bridge.networks import Network

#: The audit log's ``via`` of actions taken with the ``bridge`` command itself.
VIA_CLI = "cli"


class EraseError(Exception):
    """The person cannot be named or found as written; nothing was changed."""


@dataclass(slots=True)
class Erasure:
    """What was removed (or, in a dry run, would be)."""

    person: ErasedPerson
    tables: dict[str, int] = field(default_factory=dict)
    rooms: list[str] = field(default_factory=list)
    messages: int = 0
    redacted: int = 0
    pending: int = 0
    dry_run: bool = False


async def erase(config: Config, db: Database, network: Network, words: str, *,
                redact: bool, dry_run: bool,
                progress: Callable[[str], None] = lambda _line: None) -> Erasure:
    assert network.find_person is not None
    async with db.sessions() as session:
        try:
            remote_ids = tuple(await network.find_person(session, config, words))
        except ValueError as exc:
            raise EraseError(str(exc)) from None
    section = config.networks()[network.name]
    domain = config.homeserver.domain
    puppets = tuple(f"@{section.puppet_prefix}{escape_localpart(r)}:{domain}"
                    for r in remote_ids)
    rooms: list[str] = []
    events: list[str] = []
    redacted = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        matrix = PuppetSide(http, config)
        found: list[tuple[str, str, list[str]]] = []
        for puppet in puppets:
            for room in await matrix.joined_rooms(puppet):
                own = await matrix.own_events(puppet, room)
                found.append((puppet, room, own))
                rooms.append(room)
                events += own
                progress(f"{room}: {len(own)} message(s) of {puppet}")
        if redact and not dry_run:
            for puppet, room, own in found:
                for event_id in own:
                    await matrix.redact(puppet, room, event_id)
                    redacted += 1
                progress(f"{room}: redacted {len(own)} message(s)")
        erasure = await _erase_stored(db, network, remote_ids, puppets, tuple(events),
                                      words, dry_run=dry_run, rooms=len(rooms),
                                      redacted=redacted)
        erasure.rooms, erasure.messages, erasure.redacted = rooms, len(events), redacted
        erasure.dry_run = dry_run
        if dry_run:
            return erasure
        for puppet in puppets:
            joined = await matrix.joined_rooms(puppet)
            # Leave first: a profile change rewrites the member event in every room the
            # puppet is in, in the background, and Synapse refuses a leave racing it.
            for room in joined:
                await matrix.leave(puppet, room)
            try:
                await matrix.clear_profile(puppet)
            except MatrixError:
                if joined or puppet in {p for p, _room, _own in found}:
                    raise
                # A puppet the homeserver never registered (it never posted) has no
                # profile to clear.
    return erasure


async def _erase_stored(db: Database, network: Network, remote_ids: tuple[str, ...],
                        puppets: tuple[str, ...], events: tuple[str, ...], words: str, *,
                        dry_run: bool, rooms: int, redacted: int) -> Erasure:
    # A dry run only counts: a reading session, no transaction to roll back.
    async with (db.sessions() if dry_run else db.transaction()) as session:
        person = ErasedPerson(network=network.name, remote_ids=remote_ids, puppets=puppets,
                              event_ids=events,
                              message_ids=await message_ids_of(session, network.name, events),
                              words=(words.strip(),))
        tables, pending = await erase_core(session, person, dry_run=dry_run,
                                           pseudonyms=tuple(pseudonym(p) for p in puppets))
        if network.erase_person is not None:
            tables.update(await network.erase_person(session, person, dry_run))
        erasure = Erasure(person=person, tables=tables, pending=pending)
        if not dry_run:
            # What was done, never whom: the erased identity is not written back here.
            await audit.record(session, audit.Actor(None, VIA_CLI), None, "erase",
                               network=network.name, rows=dict(sorted(tables.items())),
                               rooms_left=rooms, messages_redacted=redacted)
    return erasure


def render(erasure: Erasure) -> str:
    verb = "would remove" if erasure.dry_run else "removed"
    lines = [f"{'Dry run: nothing changed. ' if erasure.dry_run else ''}"
             f"{erasure.person.network} identity: {len(erasure.person.remote_ids)} found, "
             f"{len(erasure.person.puppets)} puppet(s)"]
    for table, rows in sorted(erasure.tables.items()):
        what = "identity scrubbed from" if table == "audit_log" else verb
        lines.append(f"  {table}: {what} {rows} row(s)")
    rooms = len(erasure.rooms)
    lines.append(f"  Matrix: {'would clear' if erasure.dry_run else 'cleared'} the puppets' "
                 f"display name and avatar; {'would leave' if erasure.dry_run else 'left'} "
                 f"{rooms} room(s)")
    if erasure.dry_run:
        lines.append(f"  Matrix: {erasure.messages} message(s) of the puppets found "
                     "(--redact would redact them)")
    else:
        lines.append(f"  Matrix: redacted {erasure.redacted} of {erasure.messages} "
                     "message(s) of the puppets" + ("" if erasure.redacted
                                                    else " (--redact redacts them)"))
    if erasure.pending:
        lines.append(f"  {erasure.pending} delivery(ies) naming them are still pending; they "
                     "are delivered first: run the command again afterwards to remove them")
    return "\n".join(lines) + "\n"
