"""The core's tables. Every change here needs a migration in alembic/versions/.

Each network keeps its own tables in its folder (``bridge/<network>/models.py``), on this
``Base`` and so in one metadata, with migrations in its own alembic version location.

Times are UNIX seconds as floats: they compare the same way on SQLite and PostgreSQL and the
queue queries need nothing but ``<``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants room to grow.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Matrix IDs are bounded at 255 bytes by the spec; remote IDs get the same room.
ID = String(255)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class AppserviceTransaction(Base):
    """Transaction IDs the homeserver has sent; a repeat is acknowledged and ignored."""

    __tablename__ = "appservice_transaction"

    txn_id: Mapped[str] = mapped_column(ID, primary_key=True)
    received_at: Mapped[float] = mapped_column(Float)


class InboxItem(Base):
    """A Matrix event stored before the transaction is acknowledged, handled in room order."""

    __tablename__ = "inbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    room_id: Mapped[str] = mapped_column(ID)
    # Unique: the same event arriving in a second transaction must not take effect twice.
    event_id: Mapped[str] = mapped_column(ID, unique=True)
    event: Mapped[str] = mapped_column(Text)
    received_at: Mapped[float] = mapped_column(Float)
    # pending -> done | failed (failed after repeated handler errors; logged, room goes on)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_inbox_pending", "state", "room_id", "id"),)


class OutboxItem(Base):
    """A delivery to one side (Matrix or a remote network), kept until that side confirms it.

    Items of one *lane* (for example ``matrix:!room`` or ``email:!room``) are delivered
    strictly in ``id`` order; different lanes proceed in parallel.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    lane: Mapped[str] = mapped_column(String(600))
    network: Mapped[str] = mapped_column(String(32))
    room_id: Mapped[str] = mapped_column(ID)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    # pending -> done | failed
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    # A worker that took the item holds it until then; after a crash it becomes free again.
    claimed_until: Mapped[float] = mapped_column(Float, default=0.0)
    # The process (bridge_process.id) holding the claim: its heartbeat renews
    # claimed_until while it lives, so only a dead holder's claims run out.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    # When the item last failed for good (``!bridge failed`` lists newest first), and
    # whether its room was told: an item put back by ``!bridge retry`` that fails again is
    # not announced twice.
    failed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    failure_reported: Mapped[bool] = mapped_column(Boolean, default=False,
                                                   server_default=false())

    __table_args__ = (
        Index("ix_outbox_pending", "state", "next_attempt_at"),
        Index("ix_outbox_lane", "lane", "state", "id"),
        Index("ix_outbox_claimed_by", "claimed_by"),
    )


class HeldDelivery(Base):
    """A remote event stored but held back from its lane while another live process may
    still be storing earlier events of the same conversation (bridge/core/heartbeat.py):
    moved into the outbox in ``sort_key`` order (the remote side's own timestamp)."""

    __tablename__ = "outbox_held"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    lane: Mapped[str] = mapped_column(String(600))
    network: Mapped[str] = mapped_column(String(32))
    room_id: Mapped[str] = mapped_column(ID)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    sort_key: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_outbox_held_received_at", "received_at"),)


class BridgeProcess(Base):
    """A running bridge process, kept alive by its heartbeat (bridge/core/heartbeat.py)."""

    __tablename__ = "bridge_process"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    # Past this, the process is taken for dead: its claims and leases are free.
    expires_at: Mapped[float] = mapped_column(Float)
    # Everything its remote intakes received before this moment is stored.
    intake_watermark: Mapped[float] = mapped_column(Float)


class BridgeLease(Base):
    """Work that runs in one process at a time (bridge/core/leases.py)."""

    __tablename__ = "bridge_lease"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    acquired_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class Portal(Base):
    """A Matrix room the bot is in. With links it is a bridged conversation."""

    __tablename__ = "portal"

    room_id: Mapped[str] = mapped_column(ID, primary_key=True)
    # A direct chat with the bot: commands there need no prefix.
    is_direct: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    # What people call the room, as last seen in its state (m.room.name, canonical alias):
    # for listings and the report, which must not ask the homeserver for every room.
    name: Mapped[str | None] = mapped_column(Text, nullable=True)
    alias: Mapped[str | None] = mapped_column(ID, nullable=True)
    # The department a migration plan put the room in (the report groups by it).
    department: Mapped[str | None] = mapped_column(Text, nullable=True)


class Link(Base):
    """Ties a portal to one remote conversation (a Slack channel, an email address)."""

    __tablename__ = "link"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    room_id: Mapped[str] = mapped_column(ID, ForeignKey("portal.room_id", ondelete="CASCADE"))
    network: Mapped[str] = mapped_column(String(32))
    remote_id: Mapped[str] = mapped_column(ID)
    remote_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Connector-specific settings of this link (JSON object).
    settings: Mapped[str] = mapped_column(Text, default="{}")
    created_by: Mapped[str] = mapped_column(ID)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        # A remote conversation in one room only: otherwise a message would fan out twice.
        # A room may have several links of one network (two Slack channels); how many a
        # network allows is its connector's to say (Connector.max_links_per_room).
        UniqueConstraint("network", "remote_id"),
    )


