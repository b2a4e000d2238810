"""Queries on identity links (a remote identity tied to a person's Matrix account) and on
the self-service claims that wait for their one-time code."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.db.models import IdentityClaim, IdentityLink


@dataclass(frozen=True, slots=True)
class Identity:
    """One identity link. ``remote_id`` is the puppet's remote ID (Slack ``T…_U…``, an
    email address); ``label`` is how people write it (``rathaus:U0ANNA``)."""

    matrix_user_id: str
    network: str
    remote_id: str
    label: str
    proven_by: str
    created_by: str
    created_at: float


def _identity(row: IdentityLink) -> Identity:
    return Identity(matrix_user_id=row.matrix_user_id, network=row.network,
                    remote_id=row.remote_id, label=row.label, proven_by=row.proven_by,
                    created_by=row.created_by, created_at=row.created_at)


async def identity_for(session: AsyncSession, network: str, remote_id: str) -> Identity | None:
    """Whose Matrix account the remote identity is linked to, if anyone's."""
    row = await session.scalar(select(IdentityLink).where(
        IdentityLink.network == network, IdentityLink.remote_id == remote_id))
    return _identity(row) if row is not None else None


async def identities_of(session: AsyncSession, matrix_user_id: str) -> list[Identity]:
    """The remote identities linked to one Matrix account, by network then label."""
    rows = await session.scalars(select(IdentityLink)
                                 .where(IdentityLink.matrix_user_id == matrix_user_id)
                                 .order_by(IdentityLink.network, IdentityLink.label))
    return [_identity(row) for row in rows]


async def all_identities(session: AsyncSession, network: str | None = None) -> list[Identity]:
    """Every identity link (of one network), by Matrix account then network and label."""
    query = select(IdentityLink).order_by(IdentityLink.matrix_user_id, IdentityLink.network,
                                          IdentityLink.label)
    if network is not None:
        query = query.where(IdentityLink.network == network)
    return [_identity(row) for row in await session.scalars(query)]


async def add_identity(session: AsyncSession, *, matrix_user_id: str, network: str,
                       remote_id: str, label: str, proven_by: str,
                       created_by: str) -> Identity:
    """Insert a link. The caller checks :func:`identity_for` first: a remote identity that is
    linked already (to anyone) raises IntegrityError at commit."""
    row = IdentityLink(matrix_user_id=matrix_user_id, network=network, remote_id=remote_id,
                       label=label, proven_by=proven_by, created_by=created_by,
                       created_at=time.time())
    session.add(row)
    await session.flush()
    return _identity(row)


async def remove_identity(session: AsyncSession, network: str, remote_id: str) -> bool:
    """Delete the link of a remote identity; False if there was none."""
    result = await session.execute(delete(IdentityLink).where(
        IdentityLink.network == network, IdentityLink.remote_id == remote_id))
    return bool(getattr(result, "rowcount", 0))


# --- self-service claims -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    id: int
    matrix_user_id: str
    network: str
    remote_id: str
    label: str
    code_hash: str
    tries_left: int
    expires_at: float


def _claim(row: IdentityClaim) -> Claim:
    return Claim(id=row.id, matrix_user_id=row.matrix_user_id, network=row.network,
                 remote_id=row.remote_id, label=row.label, code_hash=row.code_hash,
                 tries_left=row.tries_left, expires_at=row.expires_at)


async def add_claim(session: AsyncSession, *, matrix_user_id: str, network: str,
                    remote_id: str, label: str, code_hash: str, tries: int,
                    lifetime: float, now: float | None = None) -> Claim:
    """A new claim, replacing the user's earlier claim of the same identity (a code asked
    for again makes the old one useless). The old row stays, with no tries left, until
    :func:`remove_stale_claims`: it still counts for :func:`codes_sent_since`."""
    await session.execute(update(IdentityClaim).where(
        IdentityClaim.matrix_user_id == matrix_user_id, IdentityClaim.network == network,
        IdentityClaim.remote_id == remote_id).values(tries_left=0))
    now = time.time() if now is None else now
    row = IdentityClaim(matrix_user_id=matrix_user_id, network=network, remote_id=remote_id,
                        label=label, code_hash=code_hash, tries_left=tries, created_at=now,
                        expires_at=now + lifetime)
    session.add(row)
    await session.flush()
    return _claim(row)


