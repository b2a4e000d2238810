"""Self-service identity links, proven with a one-time code (the bot's ``me`` commands).

A user of the bridge's homeserver, in a direct chat with the bot, names a remote identity of
theirs (``me slack <workspace> <user id or address>``, ``me email <address>``); the network
sends that identity a one-time code (a Slack direct message, a mail:
:meth:`bridge.core.connector.Connector.send_person_code`), and ``me confirm <code>`` makes
the link through :func:`bridge.people.actions.link` with ``proven_by="self"``, so it has the
same checks, audit entry and follow-ups (double puppeting) as an admin's.

The rules, all kept in the database (``identity_claim``):

- a code is 8 random digits; only an HMAC of it is stored (keyed with the bridge's appservice
  token: the table alone does not give the codes away, not even by trying all 10^8);
- it expires after :data:`CODE_LIFETIME_SECONDS` and allows :data:`CODE_TRIES` tries; each
  try is taken before the code is compared, so guesses made at the same moment cannot share
  one; after the last, the claim is dead and a new code must be asked for;
- asking again for the same identity replaces the old code;
- a user may ask for :data:`CODES_PER_USER` codes, and one identity may be sent
  :data:`CODES_PER_IDENTITY`, per :data:`CODE_WINDOW_SECONDS` (nobody can flood a colleague's
  direct messages or mailbox), and an identity linked to someone else is refused before
  anything is sent.

The clock is ``hub.clock``, so tests can let codes expire without waiting.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from bridge.admin.audit import Actor
from bridge.core.errors import CommandError
from bridge.db import people as db
from bridge.people import actions

if TYPE_CHECKING:
    from bridge.core.hub import Hub

log = logging.getLogger("bridge.people")

CODE_LIFETIME_SECONDS = 30 * 60
CODE_TRIES = 5
CODE_DIGITS = 8
CODE_WINDOW_SECONDS = 60 * 60
CODES_PER_USER = 5
CODES_PER_IDENTITY = 3

_CODE = re.compile(f"[0-9]{{{CODE_DIGITS}}}")


def new_code() -> str:
    """8 random digits: one try in 20 million to guess it with 5 tries."""
    return "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))


def code_hash(hub: Hub, matrix_user_id: str, network: str, remote_id: str, code: str) -> str:
    """The code as stored: an HMAC bound to who asked and for which identity."""
    key = hub.config.appservice.as_token.encode()
    message = "\0".join((matrix_user_id, network, remote_id, code)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%H:%M UTC")


def _minutes(seconds: float) -> int:
    return max(1, int(seconds + 59) // 60)


def check_person(hub: Hub, matrix_user_id: str) -> None:
    """Only users of the bridge's homeserver link their own identities."""
    if not hub.is_local(matrix_user_id):
        raise CommandError(f"Only users of {hub.config.homeserver.domain} can link their own "
                           f"accounts here; {matrix_user_id} is not one.")


def ask_forms(hub: Hub) -> str:
    """``me slack <workspace> <…>`` or ``me email <address>``: how to ask for a code."""
    forms = [f"`me {network} {connector.me_words}`"
             for network, connector in sorted(hub.connectors.items())
             if connector.links_people]
    return " or ".join(forms) or "a `me <network>` command once a network is enabled"


# --- asking for a code -----------------------------------------------------------------------


