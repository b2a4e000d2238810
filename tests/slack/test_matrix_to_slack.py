"""Matrix -> Slack end to end: what people write in the room reaches the Slack channel as the
app's posts under their own name and avatar, with threads, edits, deletions, reactions and
files intact, and nothing the app posted comes back into the room.

Real Synapse, the bridge in-process, the Slack simulator; SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim.images import solid_png
from tests.slack.conftest import ANNA, CHANNEL, PUBLIC_URL, SlackBridge, linked_room
from tests.slack.relay_helpers import (
    assert_no_echo,
    has_body,
    posted,
    puppet_of,
    set_profile,
    upload_media,
)


async def _fetch(bridge: SlackBridge, path_qs: str) -> tuple[int, bytes, str]:
    """GET from the bridge's own listener (where the reverse proxy of PUBLIC_URL points)."""
    appservice = bridge.config.appservice
    async with aiohttp.ClientSession() as http, http.get(
            f"http://{appservice.hostname}:{appservice.port}{path_qs}") as response:
        return response.status, await response.read(), response.content_type


async def test_text_notice_emote_with_name_avatar_mrkdwn_and_mentions(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    avatar = solid_png("erika", 48)
    avatar_mxc = await upload_media(admin, avatar, "image/png", "erika.png")
    await set_profile(admin, "Erika Amt", avatar_mxc)
    room = await linked_room(slack_bridge, admin)
    # Anna writes first, so her puppet is in the room to be mentioned.
    await sim.post_message(team, CHANNEL, ANNA, text="Hallo zusammen")
    await admin.wait_for_event(room, has_body("Hallo zusammen"), timeout=15)

    anna = puppet_of(team, ANNA)
    await admin.send_text(room, "Bitte pruefen", extra={
        "format": "org.matrix.custom.html",
        "formatted_body": (f'<a href="https://matrix.to/#/{anna}">Anna</a>: bitte '
                           '<strong>heute</strong> <em>noch</em> <del>morgen</del> '
                           '<code>B-12</code> prüfen, siehe '
                           '<a href="https://stadt.example/antrag?id=7&amp;v=2">Antrag</a>'
                           '<ul><li>Plan</li><li>Statik</li></ul>'),
        "m.mentions": {"user_ids": [anna]}})
    await admin.send_text(room, "Sitzung verschoben", msgtype="m.notice")
    await admin.send_text(room, "holt Kaffee", msgtype="m.emote")

    text = await posted(sim, team, "bitte *heute*")
    assert text["text"] == ("<@U0ANNA>: bitte *heute* _noch_ ~morgen~ `B-12` prüfen, siehe "
                            "<https://stadt.example/antrag?id=7&amp;v=2|Antrag>\n"
                            "• Plan\n• Statik")
    notice = await posted(sim, team, "Sitzung verschoben")
    emote = await posted(sim, team, "holt Kaffee")
    assert emote["text"] == "_Erika Amt holt Kaffee_"
    for message in (text, notice, emote):
        # The app posts as the Matrix user: name and avatar, not the app's own.
        assert message["username"] == "Erika Amt"
        assert message["bot_id"] == team.bot_id
    post = sim.calls_to("chat.postMessage")[-1]
    icon_url = str(post["icon_url"])
    assert icon_url.startswith(f"{PUBLIC_URL}/")
    assert text["icons"]["image_48"] == icon_url

    # The bridge serves the avatar itself at that URL (homeserver media need a token)...
    parts = urlsplit(icon_url)
    status, body, content_type = await _fetch(slack_bridge, f"{parts.path}?{parts.query}")
    assert (status, content_type) == (200, "image/png")
    assert body == avatar
    # ...and nothing else: a wrong signature, or another media ID under the right one, is 404.
    status, _, _ = await _fetch(slack_bridge, f"{parts.path}?sig=0123456789abcdef")
    assert status == 404
    # The signature is made with a key of its own, not the as_token: one signed the old way
    # (with the as_token itself) is refused, so a leaked URL tells nothing about the token.
    mxc = "mxc://" + parts.path.split("/_bridge/slack/avatar/", 1)[1]
    as_token_signed = hmac.new(slack_bridge.config.appservice.as_token.encode(), mxc.encode(),
                               hashlib.sha256).hexdigest()[:32]
    assert as_token_signed not in icon_url
    status, _, _ = await _fetch(slack_bridge, f"{parts.path}?sig={as_token_signed}")
    assert status == 404
    status, _, _ = await _fetch(slack_bridge, f"{parts.path}?sig=")
    assert status == 404
    other = await upload_media(admin, b"secret scan", "application/pdf", "scan.pdf")
    other_path = parts.path.rsplit("/", 1)[0] + "/" + other.rsplit("/", 1)[1]
    status, _, _ = await _fetch(slack_bridge, f"{other_path}?{parts.query}")
    assert status == 404

    # A new name in the room is the name of the next post.
    await admin.send_state(room, "m.room.member", admin.user_id, {
        "membership": "join", "displayname": "Erika Neu", "avatar_url": avatar_mxc})
    await admin.send_text(room, "Nach der Umbenennung")
    assert (await posted(sim, team, "Nach der Umbenennung"))["username"] == "Erika Neu"

    await assert_no_echo(sim, team, admin, room,
                         ["Bitte pruefen", "Sitzung verschoben", "holt Kaffee",
                          "Nach der Umbenennung"], {anna})


async def test_replies_threads_edits_and_redactions(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    root_ts = await sim.post_message(team, CHANNEL, ANNA, text="Frage zum Antrag")
    root = await admin.wait_for_event(room, has_body("Frage zum Antrag"), timeout=15)

    # A plain Matrix reply and a thread reply both land in the Slack thread of the root.
    reply_id = await admin.send_text(room, "Antwort per Reply", extra={
        "m.relates_to": {"m.in_reply_to": {"event_id": root["event_id"]}}})
    await admin.send_text(room, "Antwort im Thread", extra={
        "m.relates_to": {"rel_type": "m.thread", "event_id": root["event_id"],
                         "is_falling_back": True,
                         "m.in_reply_to": {"event_id": root["event_id"]}}})
    # A reply to a reply: Slack threads are flat, so it goes to the same thread.
    await admin.send_text(room, "Nachtrag zur Antwort", extra={
        "m.relates_to": {"m.in_reply_to": {"event_id": reply_id}}})
    for text in ("Antwort per Reply", "Antwort im Thread", "Nachtrag zur Antwort"):
        await posted(sim, team, text, thread_ts=root_ts)
    threaded = [c for c in sim.calls_to("chat.postMessage") if c.get("thread_ts")]
    assert [c["thread_ts"] for c in threaded] == [root_ts] * 3

    # A thread under a message from Matrix: its thread_ts is the app's post.
    top_id = await admin.send_text(room, "Neue Frage aus Matrix")
    top = await posted(sim, team, "Neue Frage aus Matrix")
    in_thread_id = await admin.send_text(room, "Detail im Matrix-Thread", extra={
        "m.relates_to": {"rel_type": "m.thread", "event_id": top_id, "is_falling_back": True,
                         "m.in_reply_to": {"event_id": top_id}}})
    detail = await posted(sim, team, "Detail im Matrix-Thread", thread_ts=top["ts"])

    # Edits become chat.update of the same Slack message.
    await admin.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "* Neue Frage aus Matrix (korrigiert)",
        "m.new_content": {"msgtype": "m.text", "body": "Neue Frage aus Matrix (korrigiert)",
                          "format": "org.matrix.custom.html",
                          "formatted_body": "Neue Frage aus Matrix <b>(korrigiert)</b>"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": top_id}})
    await sim.wait_for(lambda: (sim.message(team, CHANNEL, top["ts"]) or {}).get("text")
                       == "Neue Frage aus Matrix *(korrigiert)*", timeout=15)
    update = sim.calls_to("chat.update")
    assert len(update) == 1 and update[0]["ts"] == top["ts"]
    assert not [m for m in sim.messages(team, CHANNEL) if "korrigiert" in str(m.get("text"))
                and m["ts"] != top["ts"]]

    # Redactions become chat.delete: first the thread reply, then the message itself.
    await admin.redact(room, in_thread_id)
    await sim.wait_for(lambda: not sim.replies(team, CHANNEL, top["ts"]), timeout=15)
    await admin.redact(room, top_id)
    await sim.wait_for(lambda: sim.message(team, CHANNEL, top["ts"]) is None, timeout=15)
    assert [c["ts"] for c in sim.calls_to("chat.delete")] == [detail["ts"], top["ts"]]
    # Anna's root and its thread are untouched.
    assert len(sim.replies(team, CHANNEL, root_ts)) == 3

    await assert_no_echo(sim, team, admin, room,
                         ["Antwort per Reply", "Antwort im Thread", "Nachtrag zur Antwort"],
                         {puppet_of(team, ANNA)})
    # The edit and the deletions of the app's own messages did not come back either.
    events = [e for e in (await admin.messages(room, limit=100))
              if e["sender"].startswith("@slack_")]
    assert all("korrigiert" not in str(e["content"]) for e in events)


async def test_reactions_add_and_remove_with_slack_emoji_names(
        slack_bridge: SlackBridge, admin: MatrixTestClient, outsider: MatrixTestClient,
        team: Any) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    await admin.invite(room, outsider.user_id)
    await outsider.join(room)
    ts = await sim.post_message(team, CHANNEL, ANNA, text="Termin am Montag?")
    target = await admin.wait_for_event(room, has_body("Termin am Montag"), timeout=15)
    mine_id = await admin.send_text(room, "Ja, 10 Uhr")
    mine = await posted(sim, team, "Ja, 10 Uhr")

    def react(event_id: str, key: str, who: MatrixTestClient = admin) -> Any:
        return who.send_event(room, "m.reaction", {"m.relates_to": {
            "rel_type": "m.annotation", "event_id": event_id, "key": key}})

    thumbs = await react(target["event_id"], "👍")
    # A colleague agrees: in Slack the app can react with 👍 only once.
    their_thumbs = await react(target["event_id"], "👍", outsider)
    await react(target["event_id"], "🎉")
    await react(mine_id, "❤️")
    await react(target["event_id"], "Zustimmung")  # a text reaction: Slack has no emoji for it

    def names(message_ts: str) -> set[str]:
        message = sim.message(team, CHANNEL, message_ts) or {}
        return {r["name"] for r in message.get("reactions", [])
                if team.bot_user_id in r["users"]}

    await sim.wait_for(lambda: names(ts) == {"+1", "tada"} and names(mine["ts"]) == {"heart"},
                       timeout=15)
    # One of the two takes theirs back: the colleague's 👍 still stands in Slack.
    await admin.redact(room, thumbs)
    await admin.send_text(room, "Nach dem ersten Zurücknehmen")
    await posted(sim, team, "Nach dem ersten Zurücknehmen")
    assert names(ts) == {"+1", "tada"}
    await outsider.redact(room, their_thumbs)
    await sim.wait_for(lambda: names(ts) == {"tada"}, timeout=15)
    removed = sim.calls_to("reactions.remove")
    assert [(r["name"], r["timestamp"]) for r in removed] == [("+1", ts)]
    assert sorted(r["name"] for r in sim.calls_to("reactions.add")) == [
        "+1", "+1", "heart", "tada"]

    await assert_no_echo(sim, team, admin, room, ["Ja, 10 Uhr", "Nach dem ersten Zurücknehmen"],
                         {puppet_of(team, ANNA)})
    echoed = [e for e in await admin.messages(room, limit=100)
              if e["type"] == "m.reaction" and e["sender"].startswith("@slack_")]
    assert not echoed, echoed


async def test_files_are_uploaded_into_the_channel_and_thread(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    await set_profile(admin, "Erika Amt")
    room = await linked_room(slack_bridge, admin)
    root_ts = await sim.post_message(team, CHANNEL, ANNA, text="Schickt mir den Plan")
    root = await admin.wait_for_event(room, has_body("Schickt mir den Plan"), timeout=15)

    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
    pdf_mxc = await upload_media(admin, pdf, "application/pdf", "lageplan.pdf")
    await admin.send_event(room, "m.room.message", {
        "msgtype": "m.file", "body": "lageplan.pdf", "filename": "lageplan.pdf",
        "url": pdf_mxc, "info": {"mimetype": "application/pdf", "size": len(pdf)}})
    png = solid_png("ansicht", 64)
    png_mxc = await upload_media(admin, png, "image/png", "ansicht.png")
    await admin.send_event(room, "m.room.message", {
        "msgtype": "m.image", "body": "ansicht.png", "url": png_mxc,
        "info": {"mimetype": "image/png", "size": len(png), "w": 64, "h": 64},
        "m.relates_to": {"rel_type": "m.thread", "event_id": root["event_id"],
                         "is_falling_back": True,
                         "m.in_reply_to": {"event_id": root["event_id"]}}})

    def files_named(name: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [m for m in messages if any(f.get("name") == name for f in m.get("files", []))]

    in_channel = await sim.wait_for(
        lambda: files_named("lageplan.pdf", sim.messages(team, CHANNEL)), timeout=15)
    in_thread = await sim.wait_for(
        lambda: files_named("ansicht.png", sim.replies(team, CHANNEL, root_ts)), timeout=15)
    assert len(in_channel) == 1 and len(in_thread) == 1
    assert in_channel[0]["text"] == "Erika Amt sent lageplan.pdf"
    assert in_channel[0]["bot_id"] == team.bot_id
    # The bytes Slack got are the Matrix file's.
    uploaded = {f["name"]: f["data"] for f in sim.uploaded_files(team)}
    assert uploaded == {"lageplan.pdf": pdf, "ansicht.png": png}
    # The current upload flow, one round per file.
    assert len(sim.calls_to("files.getUploadURLExternal")) == 2
    completes = sim.calls_to("files.completeUploadExternal")
    assert [c.get("channel_id") for c in completes] == [CHANNEL, CHANNEL]
    assert [c.get("thread_ts") for c in completes] == [None, root_ts]
    assert not sim.calls_to("files.upload")  # the retired method

    await assert_no_echo(sim, team, admin, room, [], {puppet_of(team, ANNA)})
    echoed = [e for e in await admin.messages(room, limit=100)
              if e["type"] == "m.room.message" and e["sender"].startswith("@slack_")
              and e["content"].get("msgtype") in ("m.file", "m.image")]
    assert not echoed, echoed
