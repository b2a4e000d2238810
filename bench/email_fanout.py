"""Benchmark: one room message mailed to many subscribers through the bridge's outbox.

The bridge (its own process, pinned to one core) relays mail through an SMTP sink (aiosmtpd,
testkit/smtp_sink.py) that runs in this process on the other core. A room is linked
and ``--subscribers`` addresses subscribe to it through bot commands (in transactions, as a
homeserver delivers them). Then one m.room.message is sent into the room in a transaction,
and the bench measures the time until the sink has received one mail for every subscriber.
The outbox sends one mail per subscriber, over a pool of reused SMTP connections
(``email.smtp_out.max_connections``, default 4).

Target: all 500 mails in under 10 s. Run ``python bench/email_fanout.py --help`` for the
options; bench/README.md explains the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import verdict
from email_common import (
    USER,
    BenchError,
    CpuMeter,
    Harness,
    Outcome,
    add_common_args,
    check_common_args,
    german_text,
    header,
    histogram_delta,
    run,
)

from testkit.smtp_sink import Received, SmtpSink

TARGET_SECONDS = 10.0
SUBSCRIBER_DOMAIN = "stadt.example"


class TimedList(list[Received]):
    """The sink's list of received mails, noting when each arrived (time.monotonic())."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Received) -> None:
        self.times.append(time.monotonic())
        super().append(item)


@dataclass
class Results:
    database: str = ""
    startup_seconds: float = math.nan
    subscribers: int = 0
    subscribe_seconds: float = math.nan
    put_at: float = 0.0
    acked_at: float = 0.0
    first_mail: float = math.nan
    last_mail: float = math.nan
    mails: int = 0
    duplicates: int = 0
    missing: int = 0
    mail_bytes: int = 0
    connections: int = 0
    cpu: CpuMeter | None = None
    outbox_wait_ms: float = math.nan  # the bridge's mean queued -> sent for these mails
    arrivals: list[float] = field(default_factory=list)
    outcome: Outcome = field(default_factory=Outcome)
    wall_seconds: float = math.nan

    @property
    def seconds(self) -> float:
        return self.last_mail - self.put_at

    def summary(self, met: bool) -> dict[str, Any]:
        return {
            "database": self.database, "targets_met": met, "subscribers": self.subscribers,
            "seconds": round(self.seconds, 2),
            "first_mail_seconds": round(self.first_mail - self.put_at, 3),
            "mails_per_second": round(self.mails / self.seconds, 1) if self.seconds else None,
            "duplicates": self.duplicates, "missing": self.missing,
            "subscribe_seconds": round(self.subscribe_seconds, 2),
            "relay_connections": self.connections,
            "bridge_cpu_share": round(self.cpu.bridge / self.cpu.seconds, 2) if self.cpu else None,
            "failures": self.outcome.failures.total,
        }


async def wait_mails(sink: SmtpSink, addresses: set[str], timeout: float,
                     harness: Harness) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = {a.lower() for r in sink.received for a in r.rcpt_tos} & addresses
        if len(got) >= len(addresses):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the sink received mail for {len(got)} of {len(addresses)} "
                             f"subscribers within {timeout:.0f}s:\n{harness.log_tail()}")
        harness.check_alive()
        await asyncio.sleep(0.01)


