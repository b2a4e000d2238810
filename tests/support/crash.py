"""A bridge process that dies right after a delivery went out, before it recorded that, as
after a SIGKILL; and the lease that then runs out, with the clock moved instead of waited
for. For the tests of deliveries taken up again after a crash (found by bench/faults.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import text

from bridge.core.outbox import OutboxWorker
from bridge.db.queues import Delivery


def _body(payload: dict[str, Any]) -> Any:
    content = payload.get("content") or (payload.get("event") or {}).get("content") or {}
    return content.get("body")


def dies_after_delivering(worker: OutboxWorker, body: str, delivered: asyncio.Event) -> None:
    """The delivery of the message with ``body`` goes out, then the process is gone: its
    success is never recorded and its claim stays until the lease runs out. Other
    deliveries are recorded as usual."""
    finish = worker._finish

    async def died(item: Delivery, result: str | None) -> Delivery | None:
        if _body(item.payload) != body:
            return await finish(item, result)
        delivered.set()
        raise asyncio.CancelledError

    worker._finish = died  # type: ignore[method-assign]


async def lease_runs_out(hub: Any, network: str) -> None:
    """The dead process's claim in ``network`` lapses now (exactly one is expected)."""
    async with hub.db.transaction() as session:
        changed = await session.execute(text(
            "UPDATE outbox SET claimed_until = :past WHERE state = 'pending' "
            "AND network = :network AND claimed_until > 0"),
            {"past": time.time() - 1, "network": network})
        assert changed.rowcount == 1, "no claim of a dead process in the outbox"
    hub.wake_outbox()


async def outbox_done(hub: Any, tries: int = 300) -> None:
    """Until every outbox item is done (or fails the test)."""
    pending = None
    for _ in range(tries):
        async with hub.db.sessions() as session:
            pending = await session.scalar(text(
                "SELECT count(*) FROM outbox WHERE state <> 'done'"))
        if not pending:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{pending} outbox item(s) not delivered")
