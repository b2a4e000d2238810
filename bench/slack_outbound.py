"""Benchmark: Matrix -> Slack messages per second, into the Slack simulator.

The bridge (its own process, pinned to one core) runs against the stub homeserver of
testkit/stub_homeserver.py and the Slack simulator, both in this process on the other core.
``--channels`` channels are linked to rooms (``!bridge link slack``). Then ``--messages``
m.room.message events from Matrix users, spread round-robin over the rooms, reach the bridge
in appservice transactions of ``--batch`` events, sent one at a time as a homeserver does.
The bridge relays each to its channel with ``chat.postMessage``; the simulator's Web API
notes when each arrives.

Slack's rate limits are off on both sides: ``slack.rate_limits: false`` (the bridge does not
pace itself) and the simulator does not enforce its tiers, so the number is the bridge's own
throughput, not Slack's one message per second per channel.

Target: >= 500 messages/s. Run ``python bench/slack_outbound.py --help`` for the options;
bench/README.md explains the numbers.
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
    DOMAIN,
    Messages,
    Planned,
    SlackHarness,
    add_slack_args,
    chunked,
    slack_header,
)

TARGET_PER_SECOND = 500
# Bridge CPU per relayed message, its whole process from /proc (issue 15).
TARGET_CPU_MS = 1.0

# What Matrix users write: plain text mostly, some formatted (Element sends HTML for it).
_CONTENTS: list[tuple[str, str | None]] = [
    ("Die Sitzung beginnt heute um 10 Uhr in Raum 2.14.", None),
    ("**Wichtig:** der Termin mit dem Architekten ist auf Donnerstag verschoben.",
     "<strong>Wichtig:</strong> der Termin mit dem Architekten ist auf Donnerstag "
     "verschoben."),
    ("Die Unterlagen liegen unter https://intranet.example/akte/4711 bereit.", None),
    ("Danke, erledigt 👍", None),
    ("Noch offen:\n- Formular B-12\n- Lageplan\n- Statik",
     "<p>Noch offen:</p><ul><li>Formular B-12</li><li>Lageplan</li><li>Statik</li></ul>"),
    ("Wer übernimmt heute die Bürgersprechstunde? Ich bin ab 14 Uhr im Außentermin.", None),
    ("> Die Abstandsflächen reichen aus.\n\nSehe ich auch so.",
     "<blockquote><p>Die Abstandsflächen reichen aus.</p></blockquote><p>Sehe ich auch "
     "so.</p>"),
    ("Bitte `Gebührenbescheid_2024.pdf` noch einmal prüfen, da ist ein Tippfehler drin.",
     "Bitte <code>Gebührenbescheid_2024.pdf</code> noch einmal prüfen, da ist ein Tippfehler "
     "drin."),
]
SENDERS = [f"@{name}:{DOMAIN}" for name in ("erika", "jonas", "leyla", "piotr", "sabine")]

# (label, histogram, network, direction): where a message's time goes, as the bridge sees it.
BREAKDOWN = [
    ("stored -> routed", "bridge_event_latency_seconds", "matrix", "in"),
    ("route", "bridge_event_handling_seconds", "matrix", "in"),
    ("relay queued -> posted", "bridge_event_latency_seconds", "slack", "out"),
    ("relay (chat.postMessage + mapping)", "bridge_event_handling_seconds", "slack", "out"),
]


def content_for(messages: Messages, message: Planned) -> dict[str, Any]:
    body, html = _CONTENTS[message.n % len(_CONTENTS)]
    tag = messages.tag(message.n)
    content: dict[str, Any] = {"msgtype": "m.text", "body": f"{body} {tag}"}
    if html is not None:
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = f"{html} {tag}"
    return content


@dataclass
class Results:
    database: str = ""
    startup_seconds: float = math.nan
    link_seconds: float = math.nan
    channels: int = 0
    messages: int = 0
    transactions: int = 0
    first_put: float = 0.0
    last_ack: float = 0.0
    last_post: float = 0.0
    acks: list[float] = field(default_factory=list)
    missing: int = 0
    duplicates: int = 0
    misrouted: int = 0
    refused: list[str] = field(default_factory=list)
    breakdown: dict[str, float] = field(default_factory=dict)
    cpu: CpuMeter | None = None
    outcome: Outcome = field(default_factory=Outcome)
    wall_seconds: float = math.nan

    @property
    def per_second(self) -> float:
        span = self.last_post - self.first_put
        return self.messages / span if span > 0 else math.nan

    @property
    def acked_per_second(self) -> float:
        span = self.last_ack - self.first_put
        return self.messages / span if span > 0 else math.nan

    def summary(self, met: bool) -> dict[str, Any]:
        return {
            "database": self.database, "targets_met": met, "channels": self.channels,
            "messages": self.messages, "messages_per_second": round(self.per_second, 1),
            "acked_per_second": round(self.acked_per_second, 1),
            "missing": self.missing, "duplicates": self.duplicates,
            "misrouted": self.misrouted, "refused": len(self.refused),
            "bridge_means_ms": {k: None if math.isnan(v) else round(v * 1000, 2)
                                for k, v in self.breakdown.items()},
            "bridge_cpu_share": round(self.cpu.bridge / self.cpu.seconds, 2) if self.cpu else None,
            "bridge_cpu_ms_per_message":
                round(1000 * self.cpu.bridge / self.messages, 3) if self.cpu and self.messages
                else None,
            "failures": self.outcome.failures.total,
        }


async def send(harness: SlackHarness, messages: Messages, planned: list[Planned],
               rooms: dict[str, str], batch: int, results: Results | None) -> None:
    """The events in transactions of ``batch``, one transaction at a time."""
    events = [harness.event(rooms[m.channel], SENDERS[m.n % len(SENDERS)],
                            content_for(messages, m)) for m in planned]
    for part in chunked(events, batch):
        started = time.monotonic()
        await harness.put(part)
        done = time.monotonic()
        if results is not None:
            if not results.transactions:
                results.first_put = started
            results.transactions += 1
            results.acks.append(done - started)
            results.last_ack = done


def refusals(harness: SlackHarness) -> str:
    return (f" (Slack refused {len(harness.posts.refused)} posts: "
            f"{sorted(set(harness.posts.refused))[:5]})")


async def benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results(channels=args.channels)
    harness = SlackHarness(args, workdir, rate_limits=False)
    try:
        await harness.start()
        assert harness.bridge is not None and harness.workspace is not None
        harness.sim.enforce_tiers = False
        results.database = harness.database_name
        results.startup_seconds = harness.startup_seconds
        print(f"linking {args.channels} channels to rooms ...")
        started = time.monotonic()
        rooms = await harness.link_channels()
        results.link_seconds = time.monotonic() - started

        messages = Messages(harness.workspace)
        harness.posts.listeners.append(
            lambda at, text, channel: messages.note_arrival(text, at, channel))
        warm = messages.plan(args.channels * len(SENDERS))
        print(f"warm-up: {len(warm)} messages (every sender once in every room) ...")
        await send(harness, messages, warm, rooms, args.batch, None)
        await harness.wait_arrived(messages, warm, args.timeout, "Slack",
                                   lambda: refusals(harness))
        await asyncio.sleep(0.5)

        planned = messages.plan(args.messages)
        print(f"measuring: {len(planned)} messages over {args.channels} rooms, "
              f"{args.batch} per transaction ...")
        refused_before = len(harness.posts.refused)
        before = await harness.metrics()
        cpu = CpuMeter(harness.bridge.pid)
        await send(harness, messages, planned, rooms, args.batch, results)
        await harness.wait_arrived(messages, planned, args.timeout, "Slack",
                                   lambda: refusals(harness))
        results.cpu = cpu.stop()
        results.messages = len(planned)
        results.last_post = max(messages.arrived[m.n] for m in planned)
        await asyncio.sleep(0.3)  # duplicates, if any, and the outbox's last records
        after = await harness.metrics()
        results.missing = messages.missing(planned)
        results.duplicates = messages.duplicates
        results.misrouted = messages.misrouted(planned, lambda m: m.channel)
        results.refused = harness.posts.refused[refused_before:]
        for label, name, network, direction in BREAKDOWN:
            count, total = histogram_delta(before, after, name, network=network,
                                           direction=direction)
            results.breakdown[label] = total / count if count else math.nan
        results.outcome = await harness.outcome()
    finally:
        await harness.close()
    return results


def report(args: argparse.Namespace, r: Results) -> bool:
    rate = r.per_second
    complete = r.missing == 0 and r.duplicates == 0 and r.misrouted == 0
    cpu_ms = 1000 * r.cpu.bridge / max(r.messages, 1) if r.cpu is not None else math.nan
    ok = complete and rate >= TARGET_PER_SECOND and cpu_ms <= TARGET_CPU_MS
    slack_header("bridge Matrix -> Slack throughput benchmark (stub homeserver, Slack "
                 "simulator without rate limits)", args, r.database)
    print(f"start-up until ready:             {r.startup_seconds:8.2f} s")
    print(f"{r.channels} channels linked (invite, `link slack`) in {r.link_seconds:.1f} s")
    print(f"{r.messages} m.room.message events in {r.transactions} transactions of "
          f"{args.batch}, {len(SENDERS)} senders, {r.channels} rooms, sent back to back")
    print(f"  chat.postMessage arrivals/s     {rate:8.0f}  (first PUT -> last post at the "
          f"simulator, {r.last_post - r.first_put:.2f} s)")
    print(f"  acknowledged events/s           {r.acked_per_second:8.0f}  (storing only)")
    print(f"  transaction ack latency p50/p99 {ms(percentile(r.acks, 50)):>9} / "
          f"{ms(percentile(r.acks, 99))}")
    print(f"  posted {r.messages - r.missing} of {r.messages}; missing {r.missing}, duplicates "
          f"{r.duplicates}, in the wrong channel {r.misrouted}; Slack refused "
          f"{len(r.refused)} posts{': ' + ', '.join(sorted(set(r.refused))) if r.refused else ''}")
    print("  bridge's own means: " + ", ".join(f"{k} {ms(v)}" for k, v in r.breakdown.items()))
    if r.cpu is not None:
        print(f"  {r.cpu.line()}")
    r.outcome.print(r.wall_seconds)
    print("-" * 78)
    print(f"Matrix -> Slack: {rate:.0f} messages/s (target >= {TARGET_PER_SECOND:.0f}, every "
          f"message once) {verdict(complete and rate >= TARGET_PER_SECOND)}")
    print(f"bridge CPU per message (from /proc, first PUT -> last post): {cpu_ms:.2f} ms "
          f"(target <= {TARGET_CPU_MS:g} ms) {verdict(cpu_ms <= TARGET_CPU_MS)}")
    print("=" * 78)
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark Matrix -> Slack messages per second into the Slack simulator "
                    "(rate limits off) against a stub homeserver.")
    parser.add_argument("--messages", type=int, default=5000,
                        help="messages in the measured phase (default 5000)")
    parser.add_argument("--batch", type=int, default=50,
                        help="events per transaction (default 50)")
    add_slack_args(parser, users=2)
    add_common_args(parser)
    args = parser.parse_args(argv)
    if min(args.messages, args.batch, args.channels, args.users) < 1:
        parser.error("--messages, --batch, --channels and --users must be positive")
    check_common_args(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(args, benchmark, report)


if __name__ == "__main__":
    raise SystemExit(main())