async def open_claims(session: AsyncSession, matrix_user_id: str,
                      now: float | None = None) -> list[Claim]:
    """The user's claims that have not expired and have tries left, newest first."""
    now = time.time() if now is None else now
    rows = await session.scalars(
        select(IdentityClaim)
        .where(IdentityClaim.matrix_user_id == matrix_user_id,
               IdentityClaim.expires_at > now, IdentityClaim.tries_left > 0)
        .order_by(IdentityClaim.id.desc()))
    return [_claim(row) for row in rows]


async def latest_claim(session: AsyncSession, matrix_user_id: str) -> Claim | None:
    """The user's newest claim, open or not (to say why a code no longer works)."""
    row = await session.scalar(select(IdentityClaim)
                               .where(IdentityClaim.matrix_user_id == matrix_user_id)
                               .order_by(IdentityClaim.id.desc()).limit(1))
    return _claim(row) if row is not None else None


async def codes_sent_since(session: AsyncSession, since: float, *,
                           matrix_user_id: str | None = None,
                           network: str | None = None, remote_id: str | None = None) -> int:
    """How many codes were sent since then: by one user, or to one remote identity."""
    query = select(func.count()).select_from(IdentityClaim).where(
        IdentityClaim.created_at > since)
    if matrix_user_id is not None:
        query = query.where(IdentityClaim.matrix_user_id == matrix_user_id)
    if network is not None and remote_id is not None:
        query = query.where(IdentityClaim.network == network,
                            IdentityClaim.remote_id == remote_id)
    return int(await session.scalar(query) or 0)


async def oldest_code_since(session: AsyncSession, since: float, *,
                            matrix_user_id: str | None = None, network: str | None = None,
                            remote_id: str | None = None) -> float | None:
    """When the oldest code counted by :func:`codes_sent_since` was sent."""
    query = select(func.min(IdentityClaim.created_at)).where(IdentityClaim.created_at > since)
    if matrix_user_id is not None:
        query = query.where(IdentityClaim.matrix_user_id == matrix_user_id)
    if network is not None and remote_id is not None:
        query = query.where(IdentityClaim.network == network,
                            IdentityClaim.remote_id == remote_id)
    value = await session.scalar(query)
    return float(value) if value is not None else None


async def take_a_try(session: AsyncSession, claim_id: int) -> int | None:
    """Use one try of the claim before its code is compared (so two guesses at once cannot
    both get the last try); the tries left after it, or None if it had none left."""
    result = await session.execute(
        update(IdentityClaim)
        .where(IdentityClaim.id == claim_id, IdentityClaim.tries_left > 0)
        .values(tries_left=IdentityClaim.tries_left - 1))
    if not getattr(result, "rowcount", 0):
        return None
    left = await session.scalar(select(IdentityClaim.tries_left)
                                .where(IdentityClaim.id == claim_id))
    return int(left or 0)


async def give_back_a_try(session: AsyncSession, claim_id: int) -> None:
    """Undo :func:`take_a_try` for a claim the code turned out not to be meant for."""
    await session.execute(update(IdentityClaim).where(IdentityClaim.id == claim_id)
                          .values(tries_left=IdentityClaim.tries_left + 1))


async def use_a_try(session: AsyncSession, claim_id: int) -> None:
    """Count a wrong code against the claim."""
    await session.execute(update(IdentityClaim).where(IdentityClaim.id == claim_id)
                          .values(tries_left=IdentityClaim.tries_left - 1))


async def close_claim(session: AsyncSession, claim_id: int) -> None:
    """The claim's code was used: it can never be used again (the row stays for
    :func:`codes_sent_since` until :func:`remove_stale_claims`)."""
    await session.execute(update(IdentityClaim).where(IdentityClaim.id == claim_id)
                          .values(tries_left=0))


async def remove_claim(session: AsyncSession, claim_id: int) -> None:
    await session.execute(delete(IdentityClaim).where(IdentityClaim.id == claim_id))


async def remove_stale_claims(session: AsyncSession, older_than: float | None = None) -> int:
    """Delete claims created before ``older_than`` (default: now) that expired or have no
    tries left; how many."""
    older_than = time.time() if older_than is None else older_than
    result = await session.execute(delete(IdentityClaim).where(
        IdentityClaim.created_at < older_than,
        (IdentityClaim.expires_at <= older_than) | (IdentityClaim.tries_left <= 0)))
    return int(getattr(result, "rowcount", 0) or 0)
