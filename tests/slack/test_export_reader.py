"""The Slack export reader (bridge/slack/export): exports written here the way Slack writes
them (users.json, channels.json, groups.json, <channel>/<YYYY-MM-DD>.json day files with
messages in the Web API's message format), and one built from the real export samples in
../shared/slack-fixtures when they are there."""

from __future__ import annotations

import datetime
import json
import tracemalloc
import weakref
import zipfile
from pathlib import Path
from typing import Any

import pytest

from bridge.slack import export
from bridge.slack.export import ExportError
from bridge.slack.store import ts_key
from testkit.slack_export import (
    ANNA,
    BEN,
    CARL,
    ROOT_TS,
    channel,
    message,
    small_export,
    ts_of,
    user,
    write_export,
)

SHARED_EXPORT = (Path(__file__).resolve().parents[2] / ".." / "shared" / "slack-fixtures"
                 / "zulip-slack-export")


def test_users_and_channels_public_and_private(tmp_path: Path) -> None:
    with export.open(small_export(tmp_path / "export.zip")) as slack:
        assert set(slack.users) == {ANNA, BEN, CARL}
        anna = slack.users[ANNA]
        assert (anna.name, anna.real_name, anna.shown_name) == ("anna", "Anna Schmidt", "Anna")
        assert anna.email == "anna@rathaus.example"
        assert slack.users[BEN].shown_name == "Ben Weber"  # no display name set
        assert slack.users[CARL].deleted

        bauamt = slack.channels.find("bauamt")
        assert bauamt is not None and bauamt is slack.channels.find("C0BAUAMT")
        assert bauamt is slack.channels.find("#bauamt")
        assert (bauamt.private, bauamt.topic, bauamt.members) == (False, "Bauanträge",
                                                                  (ANNA, BEN))
        personal = slack.channels.find("G0PERSONAL")
        assert personal is not None and personal.name == "personal" and personal.private
        assert [m.text for m in slack.messages("personal")] == ["private talk"]
        assert slack.channels.find("nowhere") is None
        assert len(slack.channels) == 3
        with pytest.raises(ExportError, match="no channel named or with ID 'nowhere'"):
            slack.messages("nowhere")


def test_messages_in_time_order_across_days_with_threads_reactions_edits(
        tmp_path: Path) -> None:
    with export.open(small_export(tmp_path / "export.zip")) as slack:
        days = slack.day_files("bauamt")
        assert [d.day for d in days] == ["2024-03-04", "2024-03-05"]
        messages = list(slack.messages("C0BAUAMT"))

    texts = [m.text for m in messages]
    assert texts == ["<@U0BEN> has joined the channel", "the plan, final version",
                     "first reply", "Build passed", "the drawing",
                     "<@U0BEN> set the channel topic: Bauanträge 2024",
                     "reply on the next day", "later that day"]
    assert [m.ts for m in messages] == sorted((m.ts for m in messages), key=float)
    # The position names the day file and the message's index as written there.
    assert str(messages[-1].position) == "bauamt/2024-03-05.json, message 0"
    assert messages[5].position.index == 2

    join, root, reply, bot, with_files, topic, late_reply, _ = messages
    assert join.subtype == "channel_join" and topic.subtype == "channel_topic"
    assert root.is_thread_root and not root.is_thread_reply
    assert root.reply_users == (BEN,) and [ts for _, ts in root.replies] == [reply.ts,
                                                                           late_reply.ts]
    assert reply.is_thread_reply and late_reply.thread_ts == root.ts
    assert [(r.name, r.users, r.count) for r in root.reactions] == [
        ("thumbsup", (BEN, CARL), 2), ("tada", (BEN,), 1)]
    assert root.edited is not None and root.edited.user == ANNA
    assert root.ts_ms == int(float(ROOT_TS) * 1000)
    assert root.blocks[0]["type"] == "rich_text"
    assert (bot.subtype, bot.user, bot.bot_id, bot.bot_name) == ("bot_message", None,
                                                                 "B0CI", "CI")
    plan, gone = with_files.files
    assert (plan.id, plan.name, plan.mimetype, plan.size) == ("F0PLAN", "plan.pdf",
                                                              "application/pdf", 5)
    assert gone.gone and gone.name is None


def test_resumption_skips_earlier_days_unread(tmp_path: Path) -> None:
    # The earlier day is broken: starting from the later day never opens it.
    path = small_export(tmp_path / "export.zip")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("schule/2024-03-01.json", b"[{")
        archive.writestr("schule/2024-03-09.json", json.dumps(
            [message(ts_of("2024-03-09", 1), ANNA, "after the break")]))
    with export.open(path) as slack:
        assert [m.text for m in slack.messages("schule", from_day="2024-03-04")] == [
            "school", "after the break"]
        with pytest.raises(ExportError):
            list(slack.messages("schule"))


