"""Benchmark: ``bridge plan apply`` of a plan of 200 rooms (each with a Slack channel, an
email address and 10 subscribers) against a fresh Synapse, then the same plan again.

Everything runs on this machine: a throwaway Synapse (testkit/synapse.py, as the tests start
it), the bridge as its own process (``python -m bridge run``, pinned to ``--bridge-cpu``),
the Slack simulator with one channel per room and an SMTP sink in this process, and
``bridge plan apply`` as its own process, as an operator runs it.

The plan has ``--departments`` departments (10), each with a space and an admin, sharing
``--rooms`` rooms (200). Targets: the first apply under 120 s, the second under 10 s and
printing that there is nothing to do. Slack's rate limits are off (``slack.rate_limits:
false``, as in the other Slack benchmarks): the number is the bridge's and the homeserver's;
against Slack itself, conversations.info (50 a minute after a burst of 50) alone makes 200
new channels take about three minutes.

Run ``python bench/plan_apply.py --help`` for the options; exit code 0 targets met, 3 a
target missed, 1 the benchmark failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from common import (
    ADMIN,
    REPO,
    BenchDatabase,
    BridgeClient,
    BridgeProcess,
    free_port,
    git_revision,
    start_synapse,
    verdict,
    write_config,
)
from email_common import BenchError, run
from slack_common import add_workspace, database_arg, slack_config

from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from testkit.synapse import SynapseServer

FIRST_TARGET = 120.0
SECOND_TARGET = 10.0
MAIL_DOMAIN = "mail.bench.example"
SECRET = "bench-provisioning-secret-0123456789"


@dataclass
class Results:
    database: str = ""
    rooms: int = 0
    actions: int = 0
    first_seconds: float = 0.0
    first_code: int | None = None
    first_tail: str = ""
    settle_seconds: float = 0.0
    second_seconds: float = 0.0
    second_code: int | None = None
    second_output: str = ""
    checked: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def summary(self, met: bool) -> dict[str, Any]:
        return {"database": self.database, "rooms": self.rooms, "actions": self.actions,
                "first_apply_seconds": self.first_seconds,
                "second_apply_seconds": self.second_seconds, "checked": self.checked,
                "met": met}


def build_plan(channels: list[str], departments: int, subscribers: int) -> dict[str, Any]:
    rooms_per = -(-len(channels) // departments)
    plan: dict[str, Any] = {"version": 1, "departments": []}
    for d in range(departments):
        mine = channels[d * rooms_per:(d + 1) * rooms_per]
        if not mine:
            break
        plan["departments"].append({
            "name": f"Amt {d:02d}", "space": f"amt-{d:02d}", "admins": [ADMIN],
            "rooms": [{
                "alias": f"amt-{d:02d}-raum-{i:03d}", "name": f"Amt {d:02d} - Raum {i:03d}",
                "slack": {"channel": channel},
                "email": {"localpart": f"amt{d:02d}-raum{i:03d}", "policy": "subscribers",
                          "subscribers": [
                              {"address": f"person{s:02d}.amt{d:02d}.raum{i:03d}"
                                          "@stadt.example", "name": f"Person {s:02d}"}
                              for s in range(subscribers)]}}
                for i, channel in enumerate(mine)]})
    return plan


async def apply_plan(config: Path, plan: Path, timeout: float) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "plan", "apply", "-c", str(config), str(plan),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        raise BenchError(f"bridge plan apply did not finish within {timeout:.0f}s") from None
    return int(process.returncode or 0), out.decode(), time.monotonic() - started


async def benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results()
    sim = SlackSimulator(host="127.0.0.1", port=0)
    sink = SmtpSink()
    database = BenchDatabase(args.database, workdir)
    synapse: SynapseServer | None = None
    bridge: BridgeProcess | None = None
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    try:
        await sim.start()
        await sink.start()
        workspace = add_workspace(sim, args.rooms, 2)
        db_url = await database.create()
        results.database = database.describe()
        synapse_port, as_port = free_port(), free_port()
        tokens = (f"as_{uuid.uuid4().hex}", f"hs_{uuid.uuid4().hex}")
        config_path = workdir / "config.yaml"
        data = write_config(config_path, synapse_port, as_port, db_url, tokens)
        data["slack"] = slack_config(sim, rate_limits=False)
        data["email"] = {"enabled": True, "domain": MAIL_DOMAIN, "sender_auth": "none",
                         "token_secret": "bench-token-secret-0123456789",
                         "smtp_in": {"hostname": "127.0.0.1", "port": free_port()},
                         "smtp_out": {"host": sink.host, "port": sink.port}}
        data["provisioning"] = {"shared_secret": SECRET}
        from bridge.config import parse_config
        from bridge.registration import build_registration

        config = parse_config(json.loads(json.dumps(data)), environ={})
        config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
        registration = workdir / "registration.yaml"
        registration.write_text(yaml.safe_dump(build_registration(config)), encoding="utf-8")

        synapse = await start_synapse(workdir / "synapse", synapse_port, registration)
        await synapse.register_user(ADMIN[1:].split(":")[0])

        bridge = BridgeProcess(config_path, workdir, args.bridge_cpu, None)
        client = BridgeClient(session, f"http://127.0.0.1:{as_port}")
        print(f"starting the bridge ({results.database}) ...", flush=True)
        bridge.start()
        deadline = time.monotonic() + args.timeout
        while True:
            if not bridge.alive():
                raise BenchError("the bridge exited:\n" + bridge.log_tail())
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                status, health = await client.health()
                networks = health.get("networks") or {}
                if status == 200 and all((networks.get(n) or {}).get("ok")
                                         for n in ("slack", "email")):
                    break
            if time.monotonic() > deadline:
                raise BenchError("the bridge was not ready in time:\n" + bridge.log_tail())
            await asyncio.sleep(0.1)
        bridge.pin()

        plan = build_plan(workspace.channels, args.departments, args.subscribers)
        plan_path = workdir / "plan.yaml"
        plan_path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
        results.rooms = sum(len(d["rooms"]) for d in plan["departments"])

        print(f"first apply: {results.rooms} rooms in {len(plan['departments'])} "
              "departments ...", flush=True)
        code, out, seconds = await apply_plan(config_path, plan_path, args.timeout)
        results.first_code, results.first_seconds = code, seconds
        results.actions = sum(1 for line in out.splitlines() if line.startswith("+ "))
        results.first_tail = "\n".join(out.strip().splitlines()[-5:])
        if code != 0:
            raise BenchError(f"the first apply failed (exit {code}):\n{results.first_tail}\n"
                             f"{bridge.log_tail()}")
        print(f"  {seconds:.1f} s for {results.actions} actions", flush=True)

        # An operator applies again later: after the bridge has handled what the first apply
        # set off (the homeserver's events of 200 new rooms).
        settled = time.monotonic()
        while True:
            _, health = await client.health()
            queues = health.get("queues") or {}
            if queues.get("inbox") == 0 and queues.get("outbox") == 0:
                break
            if time.monotonic() - settled > args.timeout:
                raise BenchError(f"the bridge's queues did not empty ({queues})")
            await asyncio.sleep(0.2)
        results.settle_seconds = time.monotonic() - settled
        print(f"  the bridge's queues empty {results.settle_seconds:.1f} s later", flush=True)

        print("second apply ...", flush=True)
        code, out, seconds = await apply_plan(config_path, plan_path, args.timeout)
        results.second_code, results.second_seconds = code, seconds
        results.second_output = out.strip()
        print(f"  {seconds:.1f} s: {results.second_output.splitlines()[0]}", flush=True)

        # Spot checks through the API: what the plan asked for is there.
        headers = {"Authorization": f"Bearer {SECRET}"}
        async with session.get(f"http://127.0.0.1:{as_port}/_bridge/api/v1/rooms",
                               headers=headers) as response:
            rooms = (await response.json())["rooms"]
        results.checked = {
            "rooms with their department": sum(1 for r in rooms if r.get("department")
                                               and "-raum-" in (r.get("alias") or "")),
            "slack links": sum(1 for r in rooms for lk in r["links"]
                               if lk["network"] == "slack"),
            "email links": sum(1 for r in rooms for lk in r["links"]
                               if lk["network"] == "email")}
    finally:
        await session.close()
        if bridge is not None:
            await asyncio.to_thread(bridge.stop)
        await sim.stop()
        await sink.stop()
        if synapse is not None:
            await asyncio.to_thread(synapse.stop)
        with contextlib.suppress(Exception):
            await database.drop()
    return results


def report(args: argparse.Namespace, r: Results) -> bool:
    first_ok = r.first_code == 0 and r.first_seconds < FIRST_TARGET
    second_ok = (r.second_code == 0 and r.second_seconds < SECOND_TARGET
                 and r.second_output.startswith("Nothing to do"))
    complete = bool(r.checked) and all(count == r.rooms for count in r.checked.values())
    print()
    print("=" * 78)
    print("bridge plan apply: a fresh Synapse, Slack simulator (rate limits off), SMTP sink")
    print(f"bridge database: {r.database}; tree: {git_revision()}")
    print(f"{r.rooms} rooms in {args.departments} departments (a space each), a Slack "
          f"channel, an email address and {args.subscribers} subscribers per room: "
          f"{r.actions} actions")
    print("-" * 78)
    print(f"first apply:  {r.first_seconds:7.1f} s  (target < {FIRST_TARGET:.0f} s) "
          f"{verdict(first_ok)}")
    print(f"then the bridge's queues were empty after {r.settle_seconds:.1f} s")
    print(f"second apply: {r.second_seconds:7.1f} s  (target < {SECOND_TARGET:.0f} s, "
          f"nothing to do) {verdict(second_ok)}")
    print("in the bridge afterwards: " + ", ".join(f"{v} {k}" for k, v in r.checked.items())
          + f" {verdict(complete)}")
    print(f"whole run: {r.wall_seconds:.0f} s")
    print("=" * 78)
    return first_ok and second_ok and complete


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="bridge plan apply of a 200-room plan "
                                                 "against a fresh Synapse, twice.")
    parser.add_argument("--rooms", type=int, default=200, help="rooms (default 200)")
    parser.add_argument("--departments", type=int, default=10,
                        help="departments, each with a space (default 10)")
    parser.add_argument("--subscribers", type=int, default=10,
                        help="email subscribers per room (default 10)")
    database_arg(parser)
    parser.add_argument("--bridge-cpu", type=int, default=-1,
                        help="core the bridge is pinned to (default -1: not pinned)")
    parser.add_argument("--bench-cpu", type=int, default=-1,
                        help="core this process is pinned to (default -1: not pinned)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="give up when a step has not finished after this long")
    parser.add_argument("--json", default=None, metavar="FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    for name in ("bridge_cpu", "bench_cpu"):
        if getattr(args, name) < 0:
            setattr(args, name, None)
    if min(args.rooms, args.departments) < 1 or args.subscribers < 0:
        parser.error("--rooms and --departments must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv), benchmark, report, prefix="bridge-plan-bench-")


if __name__ == "__main__":
    raise SystemExit(main())
