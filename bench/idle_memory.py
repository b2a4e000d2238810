"""Benchmark: the resident memory of an idle ``bridge run`` (issue 15).

The bridge runs as its own process (``python -m bridge run``), as an operator runs it, with
both networks on: the stub homeserver and the Slack simulator of the other benchmarks
(``SlackHarness``: email on as well, its SMTP server listening). After start-up (the
homeserver answered, Slack connected over Socket Mode, the SMTP server listening) it sits
idle for ``--idle-seconds``; then its ``VmRSS`` is read from ``/proc/<pid>/status``. With
``--channels N`` (default 0) that many channels are linked first, so the number includes
what a few portals add.

Target: **idle RSS under 60 MB.** What is imported only for start-up (alembic, which runs the
migrations in a short-lived child process) or only by other commands must not stay
resident. Run ``python bench/idle_memory.py --help`` for the options; bench/README.md
explains the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import proc_status_kb, verdict
from email_common import add_common_args, check_common_args, run
from slack_common import SlackHarness, add_slack_args, slack_header

TARGET_MB = 60.0


@dataclass
class Results:
    database: str = ""
    startup_seconds: float = math.nan
    channels: int = 0
    idle_rss_mb: float = math.nan
    peak_mb: float = math.nan
    wall_seconds: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self, met: bool) -> dict[str, Any]:
        return {"database": self.database, "targets_met": met, "channels": self.channels,
                "idle_rss_mb": round(self.idle_rss_mb, 1), "peak_mb": round(self.peak_mb, 1)}


async def benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results(channels=args.channels)
    harness = SlackHarness(args, workdir, rate_limits=True)
    try:
        await harness.start()
        assert harness.bridge is not None
        results.database = harness.database_name
        results.startup_seconds = harness.startup_seconds
        if args.channels:
            print(f"linking {args.channels} channels to rooms ...")
            await harness.link_channels()
        print(f"idle for {args.idle_seconds:.0f} s ...")
        await asyncio.sleep(args.idle_seconds)
        harness.check_alive()
        pid = harness.bridge.pid
        results.idle_rss_mb = proc_status_kb(pid, "VmRSS") / 1024
        results.peak_mb = proc_status_kb(pid, "VmHWM") / 1024
    finally:
        await harness.close()
    return results


def report(args: argparse.Namespace, r: Results) -> bool:
    ok = r.idle_rss_mb < TARGET_MB
    slack_header("bridge idle memory (bridge run: Slack and email on, stub homeserver)",
                 args, r.database)
    print(f"start-up until ready:             {r.startup_seconds:8.2f} s")
    print(f"channels linked:                  {r.channels:8d}")
    print(f"peak RSS during start-up (VmHWM): {r.peak_mb:8.1f} MB")
    print("-" * 78)
    print(f"idle RSS after {args.idle_seconds:.0f} s: {r.idle_rss_mb:.1f} MB "
          f"(target < {TARGET_MB:.0f} MB) {verdict(ok)}")
    print("=" * 78)
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The resident memory of an idle `bridge run` (Slack and email on).")
    parser.add_argument("--idle-seconds", type=float, default=3.0,
                        help="how long the bridge sits idle before its RSS is read (default 3)")
    add_slack_args(parser, channels=0)
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.channels < 0 or args.users < 1 or args.idle_seconds < 0:
        parser.error("--channels must not be negative, --users and --idle-seconds positive")
    check_common_args(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv), benchmark, report)


if __name__ == "__main__":
    raise SystemExit(main())