def test_a_file_from_the_archive_or_a_files_directory(tmp_path: Path) -> None:
    files_dir = tmp_path / "files"
    (files_dir / "F0LOCAL").mkdir(parents=True)
    (files_dir / "F0LOCAL" / "scan.png").write_bytes(b"\x89PNG")
    (files_dir / "F0SLACKDUMP-notes.txt").write_bytes(b"notes")
    path = small_export(tmp_path / "export.zip", extra={
        "__uploads/F0PLAN/plan.pdf": b"%PDF-",
        "C0SCHULE/attachments/F0ATTACH-photo.jpg": b"\xff\xd8"})
    with export.open(path) as slack:
        with_files = next(m for m in slack.messages("bauamt") if m.files)
        plan, gone = with_files.files
        stored = slack.find_file(plan, files_dir)
        assert stored is not None and stored.where == "archive:__uploads/F0PLAN/plan.pdf"
        with stored.open() as stream:
            assert stream.read() == b"%PDF-"
        assert slack.find_file(gone, files_dir) is None

        def file(file_id: str, name: str | None) -> export.ExportFile:
            return export.ExportFile(id=file_id, name=name, title=name, mimetype=None,
                                     size=None, url_private=None, mode="hosted", raw={})

        attach = slack.find_file(file("F0ATTACH", "photo.jpg"))
        assert attach is not None and attach.size == 2
        local = slack.find_file(file("F0LOCAL", "scan.png"), files_dir)
        assert local is not None and local.open().read() == b"\x89PNG"
        dumped = slack.find_file(file("F0SLACKDUMP", "notes.txt"), files_dir)
        assert dumped is not None and dumped.where.endswith("F0SLACKDUMP-notes.txt")
        assert slack.find_file(file("F0MISSING", "x.txt"), files_dir) is None
        assert slack.find_file(file("F0MISSING", "x.txt")) is None
        # A name from the export cannot reach outside the directory.
        (tmp_path / "secret.txt").write_text("no")
        assert slack.find_file(file("F0EVIL", "../secret.txt"), files_dir) is None
        assert slack.find_file(file("../secret.txt", None), files_dir) is None


@pytest.mark.parametrize(("day", "expected"), [
    (b'[\n    {"type": "message", "ts": "1709596800.000001",\n     "text": "x"\n',
     r"bauamt/2024-03-05\.json, line 4 column 1: not valid JSON"),
    (json.dumps([message("1709596800.000001", ANNA, "ok"),
                 {"type": "message", "user": ANNA, "text": "no ts"}]).encode(),
     r'bauamt/2024-03-05\.json, message 1: "ts" is missing'),
    (json.dumps([message("1709596800.000001", ANNA, "ok",
                         reactions=[{"name": "tada", "users": "U0BEN", "count": 1}])]).encode(),
     r'bauamt/2024-03-05\.json, message 0: "users" is a string, not an array'),
    (json.dumps([message("yesterday", ANNA, "ok")]).encode(),
     r'message 0: "ts" is \'yesterday\', not a Slack timestamp'),
    (json.dumps({"messages": []}).encode(),
     r"bauamt/2024-03-05\.json: a day file holds a JSON array of messages, not an object"),
    (b'["\xff"]', r"bauamt/2024-03-05\.json"),
])
def test_a_malformed_day_file_names_the_file_and_position(tmp_path: Path, day: bytes,
                                                          expected: str) -> None:
    path = small_export(tmp_path / "export.zip")
    with zipfile.ZipFile(path) as source, \
            zipfile.ZipFile(tmp_path / "broken.zip", "w") as broken:
        for info in source.infolist():
            data = day if info.filename == "bauamt/2024-03-05.json" else source.read(info)
            broken.writestr(info, data)
    with export.open(tmp_path / "broken.zip") as slack:
        seen = []
        with pytest.raises(ExportError, match=expected) as raised:
            for item in slack.messages("bauamt"):
                seen.append(item.position.member)
    # The good day came through whole; nothing of the broken day did.
    assert seen == ["bauamt/2024-03-04.json"] * 5
    assert raised.value.position.member == "bauamt/2024-03-05.json"


