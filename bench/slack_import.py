"""Benchmark: `bridge import slack-export` into a real Synapse, messages per second next to
straight appservice sends in the same run, and the import process's peak memory.

1. An export is generated in Slack's format (testkit/slack_export.py): ``--messages``
   messages in one channel over days of ``--per-day`` messages, ``--users`` users; every
   tenth top-level message starts a thread of one to three replies, ``--reaction-share`` of
   the messages carry one or two reactions.
2. A throwaway Synapse (testkit/synapse.py) with the bridge's registration; the bridge's
   database (SQLite or PostgreSQL) is created with ``bridge db upgrade``. The bridge itself
   does not run: the import is its own process, as an operator runs it.
3. **direct**: ``--direct`` m.room.message events (half before the import, half after it,
   so that a change in the machine's load weighs on both) sent one after the other straight to
   Synapse through the appservice API (``PUT /rooms/{room}/send/...?user_id=<puppet>&ts=``)
   by the puppets of the export's users (already joined: their joins are not timed), the
   content the import would send for such a message. Rate = messages / time.
4. **import**: ``python -m bridge import slack-export`` of the whole export into a room of
   its own, timed from start to exit (puppet set-up, reactions and thread replies
   included); its peak RSS is the child's ``ru_maxrss`` (``wait4``). Rate = messages / time.
5. Check: the import's summary counts every message of the export as posted.

Targets: import rate >= 0.8 x direct rate; peak RSS < 200 MB. Exit 0 when met, 3 when a
target is missed, 1 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml
from common import (
    BenchDatabase,
    BenchError,
    free_port,
    git_revision,
    start_synapse,
    verdict,
    write_config,
)

from testkit.matrix_client import MatrixTestClient
from testkit.slack_export import channel, message, user
from testkit.synapse import SynapseServer

DOMAIN = "bench"
BOT = f"@bridgebot:{DOMAIN}"
TEAM = "T0BENCH"
CHANNEL = "C0IMPORT"
TARGET_SHARE = 0.8
TARGET_RSS_MB = 200
REPO = Path(__file__).resolve().parent.parent


def generate(path: Path, *, messages: int, users: int, per_day: int,
             reaction_share: float, seed: int = 1) -> dict[str, int]:
    """The export, written day file by day file; what it holds."""
    rng = random.Random(seed)
    people = [f"U{n:07d}" for n in range(users)]
    counts = {"messages": 0, "replies": 0, "reactions": 0}
    start = datetime.date(2021, 1, 4)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        entries = [user(p, f"user{n}", f"Person {n:03d}") for n, p in enumerate(people)]
        for entry in entries:
            entry["team_id"] = TEAM
            entry["profile"].pop("image_72", None)  # no avatars to fetch from the internet
        archive.writestr("users.json", json.dumps(entries))
        archive.writestr("channels.json", json.dumps([channel(CHANNEL, "archiv", people)]))
        archive.writestr("dms.json", "[]")
        archive.writestr("mpims.json", "[]")
        day_number = 0
        while counts["messages"] < messages:
            day = start + datetime.timedelta(days=day_number)
            base = int(datetime.datetime(day.year, day.month, day.day,
                                         tzinfo=datetime.UTC).timestamp())
            items: list[dict[str, Any]] = []
            second = 0
            while len(items) < per_day and counts["messages"] < messages:
                second += 7
                ts = f"{base + second}.{second:06d}"
                author = rng.choice(people)
                text = f"Nachricht {counts['messages']}: <@{rng.choice(people)}> " \
                    f"bitte *prüfen*, siehe Vorgang {rng.randint(1000, 9999)}"
                extra: dict[str, Any] = {}
                if rng.random() < reaction_share:
                    reacting = rng.sample(people, rng.randint(1, 2))
                    extra["reactions"] = [{"name": "thumbsup", "users": reacting,
                                           "count": len(reacting)}]
                    counts["reactions"] += len(reacting)
                replies = rng.randint(1, 3) if len(items) % 10 == 0 else 0
                replies = min(replies, messages - counts["messages"] - 1,
                              per_day - len(items) - 1)
                if replies > 0:
                    extra.update(thread_ts=ts, reply_count=replies)
                items.append(message(ts, author, text, **extra))
                counts["messages"] += 1
                for _ in range(replies):
                    second += 3
                    reply_ts = f"{base + second}.{second:06d}"
                    items.append(message(reply_ts, rng.choice(people), "Erledigt.",
                                         thread_ts=ts, parent_user_id=author))
                    counts["messages"] += 1
                    counts["replies"] += 1
            archive.writestr(f"archiv/{day.isoformat()}.json", json.dumps(items, indent=4))
            day_number += 1
    counts["days"] = day_number
    return counts


async def as_request(session: aiohttp.ClientSession, url: str, token: str, method: str,
                     path: str, body: Any = None, **params: str) -> Any:
    async with session.request(method, f"{url}/_matrix/client/v3{path}", json=body,
                               params=params,
                               headers={"Authorization": f"Bearer {token}"}) as response:
        data = await response.json()
        if response.status != 200:
            raise BenchError(f"{method} {path}: {response.status} {data}")
        return data


async def direct_phase(session: aiohttp.ClientSession, url: str, token: str, room: str,
                       puppets: list[str], count: int, first: int = 0) -> float:
    """``count`` sequential sends as the puppets with ``ts``; the seconds they took."""
    base = int(time.time()) - 10 * 365 * 86400
    started = time.monotonic()
    for n in range(first, first + count):
        sender = puppets[n % len(puppets)]
        content = {"msgtype": "m.text", "body": f"Nachricht {n}: bitte prüfen",
                   "format": "org.matrix.custom.html",
                   "formatted_body": f"Nachricht {n}: bitte <strong>prüfen</strong>",
                   "m.mentions": {}}
        await as_request(session, url, token, "PUT",
                         f"/rooms/{quote(room)}/send/m.room.message/direct{uuid.uuid4().hex}",
                         content, user_id=sender, ts=str((base + n) * 1000))
    return time.monotonic() - started


async def ensure_puppet(session: aiohttp.ClientSession, url: str, token: str, room: str,
                        puppet: str) -> None:
    async with session.post(f"{url}/_matrix/client/v3/register",
                            json={"type": "m.login.application_service",
                                  "username": puppet[1:].split(":")[0]},
                            headers={"Authorization": f"Bearer {token}"}) as response:
        await response.read()  # 400 M_USER_IN_USE: registered before
    await as_request(session, url, token, "POST", f"/rooms/{quote(room)}/invite",
                     {"user_id": puppet}, user_id=BOT)
    await as_request(session, url, token, "POST", f"/join/{quote(room)}", {}, user_id=puppet)


def run_import(config_path: Path, export: Path, room: str
               ) -> tuple[int, str, str, float, float]:
    """The import as its own process: exit code, output, seconds, peak RSS in MB."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "import", "slack-export", "-c", str(config_path),
             str(export), "--channel", "archiv", "--room", room],
            cwd=REPO, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return process.returncode, out.read(), err.read(), seconds, usage.ru_maxrss / 1024