async def benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results(subscribers=args.subscribers)
    sink = SmtpSink()
    received = TimedList()
    sink.received = received
    await sink.start()
    harness = Harness(args, workdir, relay_port=sink.port,
                      max_connections=args.max_connections)
    try:
        await harness.start()
        assert harness.bridge is not None
        results.database = harness.database_name
        results.startup_seconds = harness.startup_seconds

        # Warm-up, not measured: a room with two subscribers gets one message (mail
        # composition, the relay connection and the outbox's email lanes run once).
        warm = [f"warm{i}@{SUBSCRIBER_DOMAIN}" for i in range(2)]
        print("warm-up: a room with 2 subscribers, one message ...")
        warm_room, _ = await harness.email_room("vorzimmer", warm)
        await harness.put([harness.event(warm_room, USER, {
            "msgtype": "m.text", "body": "Guten Morgen, die Sitzung beginnt um 10 Uhr."})])
        await wait_mails(sink, set(warm), args.timeout, harness)

        addresses = [f"buerger{i:04d}@{SUBSCRIBER_DOMAIN}" for i in range(args.subscribers)]
        print(f"linking a room and subscribing {len(addresses)} addresses (bot commands, "
              f"{args.batch} per transaction) ...")
        started = time.monotonic()
        room_id, _ = await harness.email_room("rathaus", addresses, batch=args.batch)
        results.subscribe_seconds = time.monotonic() - started
        print(f"  {results.subscribe_seconds:.1f} s")

        await asyncio.sleep(0.5)
        connections_before = sink.connections
        already = len(received)
        body = german_text(args.body_kb * 1024, seed=7)
        event = harness.event(room_id, USER, {"msgtype": "m.text", "body": body})
        before = await harness.metrics()
        print(f"one message ({args.body_kb} KB) into the room, to {len(addresses)} "
              "subscribers ...")
        cpu = CpuMeter(harness.bridge.pid)
        results.put_at = time.monotonic()
        await harness.put([event])
        results.acked_at = time.monotonic()
        await wait_mails(sink, set(addresses), args.timeout, harness)
        results.cpu = cpu.stop()
        await asyncio.sleep(0.5)  # duplicates, if any, would come now
        after = await harness.metrics()
        ours = [(t, r) for t, r in zip(received.times[already:], received[already:],
                                       strict=True)
                if any(a.lower() in addresses for a in r.rcpt_tos)]
        counts = Counter(a.lower() for _, r in ours for a in r.rcpt_tos)
        results.arrivals = [t for t, _ in ours]
        # The last first-arrival per address: when every subscriber had their mail.
        first_per_address: dict[str, float] = {}
        for t, r in ours:
            for a in r.rcpt_tos:
                first_per_address.setdefault(a.lower(), t)
        results.first_mail = min(first_per_address.values())
        results.last_mail = max(first_per_address.values())
        results.mails = len(first_per_address)
        results.duplicates = sum(n - 1 for n in counts.values() if n > 1)
        results.missing = len(set(addresses) - set(counts))
        results.mail_bytes = sum(len(r.raw) for _, r in ours) // max(len(ours), 1)
        results.connections = sink.connections - connections_before
        count, total = histogram_delta(before, after, "bridge_event_latency_seconds",
                                       network="email", direction="out")
        results.outbox_wait_ms = 1000 * total / count if count else math.nan
        results.outcome = await harness.outcome()
    finally:
        await harness.close()
        await sink.stop()
    return results


def report(args: argparse.Namespace, r: Results) -> bool:
    ok = r.seconds < TARGET_SECONDS and r.missing == 0 and r.duplicates == 0
    header("bridge email fan-out benchmark", args, r.database)
    print(f"start-up until ready:             {r.startup_seconds:8.2f} s")
    print(f"{r.subscribers} subscribe commands answered in {r.subscribe_seconds:.1f} s "
          f"({r.subscribers / r.subscribe_seconds:.0f} commands/s)")
    print(f"one message of {args.body_kb} KB -> {r.subscribers} mails of "
          f"{r.mail_bytes / 1024:.1f} KB, relay pool of "
          f"{args.max_connections or 'default (4)'} connections")
    print(f"  transaction acknowledged after  {1000 * (r.acked_at - r.put_at):8.1f} ms")
    print(f"  first mail at the sink after    {r.first_mail - r.put_at:8.2f} s")
    print(f"  last mail at the sink after     {r.seconds:8.2f} s  "
          f"({r.mails / (r.last_mail - r.first_mail) if r.last_mail > r.first_mail else 0:.0f}"
          " mails/s from the first to the last)")
    print(f"  mails: {r.mails} subscribers reached, {r.missing} missing, {r.duplicates} "
          f"duplicates; the bridge opened {r.connections} SMTP connections to the sink "
          "(more may have stayed open from the warm-up)")
    print(f"  bridge's own mean, queued -> sent per mail: {r.outbox_wait_ms:.0f} ms")
    if r.cpu is not None:
        print(f"  {r.cpu.line()}")
        print(f"  bridge CPU per mail: {1000 * r.cpu.bridge / max(r.mails, 1):.2f} ms")
    r.outcome.print(r.wall_seconds)
    print("-" * 78)
    print(f"one message to {r.subscribers} subscribers: {r.seconds:.2f} s (target < "
          f"{TARGET_SECONDS:.0f} s, every subscriber exactly once) {verdict(ok)}")
    print("=" * 78)
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark mailing one room message to many subscribers.")
    parser.add_argument("--subscribers", type=int, default=500,
                        help="subscribers of the room (default 500)")
    parser.add_argument("--body-kb", type=int, default=2,
                        help="size of the message's text in KB (default 2)")
    parser.add_argument("--batch", type=int, default=50,
                        help="subscribe commands per transaction (default 50)")
    parser.add_argument("--max-connections", type=int, default=None,
                        help="email.smtp_out.max_connections (default: the bridge's, 4)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if min(args.subscribers, args.body_kb, args.batch) < 1:
        parser.error("--subscribers, --body-kb and --batch must be positive")
    check_common_args(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(args, benchmark, report)


if __name__ == "__main__":
    raise SystemExit(main())
