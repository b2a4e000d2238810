"""Benchmark: the bridge's peak memory while it receives one mail with a large attachment.

The bridge (its own process, pinned to one core) receives one mail with a ``--attachment-mb``
MiB attachment (random bytes, base64 in MIME, so about 4/3 of that on the wire) from a
subscribed sender, over SMTP, and posts it into the linked room: the text, then the file,
uploaded to the stub homeserver's media repository (``POST /_matrix/media/v3/upload``).

Measured: peak memory growth = the bridge's peak resident memory while it handles the mail
(VmHWM, reset just before the mail through /proc/<pid>/clear_refs) minus its resident memory
right before (VmRSS). Target: under 1.5x the attachment (30 MiB for 20 MiB). A sampler reads
VmRSS every few milliseconds, to show in which step the peak happens. Run ``python
bench/email_memory.py --help`` for the options; bench/README.md explains the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import verdict
from email_common import (
    MIB,
    PUPPET_PREFIX,
    BenchError,
    Harness,
    Outcome,
    SentEvent,
    add_common_args,
    check_common_args,
    german_text,
    header,
    make_mail,
    proc_status_kb,
    run,
)

TARGET_FACTOR = 1.5  # peak growth < this many times the attachment (issue 15)


@dataclass
class Step:
    name: str
    at: float  # time.monotonic()


@dataclass
class Results:
    database: str = ""
    startup_seconds: float = math.nan
    attachment_bytes: int = 0
    mail_bytes: int = 0
    rss_before_mb: float = math.nan
    hwm_reset: bool = False
    hwm_mb: float = math.nan
    rss_after_mb: float = math.nan
    sampled_peak_mb: float = math.nan
    sampled_peak_at: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, MiB)
    steps: list[Step] = field(default_factory=list)
    uploaded_bytes: int = 0
    outcome: Outcome = field(default_factory=Outcome)
    wall_seconds: float = math.nan

    @property
    def growth_mb(self) -> float:
        return self.hwm_mb - self.rss_before_mb

    @property
    def limit_mb(self) -> float:
        return TARGET_FACTOR * self.attachment_bytes / MIB

    def summary(self, met: bool) -> dict[str, Any]:
        return {
            "database": self.database, "targets_met": met,
            "attachment_mib": round(self.attachment_bytes / MIB, 1),
            "mail_mib": round(self.mail_bytes / MIB, 1),
            "rss_before_mib": round(self.rss_before_mb, 1),
            "peak_mib": round(self.hwm_mb, 1), "growth_mib": round(self.growth_mb, 1),
            "limit_mib": round(self.limit_mb, 1), "hwm_reset": self.hwm_reset,
            "rss_after_mib": round(self.rss_after_mb, 1),
            "steps": {s.name: round(self.rss_at(s.at), 1) for s in self.steps},
        }

    def rss_at(self, when: float) -> float:
        """The sampled RSS closest before ``when``."""
        before = [mb for t, mb in self.samples if t <= when]
        return before[-1] if before else math.nan

    def max_between(self, start: float, end: float) -> float:
        inside = [mb for t, mb in self.samples if start <= t <= end]
        return max(inside) if inside else math.nan


def reset_hwm(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


class Sampler:
    """Reads the bridge's VmRSS every ``interval`` seconds, in this process's event loop."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), proc_status_kb(self.pid, "VmRSS") / 1024))
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Posted:
    """The puppet's messages at the stub: the text, then the file."""

    def __init__(self) -> None:
        self.events: list[SentEvent] = []

    def __call__(self, sent: SentEvent) -> None:
        if sent.sender.startswith(PUPPET_PREFIX) and sent.event_type == "m.room.message":
            self.events.append(sent)

    def file(self, name: str) -> SentEvent | None:
        return next((e for e in self.events if e.content.get("body") == name
                     and e.content.get("msgtype") in ("m.file", "m.image")), None)


async def wait_for(check: Any, what: str, timeout: float, harness: Harness) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        harness.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not happen within {timeout:.0f}s:\n"
                             f"{harness.log_tail()}")
        await asyncio.sleep(0.01)