async def main(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-import-"))
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    export = workdir / "export.zip"
    print(f"generating an export of {args.messages} messages, {args.users} users "
          f"in {workdir} ...", flush=True)
    counts = generate(export, messages=args.messages, users=args.users,
                      per_day=args.per_day, reaction_share=args.reaction_share)
    print(f"  {counts['days']} day files, {counts['replies']} thread replies, "
          f"{counts['reactions']} reactions, {export.stat().st_size // 1024} kB zipped")

    database = BenchDatabase(args.database, workdir)
    db_url = await database.create()
    synapse_port = free_port()
    tokens = (f"as_{uuid.uuid4().hex}", f"hs_{uuid.uuid4().hex}")
    config_path = workdir / "config.yaml"
    data = write_config(config_path, synapse_port, free_port(), db_url, tokens)
    data["slack"] = {"enabled": True, "workspaces": [
        {"name": "bench", "bot_token": "xoxb-bench", "app_token": "xapp-bench"}]}
    config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    from bridge.config import parse_config
    from bridge.registration import build_registration

    config = parse_config(json.loads(json.dumps(data)), environ={})
    registration = workdir / "registration.yaml"
    registration.write_text(yaml.safe_dump(build_registration(config)), encoding="utf-8")
    upgrade = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bridge", "db", "upgrade", "-c",
                         str(config_path)], cwd=REPO, capture_output=True, text=True,
        check=False)
    if upgrade.returncode:
        raise BenchError(f"bridge db upgrade failed: {upgrade.stderr}")

    synapse = await start_synapse(workdir / "synapse", synapse_port, registration)
    try:
        return await run_phases(args, synapse, config_path, tokens[0], export, counts)
    finally:
        synapse.stop()
        await database.drop()