async def request_code(hub: Hub, matrix_user_id: str, network: str, words: list[str]) -> str:
    """Send a one-time code to the identity ``words`` name on ``network``; the answer."""
    check_person(hub, matrix_user_id)
    connector, person = await actions.resolve(hub, network, words)
    display = connector.display_name
    now = hub.clock()
    since = now - CODE_WINDOW_SECONDS
    async with hub.db.sessions() as session:
        linked = await db.identity_for(session, network, person.remote_id)
        if linked is not None and linked.matrix_user_id == matrix_user_id:
            return f"{display} `{person.label}` is already linked to your account."
        if linked is not None:
            # Whose it is stays private: anyone of the homeserver can ask.
            raise CommandError(
                f"{display} `{person.label}` is already linked to another Matrix account, so "
                "no code was sent. If it is yours, ask your bridge administrator.")
    code = new_code()
    claim_ids: list[int] = []

    async def write(session: AsyncSession) -> None:
        # The limits are checked in the transaction that counts the new code.
        await _check_limits(session, matrix_user_id, network, person.remote_id,
                            f"{display} `{person.label}`", now)
        # Old rows age out here: a claim counts for the limits for an hour, then goes.
        await db.remove_stale_claims(session, older_than=since)
        claim = await db.add_claim(
            session, matrix_user_id=matrix_user_id, network=network,
            remote_id=person.remote_id, label=person.label,
            code_hash=code_hash(hub, matrix_user_id, network, person.remote_id, code),
            tries=CODE_TRIES, lifetime=CODE_LIFETIME_SECONDS, now=now)
        claim_ids.append(claim.id)

    # Written before it is sent (the limits count it at once); taken back if it cannot be.
    await hub.enqueue([], also=write)
    try:
        where = await connector.send_person_code(hub, person, code, matrix_user_id)
    except BaseException:
        async with hub.db.transaction() as session:
            await db.remove_claim(session, claim_ids[0])
        raise
    log.info("%s asked for a code for %s %s; sent by %s", matrix_user_id, network,
             person.label, where)
    return (f"I sent a code to {display} `{person.label}` ({where}). It is valid for "
            f"{CODE_LIFETIME_SECONDS // 60} minutes: send `me confirm <code>` here.")


async def _check_limits(session: AsyncSession, matrix_user_id: str, network: str,
                        remote_id: str, named: str, now: float) -> None:
    """Refuse a code beyond :data:`CODES_PER_USER` or :data:`CODES_PER_IDENTITY` an hour,
    saying when asking works again."""
    since = now - CODE_WINDOW_SECONDS
    mine = await db.codes_sent_since(session, since, matrix_user_id=matrix_user_id)
    if mine >= CODES_PER_USER:
        oldest = await db.oldest_code_since(session, since,
                                            matrix_user_id=matrix_user_id) or now
        free = oldest + CODE_WINDOW_SECONDS
        raise CommandError(
            f"You have asked for {mine} codes within the last hour, the most there may be; "
            f"no code was sent. You can ask again at {_when(free)} (in about "
            f"{_minutes(free - now)} minutes).")
    theirs = await db.codes_sent_since(session, since, network=network,
                                       remote_id=remote_id)
    if theirs >= CODES_PER_IDENTITY:
        oldest = await db.oldest_code_since(session, since, network=network,
                                            remote_id=remote_id) or now
        free = oldest + CODE_WINDOW_SECONDS
        raise CommandError(
            f"{named} has been sent {theirs} codes within the last hour, "
            f"the most there may be; no code was sent. You can ask again at {_when(free)} "
            f"(in about {_minutes(free - now)} minutes).")


# --- confirming --------------------------------------------------------------------------------


async def confirm(hub: Hub, matrix_user_id: str, typed: str) -> str:
    """Complete the link whose code this is; a wrong code costs each open claim a try."""
    check_person(hub, matrix_user_id)
    code = re.sub(r"[\s-]", "", typed)
    if not _CODE.fullmatch(code):
        raise CommandError(f"`{typed}` is not a code: a code is {CODE_DIGITS} digits, like "
                           "`12345678`. It did not cost a try.")
    now = hub.clock()
    matched: db.Claim | None = None
    left: dict[int, int] = {}
    async with hub.db.transaction() as session:
        claims = await db.open_claims(session, matrix_user_id, now=now)
        if not claims:
            latest = await db.latest_claim(session, matrix_user_id)
            raise CommandError(_no_open_claim(hub, latest, now))
        for claim in claims:
            remaining = await db.take_a_try(session, claim.id)
            if remaining is None:
                continue  # its last try went to another guess this moment
            expected = code_hash(hub, matrix_user_id, claim.network, claim.remote_id, code)
            if matched is None and hmac.compare_digest(expected, claim.code_hash):
                matched = claim
                await db.close_claim(session, claim.id)
            else:
                left[claim.id] = remaining
        if matched is not None:
            # The code was for that claim: the others were not guessed at.
            for claim_id in left:
                await db.give_back_a_try(session, claim_id)
    if matched is None:
        return _wrong_code(hub, claims, left)
    outcome = await actions.link(hub, Actor.command(matrix_user_id), matrix_user_id,
                                 matched.network, [matched.label], proven_by="self")
    connector = hub.connectors.get(matched.network)
    display = connector.display_name if connector is not None else matched.network
    if not outcome.changed:
        return f"{display} `{matched.label}` is already linked to your account."
    return (f"✅ {display} `{matched.label}` is now linked to your Matrix account. Send `me` "
            "to see your links.")


