"""Benchmark: how fast the bridge takes and handles appservice transactions.

The bridge runs as a separate process (``python -m bridge run``) pinned to one CPU core,
against the stub homeserver of testkit/stub_homeserver.py, which this process runs on the
other core together with the load generator. Transactions are sent one at a time, as a
homeserver does: the next PUT starts when the previous one was acknowledged.

Phases:

1. start-up, then idle: resident memory of the idle bridge;
2. set-up: an admin invites the bot into every room; the bridge joins and greets;
3. throughput: ``--events`` plain chat messages, sent as fast as the bridge acknowledges;
   events/s = events / (first PUT .. bridge counted all of them handled, from /metrics);
4. latency: ``--latency-seconds`` of chat at ``--rate`` events/s, one ``!bridge ping`` in
   every ``--ping-every`` events; end-to-end latency = start of the PUT carrying the ping
   until the bot's reply arrives at the stub homeserver.

Run ``python bench/transactions.py --help`` for the options; bench/README.md explains the
numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    ADMIN,
    BOT,
    DATABASE_HELP,
    DOMAIN,
    BenchDatabase,
    BenchError,
    BridgeClient,
    BridgeFailures,
    BridgeProcess,
    Load,
    PhaseResult,
    chunks,
    free_port,
    git_revision,
    histogram_mean,
    machine_busy_seconds,
    metric_value,
    ms,
    percentile,
    print_profile,
    proc_cpu_seconds,
    verdict,
    wait_started,
    write_config,
)

from testkit.stub_homeserver import StubHomeserver

TARGET_EVENTS_PER_SECOND = 2000.0
TARGET_P99_MS = 20.0
TARGET_IDLE_RSS_MB = 100.0


# (key, histogram, direction): where an event's time goes, as the bridge measures it.
BREAKDOWN = [
    ("inbox_wait", "bridge_event_latency_seconds", "in"),  # stored -> routed and committed
    ("route", "bridge_event_handling_seconds", "in"),  # Hub.route + enqueue, per event
    ("outbox_wait", "bridge_event_latency_seconds", "out"),  # enqueued -> delivered
    ("deliver", "bridge_event_handling_seconds", "out"),  # one delivery (HTTP to the HS)
]


# --- the benchmark ---------------------------------------------------------------------


@dataclass
class Results:
    database: str = ""
    startup_seconds: float = math.nan
    idle_rss_mb: float = math.nan
    idle_cpu_percent: float = math.nan
    rss_after_mb: float = math.nan
    peak_rss_mb: float = math.nan
    throughput: PhaseResult | None = None
    latency: PhaseResult | None = None
    setup_seconds: float = math.nan
    stub_unknown: dict[str, int] = field(default_factory=dict)
    stub_calls: dict[str, int] = field(default_factory=dict)
    log_lines: int = 0
    failures: BridgeFailures = field(default_factory=BridgeFailures)
    wall_seconds: float = math.nan


async def send_paced(load: Load, batches: list[list[dict[str, Any]]], rate: float | None,
                     phase: PhaseResult, max_seconds: float | None = None) -> None:
    """Send batches one after another; with ``rate``, no faster than rate events/s.

    With ``max_seconds``, stop sending after that long even if batches are left (the bridge
    could not keep up with the rate; the report shows the rate it took).
    """
    start = time.monotonic()
    sent = 0
    for batch in batches:
        now = time.monotonic()
        if max_seconds is not None and now - start >= max_seconds:
            break
        if rate:
            delay = start + sent / rate - now
            if delay > 0:
                await asyncio.sleep(delay)
        await load.put(batch, phase)
        sent += len(batch)


async def run_phase(load: Load, client: BridgeClient, bridge: BridgeProcess, name: str,
                    events: list[dict[str, Any]], batch: int, rate: float | None,
                    timeout: float, max_seconds: float | None = None) -> PhaseResult:
    phase = PhaseResult(name=name, offered_rate=rate, offered_events=len(events))
    load.record_latencies(phase.latencies)
    before = await client.metrics()
    base = metric_value(before, "bridge_events_total", network="matrix", direction="in") or 0.0
    cpu_before, own_before = bridge.cpu_seconds(), proc_cpu_seconds(os.getpid())
    busy_before = machine_busy_seconds()
    await send_paced(load, chunks(events, batch), rate, phase, max_seconds)
    phase.handled_at = await client.wait_handled(base + phase.events, timeout)
    phase.cpu_seconds = bridge.cpu_seconds() - cpu_before
    phase.bench_cpu_seconds = proc_cpu_seconds(os.getpid()) - own_before
    phase.other_cpu_seconds = max(0.0, machine_busy_seconds() - busy_before
                                  - phase.cpu_seconds - phase.bench_cpu_seconds)
    if not await load.wait_replies(phase.pings_sent, timeout):
        print(f"  {name}: only {len(phase.latencies)} of {phase.pings_sent} ping replies "
              "arrived", file=sys.stderr)
    await asyncio.sleep(0.1)  # the outbox records a delivery just after sending it
    after = await client.metrics()
    for key, metric, direction in BREAKDOWN:
        phase.breakdown[key] = histogram_mean(before, after, metric, network="matrix",
                                              direction=direction)
    return phase


async def join_rooms(load: Load, stub: StubHomeserver, rooms: list[str], batch: int,
                     timeout: float) -> float:
    """The admin invites the bot everywhere; wait for each join and greeting notice."""
    started = time.monotonic()
    for part in chunks([load.invite_bot(r) for r in rooms], batch):
        await load.put(part, None)
    wanted = set(rooms)
    while time.monotonic() - started < timeout:
        greeted = {e.room_id for e in stub.state.sent
                   if e.sender == BOT and str(e.content.get("body", "")).startswith("Hello")}
        joined = {r for r, users in stub.state.joined.items() if BOT in users}
        if wanted <= greeted and wanted <= joined:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise BenchError(f"the bot joined {len(joined & wanted)} and greeted "
                     f"{len(greeted & wanted)} of {len(rooms)} rooms within {timeout:.0f}s")


async def benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results()
    hs_port, as_port = free_port(), free_port()
    tokens = (f"as_{uuid.uuid4().hex}", f"hs_{uuid.uuid4().hex}")
    stub = StubHomeserver(DOMAIN, tokens[0], bot_mxid=BOT, admin=ADMIN)
    database = BenchDatabase(args.database, workdir)
    bridge: BridgeProcess | None = None
    # SIGTERM (a timeout, a cancelled CI job) cancels the benchmark like Ctrl-C does, so the
    # finally below stops the bridge and drops the database. (Raising in a plain signal
    # handler would hit an arbitrary line, possibly inside aiohttp, which may swallow it.)
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    await stub.start("127.0.0.1", hs_port)
    try:
        db_url = await database.create()
        results.database = database.describe()
        config_path = workdir / "config.yaml"
        write_config(config_path, hs_port, as_port, db_url, tokens)
        bridge = BridgeProcess(config_path, workdir, args.bridge_cpu, args.profile)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            bridge_url = f"http://127.0.0.1:{as_port}"
            client = BridgeClient(session, bridge_url)
            rooms = [f"!room{i:03d}-{uuid.uuid4().hex[:6]}:{DOMAIN}" for i in range(args.rooms)]
            load = Load(session, bridge_url, tokens[1], rooms, stub, seed=args.seed)

            print(f"starting the bridge ({results.database}) ...")
            bridge.start()
            results.startup_seconds = await wait_started(bridge, client, stub, 60)
            bridge.pin()
            cpu0, t0 = bridge.cpu_seconds(), time.monotonic()
            await asyncio.sleep(args.idle_seconds)
            results.idle_cpu_percent = 100 * (bridge.cpu_seconds() - cpu0) / (
                time.monotonic() - t0)
            results.idle_rss_mb = bridge.rss_mb()
            print(f"  started in {results.startup_seconds:.1f}s; idle RSS "
                  f"{results.idle_rss_mb:.1f} MB")

            print(f"inviting the bot into {len(rooms)} rooms ...")
            results.setup_seconds = await join_rooms(load, stub, rooms, args.batch, 60)
            # Warm-up: every code path once (routing, a ping reply per room), not measured.
            await run_phase(load, client, bridge, "warm-up",
                            load.chat(max(args.batch * 4, len(rooms) * 5), 5), args.batch,
                            None, 60)

            print(f"throughput: {args.events} events in transactions of {args.batch}, "
                  f"{len(rooms)} rooms, sent back to back ...")
            results.throughput = await run_phase(
                load, client, bridge, "throughput", load.chat(args.events, None), args.batch,
                None, args.timeout)
            print(f"  {results.throughput.handled_per_second:.0f} events/s")

            latency_events = int(args.rate * args.latency_seconds)
            print(f"latency: {latency_events} events at {args.rate:.0f} events/s, "
                  f"a ping every {args.ping_every} ...")
            results.latency = await run_phase(
                load, client, bridge, "latency", load.chat(latency_events, args.ping_every),
                args.batch, args.rate, args.timeout, max_seconds=args.latency_seconds)

            await asyncio.sleep(0.5)
            metrics = await client.metrics()
            results.failures = BridgeFailures.read(metrics)
            results.rss_after_mb = bridge.rss_mb()
            results.peak_rss_mb = bridge.hwm_mb()
            results.log_lines = bridge.log_lines()
    finally:
        if bridge is not None:
            code = bridge.stop()
            if code not in (0, None):
                print(f"the bridge exited with code {code}:\n{bridge.log_tail()}",
                      file=sys.stderr)
        await stub.stop()
        try:
            await database.drop()
        except Exception as exc:
            print(f"could not drop the benchmark database: {exc!r}", file=sys.stderr)
    results.stub_unknown = dict(stub.state.unknown)
    results.stub_calls = dict(stub.state.calls)
    if bridge is not None and bridge.log_lines():
        print(f"\nbridge log (WARNING and above), last lines:\n{bridge.log_tail(15)}")
    return results


# --- report ----------------------------------------------------------------------------


def report(args: argparse.Namespace, r: Results) -> bool:
    tp, lat = r.throughput, r.latency
    assert tp is not None and lat is not None
    eps = tp.handled_per_second
    p50, p99 = percentile(lat.latencies, 50), percentile(lat.latencies, 99)
    # Handling must keep up *and* the pings must come back fast, at the target rate.
    lat_ok = (len(lat.latencies) == lat.pings_sent and lat.pings_sent > 0
              and p99 * 1000 < TARGET_P99_MS)
    eps_ok = eps >= TARGET_EVENTS_PER_SECOND
    rss_ok = r.idle_rss_mb < TARGET_IDLE_RSS_MB
    def cpu(value: int | None) -> str:
        return f"on CPU {value}" if value is not None else "unpinned"

    cpus = f"bridge {cpu(args.bridge_cpu)}; bench and stub {cpu(args.bench_cpu)}"
    print()
    print("=" * 78)
    print(f"bridge transaction benchmark ({cpus})")
    print(f"database: {r.database}; tree: {git_revision()}")
    print(f"rooms {args.rooms}, {args.batch} events per transaction, transactions sent one "
          "at a time")
    print("-" * 78)
    print(f"start-up until ready:             {r.startup_seconds:8.2f} s")
    print(f"idle CPU (after start-up):        {r.idle_cpu_percent:8.1f} %")
    print(f"bot joins {args.rooms} rooms (invite->greeting): {r.setup_seconds:6.2f} s")
    print("throughput phase (plain chat, back to back):")
    print(f"  events handled                  {tp.events:8d} in {tp.transactions} transactions")
    print(f"  handled events/s                {eps:8.0f}")
    print(f"  acknowledged events/s           {tp.acked_per_second:8.0f}  (storing only)")
    print(f"  bridge CPU                      {tp.cpu_seconds:8.2f} s = "
          f"{tp.events_per_cpu_second:.0f} events per CPU-second, "
          f"{100 * tp.cpu_seconds / (tp.handled_at - tp.first_put):.0f}% of one core")
    print(f"  transaction ack latency p50/p99 {ms(percentile(tp.acks, 50)):>9} / "
          f"{ms(percentile(tp.acks, 99))}  (max {ms(max(tp.acks))})")
    if tp.retries or lat.retries:
        print(f"  transactions retried (not acknowledged at first): {tp.retries + lat.retries}")
    print(f"latency phase ({lat.offered_rate:.0f} events/s offered, 1 ping per "
          f"{args.ping_every} events):")
    print(f"  events handled                  {lat.events:8d} of {lat.offered_events} offered, at "
          f"{lat.handled_per_second:.0f} events/s (acked at {lat.acked_per_second:.0f}/s)")
    print(f"  bridge CPU                      {lat.cpu_seconds:8.2f} s = "
          f"{100 * lat.cpu_seconds / (lat.handled_at - lat.first_put):.0f}% of one core")
    print(f"  transaction ack latency p50/p99 {ms(percentile(lat.acks, 50)):>9} / "
          f"{ms(percentile(lat.acks, 99))}  (max {ms(max(lat.acks))})")
    print(f"  ping -> reply latency p50/p99   {ms(p50):>9} / {ms(p99)}  (max "
          f"{ms(max(lat.latencies) if lat.latencies else math.nan)}, "
          f"{len(lat.latencies)}/{lat.pings_sent} replies)")
    b = lat.breakdown
    print(f"  bridge's own means: stored->handled {ms(b['inbox_wait'])}, route "
          f"{ms(b['route'])}/event, queued->delivered {ms(b['outbox_wait'])}, "
          f"delivery {ms(b['deliver'])}")
    bench_cpu = (tp.bench_cpu_seconds + lat.bench_cpu_seconds) / (
        tp.handled_at - tp.first_put + lat.handled_at - lat.first_put)
    print(f"bench + stub process CPU:         {100 * bench_cpu:8.0f} % of one core "
          "(must stay well below 100%)")
    other = (tp.other_cpu_seconds + lat.other_cpu_seconds) / (
        tp.handled_at - tp.first_put + lat.handled_at - lat.first_put)
    note = ", PostgreSQL server included" if r.database.startswith("postgresql") else ""
    print(f"other processes on the machine:   {100 * other:8.0f} % of one core{note}")
    if other > 0.3 and not note:
        print("  warning: something else is using the machine; the numbers above are lower "
              "than on a quiet one")
    print(f"memory: idle RSS {r.idle_rss_mb:.1f} MB, RSS after the run "
          f"{r.rss_after_mb:.1f} MB, peak (VmHWM) {r.peak_rss_mb:.1f} MB")
    calls = ", ".join(f"{k.replace('/_matrix/client', '')} x{v}"
                      for k, v in sorted(r.stub_calls.items(), key=lambda kv: -kv[1]))
    print(f"stub homeserver: calls: {calls}")
    unknown = ", ".join(f"{k} x{v}" for k, v in sorted(r.stub_unknown.items())) or "none"
    print(f"stub homeserver: calls it did not know: {unknown}")
    r.failures.print(r.log_lines)
    print(f"whole run: {r.wall_seconds:.0f} s")
    print("-" * 78)
    print(f"events/s: {eps:.0f} (target >= {TARGET_EVENTS_PER_SECOND:.0f}) {verdict(eps_ok)}")
    print(f"p99 per-event latency at {lat.offered_rate:.0f} events/s: {ms(p99)} "
          f"(target < {TARGET_P99_MS:.0f} ms) {verdict(lat_ok)}")
    print(f"idle RSS: {r.idle_rss_mb:.1f} MB (target < {TARGET_IDLE_RSS_MB:.0f} MB) "
          f"{verdict(rss_ok)}")
    print("=" * 78)
    return eps_ok and lat_ok and rss_ok


def summary(r: Results, met: bool) -> dict[str, Any]:
    """The report's numbers, machine-readable (milliseconds, MB, events/s)."""
    tp, lat = r.throughput, r.latency
    assert tp is not None and lat is not None

    def pct_ms(values: list[float], pct: float) -> float | None:
        value = percentile(values, pct)
        return None if math.isnan(value) else round(value * 1000, 2)

    return {
        "database": r.database,
        "revision": git_revision(),
        "targets_met": met,
        "events_per_second": round(tp.handled_per_second, 1),
        "acked_events_per_second": round(tp.acked_per_second, 1),
        "events_per_cpu_second": round(tp.events_per_cpu_second, 1),
        "throughput_ack_ms": {"p50": pct_ms(tp.acks, 50), "p99": pct_ms(tp.acks, 99)},
        "latency_phase": {
            "offered_rate": lat.offered_rate, "events": lat.events,
            "events_per_second": round(lat.handled_per_second, 1),
            "ack_ms": {"p50": pct_ms(lat.acks, 50), "p99": pct_ms(lat.acks, 99)},
            "ping_ms": {"p50": pct_ms(lat.latencies, 50), "p99": pct_ms(lat.latencies, 99)},
            "pings": lat.pings_sent, "replies": len(lat.latencies),
            "bridge_means_ms": {k: None if math.isnan(v) else round(v * 1000, 2)
                                for k, v in lat.breakdown.items()},
        },
        "other_cpu_cores": round((tp.other_cpu_seconds + lat.other_cpu_seconds) / (
            tp.handled_at - tp.first_put + lat.handled_at - lat.first_put), 2),
        "idle_rss_mb": round(r.idle_rss_mb, 1),
        "peak_rss_mb": round(r.peak_rss_mb, 1),
        "startup_seconds": round(r.startup_seconds, 2),
        "failures": r.failures.total,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the bridge's appservice transaction handling against a stub "
                    "homeserver.")
    parser.add_argument("--events", type=int, default=10000,
                        help="events in the throughput phase (default 10000)")
    parser.add_argument("--rooms", type=int, default=20, help="rooms (default 20)")
    parser.add_argument("--batch", type=int, default=50,
                        help="events per transaction (default 50)")
    parser.add_argument("--database", default=None, help=DATABASE_HELP)
    parser.add_argument("--rate", type=float, default=TARGET_EVENTS_PER_SECOND,
                        help="events/s offered in the latency phase (default the target, 2000)")
    parser.add_argument("--latency-seconds", type=float, default=5.0,
                        help="length of the latency phase (default 5): events are offered at"
                             " --rate for this long at most")
    parser.add_argument("--ping-every", type=int, default=50,
                        help="one `!bridge ping` per this many events in the latency phase")
    parser.add_argument("--idle-seconds", type=float, default=3.0,
                        help="idle time after start-up before reading RSS (default 3)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="give up when the bridge has not handled a phase after this long")
    parser.add_argument("--bridge-cpu", type=int, default=0,
                        help="core the bridge is pinned to (default 0; -1: not pinned)")
    parser.add_argument("--bench-cpu", type=int, default=1,
                        help="core this process is pinned to (default 1; -1: not pinned)")
    parser.add_argument("--profile", default=None, metavar="FILE",
                        help="run the bridge under cProfile, write the stats to FILE and print "
                             "the top functions (cProfile slows the bridge down)")
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1, help="seed for the room choice")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the numbers to FILE as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory (config, SQLite file, bridge log)")
    args = parser.parse_args(argv)
    if args.profile:
        args.profile = Path(args.profile).resolve()
    if min(args.events, args.rooms, args.batch, args.ping_every) < 1 or args.rate <= 0:
        parser.error("--events, --rooms, --batch, --ping-every and --rate must be positive")
    available = os.sched_getaffinity(0)
    for name in ("bridge_cpu", "bench_cpu"):
        value = getattr(args, name)
        if value is not None and value < 0:
            setattr(args, name, None)
        elif value not in available:
            parser.error(f"--{name.replace('_', '-')} {value}: this process may use CPUs "
                         f"{sorted(available)}")
    if args.bridge_cpu is not None and args.bridge_cpu == args.bench_cpu:
        print("warning: the bridge and the bench share a core; numbers will be lower",
              file=sys.stderr)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bench_cpu is not None:
        os.sched_setaffinity(0, {args.bench_cpu})
    workdir = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    started = time.monotonic()
    try:
        results = asyncio.run(benchmark(args, workdir))
        results.wall_seconds = time.monotonic() - started
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: asyncio.run cancelled the benchmark, which cleaned up
        return 130
    except asyncio.CancelledError:  # SIGTERM, likewise
        print("benchmark terminated", file=sys.stderr)
        return 143
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    met = report(args, results)
    if args.json:
        Path(args.json).write_text(json.dumps(summary(results, met), indent=2) + "\n",
                                   encoding="utf-8")
    if args.profile:
        print_profile(Path(args.profile), args.profile_top)
    return 0 if met else 3


if __name__ == "__main__":
    raise SystemExit(main())
