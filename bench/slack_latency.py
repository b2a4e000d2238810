"""Benchmark: the bridge's own added latency per Slack message, Slack -> Matrix.

The bridge (its own process, pinned to one core) runs against the stub homeserver of
testkit/stub_homeserver.py and the Slack simulator, both in this process on the other core.
``--channels`` channels are linked to rooms (``!bridge link slack``); the simulator's people
post into them round-robin at ``--rate`` messages/s for ``--seconds``. Per message, latency =
the simulator emitting the event (Socket Mode) -> the stub receiving the puppet's PUT send.
Between the two the bridge receives the envelope, stores the event, acknowledges it, hands it
from the outbox to the Slack connector (puppet, formatting, mapping), queues the Matrix send
and makes it.

Target: p99 < 25 ms at a moderate rate (default 50 messages/s). Run
``python bench/slack_latency.py --help`` for the options; bench/README.md explains the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import ms, percentile, verdict
from email_common import (
    CpuMeter,
    Outcome,
    add_common_args,
    check_common_args,
    histogram_delta,
    run,
)
from slack_common import (
    Messages,
    SlackHarness,
    add_slack_args,
    resent_envelopes,
    slack_header,
)

TARGET_P99_MS = 25.0

# (label, histogram, network, direction): where a message's time goes, as the bridge sees it.
BREAKDOWN = [
    ("stored -> handled", "bridge_event_latency_seconds", "slack", "out"),
    ("handling", "bridge_event_handling_seconds", "slack", "in"),
    ("Matrix send queued -> sent", "bridge_event_latency_seconds", "matrix", "out"),
    ("Matrix send", "bridge_event_handling_seconds", "matrix", "out"),
]


@dataclass
class Results:
    database: str = ""
    startup_seconds: float = math.nan
    link_seconds: float = math.nan
    channels: int = 0
    sent: int = 0
    send_seconds: float = math.nan
    latencies: list[float] = field(default_factory=list)
    missing: int = 0
    duplicates: int = 0
    misrouted: int = 0
    resent: int = 0
    breakdown: dict[str, float] = field(default_factory=dict)
    cpu: CpuMeter | None = None
    outcome: Outcome = field(default_factory=Outcome)
    wall_seconds: float = math.nan

    def summary(self, met: bool) -> dict[str, Any]:
        def pct(p: float) -> float | None:
            value = percentile(self.latencies, p)
            return None if math.isnan(value) else round(value * 1000, 2)

        return {
            "database": self.database, "targets_met": met, "channels": self.channels,
            "messages": self.sent,
            "offered_rate": round(self.sent / self.send_seconds, 1) if self.send_seconds else None,
            "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99),
                           "max": round(max(self.latencies) * 1000, 2) if self.latencies else None},
            "missing": self.missing, "duplicates": self.duplicates,
            "misrouted": self.misrouted, "resent_envelopes": self.resent,
            "bridge_means_ms": {k: None if math.isnan(v) else round(v * 1000, 2)
                                for k, v in self.breakdown.items()},
            "bridge_cpu_share": round(self.cpu.bridge / self.cpu.seconds, 2) if self.cpu else None,
            "failures": self.outcome.failures.total,
        }


async def benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results(channels=args.channels)
    harness = SlackHarness(args, workdir, rate_limits=True)
    try:
        await harness.start()
        assert harness.bridge is not None and harness.workspace is not None
        results.database = harness.database_name
        results.startup_seconds = harness.startup_seconds
        print(f"linking {args.channels} channels to rooms ...")
        started = time.monotonic()
        rooms = await harness.link_channels()
        results.link_seconds = time.monotonic() - started

        messages = Messages(harness.workspace)
        harness.count_arrivals(messages)
        # Warm-up, not measured: every user once in every channel, so that puppets are
        # registered, named, given their avatar and joined, and every code path ran once.
        warm = messages.plan(args.channels * args.users)
        print(f"warm-up: {len(warm)} messages (every user once in every channel) ...")
        for message in warm:
            await messages.post(message)
        await harness.wait_arrived(messages, warm, args.timeout)
        await asyncio.sleep(0.5)

        planned = messages.plan(max(1, round(args.rate * args.seconds)))
        print(f"measuring: {len(planned)} messages at {args.rate:.0f}/s over "
              f"{args.channels} channels ...")
        team = harness.workspace.team
        resent_before = resent_envelopes(harness.sim, team)
        before = await harness.metrics()
        cpu = CpuMeter(harness.bridge.pid)
        start = time.monotonic()
        for i, message in enumerate(planned):
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await messages.post(message)
        results.send_seconds = time.monotonic() - start
        results.sent = len(planned)
        await harness.wait_arrived(messages, planned, args.timeout)
        results.cpu = cpu.stop()
        await asyncio.sleep(0.3)  # duplicates, if any, and the outbox's last records
        after = await harness.metrics()
        results.latencies = messages.latencies(planned)
        results.missing = messages.missing(planned)
        results.duplicates = messages.duplicates
        results.misrouted = messages.misrouted(planned, lambda m: rooms[m.channel])
        results.resent = resent_envelopes(harness.sim, team) - resent_before
        for label, name, network, direction in BREAKDOWN:
            count, total = histogram_delta(before, after, name, network=network,
                                           direction=direction)
            results.breakdown[label] = total / count if count else math.nan
        results.outcome = await harness.outcome()
    finally:
        await harness.close()
    return results


def report(args: argparse.Namespace, r: Results) -> bool:
    p50, p90, p99 = (percentile(r.latencies, p) for p in (50, 90, 99))
    complete = r.missing == 0 and r.duplicates == 0 and r.misrouted == 0 and r.latencies
    ok = bool(complete) and p99 * 1000 < TARGET_P99_MS
    slack_header("bridge Slack -> Matrix latency benchmark (stub homeserver)", args, r.database)
    print(f"start-up until ready:             {r.startup_seconds:8.2f} s")
    print(f"{r.channels} channels linked (invite, `link slack`) in {r.link_seconds:.1f} s")
    print(f"{r.sent} messages posted in Slack at {r.sent / r.send_seconds:.1f}/s over "
          f"{r.channels} channels, {args.users} users")
    print("  Slack event emitted -> PUT send at the homeserver, per message:")
    print(f"    p50 {ms(p50)}, p90 {ms(p90)}, p99 {ms(p99)}, max "
          f"{ms(max(r.latencies) if r.latencies else math.nan)}")
    print(f"  arrived {len(r.latencies)} of {r.sent}; missing {r.missing}, duplicates "
          f"{r.duplicates}, in the wrong room {r.misrouted}; envelopes Slack had to send "
          f"again {r.resent}")
    print("  bridge's own means: " + ", ".join(f"{k} {ms(v)}" for k, v in r.breakdown.items()))
    if r.cpu is not None:
        print(f"  {r.cpu.line()}")
        print(f"  bridge CPU per message: {1000 * r.cpu.bridge / max(r.sent, 1):.2f} ms")
    r.outcome.print(r.wall_seconds)
    print("-" * 78)
    print(f"Slack -> Matrix p99 latency at {r.sent / r.send_seconds:.0f} msg/s: {ms(p99)} "
          f"(target < {TARGET_P99_MS:.0f} ms, every message once) {verdict(ok)}")
    print("=" * 78)
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the bridge's added latency per Slack message (Slack -> "
                    "Matrix) against a stub homeserver.")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="Slack messages per second offered (default 50)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long messages are offered (default 20)")
    add_slack_args(parser)
    add_common_args(parser)
    args = parser.parse_args(argv)
    if min(args.channels, args.users) < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--channels, --users, --rate and --seconds must be positive")
    check_common_args(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(args, benchmark, report)


if __name__ == "__main__":
    raise SystemExit(main())