async def send_mail(port: int, sender: str, to: str, raw: bytes) -> float:
    """Send one mail over SMTP; returns when its last byte had been handed to the socket
    (time.monotonic()), so the report can tell receiving from handling.

    A minimal client on asyncio streams rather than aiosmtplib, which gives no such moment.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def answer(expect: str) -> str:
        lines = []
        while True:
            line = (await asyncio.wait_for(reader.readline(), 120)).decode("utf-8", "replace")
            lines.append(line.rstrip())
            if len(line) < 4 or line[3] != "-":
                break
        text = " / ".join(lines)
        if not text.startswith(expect):
            raise BenchError(f"the bridge answered {text!r} (expected {expect}...)")
        return text

    try:
        await answer("220")
        for command, expect in ((b"EHLO mta.bench.example", "250"),
                                (f"MAIL FROM:<{sender}>".encode(), "250"),
                                (f"RCPT TO:<{to}>".encode(), "250"), (b"DATA", "354")):
            writer.write(command + b"\r\n")
            await answer(expect)
        body = raw if raw.endswith(b"\r\n") else raw + b"\r\n"
        body = re.sub(rb"(?m)^\.", b"..", body)  # dot-stuffing (RFC 5321 4.5.2)
        view = memoryview(body)
        for start in range(0, len(body), 1 << 20):
            writer.write(view[start:start + (1 << 20)])
            await writer.drain()
        writer.write(b".\r\n")
        await writer.drain()
        data_sent = time.monotonic()
        await answer("250")
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(BenchError, OSError, TimeoutError):
            await answer("221")
        return data_sent
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results()
    size = int(args.attachment_mb * MIB)
    harness = Harness(args, workdir, max_message_size=int(args.max_message_mb * MIB))
    posted = Posted()
    harness.sent_listeners.append(posted)
    try:
        await harness.start()
        assert harness.bridge is not None
        pid = harness.bridge.pid
        results.database = harness.database_name
        results.startup_seconds = harness.startup_seconds
        sender = "erika@stadt.example"
        print("linking a room and subscribing the sender ...")
        _, address = await harness.email_room("bauamt", [sender])
        text = german_text(4 * 1024)

        # Warm-up, not measured: a mail with a smaller attachment runs every step once
        # (parsing, puppet, upload, posting), so that imports and caches are in place. It
        # is big enough for the steps of a big mail too: kept in a temp file, parsed from
        # there in a thread (whose memory arena is then in place), the attachment decoded
        # from the file into a buffer of its own and uploaded in pieces.
        small = make_mail(sender=sender, sender_name="Erika Mustermann", to=address,
                          subject="Pläne (klein)", body=text,
                          attachments=[(os.urandom(1536 * 1024), "application/pdf",
                                        "warmup.pdf")])
        print("warm-up: one mail with a 1.5 MiB attachment ...")
        await send_mail(harness.smtp_port, sender, address, small)
        await wait_for(lambda: posted.file("warmup.pdf"), "the warm-up attachment post",
                       args.timeout, harness)

        data = os.urandom(size)  # incompressible, like a PDF scan or a ZIP
        sent_sha256 = hashlib.sha256(data).hexdigest()
        raw = make_mail(sender=sender, sender_name="Erika Mustermann", to=address,
                        subject="Bauantrag: Pläne und Gutachten", body=text,
                        attachments=[(data, "application/pdf", "Bauantrag-Plaene.pdf")])
        del data
        results.attachment_bytes = size
        results.mail_bytes = len(raw)
        await asyncio.sleep(args.settle_seconds)  # let the bridge go idle
        results.hwm_reset = reset_hwm(pid)
        results.rss_before_mb = proc_status_kb(pid, "VmRSS") / 1024
        if results.hwm_reset and proc_status_kb(pid, "VmHWM") / 1024 > results.rss_before_mb + 1:
            results.hwm_reset = False  # the kernel did not reset it
        sampler = Sampler(pid)
        sampler.start()
        await asyncio.sleep(0.05)
        print(f"sending one mail of {len(raw) / MIB:.1f} MiB with a "
              f"{size / MIB:.0f} MiB attachment ...")
        results.steps.append(Step("before the mail", time.monotonic()))
        data_sent = await send_mail(harness.smtp_port, sender, address, raw)
        results.steps.append(Step("client wrote the mail's last byte", data_sent))
        results.steps.append(Step("SMTP 250 (parsed, uploaded, queued)", time.monotonic()))
        del raw
        file_event = await wait_for(lambda: posted.file("Bauantrag-Plaene.pdf"),
                                    "the attachment post", args.timeout, harness)
        upload = harness.stub.uploads[-1]
        results.uploaded_bytes = upload.size
        results.steps.insert(1, Step("upload starts at the stub", upload.started))
        results.steps.insert(2, Step("upload received", upload.finished))
        results.steps.append(Step("file message at the stub", file_event.arrived))
        await asyncio.sleep(0.5)
        await sampler.stop()
        results.hwm_mb = proc_status_kb(pid, "VmHWM") / 1024
        results.rss_after_mb = proc_status_kb(pid, "VmRSS") / 1024
        results.samples = sampler.samples
        peak_at, peak = max(sampler.samples, key=lambda s: s[1])
        results.sampled_peak_mb, results.sampled_peak_at = peak, peak_at
        if not results.hwm_reset:
            # VmHWM still holds the start-up peak: use the sampled one (a lower bound).
            results.hwm_mb = peak
        if results.uploaded_bytes != size:
            raise BenchError(f"the stub received an upload of {results.uploaded_bytes} bytes, "
                             f"not {size}")
        if upload.sha256 != sent_sha256:
            raise BenchError("the stub received other bytes than the attachment's")
        results.outcome = await harness.outcome()
    finally:
        await harness.close()
    return results


def report(args: argparse.Namespace, r: Results) -> bool:
    ok = r.growth_mb < r.limit_mb
    header("bridge email memory benchmark", args, r.database)
    print(f"start-up until ready:             {r.startup_seconds:8.2f} s")
    print(f"one mail of {r.mail_bytes / MIB:.1f} MiB on the wire: text + one "
          f"{r.attachment_bytes / MIB:.0f} MiB attachment (base64)")
    print(f"RSS before the mail (VmRSS)       {r.rss_before_mb:8.1f} MiB")
    hwm_note = "reset before the mail" if r.hwm_reset else \
        "could not be reset: the sampled peak is used"
    print(f"peak RSS (VmHWM)                  {r.hwm_mb:8.1f} MiB ({hwm_note})")
    print(f"peak growth                       {r.growth_mb:8.1f} MiB = "
          f"{r.growth_mb * MIB / max(r.attachment_bytes, 1):.1f}x the attachment")
    print(f"RSS after the mail                {r.rss_after_mb:8.1f} MiB "
          f"(+{r.rss_after_mb - r.rss_before_mb:.1f} MiB kept)")
    t0 = r.steps[0].at if r.steps else 0.0
    print(f"RSS sampled every 5 ms ({len(r.samples)} samples), MiB above the start:")
    previous = t0
    for step in sorted(r.steps, key=lambda s: s.at):
        peak_in = r.max_between(previous, step.at)
        since = "" if step.at <= t0 else \
            f"  (max since the step before {peak_in - r.rss_before_mb:+.1f})"
        print(f"  {step.at - t0:6.2f} s  {step.name:38} "
              f"{r.rss_at(step.at) - r.rss_before_mb:+7.1f}{since}")
        previous = step.at
    print(f"  sampled peak {r.sampled_peak_mb - r.rss_before_mb:+.1f} MiB at "
          f"{r.sampled_peak_at - t0:.2f} s")
    end = max((s.at for s in r.steps), default=t0)
    curve = []
    tick = t0
    while tick <= end + 0.1:
        value = r.max_between(tick, tick + 0.1) - r.rss_before_mb
        curve.append("-" if math.isnan(value) else f"{value:.0f}")
        tick += 0.1
    print("  max per 0.1 s: " + " ".join(curve))
    r.outcome.print(r.wall_seconds)
    print("-" * 78)
    print(f"peak memory growth: {r.growth_mb:.1f} MiB (target < {TARGET_FACTOR:g}x the "
          f"attachment = {r.limit_mb:.0f} MiB) {verdict(ok)}")
    print("=" * 78)
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the bridge's peak memory for one mail with a large attachment.")
    parser.add_argument("--attachment-mb", type=float, default=20.0,
                        help="attachment size in MiB (default 20)")
    parser.add_argument("--max-message-mb", type=float, default=40.0,
                        help="email.smtp_in.max_message_size for the bridge, MiB (default 40)")
    parser.add_argument("--settle-seconds", type=float, default=1.0,
                        help="idle time before the mail (default 1)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.attachment_mb <= 0 or args.attachment_mb * 4 / 3 + 1 > args.max_message_mb:
        parser.error("--attachment-mb must be positive and its base64 form fit "
                     "--max-message-mb")
    check_common_args(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(args, benchmark, report)


if __name__ == "__main__":
    raise SystemExit(main())