class Puppet(Base):
    """A Matrix ghost user standing for one remote person."""

    __tablename__ = "puppet"

    user_id: Mapped[str] = mapped_column(ID, primary_key=True)
    network: Mapped[str] = mapped_column(String(32))
    remote_id: Mapped[str] = mapped_column(ID)
    displayname: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The remote avatar's identity (URL or hash) and the mxc it was uploaded as.
    avatar_source: Mapped[str | None] = mapped_column(Text, nullable=True)
    avatar_mxc: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("network", "remote_id"),)


class MessageMapping(Base):
    """Which Matrix event a remote message became (or came from), both ways."""

    __tablename__ = "message_mapping"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    room_id: Mapped[str] = mapped_column(ID)
    event_id: Mapped[str] = mapped_column(ID)
    network: Mapped[str] = mapped_column(String(32))
    # The remote conversation the message lives in (channel, mailbox) and its ID there.
    remote_space: Mapped[str] = mapped_column(ID)
    remote_id: Mapped[str] = mapped_column(String(998))
    # A remote message can become several Matrix events (text plus attachments).
    part: Mapped[int] = mapped_column(Integer, default=0)
    # Matrix thread root of the message, if it is in a thread.
    thread_root: Mapped[str | None] = mapped_column(ID, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("network", "remote_space", "remote_id", "part"),
        Index("ix_message_mapping_event", "event_id"),
    )


class InboundKey(Base):
    """Natural keys of remote inbound items (Slack event id, email Message-ID per room).

    Checked in the same transaction that queues the item's effects, so a retry by the remote
    side changes nothing.
    """

    __tablename__ = "inbound_key"

    network: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(998), primary_key=True)
    received_at: Mapped[float] = mapped_column(Float)


class AuditEntry(Base):
    """One administrative action: who did what to which room, from where (a bot command,
    the provisioning API, a migration plan, the admin page). Written in the transaction of
    the action itself, so the log holds exactly what was done."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    # A Matrix user ID, or "operator" for the provisioning API's shared secret.
    actor: Mapped[str] = mapped_column(ID)
    # command | api | plan | admin-page
    via: Mapped[str] = mapped_column(String(32))
    room_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    # link, unlink, subscribe, unsubscribe, policy, retry, create-room, ...
    action: Mapped[str] = mapped_column(String(64))
    # What exactly (JSON object): the network and remote ID, the address, the policy.
    details: Mapped[str] = mapped_column(Text, default="{}")

    __table_args__ = (Index("ix_audit_log_at", "at"), Index("ix_audit_log_room", "room_id", "at"))


class Activity(Base):
    """Messages written per room, day, side and person: what the progress report counts.

    ``person`` is a pseudonym (a hash of the Matrix user or puppet ID), enough to count
    distinct people without keeping who wrote what."""

    __tablename__ = "activity"

    room_id: Mapped[str] = mapped_column(ID, primary_key=True)
    # UTC day, YYYY-MM-DD: compares as text the same way on SQLite and PostgreSQL.
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    # "matrix" or a network's name (slack, email)
    side: Mapped[str] = mapped_column(String(32), primary_key=True)
    person: Mapped[str] = mapped_column(String(32), primary_key=True)
    messages: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_activity_day", "day"),)


class IdentityLink(Base):
    """Ties a remote identity (a Slack user, an email address) to a person's own Matrix
    account: their remote messages may then appear as that account (double puppeting),
    mentions of either side point at it, and the puppet that stood for them retires.

    ``remote_id`` is the identity as the network's puppets know it (the puppet's own
    ``remote_id``: Slack ``<team id>_<user id>``, email the address), so the puppet of a
    linked person is found without asking the network; ``label`` is how people write it
    (``rathaus:U0ANNA``, the address)."""

    __tablename__ = "identity_link"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    matrix_user_id: Mapped[str] = mapped_column(ID)
    network: Mapped[str] = mapped_column(String(32))
    remote_id: Mapped[str] = mapped_column(ID)
    label: Mapped[str] = mapped_column(Text)
    # "admin" (a bridge admin, the API, a plan) or "self" (proven with a one-time code).
    proven_by: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(ID)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        # One Matrix account per remote identity: otherwise whose account would post?
        UniqueConstraint("network", "remote_id"),
        Index("ix_identity_link_matrix_user", "matrix_user_id"),
    )


class IdentityClaim(Base):
    """A self-service link waiting for its one-time code (``me slack …`` / ``me email …``).

    Only a hash of the code is kept; the claim ends when confirmed, when it expires, or
    when its tries are used up."""

    __tablename__ = "identity_claim"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    matrix_user_id: Mapped[str] = mapped_column(ID)
    network: Mapped[str] = mapped_column(String(32))
    remote_id: Mapped[str] = mapped_column(ID)
    label: Mapped[str] = mapped_column(Text)
    code_hash: Mapped[str] = mapped_column(String(128))
    tries_left: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_identity_claim_matrix_user", "matrix_user_id"),)
