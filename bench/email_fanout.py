"""Benchmark: one room message mailed to many subscribers through the bridge's outbox.

The bridge (its own process, pinned to one core) relays mail through an SMTP sink (aiosmtpd,
testkit/smtp_sink.py) that runs in this process on the other core. A room is linked
and ``--subscribers`` addresses subscribe to it through bot commands (in transactions, as a
homeserver delivers them). Then one m.room.message is sent into the room in a transaction,
and the bench measures the time until the sink has received one mail for every subscriber.
The outbox sends one mail per subscriber, over a pool of reused SMTP connections
(``email.smtp_out.max_connections``, default 4).

Before it, the same is done for a room of ``--compare`` (500) subscribers, to show that the
bridge's memory does not grow with the number of subscribers: its peak resident memory
during each fan-out (VmHWM, reset through /proc/<pid>/clear_refs right before the message)
is compared. Targets: all 5,000 mails in under 10 s, each subscriber exactly once, and the
peak memory growth flat (under 1 KiB more per additional subscriber); the bridge's CPU time
per mail is printed against 1 ms. Run ``python bench/email_fanout.py --help`` for the
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

from common import proc_status_kb, verdict
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
TARGET_CPU_MS_PER_MAIL = 1.0
# Memory "flat in the number of subscribers": the peak growth of a fan-out to N subscribers
# exceeds that of one to n by less than this per additional subscriber.
TARGET_BYTES_PER_SUBSCRIBER = 1024
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
class Phase:
    """One room message fanned out to ``subscribers`` subscribers."""

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
    rss_before_mb: float = math.nan
    peak_growth_mb: float = math.nan  # VmHWM (reset before the message) - VmRSS before
    hwm_reset: bool = False
    arrivals: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.last_mail - self.put_at

    @property
    def cpu_ms_per_mail(self) -> float:
        return 1000 * self.cpu.bridge / max(self.mails, 1) if self.cpu else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "subscribers": self.subscribers, "seconds": round(self.seconds, 2),
            "first_mail_seconds": round(self.first_mail - self.put_at, 3),
            "mails_per_second": round(self.mails / self.seconds, 1) if self.seconds else None,
            "duplicates": self.duplicates, "missing": self.missing,
            "subscribe_seconds": round(self.subscribe_seconds, 2),
            "relay_connections": self.connections,
            "bridge_cpu_share": round(self.cpu.bridge / self.cpu.seconds, 2) if self.cpu else None,
            "bridge_cpu_ms_per_mail": round(self.cpu_ms_per_mail, 3),
            "peak_growth_mb": round(self.peak_growth_mb, 1),
        }


@dataclass
class Results:
    database: str = ""
    startup_seconds: float = math.nan
    phases: list[Phase] = field(default_factory=list)  # the comparison room's first
    outcome: Outcome = field(default_factory=Outcome)
    wall_seconds: float = math.nan

    @property
    def main(self) -> Phase:
        return self.phases[-1]

    def bytes_per_added_subscriber(self) -> float:
        """Peak growth per subscriber beyond the comparison room's (nan without one)."""
        if len(self.phases) < 2:
            return math.nan
        small, big = self.phases[0], self.phases[-1]
        added = big.subscribers - small.subscribers
        if added <= 0:
            return math.nan
        return (big.peak_growth_mb - small.peak_growth_mb) * 1024 * 1024 / added

    def summary(self, met: bool) -> dict[str, Any]:
        return {
            "database": self.database, "targets_met": met,
            **self.main.summary(),
            "phases": [p.summary() for p in self.phases],
            "bytes_per_added_subscriber": round(self.bytes_per_added_subscriber()),
            "failures": self.outcome.failures.total,
        }