def _no_open_claim(hub: Hub, latest: db.Claim | None, now: float) -> str:
    again = f"Ask for a new one with {ask_forms(hub)}."
    if latest is None:
        return f"No code is waiting for you. {again}"
    if latest.tries_left <= 0:
        return (f"The code sent to `{latest.label}` can no longer be used: it was used, or "
                f"it was tried {CODE_TRIES} times. {again}")
    return (f"The code sent to `{latest.label}` has expired (codes are valid for "
            f"{CODE_LIFETIME_SECONDS // 60} minutes). {again}")


def _wrong_code(hub: Hub, claims: list[db.Claim], left: dict[int, int]) -> str:
    lines = ["That code is not right."]
    for claim in claims:
        remaining = left.get(claim.id, 0)
        if remaining > 0:
            lines.append(f"- `{claim.label}`: {remaining} "
                         f"{'try' if remaining == 1 else 'tries'} left.")
        else:
            lines.append(f"- `{claim.label}`: that was the last try; this code can no longer "
                         f"be used. Ask for a new one with {ask_forms(hub)}.")
    return "\n".join(lines)


# --- one's own links ---------------------------------------------------------------------------


async def own_links(hub: Hub, matrix_user_id: str) -> str:
    """``me``: the person's links and the codes waiting for confirmation."""
    check_person(hub, matrix_user_id)
    now = hub.clock()
    async with hub.db.sessions() as session:
        identities = await db.identities_of(session, matrix_user_id)
        claims = await db.open_claims(session, matrix_user_id, now=now)
    lines = []
    if identities:
        lines.append("**Your linked identities**")
        for identity in identities:
            how = ("proven by you" if identity.proven_by == "self"
                   else f"linked by {identity.created_by}")
            lines.append(f"- {actions.describe(identity, hub)} ({how}); remove it with "
                         f"`me unlink {identity.network} {identity.label}`")
    else:
        lines.append("No identities are linked to your account.")
    if claims:
        lines.append("**Codes waiting for `me confirm <code>`**")
        for claim in claims:
            connector = hub.connectors.get(claim.network)
            display = connector.display_name if connector is not None else claim.network
            lines.append(f"- {display} `{claim.label}`: valid until "
                         f"{_when(claim.expires_at)}, {claim.tries_left} "
                         f"{'try' if claim.tries_left == 1 else 'tries'} left")
    lines.append(f"Link one more with {ask_forms(hub)}.")
    return "\n".join(lines)


async def unlink_own(hub: Hub, matrix_user_id: str, network: str, words: list[str]) -> str:
    """``me unlink``: remove one of the person's OWN links (anyone else's is refused, without
    saying whose it is)."""
    check_person(hub, matrix_user_id)
    actions.people_connector(hub, network, started=False)
    typed = " ".join(words).strip()
    async with hub.db.sessions() as session:
        mine = await db.identities_of(session, matrix_user_id)
    wanted = [i for i in mine if i.network == network
              and typed.lower() in (i.label.lower(), i.remote_id.lower())]
    if not wanted:
        # Written another way (``rathaus U0ANNA``, a Slack user's address): the network
        # says who it is, then it must be one of the person's.
        try:
            found = await actions.find(hub, network, words)
        except CommandError:
            found = None
        wanted = [found] if found is not None and found in mine else []
    if not wanted:
        return (f"`{typed}` is not linked to your account, so nothing was unlinked. Send "
                "`me` to see your links.")
    outcome = await actions.unlink(hub, Actor.command(matrix_user_id), network,
                                   [wanted[0].label], matrix_user_id)
    return outcome.message
