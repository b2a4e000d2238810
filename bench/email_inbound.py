"""Benchmark: inbound mail over SMTP into the bridge, and on into Matrix.

The bridge (its own process, pinned to one core) receives ``--mails`` mails of
``--body-kb`` KB of German prose each, from ``--senders`` subscribed senders to one room
address, over ``--clients`` concurrent SMTP connections (aiosmtplib, in this process on the
other core; each connection sends its share one mail after the other). It posts each mail
into the linked room as the sender's puppet through its outbox, to the stub homeserver.

Measured: mails accepted per second (SMTP 250 at the client) and mails per second end to
end (until the stub has received every resulting m.room.message PUT). Targets: both at least
300 mails/s, and the bridge's CPU time per mail (from /proc, over at least 2,000 mails) at
most 1 ms. Run ``python bench/email_inbound.py --help`` for the options; bench/README.md
explains the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
from common import percentile, verdict
from email_common import (
    PUPPET_PREFIX,
    BenchError,
    CpuMeter,
    Harness,
    Outcome,
    SentEvent,
    add_common_args,
    check_common_args,
    german_text,
    header,
    histogram_delta,
    make_mail,
    metric_value,
    proc_cpu_seconds,
    run,
)

TARGET_MAILS_PER_SECOND = 300.0
TARGET_CPU_MS_PER_MAIL = 1.0
MIN_MAILS_FOR_CPU = 2000  # the CPU time per mail counts over a run of at least this many


@dataclass
class Results:
    database: str = ""
    startup_seconds: float = math.nan
    setup_seconds: float = math.nan
    mail_bytes: int = 0
    mails: int = 0
    offered: int = 0
    first_send: float = 0.0
    last_accept: float = 0.0
    last_posted: float = 0.0
    accept_times: list[float] = field(default_factory=list)  # per mail: DATA sent -> 250
    to_matrix: list[float] = field(default_factory=list)  # per mail: 250 -> PUT at the stub
    refused: list[str] = field(default_factory=list)
    posted: int = 0
    posted_body_bytes: int = 0
    cpu: CpuMeter | None = None
    cpu_at_last_accept: float = math.nan
    posted_at_last_accept: int = 0
    breakdown: dict[str, float] = field(default_factory=dict)
    outcome: Outcome = field(default_factory=Outcome)
    wall_seconds: float = math.nan

    def cpu_split(self) -> str:
        """The bridge's CPU time per mail split into taking it in (SMTP to queued) and
        posting it (outbox to the stub), from the CPU time used after the last 250, when
        only the outbox works: '' when too few messages were left then to tell."""
        left = self.posted - self.posted_at_last_accept
        if self.cpu is None or math.isnan(self.cpu_at_last_accept) or \
                left < max(20, self.mails // 20):
            return ""
        posting = (self.cpu.bridge - self.cpu_at_last_accept) / left
        receiving = (self.cpu_at_last_accept - posting * self.posted_at_last_accept) / \
            max(self.mails, 1)
        return (f" (taking a mail in {1000 * receiving:.1f} ms, posting it to Matrix "
                f"{1000 * posting:.1f} ms, told apart by the CPU time used after the last 250)")

    @property
    def accepted_per_second(self) -> float:
        span = self.last_accept - self.first_send
        return self.mails / span if span > 0 else math.nan

    @property
    def end_to_end_per_second(self) -> float:
        span = self.last_posted - self.first_send
        return self.posted / span if span > 0 and self.posted == self.mails else math.nan

    def summary(self, met: bool) -> dict[str, Any]:
        def ms(values: list[float], pct: float) -> float | None:
            value = percentile(values, pct)
            return None if math.isnan(value) else round(value * 1000, 1)

        return {
            "database": self.database, "targets_met": met, "mails": self.mails,
            "mail_bytes": self.mail_bytes,
            "accepted_per_second": round(self.accepted_per_second, 1),
            "end_to_end_per_second": round(self.end_to_end_per_second, 1),
            "accept_ms": {"p50": ms(self.accept_times, 50), "p99": ms(self.accept_times, 99)},
            "to_matrix_ms": {"p50": ms(self.to_matrix, 50), "p99": ms(self.to_matrix, 99)},
            "bridge_cpu_share": round(self.cpu.bridge / self.cpu.seconds, 2) if self.cpu else None,
            "bridge_cpu_ms_per_mail": round(1000 * self.cpu.bridge / max(self.mails, 1), 3)
            if self.cpu else None,
            "failures": self.outcome.failures.total,
        }


class Mailer:
    """``clients`` SMTP connections to the bridge, each sending its mails one by one."""

    def __init__(self, port: int, clients: int, max_seconds: float | None = None) -> None:
        self.port = port
        self.clients = clients
        self.max_seconds = max_seconds
        self.stop_at = math.inf
        self.accepted: dict[str, float] = {}  # mail token -> time of the 250
        self.accept_times: list[float] = []
        self.refused: list[str] = []

    async def send_all(self, mails: list[tuple[str, str, str, bytes]]) -> None:
        """``mails``: (token, from, to, raw) in the order to send, dealt to the clients."""
        shares = [mails[i::self.clients] for i in range(self.clients)]
        if self.max_seconds is not None:
            self.stop_at = time.monotonic() + self.max_seconds
        await asyncio.gather(*(self._client(share) for share in shares if share))

    async def _client(self, share: list[tuple[str, str, str, bytes]]) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, timeout=60,
                               local_hostname="mta.bench.example")
        await smtp.connect()
        try:
            for token, sender, to, raw in share:
                started = time.monotonic()
                if started >= self.stop_at:
                    break  # out of time: the mails sent so far are the sample
                try:
                    _, answer = await smtp.sendmail(sender, [to], raw)
                except aiosmtplib.SMTPResponseException as exc:
                    self.refused.append(f"{exc.code} {exc.message}")
                    continue
                done = time.monotonic()
                self.accepted[token] = done
                self.accept_times.append(done - started)
                del answer
        finally:
            try:
                await smtp.quit()
            except aiosmtplib.SMTPException:
                smtp.close()


class Posted:
    """Counts the puppets' messages at the stub, by the token in their first line."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.body_bytes = 0
        self.changed = asyncio.Event()

    def __call__(self, sent: SentEvent) -> None:
        if not sent.sender.startswith(PUPPET_PREFIX) or sent.event_type != "m.room.message":
            return
        body = str(sent.content.get("body", ""))
        first = body.split("\n", 1)[0]
        if first.startswith("Bench-Mail "):
            self.arrived[first.split()[1]] = sent.arrived
            self.body_bytes = len(body.encode("utf-8"))
            self.changed.set()

    async def wait(self, tokens: list[str], timeout: float, harness: Harness) -> float:
        """Until all ``tokens`` were posted; returns when the last one arrived."""
        deadline = time.monotonic() + timeout
        while not all(t in self.arrived for t in tokens):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                done = sum(t in self.arrived for t in tokens)
                raise BenchError(f"{done} of {len(tokens)} mails reached the stub homeserver "
                                 f"within {timeout:.0f}s:\n{harness.log_tail()}")
            harness.check_alive()
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))
        return max(self.arrived[t] for t in tokens)


