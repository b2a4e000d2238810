"""Slack -> Matrix, end to end: what people write in a linked Slack channel, as a Matrix user
reading the room (in Element, say) sees it. Every bullet of the issue's "Slack -> Matrix"
section, through the Slack simulator and a real Synapse, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixRequestError, MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.slack_sim.images import solid_png
from tests.conftest import SERVER_NAME, Homeserver
from tests.slack.conftest import (
    ANNA,
    BEN,
    CHANNEL,
    OTHER_CHANNEL,
    TEAM_ID,
    SlackBridge,
    linked_room,
    running_slack_bridge,
)

Event = dict[str, Any]


def puppet(user_id: str, team_id: str = TEAM_ID) -> str:
    return f"@slack_{team_id.lower()}_{user_id.lower()}:bridge.test"


ANNA_PUPPET = puppet(ANNA)
BEN_PUPPET = puppet(BEN)


def ts_ms(ts: str) -> int:
    seconds, _, fraction = ts.partition(".")
    return int(seconds) * 1000 + int(fraction.ljust(6, "0")[:6]) // 1000


def message(fragment: str, sender: str | None = None) -> Callable[[Event], bool]:
    """A new message (not an edit) whose body contains ``fragment``."""
    def match(event: Event) -> bool:
        content = event["content"]
        return (event["type"] == "m.room.message" and "m.new_content" not in content
                and fragment in content.get("body", "")
                and (sender is None or event["sender"] == sender))
    return match


def relation(event: Event) -> dict[str, Any]:
    return event["content"].get("m.relates_to") or {}


def redacts(event: Event) -> str | None:
    """The event a redaction removes (top level before room version 11, content after)."""
    return event.get("redacts") or event["content"].get("redacts")


async def room_with(bridge: SlackBridge, admin: MatrixTestClient, channel: str,
                    name: str, **power_levels: Any) -> str:
    """A room linked to ``channel`` whose power levels carry ``power_levels`` too."""
    bot = bridge.homeserver.bot
    room_id = await open_room(bot, admin, name=name, power_level_content_override={
        "users": {bot: 100}, **power_levels})
    await command(bot, admin, room_id, f"!bridge link slack {channel}", expect="Linked")
    return room_id


async def timeline(admin: MatrixTestClient, room: str, limit: int = 100) -> list[Event]:
    """The room's latest events, oldest first."""
    return list(reversed(await admin.messages(room, limit=limit)))


