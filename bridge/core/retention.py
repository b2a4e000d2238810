"""The retention job: deletes what is older than the ``retention.*`` config allows.

One entry point, :func:`run_retention`, run by ``bridge run`` as a scheduled job of the
housekeeper (bridge/core/heartbeat.py: in one process of all, at start or take-over, then
once a day; a failed run is logged and tried at the next turn). It deletes in small
batches, each its own short transaction, so that the queues' writers never wait long on
it; two processes running it at once on one PostgreSQL split the rows between them (see
bridge/db/retention.py).

What a table holds and which key limits it is declared beside the table: the core's in
bridge/db/retention.py, each network's in its registry entry (``Network.stored_data``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from bridge.config import RetentionConfig
from bridge.db.engine import Database
from bridge.db.models import Base
from bridge.db.people import remove_stale_claims
from bridge.db.retention import CORE_TABLES, StoredData, delete_older_batch
from bridge.networks import load_models, networks

log = logging.getLogger("bridge.retention")

#: Rows per delete: small enough that a batch takes milliseconds even on a busy database.
BATCH = 500
DAY = 86400.0
CLAIM_KEPT_SECONDS = 3600.0


def declarations() -> list[StoredData]:
    """Every table's declaration: the core's, then each network's."""
    found = list(CORE_TABLES)
    for known in networks():
        found += known.stored_data
    return found


def schema_tables() -> list[str]:
    """The tables of the core and of every network known now, by name (``Base.metadata`` may
    also hold tables of a network imported once and since unregistered, as in tests)."""
    load_models()
    modules = {"bridge.db.models", *(known.models for known in networks() if known.models)}
    return sorted({mapper.local_table.name for mapper in Base.registry.mappers  # type: ignore[attr-defined]
                   if mapper.class_.__module__ in modules})


async def run_retention(db: Database, retention: RetentionConfig, *,
                        now: float | None = None, batch: int = BATCH) -> dict[str, int]:
    """Delete every row older than its retention allows; returns the rows deleted per table.

    ``now`` is the moment the ages are measured from (tests move it instead of waiting).
    Safe to run in two processes at once; safe to stop at any point (what was deleted stays
    deleted, the rest goes next time)."""
    load_models()
    moment = time.time() if now is None else now
    deleted: dict[str, int] = {}
    for data in declarations():
        days = retention.days(data.retention) if data.retention else 0
        if not days or data.age_column is None:
            continue  # 0 keeps for ever
        table = Base.metadata.tables[data.table]
        cutoff = moment - days * DAY
        total = 0
        while True:
            async with db.transaction() as session:
                count = await delete_older_batch(session, table, data, cutoff, batch)
            total += count
            if count < batch:
                break
            await asyncio.sleep(0)  # let the bridge's own work through between batches
        if total:
            deleted[data.table] = total
    # Self-service codes live minutes; a claim counts for the sending limits an hour after
    # it expired (bridge/people/self_service.py), then nothing needs it.
    async with db.transaction() as session:
        stale = await remove_stale_claims(session, older_than=moment - CLAIM_KEPT_SECONDS)
    if stale:
        deleted["identity_claim"] = stale
    if deleted:
        log.info("retention: deleted %s", ", ".join(f"{n} from {t}"
                                                    for t, n in sorted(deleted.items())))
    return deleted