def test_not_an_export(tmp_path: Path) -> None:
    (tmp_path / "notes.zip").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match=r"notes\.zip: cannot be read as a zip archive"):
        export.open(tmp_path / "notes.zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ExportError, match=r"users\.json: missing: not a Slack workspace export"):
        export.open(tmp_path / "other.zip")
    broken_users = write_export(tmp_path / "users.zip", users=[{"name": "nobody"}],
                                channels=[], days={})
    with pytest.raises(ExportError, match=r'users\.json, user 0: "id" is missing'):
        export.open(broken_users)


def test_an_export_rezipped_under_one_folder(tmp_path: Path) -> None:
    path = write_export(tmp_path / "export.zip", top="Rathaus Slack export Mar 4 2024/",
                        users=[user(ANNA, "anna", "Anna Schmidt")],
                        channels=[channel("C0BAUAMT", "bauamt", [ANNA])],
                        days={"bauamt/2024-03-04": [message(ROOT_TS, ANNA, "hello")]})
    with export.open(path) as slack:
        assert [m.text for m in slack.messages("bauamt")] == ["hello"]


def test_streaming_keeps_memory_bounded(tmp_path: Path) -> None:
    """50,000 messages over 100 days (threads, reactions, 200 users): reading them all
    holds about one day, not the export, and no message of a past day stays alive."""
    people = [f"U{n:07d}" for n in range(200)]
    path = tmp_path / "big.zip"
    write_export(path, users=[user(p, f"user{p}", f"User {p}") for p in people],
                 channels=[channel("C0GENERAL", "general", people)], days={})
    day_bytes = 0
    start = datetime.date(2023, 1, 1)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for day_number in range(100):
            day = (start + datetime.timedelta(days=day_number)).isoformat()
            items = []
            for n in range(500):
                ts = ts_of(day, n * 60)
                extra: dict[str, Any] = {}
                if n % 10 == 0:
                    extra = {"thread_ts": ts, "reply_count": 1, "reply_users": [people[n % 7]]}
                elif n % 10 == 1:
                    extra = {"thread_ts": ts_of(day, (n - 1) * 60), "parent_user_id": people[0]}
                if n % 4 == 0:
                    extra["reactions"] = [{"name": "thumbsup", "users": people[:3], "count": 3}]
                items.append(message(ts, people[n % 200], f"message {n} of {day}: " + "x" * 80,
                                     **extra))
            data = json.dumps(items, indent=4)
            day_bytes += len(data)
            archive.writestr(f"general/{day}.json", data)

    first_of_each_day: list[weakref.ref[export.ExportMessage]] = []
    with export.open(path) as slack:
        tracemalloc.start()
        try:
            count = threads = reactions = 0
            last = (0, 0)
            for item in slack.messages("general"):
                assert ts_key(item.ts) > last
                last = ts_key(item.ts)
                if item.position.index == 0:
                    first_of_each_day.append(weakref.ref(item))
                count += 1
                threads += item.is_thread_root
                reactions += len(item.reactions)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (count, threads, reactions) == (50_000, 5_000, 12_500)
    # Only the day the loop ended in may still be referenced (by `item`).
    assert sum(ref() is not None for ref in first_of_each_day) <= 1
    # The day files are ~50 MB of JSON (several times that once parsed); one day parsed,
    # the most the reader holds, is well under a tenth of it.
    assert day_bytes > 30_000_000
    assert peak < day_bytes / 10, (peak, day_bytes)


@pytest.mark.skipif(not SHARED_EXPORT.is_dir(),
                    reason="../shared/slack-fixtures/zulip-slack-export is not there")
def test_a_real_export_from_the_shared_fixtures(tmp_path: Path) -> None:
    """Zulip's Slack-import samples: users.json, channels.json and the #random day files
    as Slack wrote them; their thread sample as a day of #general."""
    samples = SHARED_EXPORT / "test_slack_importer"
    thread = json.loads((SHARED_EXPORT / "exported_messages_fixtures"
                         / "thread_with_broadcast_reply.json").read_text())
    path = tmp_path / "real.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(samples / "users.json", "users.json")
        archive.write(SHARED_EXPORT / "channels.json", "channels.json")
        archive.write(SHARED_EXPORT / "dms.json", "dms.json")
        archive.write(SHARED_EXPORT / "mpims.json", "mpims.json")
        for day in sorted((samples / "random").glob("*.json")):
            archive.write(day, f"random/{day.name}")
        archive.writestr("general/2015-06-12.json", json.dumps(thread))

    with export.open(path) as slack:
        assert slack.users["U6006P1CN"].real_name == "Josef K."
        random = slack.channels.find("random")
        assert random is not None and random.id == "C061A0WJG" and random.archived
        messages = list(slack.messages(random))
        assert len(messages) == 13
        assert [m.position.member for m in messages] == (["random/2017-06-25.json"] * 2
                                                         + ["random/2018-01-20.json"] * 11)
        assert messages[0].subtype == "channel_join"
        shared = next(m for m in messages if m.subtype == "file_share")
        assert shared.files and shared.files[0].id.startswith("F")
        assert slack.find_file(shared.files[0]) is None  # Slack's export carries links only

        root, reply, broadcast = list(slack.messages("general"))
        assert root.is_thread_root and reply.is_thread_reply
        assert broadcast.subtype == "thread_broadcast" and broadcast.thread_ts == root.ts


def test_a_day_file_zip_cannot_unpack_says_what_to_do(tmp_path: Path) -> None:
    """Windows' own zipping of a large folder uses Deflate64, which Python cannot unpack."""
    path = write_export(tmp_path / "export.zip", users=[user(ANNA, "anna", "Anna Schmidt")],
                        channels=[channel("C0BAUAMT", "bauamt", [ANNA])],
                        days={"bauamt/2024-03-04": [message(ROOT_TS, ANNA, "hello")]})
    data = bytearray(path.read_bytes())
    # The compression method of the day file's central directory entry: 9 is Deflate64.
    # The name's last copy is in the central directory, 46 bytes into its entry.
    entry = data.rindex(b"bauamt/2024-03-04.json") - 46
    assert data[entry:entry + 4] == b"PK\x01\x02"
    data[entry + 10:entry + 12] = (9).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    with export.open(path) as slack, pytest.raises(
            ExportError, match=r"bauamt/2024-03-04\.json: cannot be unpacked: .*zip it again"):
        list(slack.messages("bauamt"))