async def download(homeserver: Homeserver, client: MatrixTestClient, mxc: str) -> bytes:
    """A file from the homeserver's media repository, through the authenticated media API."""
    server, _, media_id = mxc.removeprefix("mxc://").partition("/")
    url = f"{homeserver.url}/_matrix/client/v1/media/download/{server}/{media_id}"
    async with aiohttp.ClientSession() as session, session.get(
            url, headers={"Authorization": f"Bearer {client.access_token}"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


# --- messages: formatting, mentions, emoji -------------------------------------------------


async def test_formatting(slack_bridge: SlackBridge, admin: MatrixTestClient,
                          team: Any) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)

    # rich_text blocks, as the Slack client sends them with what a person typed.
    ts = await sim.post_message(
        team, CHANNEL, ANNA,
        "Bitte *fett* und _kursiv_, ~durch~ und `code`: <https://example.org/plan|der Plan>")
    event = await admin.wait_for_event(room, message("Bitte"), timeout=15)
    content = event["content"]
    assert event["sender"] == ANNA_PUPPET
    assert event["origin_server_ts"] == ts_ms(ts)
    assert content["msgtype"] == "m.text"
    assert content["format"] == "org.matrix.custom.html"
    html = content["formatted_body"]
    for fragment in ("<strong>fett</strong>", "<em>kursiv</em>", "<del>durch</del>",
                     "<code>code</code>", '<a href="https://example.org/plan">der Plan</a>'):
        assert fragment in html, html
    assert content["body"] == ("Bitte fett und kursiv, durch und `code`: "
                               "der Plan (https://example.org/plan)")

    await sim.post_message(team, CHANNEL, ANNA,
                           "Block:\n```\nif a < b:\n    *nicht fett*\n```\n"
                           "> zitiert\n• eins\n• zwei\n1. erstens\n2. zweitens")
    event = await admin.wait_for_event(room, message("Block:"), timeout=15)
    html = event["content"]["formatted_body"]
    assert "<pre><code>if a &lt; b:\n    *nicht fett*</code></pre>" in html
    assert "<blockquote>zitiert</blockquote>" in html
    assert "<ul><li>eins</li><li>zwei</li></ul>" in html
    assert "<ol><li>erstens</li><li>zweitens</li></ol>" in html
    assert event["content"]["body"] == ("Block:\n```\nif a < b:\n    *nicht fett*\n```\n"
                                        "> zitiert\n• eins\n• zwei\n1. erstens\n2. zweitens")

    # mrkdwn alone (no blocks: older clients, integrations, the API).
    await sim.post_message(team, CHANNEL, ANNA, blocks=[], text=(
        "Nur *mrkdwn* mit _kursiv_ und ~weg~ und `x`\n```a < b```\n> zitat\n"
        "• eins\n• zwei\n<https://example.org|Link>"))
    event = await admin.wait_for_event(room, message("Nur mrkdwn"), timeout=15)
    assert event["content"]["formatted_body"] == (
        "Nur <strong>mrkdwn</strong> mit <em>kursiv</em> und <del>weg</del> und <code>x</code>"
        "<pre><code>a &lt; b</code></pre><blockquote>zitat</blockquote>"
        '<ul><li>eins</li><li>zwei</li></ul><a href="https://example.org">Link</a>')
    assert event["content"]["body"] == ("Nur mrkdwn mit kursiv und weg und `x`\n```\na < b\n"
                                        "```\n> zitat\n• eins\n• zwei\n"
                                        "Link (https://example.org)")


async def test_mentions_and_emoji(slack_bridge: SlackBridge, admin: MatrixTestClient,
                                  team: Any) -> None:
    sim = slack_bridge.sim
    sim.add_channel(team, "C0KITA", name="kita", members=[ANNA])
    room = await linked_room(slack_bridge, admin)
    # The other channel's room lets everyone notify the room (notifications.room 0).
    loud_room = await room_with(slack_bridge, admin, OTHER_CHANNEL, "Schule",
                                notifications={"room": 0})

    # People become pills of their puppets (and m.mentions); channels become links to
    # their rooms when linked, "#name" otherwise; @here does not notify a room whose power
    # levels do not let the puppet do so (the default: 50 for notifications.room).
    await sim.post_message(team, CHANNEL, ANNA,
                           "Frage an <@U0BEN> und <@U0ANNA>: siehe <#C0SCHULE>, <#C0BAUAMT> "
                           "und <#C0KITA> <!here>")
    event = await admin.wait_for_event(room, message("Frage an"), timeout=15)
    content = event["content"]
    assert content["body"] == "Frage an Ben Weber und Anna: siehe #schule, #bauamt und #kita @here"
    html = content["formatted_body"]
    assert f'<a href="https://matrix.to/#/{BEN_PUPPET}">Ben Weber</a>' in html, html
    assert f'<a href="https://matrix.to/#/{ANNA_PUPPET}">Anna</a>' in html, html
    # ?via= lets Element open the room for someone who is not in it yet.
    via = f"?via={SERVER_NAME}"
    assert f'<a href="https://matrix.to/#/{loud_room}{via}">#schule</a>' in html, html
    assert f'<a href="https://matrix.to/#/{room}{via}">#bauamt</a>' in html, html
    assert html.endswith(" und #kita @here"), html
    assert set(content["m.mentions"]["user_ids"]) == {BEN_PUPPET, ANNA_PUPPET}
    assert "room" not in content["m.mentions"]

    # Where the power levels allow it, @channel and @here become @room.
    await sim.post_message(team, OTHER_CHANNEL, ANNA, "<!channel> Sitzung um 10, <!here>")
    event = await admin.wait_for_event(loud_room, message("Sitzung"), timeout=15)
    assert event["content"]["body"] == "@room Sitzung um 10, @room"
    assert event["content"]["m.mentions"] == {"room": True}

    # Emoji: shortcodes and skin tones to Unicode; custom emoji stay :name:. In text as
    # typed (the client's rich_text block), in mrkdwn, and in the rich_text emoji elements
    # Slack sends with unicode and skin_tone fields.
    await sim.post_message(team, CHANNEL, ANNA,
                           "Emoji :thumbsup: :+1::skin-tone-3: :partyparrot: :gibtsnicht:")
    event = await admin.wait_for_event(room, message("Emoji"), timeout=15)
    assert event["content"]["body"] == "Emoji 👍 👍🏼 :partyparrot: :gibtsnicht:"
    await sim.post_message(team, CHANNEL, ANNA, blocks=[],
                           text="Kurz :wave::skin-tone-5: :bauamt-logo: :heart:")
    event = await admin.wait_for_event(room, message("Kurz"), timeout=15)
    assert event["content"]["body"] == "Kurz 👋🏾 :bauamt-logo: ❤️"
    await sim.post_message(team, CHANNEL, ANNA, text="Winke :wave::skin-tone-2: :bauamt-logo:",
                           blocks=[{"type": "rich_text", "block_id": "b1", "elements": [
                               {"type": "rich_text_section", "elements": [
                                   {"type": "text", "text": "Winke "},
                                   {"type": "emoji", "name": "wave", "unicode": "1f44b-1f3fb",
                                    "skin_tone": 2},
                                   {"type": "text", "text": " "},
                                   {"type": "emoji", "name": "bauamt-logo"}]}]}])
    event = await admin.wait_for_event(room, message("Winke"), timeout=15)
    assert event["content"]["body"] == "Winke 👋🏻 :bauamt-logo:"


# --- edits, deletions, threads, /me ---------------------------------------------------------


async def test_edits_deletions_threads_and_emotes(slack_bridge: SlackBridge,
                                                  admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    root_ts = await sim.post_message(team, CHANNEL, ANNA, "Antrag *Nr. 1* ist da")
    root = await admin.wait_for_event(room, message("Antrag Nr. 1"), timeout=15)
    other_ts = await sim.post_message(team, CHANNEL, BEN, "Gleich wieder weg")
    other = await admin.wait_for_event(room, message("Gleich wieder weg"), timeout=15)

    # message_changed: an edit (m.replace) of exactly that event, by the same puppet.
    await sim.edit_message(team, CHANNEL, root_ts, "Antrag *Nr. 2* ist da")
    edit = await admin.wait_for_event(
        room, lambda e: relation(e).get("rel_type") == "m.replace", timeout=15)
    assert edit["sender"] == ANNA_PUPPET
    assert relation(edit)["event_id"] == root["event_id"]
    assert edit["content"]["m.new_content"]["body"] == "Antrag Nr. 2 ist da"
    assert "<strong>Nr. 2</strong>" in edit["content"]["m.new_content"]["formatted_body"]
    assert edit["content"]["body"] == "* Antrag Nr. 2 ist da"

    # message_deleted: that event is redacted.
    await sim.delete_message(team, CHANNEL, other_ts)
    redaction = await admin.wait_for_event(
        room, lambda e: e["type"] == "m.room.redaction", timeout=15)
    assert redacts(redaction) == other["event_id"]
    assert redaction["sender"] == BEN_PUPPET

    # A thread reply goes into the root's Matrix thread; a reply "also sent to the
    # channel" shows in the thread and in the main timeline (as a reply to the root).
    reply_ts = await sim.post_message(team, CHANNEL, BEN, "Antwort im Faden",
                                      thread_ts=root_ts)
    reply = await admin.wait_for_event(room, message("Antwort im Faden"), timeout=15)
    assert reply["sender"] == BEN_PUPPET
    assert relation(reply)["rel_type"] == "m.thread"
    assert relation(reply)["event_id"] == root["event_id"]
    assert reply["origin_server_ts"] == ts_ms(reply_ts)
    broadcast_ts = await sim.post_message(team, CHANNEL, ANNA, "Auch im Kanal",
                                          thread_ts=root_ts, broadcast=True)
    copies = [await admin.wait_for_event(room, message("Auch im Kanal"), timeout=15)
              for _ in range(2)]
    in_thread = [c for c in copies if relation(c).get("rel_type") == "m.thread"]
    in_main = [c for c in copies if relation(c).get("rel_type") != "m.thread"]
    assert len(in_thread) == len(in_main) == 1
    assert relation(in_thread[0])["event_id"] == root["event_id"]
    assert relation(in_main[0])["m.in_reply_to"]["event_id"] == root["event_id"]
    # Edited or deleted, both copies follow.
    await sim.edit_message(team, CHANNEL, broadcast_ts, "Auch im Kanal, neu")
    edits = [await admin.wait_for_event(
        room, lambda e: relation(e).get("rel_type") == "m.replace", timeout=15)
        for _ in range(2)]
    assert {relation(e)["event_id"] for e in edits} == \
        {in_thread[0]["event_id"], in_main[0]["event_id"]}
    assert {e["content"]["m.new_content"]["body"] for e in edits} == {"Auch im Kanal, neu"}
    await sim.delete_message(team, CHANNEL, broadcast_ts)
    gone = {redacts(await admin.wait_for_event(
        room, lambda e: e["type"] == "m.room.redaction", timeout=15)) for _ in range(2)}
    assert gone == {in_thread[0]["event_id"], in_main[0]["event_id"]}

    # Editing a thread reply edits the event in the thread.
    await sim.edit_message(team, CHANNEL, reply_ts, "Antwort im Faden, korrigiert")
    edit = await admin.wait_for_event(
        room, lambda e: relation(e).get("rel_type") == "m.replace", timeout=15)
    assert relation(edit)["event_id"] == reply["event_id"]
    assert edit["content"]["m.new_content"]["body"] == "Antwort im Faden, korrigiert"

    # /me becomes an emote, in the main timeline or in a thread.
    await sim.post_me_message(team, CHANNEL, ANNA, "winkt :wave:")
    emote = await admin.wait_for_event(room, message("winkt"), timeout=15)
    assert emote["content"]["msgtype"] == "m.emote"
    assert emote["content"]["body"] == "winkt 👋"
    assert emote["sender"] == ANNA_PUPPET
    await sim.post_me_message(team, CHANNEL, BEN, "nickt", thread_ts=root_ts)
    emote = await admin.wait_for_event(room, message("nickt"), timeout=15)
    assert emote["content"]["msgtype"] == "m.emote"
    assert relation(emote)["event_id"] == root["event_id"]


# --- files ----------------------------------------------------------------------------------


async def test_an_edit_right_after_its_message_is_not_lost(slack_bridge: SlackBridge,
                                                           admin: MatrixTestClient,
                                                           team: Any) -> None:
    """An edit that Slack sends while its message is still on its way to the room waits for
    the message: accepted, it must arrive."""
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    for n in range(3):
        ts = await sim.post_message(team, CHANNEL, ANNA, f"Entwurf {n}")
        await sim.edit_message(team, CHANNEL, ts, f"Fassung {n}")
        root = await admin.wait_for_event(room, message(f"Entwurf {n}"), timeout=15)
        edit = await admin.wait_for_event(
            room, lambda e, n=n: relation(e).get("rel_type") == "m.replace"
            and e["content"]["m.new_content"]["body"] == f"Fassung {n}", timeout=15)
        assert relation(edit)["event_id"] == root["event_id"]


async def test_files_become_media_messages(slack_bridge: SlackBridge, admin: MatrixTestClient,
                                           team: Any) -> None:
    sim = slack_bridge.sim
    homeserver = slack_bridge.homeserver
    room = await linked_room(slack_bridge, admin)
    png = solid_png("bauplan", 48)
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
    video = b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 3000
    audio = b"OggS" + b"\x02" * 2000

    # An image with a comment: the comment as text, then the image, both from the puppet.
    ts = await sim.share_file(team, CHANNEL, ANNA, "bauplan.png", png, text="Der *Plan*")
    text = await admin.wait_for_event(room, message("Der Plan"), timeout=15)
    image = await admin.wait_for_event(room, lambda e: e["content"].get("msgtype") == "m.image",
                                       timeout=15)
    assert text["sender"] == image["sender"] == ANNA_PUPPET
    assert image["origin_server_ts"] == ts_ms(ts)
    content = image["content"]
    assert content["body"] == "bauplan.png"
    assert content["info"] == {"mimetype": "image/png", "size": len(png), "w": 48, "h": 48}
    assert content["url"].startswith("mxc://")
    assert await download(homeserver, admin, content["url"]) == png
    # Deleted in Slack: the comment and the image both go.
    await sim.delete_message(team, CHANNEL, ts)
    gone = {redacts(await admin.wait_for_event(
        room, lambda e: e["type"] == "m.room.redaction", timeout=15)) for _ in range(2)}
    assert gone == {text["event_id"], image["event_id"]}

    # Other kinds, each with its msgtype, mimetype and size; the bytes are Slack's.
    root_ts = await sim.post_message(team, CHANNEL, BEN, "Unterlagen bitte hier")
    root = await admin.wait_for_event(room, message("Unterlagen bitte hier"), timeout=15)
    for name, data, mimetype, msgtype in (
            ("antrag.pdf", pdf, "application/pdf", "m.file"),
            ("begehung.mp4", video, "video/mp4", "m.video"),
            ("diktat.ogg", audio, "audio/ogg", "m.audio")):
        await sim.share_file(team, CHANNEL, BEN, name, data, mimetype=mimetype,
                             thread_ts=root_ts)
        event = await admin.wait_for_event(room, lambda e, n=name: e["content"].get("body") == n,
                                           timeout=15)
        content = event["content"]
        assert event["sender"] == BEN_PUPPET
        assert content["msgtype"] == msgtype, content
        assert content["info"] == {"mimetype": mimetype, "size": len(data)}, content
        assert await download(homeserver, admin, content["url"]) == data
        # Shared in the thread, so in the Matrix thread.
        assert relation(event)["rel_type"] == "m.thread"
        assert relation(event)["event_id"] == root["event_id"]


# --- integrations, reactions ----------------------------------------------------------------


async def test_bot_messages_and_reactions(slack_bridge: SlackBridge, admin: MatrixTestClient,
                                          team: Any) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    jenkins = puppet("B0JENKINS")

    # Another integration's message: its own puppet, named as it posted, formatted.
    await sim.post_bot_message(team, CHANNEL, "Build *grün* :white_check_mark:",
                               bot_id="B0JENKINS", username="Jenkins")
    event = await admin.wait_for_event(room, message("Build grün"), timeout=15)
    assert event["sender"] == jenkins
    assert event["content"]["body"] == "Build grün ✅"
    assert "<strong>grün</strong>" in event["content"]["formatted_body"]
    member = await admin.get_state(room, "m.room.member", jenkins)
    assert member is not None and member["displayname"] == "Jenkins"

    # Legacy attachments: title (linked), text, fields and footer, readable in both forms.
    await sim.post_bot_message(team, CHANNEL, "Neuer Bericht", bot_id="B0JENKINS",
                               username="Jenkins", attachments=[{
                                   "fallback": "Build #42: alle Tests grün",
                                   "color": "good", "pretext": "Nachtlauf",
                                   "title": "Build #42", "title_link": "https://ci.example/42",
                                   "text": "Alle Tests grün",
                                   "fields": [{"title": "Dauer", "value": "3 min",
                                               "short": True}],
                                   "footer": "Jenkins CI"}])
    event = await admin.wait_for_event(room, message("Neuer Bericht"), timeout=15)
    body = event["content"]["body"]
    for fragment in ("Nachtlauf", "Build #42 (https://ci.example/42)", "Alle Tests grün",
                     "Dauer: 3 min", "Jenkins CI"):
        assert fragment in body, body
    html = event["content"]["formatted_body"]
    assert '<a href="https://ci.example/42">Build #42</a>' in html, html
    assert "<strong>Dauer</strong>: 3 min" in html, html

    # Only attachments, no text: still a readable message.
    await sim.post_bot_message(team, CHANNEL, "", bot_id="B0JENKINS", username="Jenkins",
                               attachments=[{"fallback": "Deploy fertig",
                                             "text": "Deploy fertig auf prod"}])
    event = await admin.wait_for_event(room, message("Deploy fertig auf prod"), timeout=15)
    assert event["sender"] == jenkins

    # Block Kit from an app: the blocks are what Slack shows, the text only a fallback.
    await sim.post_bot_message(team, CHANNEL, "Störung behoben", bot_id="B0JENKINS",
                               username="Jenkins", blocks=[
                                   {"type": "header",
                                    "text": {"type": "plain_text", "text": "Störung"}},
                                   {"type": "section",
                                    "text": {"type": "mrkdwn", "text": "*behoben* um 9:30"}}])
    event = await admin.wait_for_event(room, message("behoben um 9:30"), timeout=15)
    assert "<strong>behoben</strong>" in event["content"]["formatted_body"]
    assert "Störung" in event["content"]["body"]

    # Reactions: an annotation with the Unicode key (skin tone included; a custom emoji
    # keeps its :name:), by the reacting person's puppet; removing one redacts it.
    ts = await sim.post_message(team, CHANNEL, ANNA, "Wer kommt mit?")
    target = await admin.wait_for_event(room, message("Wer kommt mit?"), timeout=15)
    reactions = {}
    for user, name, key in ((BEN, "thumbsup", "👍"), (ANNA, "raised_hand::skin-tone-4", "✋🏽"),
                            (BEN, "partyparrot", ":partyparrot:")):
        await sim.add_reaction(team, CHANNEL, ts, user, name)
        event = await admin.wait_for_event(room, lambda e: e["type"] == "m.reaction",
                                           timeout=15)
        assert event["sender"] == puppet(user)
        assert relation(event) == {"rel_type": "m.annotation", "event_id": target["event_id"],
                                   "key": key}
        reactions[name] = event["event_id"]
    await sim.remove_reaction(team, CHANNEL, ts, BEN, "thumbsup")
    redaction = await admin.wait_for_event(room, lambda e: e["type"] == "m.room.redaction",
                                           timeout=15)
    assert redacts(redaction) == reactions["thumbsup"]
    assert redaction["sender"] == BEN_PUPPET


# --- the channel: members, name, topic; the people: puppets ----------------------------------


async def test_members_name_and_topic(slack_bridge: SlackBridge, admin: MatrixTestClient,
                                      team: Any) -> None:
    sim = slack_bridge.sim
    sim.add_user(team, "U0CARLA", name="carla", real_name="Carla Roth", display_name="Carla")
    carla = puppet("U0CARLA")
    room = await linked_room(slack_bridge, admin)

    # Joining and leaving the Slack channel: the puppet joins and leaves the room.
    await sim.join_channel(team, CHANNEL, "U0CARLA")
    # (Joined with the Slack name: on the join itself, or a moment later.)
    await admin.wait_for_event(room, lambda e: e["type"] == "m.room.member"
                               and e["state_key"] == carla
                               and e["content"]["membership"] == "join"
                               and e["content"].get("displayname") == "Carla", timeout=15)
    await sim.leave_channel(team, CHANNEL, "U0CARLA")
    await admin.wait_for_membership(room, carla, "leave", timeout=15)

    # Renaming the channel renames the room.
    await sim.rename_channel(team, CHANNEL, "bauamt-nord", user_id=ANNA)
    await admin.wait_for_event(room, lambda e: e["type"] == "m.room.name"
                               and e["content"]["name"] == "bauamt-nord", timeout=15)
    assert await admin.get_state(room, "m.room.name") == {"name": "bauamt-nord"}

    # Topic and purpose: Matrix has one topic; Slack's topic, else its purpose.
    await sim.set_topic(team, CHANNEL, ANNA, "Bauanträge Nord")
    event = await admin.wait_for_event(room, lambda e: e["type"] == "m.room.topic", timeout=15)
    assert event["content"]["topic"] == "Bauanträge Nord"
    await sim.set_purpose(team, CHANNEL, ANNA, "Alles zu Bauanträgen")
    await sim.set_topic(team, CHANNEL, ANNA, "")
    event = await admin.wait_for_event(
        room, lambda e: e["type"] == "m.room.topic"
        and e["content"]["topic"] == "Alles zu Bauanträgen", timeout=15)
    assert (await admin.get_state(room, "m.room.topic") or {})["topic"] == \
        "Alles zu Bauanträgen"
    # None of this shows as messages from Slack's own channel_join/topic/rename notices.
    await sim.post_message(team, CHANNEL, ANNA, "Ende der Umbauten")
    await admin.wait_for_event(room, message("Ende der Umbauten"), timeout=15)
    bodies = [e["content"].get("body") for e in await timeline(admin, room)
              if e["type"] == "m.room.message" and e["sender"] != slack_bridge.homeserver.bot]
    assert bodies == ["!bridge link slack C0BAUAMT", "Ende der Umbauten"]


async def test_puppets_names_and_avatars(slack_bridge: SlackBridge, admin: MatrixTestClient,
                                         team: Any) -> None:
    sim = slack_bridge.sim
    # Someone of this test's own: the session's Synapse has Anna's puppet in every earlier
    # test's room, and the homeserver rewrites each of those on a profile change.
    sim.add_user(team, "U0DORA", name="dora", real_name="Dora Klein", display_name="Dora")
    dora = puppet("U0DORA")
    room = await linked_room(slack_bridge, admin)
    await sim.join_channel(team, CHANNEL, "U0DORA")
    await sim.post_message(team, CHANNEL, "U0DORA", "Hallo von Dora")
    await sim.post_message(team, CHANNEL, BEN, "Hallo von Ben")
    await admin.wait_for_event(room, message("Hallo von Ben"), timeout=15)

    # @slack_<team>_<user>, lower case; the display name, else the real name; an avatar.
    members = await admin.get_joined_members(room)
    assert members[dora]["display_name"] == "Dora"
    assert members[BEN_PUPPET]["display_name"] == "Ben Weber"
    dora_avatar = members[dora]["avatar_url"]
    assert dora_avatar.startswith("mxc://")
    assert members[BEN_PUPPET]["avatar_url"].startswith("mxc://")
    assert dora_avatar != members[BEN_PUPPET]["avatar_url"]
    slack_image = team.users["U0DORA"].to_api(sim.base_url)["profile"]["image_512"]
    async with aiohttp.ClientSession() as session, session.get(slack_image) as resp:
        assert await download(slack_bridge.homeserver, admin, dora_avatar) == await resp.read()

    # user_change: the new name and the new picture reach the room. (Someone who never
    # showed up in a linked channel gets no Matrix account for changing their profile.)
    sim.add_user(team, "U0EMIL", name="emil", real_name="Emil Braun")
    await sim.change_user(team, "U0EMIL", display_name="Emil")
    new_image = f"{sim.base_url}avatars/{TEAM_ID}/U0DORANEW_512.png"
    await sim.change_user(team, "U0DORA", display_name="Dora K.", image_url=new_image)
    # (The homeserver rewrites the member event with the whole profile each time.)
    member = (await admin.wait_for_event(
        room, lambda e: e["type"] == "m.room.member" and e["state_key"] == dora
        and e["content"].get("displayname") == "Dora K."
        and e["content"].get("avatar_url") not in (None, dora_avatar), timeout=15))["content"]
    async with aiohttp.ClientSession() as session, session.get(new_image) as resp:
        assert await download(slack_bridge.homeserver, admin, member["avatar_url"]) == \
            await resp.read()
    with pytest.raises(MatrixRequestError) as missing:
        await admin.request("GET", f"/profile/{puppet('U0EMIL')}")
    assert missing.value.status == 404
    # A display name removed in Slack: the real name again.
    await sim.change_user(team, "U0DORA", display_name="")
    await admin.wait_for_event(
        room, lambda e: e["type"] == "m.room.member" and e["state_key"] == dora
        and e["content"].get("displayname") == "Dora Klein", timeout=15)


# --- history: backfill on link, catch-up after a restart ---------------------------------------


async def test_backfill_on_link(homeserver: Homeserver, database_url: str,
                                slack_sim: SlackSimulator, team: Any,
                                admin: MatrixTestClient) -> None:
    """A newly linked channel brings its last ``slack.backfill_limit`` messages, oldest
    first, each with its Slack time."""
    sent = [await slack_sim.post_message(team, CHANNEL, ANNA if i % 2 else BEN,
                                         f"Altbestand {i}") for i in range(1, 6)]
    reply_ts = await slack_sim.post_message(team, CHANNEL, ANNA, "Antwort auf 4",
                                            thread_ts=sent[3])
    assert homeserver.config(database_url).slack.backfill_limit == 50  # as generated
    async with running_slack_bridge(homeserver, database_url, slack_sim, [team],
                                    slack__backfill_limit=3) as bridge:
        room = await linked_room(bridge, admin)
        await admin.wait_for_event(room, message("Altbestand 5"), timeout=15)
        await slack_sim.post_message(team, CHANNEL, BEN, "Jetzt live")
        await admin.wait_for_event(room, message("Jetzt live"), timeout=15)
        events = [e for e in await timeline(admin, room)
                  if e["type"] == "m.room.message" and e["sender"].startswith("@slack_")]
        # Only the last three messages (Slack's join notice for the app does not count),
        # oldest first, with the thread reply of one of them in its thread, and then what
        # was posted live; each once, at its Slack time.
        assert [e["content"]["body"] for e in events] == [
            "Altbestand 3", "Altbestand 4", "Altbestand 5", "Antwort auf 4", "Jetzt live"]
        assert [e["sender"] for e in events[:3]] == [ANNA_PUPPET, BEN_PUPPET, ANNA_PUPPET]
        assert [e["origin_server_ts"] for e in events[:4]] == \
            [ts_ms(ts) for ts in (*sent[2:], reply_ts)]
        assert relation(events[3])["event_id"] == events[1]["event_id"]
        assert relation(events[3])["rel_type"] == "m.thread"


async def test_catch_up_after_restart(slack_bridge: SlackBridge, admin: MatrixTestClient,
                                      team: Any) -> None:
    """Messages posted while the bridge was stopped arrive when it is back: in order, at
    their Slack times, once, thread replies to older messages included; whether Slack
    re-sends the events it could not deliver as well, or gave up on them."""
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    root_ts = await sim.post_message(team, CHANNEL, ANNA, "Vor der Pause")
    root = await admin.wait_for_event(room, message("Vor der Pause"), timeout=15)

    async def away(posts: list[tuple[str, str | None]], slack_gives_up: bool) -> None:
        await slack_bridge.stop()
        sent = [(body, await sim.post_message(team, CHANNEL, BEN, body, thread_ts=thread))
                for body, thread in posts]
        if slack_gives_up:
            # Slack drops events it could not deliver for long enough; the simulator keeps
            # them for the next connection, so they are dropped here by hand.
            sim.dispatcher.teams[team.id].queue.clear()
        await slack_bridge.start()
        await slack_bridge.connected()
        for body, ts in sent:
            event = await admin.wait_for_event(room, message(body), timeout=15)
            assert event["origin_server_ts"] == ts_ms(ts)

    # Slack re-sends the queued events and catch-up reads them too: each arrives once.
    await away([("Pause 1", None), ("Faden 1", root_ts), ("Pause 2", None)],
               slack_gives_up=False)
    # Slack gave up on them: catch-up alone brings them.
    await away([("Pause 3", None), ("Faden 2", root_ts), ("Pause 4", None)],
               slack_gives_up=True)
    await sim.post_message(team, CHANNEL, ANNA, "Wieder da")
    await admin.wait_for_event(room, message("Wieder da"), timeout=15)

    events = [e for e in await timeline(admin, room)
              if e["type"] == "m.room.message" and e["sender"].startswith("@slack_")]
    assert [e["content"]["body"] for e in events] == [
        "Vor der Pause", "Pause 1", "Faden 1", "Pause 2", "Pause 3", "Faden 2", "Pause 4",
        "Wieder da"]
    for reply in (events[2], events[5]):
        assert relation(reply) == {"rel_type": "m.thread", "event_id": root["event_id"],
                                   "is_falling_back": True,
                                   "m.in_reply_to": {"event_id": root["event_id"]}}


# --- echoes --------------------------------------------------------------------------------


async def test_own_posts_never_come_back(slack_bridge: SlackBridge, admin: MatrixTestClient,
                                         team: Any) -> None:
    """What the bridge posted to Slack for Matrix users (and Slack then reports as events,
    and lists in the history catch-up reads) is never mirrored back by a puppet."""
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    await sim.post_message(team, CHANNEL, ANNA, "Von Slack")
    from_slack = await admin.wait_for_event(room, message("Von Slack"), timeout=15)

    def in_slack(text: str) -> Callable[[], bool]:
        def check() -> bool:
            everything = [*sim.messages(team, CHANNEL),
                          *(r for m in sim.messages(team, CHANNEL) if m.get("reply_count")
                            for r in sim.replies(team, CHANNEL, m["ts"]))]
            return any(text in (m.get("text") or "") for m in everything)
        return check

    # A message, an emote, a thread reply, an edit, a reaction and a redaction from Matrix.
    first = await admin.send_text(room, "Von Matrix")
    await admin.send_text(room, "winkt aus Matrix", msgtype="m.emote")
    await admin.send_text(room, "Antwort aus Matrix", extra={"m.relates_to": {
        "rel_type": "m.thread", "event_id": from_slack["event_id"], "is_falling_back": True,
        "m.in_reply_to": {"event_id": from_slack["event_id"]}}})
    await admin.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "* Von Matrix, bearbeitet",
        "m.new_content": {"msgtype": "m.text", "body": "Von Matrix, bearbeitet"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": first}})
    await admin.send_event(room, "m.reaction", {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": from_slack["event_id"], "key": "👍"}})
    doomed = await admin.send_text(room, "Gleich gelöscht")
    await sim.wait_for(in_slack("Gleich gelöscht"), timeout=15)
    await admin.redact(room, doomed)
    await sim.wait_for(in_slack("Von Matrix, bearbeitet"), timeout=15)
    await sim.wait_for(in_slack("Antwort aus Matrix"), timeout=15)
    await sim.wait_for(lambda: not in_slack("Gleich gelöscht")()
                       and any(m.get("reactions") for m in sim.messages(team, CHANNEL)),
                       timeout=15)

    # A restart: catch-up reads the channel history, the app's posts included.
    await slack_bridge.restart()
    await slack_bridge.connected()
    await sim.post_message(team, CHANNEL, ANNA, "Zum Schluss")
    await admin.wait_for_event(room, message("Zum Schluss"), timeout=15)

    from_puppets = [e for e in await timeline(admin, room)
                    if e["sender"].startswith("@slack_") and e["type"] != "m.room.member"]
    assert [(e["type"], e["content"].get("body")) for e in from_puppets] == [
        ("m.room.message", "Von Slack"), ("m.room.message", "Zum Schluss")]