async def run_phases(args: argparse.Namespace, synapse: SynapseServer, config_path: Path,
                     as_token: str, export: Path, counts: dict[str, int]) -> int:
    url = synapse.url
    user_id, token = await synapse.register_user("admin")
    admin = MatrixTestClient(url, user_id, token)
    async with aiohttp.ClientSession() as session:
        rooms = []
        for name in ("direct", "import"):
            room = await admin.create_room(name=name, invite=[BOT],
                                           power_level_content_override={
                                               "users": {BOT: 100}})
            await as_request(session, url, as_token, "POST", f"/join/{quote(room)}", {},
                             user_id=BOT)
            rooms.append(room)
        direct_room, import_room = rooms
        puppets = [f"@slack_{TEAM.lower()}_u{n:07d}:{DOMAIN}" for n in range(args.users)]
        for puppet in puppets:  # not timed: the puppets exist and are in the room
            await ensure_puppet(session, url, as_token, direct_room, puppet)
        # Half the direct sends before the import, half after: a machine whose load drifts
        # during a long run (other work on it) weighs on both rates alike.
        before = args.direct // 2
        print(f"direct: {before} sequential appservice sends as {len(puppets)} "
              "puppets ...", flush=True)
        seconds_before = await direct_phase(session, url, as_token, direct_room, puppets,
                                            before)
        print(f"  {before / seconds_before:.0f} messages/s ({seconds_before:.1f} s)",
              flush=True)

        print(f"import: bridge import slack-export of {counts['messages']} messages ...",
              flush=True)
        code, out, err, import_seconds, peak_mb = await asyncio.to_thread(
            run_import, config_path, export, import_room)
        if code:
            raise BenchError(f"the import failed ({code}):\n{err[-3000:]}")
        print(out.rstrip())
        print(f"  {counts['messages'] / import_seconds:.0f} messages/s "
              f"({import_seconds:.1f} s), peak RSS {peak_mb:.0f} MB", flush=True)

        after = args.direct - before
        print(f"direct: {after} more sequential appservice sends ...", flush=True)
        seconds_after = await direct_phase(session, url, as_token, direct_room, puppets,
                                           after, first=before)
        print(f"  {after / seconds_after:.0f} messages/s ({seconds_after:.1f} s)", flush=True)
    await admin.close()
    direct_rate = args.direct / (seconds_before + seconds_after)
    if code:
        raise BenchError(f"the import failed ({code}):\n{err[-3000:]}")
    import_rate = counts["messages"] / import_seconds
    expected = f"messages: {counts['messages']} posted, 0 already in the room"
    if expected not in out:
        raise BenchError(f"the import's summary does not say {expected!r}")

    share = import_rate / direct_rate
    rate_ok, memory_ok = share >= TARGET_SHARE, peak_mb < TARGET_RSS_MB
    print()
    print(f"direct appservice sends: {direct_rate:8.0f} messages/s  (N={args.direct})")
    print(f"import:                  {import_rate:8.0f} messages/s  (N={counts['messages']},"
          f" with {counts['reactions']} reactions and {counts['replies']} thread replies)")
    print(f"import / direct:         {share:8.2f}   target >= {TARGET_SHARE}  "
          f"{verdict(rate_ok)}")
    print(f"import peak RSS:         {peak_mb:8.0f} MB  target < {TARGET_RSS_MB} MB "
          f"{verdict(memory_ok)}")
    print(json.dumps({"revision": git_revision(), "direct_per_second": round(direct_rate, 1),
                      "import_per_second": round(import_rate, 1), "share": round(share, 3),
                      "peak_rss_mb": round(peak_mb, 1), **counts}))
    return 0 if rate_ok and memory_ok else 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--per-day", type=int, default=500)
    parser.add_argument("--direct", type=int, default=5_000,
                        help="sequential appservice sends of the direct phase")
    parser.add_argument("--reaction-share", type=float, default=0.1,
                        help="share of messages with reactions (one or two people each)")
    parser.add_argument("--database", default=None,
                        help="temp SQLite (default), 'postgres', or a database URL")
    parser.add_argument("--workdir", default=None)
    return parser.parse_args()


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