def reset_hwm(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


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


async def fan_out(args: argparse.Namespace, harness: Harness, sink: SmtpSink,
                  received: TimedList, number: int, size: int) -> Phase:
    """A room with ``size`` subscribers, and one message into it."""
    assert harness.bridge is not None
    phase = Phase(subscribers=size)
    addresses = [f"buerger{number}-{i:04d}@{SUBSCRIBER_DOMAIN}" for i in range(size)]
    print(f"linking a room and subscribing {len(addresses)} addresses (bot commands, "
          f"{args.batch} per transaction) ...")
    started = time.monotonic()
    room_id, _ = await harness.email_room(f"rathaus{number}", addresses, batch=args.batch)
    phase.subscribe_seconds = time.monotonic() - started
    print(f"  {phase.subscribe_seconds:.1f} s")

    await asyncio.sleep(0.5)
    connections_before = sink.connections
    already = len(received)
    body = german_text(args.body_kb * 1024, seed=7)
    event = harness.event(room_id, USER, {"msgtype": "m.text", "body": body})
    before = await harness.metrics()
    print(f"one message ({args.body_kb} KB) into the room, to {len(addresses)} "
          "subscribers ...")
    pid = harness.bridge.pid
    phase.rss_before_mb = proc_status_kb(pid, "VmRSS") / 1024
    phase.hwm_reset = reset_hwm(pid)
    cpu = CpuMeter(pid)
    phase.put_at = time.monotonic()
    await harness.put([event])
    phase.acked_at = time.monotonic()
    wanted = set(addresses)
    await wait_mails(sink, wanted, args.timeout, harness)
    phase.cpu = cpu.stop()
    phase.peak_growth_mb = proc_status_kb(pid, "VmHWM") / 1024 - phase.rss_before_mb
    await asyncio.sleep(0.5)  # duplicates, if any, would come now
    after = await harness.metrics()
    ours = [(t, r) for t, r in zip(received.times[already:], received[already:], strict=True)
            if any(a.lower() in wanted for a in r.rcpt_tos)]
    counts = Counter(a.lower() for _, r in ours for a in r.rcpt_tos)
    phase.arrivals = [t for t, _ in ours]
    # The last first-arrival per address: when every subscriber had their mail.
    first_per_address: dict[str, float] = {}
    for t, r in ours:
        for a in r.rcpt_tos:
            first_per_address.setdefault(a.lower(), t)
    phase.first_mail = min(first_per_address.values())
    phase.last_mail = max(first_per_address.values())
    phase.mails = len(first_per_address)
    phase.duplicates = sum(n - 1 for n in counts.values() if n > 1)
    phase.missing = len(wanted - set(counts))
    phase.mail_bytes = sum(len(r.raw) for _, r in ours) // max(len(ours), 1)
    phase.connections = sink.connections - connections_before
    count, total = histogram_delta(before, after, "bridge_event_latency_seconds",
                                   network="email", direction="out")
    phase.outbox_wait_ms = 1000 * total / count if count else math.nan
    return phase


async def benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results()
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

        sizes = [args.compare] if 0 < args.compare < args.subscribers else []
        for number, size in enumerate([*sizes, args.subscribers]):
            results.phases.append(await fan_out(args, harness, sink, received, number, size))
        results.outcome = await harness.outcome()
    finally:
        await harness.close()
        await sink.stop()
    return results


def report_phase(args: argparse.Namespace, p: Phase) -> None:
    print(f"{p.subscribers} subscribe commands answered in {p.subscribe_seconds:.1f} s "
          f"({p.subscribers / p.subscribe_seconds:.0f} commands/s)")
    print(f"one message of {args.body_kb} KB -> {p.subscribers} mails of "
          f"{p.mail_bytes / 1024:.1f} KB, relay pool of "
          f"{args.max_connections or 'default (4)'} connections")
    print(f"  transaction acknowledged after  {1000 * (p.acked_at - p.put_at):8.1f} ms")
    print(f"  first mail at the sink after    {p.first_mail - p.put_at:8.2f} s")
    print(f"  last mail at the sink after     {p.seconds:8.2f} s  "
          f"({p.mails / (p.last_mail - p.first_mail) if p.last_mail > p.first_mail else 0:.0f}"
          " mails/s from the first to the last)")
    print(f"  mails: {p.mails} subscribers reached, {p.missing} missing, {p.duplicates} "
          f"duplicates; the bridge opened {p.connections} SMTP connections to the sink "
          "(more may have stayed open from the warm-up)")
    print(f"  bridge's own mean, queued -> sent per mail: {p.outbox_wait_ms:.0f} ms")
    print(f"  bridge memory: {p.rss_before_mb:.1f} MiB before, peak growth "
          f"{p.peak_growth_mb:+.1f} MiB"
          f"{'' if p.hwm_reset else ' (VmHWM could not be reset: includes start-up)'}")
    if p.cpu is not None:
        print(f"  {p.cpu.line()}")
        print(f"  bridge CPU per mail: {p.cpu_ms_per_mail:.2f} ms")


def report(args: argparse.Namespace, r: Results) -> bool:
    main = r.main
    ok = main.seconds < TARGET_SECONDS and main.missing == 0 and main.duplicates == 0
    cpu_ok = main.cpu_ms_per_mail <= TARGET_CPU_MS_PER_MAIL
    per_subscriber = r.bytes_per_added_subscriber()
    flat_ok = per_subscriber < TARGET_BYTES_PER_SUBSCRIBER and all(p.hwm_reset for p in r.phases)
    header("bridge email fan-out benchmark", args, r.database)
    print(f"start-up until ready:             {r.startup_seconds:8.2f} s")
    for phase in r.phases:
        report_phase(args, phase)
    r.outcome.print(r.wall_seconds)
    print("-" * 78)
    print(f"one message to {main.subscribers} subscribers: {main.seconds:.2f} s (target < "
          f"{TARGET_SECONDS:.0f} s, every subscriber exactly once) {verdict(ok)}")
    print(f"bridge CPU per mail (Matrix -> mail, {main.mails} mails): "
          f"{main.cpu_ms_per_mail:.2f} ms (target <= {TARGET_CPU_MS_PER_MAIL:.0f} ms) "
          f"{verdict(cpu_ok)}")
    if len(r.phases) > 1:
        small = r.phases[0]
        print(f"memory: peak growth {small.peak_growth_mb:+.1f} MiB for {small.subscribers} "
              f"subscribers, {main.peak_growth_mb:+.1f} MiB for {main.subscribers}: "
              f"{per_subscriber:.0f} bytes per added subscriber (target < "
              f"{TARGET_BYTES_PER_SUBSCRIBER}) {verdict(flat_ok)}")
    else:
        print("memory: no comparison room (--compare 0), flatness not checked")
    print("=" * 78)
    return ok and cpu_ok and (flat_ok or len(r.phases) < 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark mailing one room message to many subscribers.")
    parser.add_argument("--subscribers", type=int, default=5000,
                        help="subscribers of the room (default 5000)")
    parser.add_argument("--compare", type=int, default=500,
                        help="subscribers of a room fanned out to first, whose peak memory "
                             "growth is compared with the main room's (default 500; 0: none)")
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
