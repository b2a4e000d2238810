"""The SQL of ``bridge erase`` in the core's tables (a network's own tables: its
``Network.erase_person``). Every function counts what it would remove with ``dry_run``, and
removes it otherwise; each returns rows per table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.db.models import (
    Activity,
    AuditEntry,
    IdentityClaim,
    IdentityLink,
    InboxItem,
    MessageMapping,
    OutboxItem,
    Puppet,
)

ERASED = "(erased)"


@dataclass(frozen=True, slots=True)
class ErasedPerson:
    """Whom ``bridge erase`` removes, as each part of the bridge knows them."""

    #: The network (``email``, ``slack``) and the person's remote IDs there, as puppets know
    #: them (an address in lower case; Slack ``T…_U…``).
    network: str
    remote_ids: tuple[str, ...]
    #: Their puppets' Matrix user IDs.
    puppets: tuple[str, ...]
    #: The Matrix events their puppets sent (found in the rooms).
    event_ids: tuple[str, ...] = ()
    #: The remote IDs (a mail's Message-ID, a Slack ts) of their messages, from the mappings
    #: of those events, for a network's own tables (email's threads).
    message_ids: tuple[str, ...] = field(default=())
    #: How the person was named (the address, ``rathaus:U0ANNA``); scrubbed from the audit
    #: log's earlier entries.
    words: tuple[str, ...] = ()


async def _remove(session: AsyncSession, table: Any, where: Any, dry_run: bool) -> int:
    if dry_run:
        return int(await session.scalar(select(func.count()).select_from(table).where(where))
                   or 0)
    result = await session.execute(delete(table).where(where))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def message_ids_of(session: AsyncSession, network: str,
                         event_ids: tuple[str, ...]) -> tuple[str, ...]:
    rows = await session.scalars(select(MessageMapping.remote_id).where(
        MessageMapping.network == network, MessageMapping.event_id.in_(event_ids)).distinct())
    return tuple(sorted(rows))


def _mentions(column: Any, needles: tuple[str, ...]) -> Any:
    return or_(*(column.contains(needle, autoescape=True) for needle in needles))


async def erase_core(session: AsyncSession, person: ErasedPerson, *, dry_run: bool,
                     pseudonyms: tuple[str, ...]) -> tuple[dict[str, int], int]:
    """Remove what the core's tables hold about the person: (rows per table, deliveries
    still pending that name them, left to finish: they were accepted)."""
    removed: dict[str, int] = {}
    tables = {model.__tablename__: model.__table__ for model in (  # type: ignore[attr-defined]
        MessageMapping, Puppet, IdentityLink, IdentityClaim, Activity, InboxItem,
        OutboxItem)}
    removed["message_mapping"] = await _remove(
        session, tables["message_mapping"],
        MessageMapping.event_id.in_(person.event_ids), dry_run) if person.event_ids else 0
    removed["puppet"] = await _remove(session, tables["puppet"],
                                      Puppet.user_id.in_(person.puppets), dry_run)
    for name, model in (("identity_link", IdentityLink), ("identity_claim", IdentityClaim)):
        removed[name] = await _remove(session, tables[name], (model.network == person.network)
                                      & model.remote_id.in_(person.remote_ids), dry_run)
    removed["activity"] = await _remove(session, tables["activity"],
                                        Activity.person.in_(pseudonyms), dry_run)
    # Stored messages: finished queue rows that name them (their messages, and mail that
    # went to them). Pending ones were accepted and are delivered first; a second run, or
    # retention, takes them later.
    needles = tuple(sorted({*person.puppets, *person.remote_ids}))
    removed["inbox"] = await _remove(
        session, tables["inbox"],
        InboxItem.state.in_(("done", "failed")) & _mentions(InboxItem.event, needles), dry_run)
    removed["outbox"] = await _remove(
        session, tables["outbox"],
        OutboxItem.state.in_(("done", "failed")) & _mentions(OutboxItem.payload, needles),
        dry_run)
    pending = int(await session.scalar(select(func.count()).select_from(OutboxItem).where(
        OutboxItem.state == "pending", _mentions(OutboxItem.payload, needles))) or 0)
    removed["audit_log"] = await _scrub_audit(session, (*needles, *person.words), dry_run)
    return removed, pending


#: Details that say what kind of thing an entry concerns, never whom.
_NOT_PERSONAL = frozenset({"network", "reactivated", "policy", "proven_by"})


def _scrubbed(value: Any, key: str = "") -> Any:
    if isinstance(value, str):
        return value if key in _NOT_PERSONAL else ERASED
    if isinstance(value, list):
        return [_scrubbed(v, key) for v in value]
    if isinstance(value, dict):
        return {k: _scrubbed(v, k) for k, v in value.items()}
    return value


async def _scrub_audit(session: AsyncSession, needles: tuple[str, ...], dry_run: bool) -> int:
    """Earlier audit entries that concern the person keep what was done (a subscription, a
    link) but no longer whom: every detail naming someone (the address, their name, the
    Matrix account it was linked to) becomes "(erased)"."""
    needles = tuple(n for n in needles if n)
    rows = (await session.execute(select(AuditEntry.id, AuditEntry.details)
                                  .where(_mentions(AuditEntry.details, needles)))).all()
    if not dry_run:
        for row in rows:
            details = _scrubbed(json.loads(row.details or "{}"))
            await session.execute(update(AuditEntry).where(AuditEntry.id == row.id).values(
                details=json.dumps(details, sort_keys=True, ensure_ascii=False)))
    return len(rows)


async def puppet_remote_ids(session: AsyncSession, network: str, *,
                            suffix: str) -> list[str]:
    """Remote IDs of the network's puppets that end in ``suffix``."""
    rows = await session.scalars(select(Puppet.remote_id).where(
        Puppet.network == network, Puppet.remote_id.endswith(suffix, autoescape=True)))
    return sorted(set(rows))


async def identity_remote_ids(session: AsyncSession, network: str, label: str) -> list[str]:
    """Remote IDs of the network's identity links written as ``label``."""
    rows = await session.scalars(select(IdentityLink.remote_id).where(
        IdentityLink.network == network, func.lower(IdentityLink.label) == label.lower()))
    return sorted(set(rows))