def build_mails(count: int, senders: list[str], to: str, body_bytes: int, start: int,
                run_id: str) -> list[tuple[str, str, str, bytes]]:
    """Distinct mails (Message-ID, subject token, text varied by seed) from the senders."""
    texts = [german_text(body_bytes, seed=s) for s in range(8)]
    mails = []
    for n in range(start, start + count):
        sender = senders[n % len(senders)]
        token = f"{n:06d}"
        raw = make_mail(sender=sender, sender_name=f"Bürger {n % len(senders) + 1}", to=to,
                        subject=f"Bench-Mail {token} Bauantrag Müllerstraße",
                        body=f"Nachricht {token}\n\n" + texts[n % len(texts)],
                        message_id=f"<bench-{run_id}-{token}@stadt.example>")
        mails.append((token, sender, to, raw))
    return mails


async def benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results()
    harness = Harness(args, workdir)
    posted = Posted()
    harness.sent_listeners.append(posted)
    try:
        await harness.start()
        results.database = harness.database_name
        results.startup_seconds = harness.startup_seconds
        senders = [f"buerger{i + 1}@stadt.example" for i in range(args.senders)]
        started = time.monotonic()
        print(f"linking a room and subscribing {len(senders)} senders ...")
        _, address = await harness.email_room("bauamt", senders)
        results.setup_seconds = time.monotonic() - started
        mailer = Mailer(harness.smtp_port, args.clients)

        # Warm-up, not measured: one mail per sender (puppets registered and joined).
        warm = build_mails(len(senders), senders, address, args.body_kb * 1024, 0,
                           harness.run_id)
        print(f"warm-up: {len(warm)} mails ...")
        await mailer.send_all(warm)
        if mailer.refused:
            raise BenchError(f"the bridge refused mails: {mailer.refused[0]}")
        await posted.wait([t for t, *_ in warm], args.timeout, harness)

        mails = build_mails(args.mails, senders, address, args.body_kb * 1024, len(warm),
                            harness.run_id)
        results.mail_bytes = sum(len(m[3]) for m in mails) // len(mails)
        print(f"sending {len(mails)} mails of {results.mail_bytes / 1024:.0f} KB over "
              f"{args.clients} connections ...")
        mailer = Mailer(harness.smtp_port, args.clients, args.max_seconds)
        before = await harness.metrics()
        assert harness.bridge is not None
        cpu = CpuMeter(harness.bridge.pid)
        results.first_send = time.monotonic()
        await mailer.send_all(mails)
        # The bridge's CPU time and the messages posted by the last 250: what it uses after
        # that is the outbox's alone, which splits its CPU time per mail in two.
        results.cpu_at_last_accept = proc_cpu_seconds(harness.bridge.pid) - cpu.bridge0
        results.posted_at_last_accept = len(posted.arrived) - len(warm)
        results.mails = len(mailer.accepted)
        results.refused = mailer.refused
        if results.refused:
            raise BenchError(f"the bridge refused {len(results.refused)} mails, e.g. "
                             f"{results.refused[0]}:\n{harness.log_tail()}")
        results.last_accept = max(mailer.accepted.values())
        results.accept_times = mailer.accept_times
        print(f"  accepted at {results.accepted_per_second:.0f} mails/s; waiting for the "
              "Matrix messages ...")
        tokens = [t for t, *_ in mails if t in mailer.accepted]
        results.offered = len(mails)
        results.last_posted = await posted.wait(tokens, args.timeout, harness)
        results.cpu = cpu.stop()
        results.posted = len(tokens)
        results.posted_body_bytes = posted.body_bytes
        results.to_matrix = [posted.arrived[t] - mailer.accepted[t] for t in tokens]
        await asyncio.sleep(0.2)  # the outbox records a delivery just after sending it
        after = await harness.metrics()
        for key, name, labels in [
            ("outbox_wait", "bridge_event_latency_seconds",
             {"network": "matrix", "direction": "out"}),
            ("deliver", "bridge_event_handling_seconds",
             {"network": "matrix", "direction": "out"}),
        ]:
            count, total = histogram_delta(before, after, name, **labels)
            results.breakdown[key] = total / count if count else math.nan
        counted = ((metric_value(after, "bridge_events_total", network="email",
                                 direction="in") or 0.0)
                   - (metric_value(before, "bridge_events_total", network="email",
                                   direction="in") or 0.0))
        results.breakdown["email_in_counted"] = counted
        results.outcome = await harness.outcome()
    finally:
        await harness.close()
    return results


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def report(args: argparse.Namespace, r: Results) -> bool:
    accepted, e2e = r.accepted_per_second, r.end_to_end_per_second
    accepted_ok = accepted >= TARGET_MAILS_PER_SECOND
    e2e_ok = e2e >= TARGET_MAILS_PER_SECOND
    header("bridge inbound email benchmark", args, r.database)
    print(f"start-up until ready:             {r.startup_seconds:8.2f} s")
    print(f"room linked, {args.senders} senders subscribed:  {r.setup_seconds:6.2f} s")
    print(f"{r.mails} mails of {r.mail_bytes / 1024:.0f} KB (text {args.body_kb} KB, "
          f"quoted-printable) from {args.senders} senders to one room, {args.clients} SMTP "
          "connections")
    if r.mails < r.offered:
        print(f"  sending stopped after --max-seconds {args.max_seconds:.0f}: {r.mails} of "
              f"{r.offered} mails were sent")
    print(f"  accepted (250) mails/s          {accepted:8.1f}  "
          f"({r.last_accept - r.first_send:.2f} s)")
    print(f"  end to end mails/s              {e2e:8.1f}  ({r.last_posted - r.first_send:.2f} s "
          "until the last m.room.message reached the stub)")
    print(f"  per mail: DATA -> 250 p50/p99    {ms(percentile(r.accept_times, 50)):>9} / "
          f"{ms(percentile(r.accept_times, 99))}")
    print(f"  per mail: 250 -> Matrix p50/p99  {ms(percentile(r.to_matrix, 50)):>9} / "
          f"{ms(percentile(r.to_matrix, 99))}  (max "
          f"{ms(max(r.to_matrix) if r.to_matrix else math.nan)})")
    b = r.breakdown
    print(f"  bridge's own means (Matrix side): queued->delivered {ms(b['outbox_wait'])}, "
          f"delivery {ms(b['deliver'])}; mails counted in: {b['email_in_counted']:.0f}")
    print(f"  posted message body: {r.posted_body_bytes / 1024:.1f} KB")
    if r.cpu is not None:
        print(f"  {r.cpu.line()}")
        print(f"  bridge CPU per mail: {1000 * r.cpu.bridge / max(r.mails, 1):.2f} ms"
              f"{r.cpu_split()}")
    r.outcome.print(r.wall_seconds)
    print("-" * 78)
    print(f"accepted mails/s: {accepted:.1f} (target >= {TARGET_MAILS_PER_SECOND:.0f}) "
          f"{verdict(accepted_ok)}")
    print(f"end-to-end mails/s: {e2e:.1f} (target >= {TARGET_MAILS_PER_SECOND:.0f}) "
          f"{verdict(e2e_ok)}")
    cpu_ms = 1000 * r.cpu.bridge / max(r.mails, 1) if r.cpu is not None else math.nan
    cpu_ok = cpu_ms <= TARGET_CPU_MS_PER_MAIL and r.mails >= MIN_MAILS_FOR_CPU
    print(f"bridge CPU per mail (mail -> Matrix, {r.mails} mails): {cpu_ms:.2f} ms (target <= "
          f"{TARGET_CPU_MS_PER_MAIL:.0f} ms over >= {MIN_MAILS_FOR_CPU} mails) {verdict(cpu_ok)}")
    print("=" * 78)
    return accepted_ok and e2e_ok and cpu_ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark inbound mail (SMTP into the bridge, on to a stub homeserver).")
    parser.add_argument("--mails", type=int, default=2000,
                        help="mails in the measured phase (default 2000)")
    parser.add_argument("--clients", type=int, default=4,
                        help="concurrent SMTP connections (default 4)")
    parser.add_argument("--senders", type=int, default=8,
                        help="subscribed senders the mails come from (default 8)")
    parser.add_argument("--body-kb", type=int, default=50,
                        help="size of each mail's text in KB (default 50)")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="stop sending after this long even if mails are left (default 30;"
                             " keeps a slow run short: the mails sent so far are measured)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if min(args.mails, args.clients, args.senders, args.body_kb) < 1:
        parser.error("--mails, --clients, --senders and --body-kb must be positive")
    check_common_args(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(args, benchmark, report)


if __name__ == "__main__":
    raise SystemExit(main())
