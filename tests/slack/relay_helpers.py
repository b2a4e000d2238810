"""Small steps the Matrix -> Slack, delivery and command tests share: media on the
homeserver, finding what the app posted in the simulator, and proving nothing came back."""

from __future__ import annotations

from typing import Any

import aiohttp

from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from tests.slack.conftest import ANNA, CHANNEL

PUPPET_PREFIX = "@slack_"


def puppet_of(team: Any, user_id: str) -> str:
    return f"@slack_{team.id.lower()}_{user_id.lower()}:bridge.test"


async def upload_media(client: MatrixTestClient, data: bytes, content_type: str,
                       filename: str) -> str:
    """Upload to the homeserver as ``client``; returns the mxc URI."""
    async with aiohttp.ClientSession() as http, http.post(
            f"{client.base_url}/_matrix/media/v3/upload", params={"filename": filename},
            data=data, headers={"Authorization": f"Bearer {client.access_token}",
                                "Content-Type": content_type}) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["content_uri"])


async def set_profile(client: MatrixTestClient, name: str, avatar_mxc: str | None = None) -> None:
    """Global display name (and avatar): rooms joined afterwards carry them."""
    from urllib.parse import quote

    user = quote(client.user_id, safe="")
    await client.request("PUT", f"/profile/{user}/displayname", json_body={"displayname": name})
    if avatar_mxc:
        await client.request("PUT", f"/profile/{user}/avatar_url",
                             json_body={"avatar_url": avatar_mxc})


def text_of(message: dict[str, Any]) -> str:
    return str(message.get("text") or "")


async def posted(sim: SlackSimulator, team: Any, text: str, channel: str = CHANNEL,
                 thread_ts: str | None = None, timeout: float = 15) -> dict[str, Any]:
    """The message containing ``text`` in the channel (or the thread), once it is there."""

    def find() -> dict[str, Any] | None:
        messages = (sim.replies(team, channel, thread_ts) if thread_ts
                    else sim.messages(team, channel))
        return next((m for m in messages if text in text_of(m)), None)

    found: dict[str, Any] = await sim.wait_for(find, timeout=timeout)
    return found


def count_in_slack(sim: SlackSimulator, team: Any, text: str, channel: str = CHANNEL) -> int:
    """Messages (top level and thread replies) whose text contains ``text``."""
    total = 0
    for message in sim.messages(team, channel):
        if text in text_of(message):
            total += 1
        if message.get("reply_count") or message.get("thread_ts") == message.get("ts"):
            total += sum(text in text_of(r)
                         for r in sim.replies(team, channel, str(message["ts"])))
    return total


def has_body(text: str) -> Any:
    return lambda e: e["type"] == "m.room.message" and text in e["content"].get("body", "")


async def marker_from_slack(sim: SlackSimulator, team: Any, admin: MatrixTestClient,
                            room: str, text: str = "Markierung", channel: str = CHANNEL,
                            user: str = ANNA) -> dict[str, Any]:
    """A Slack message posted after everything else: once it is in the room, whatever
    Slack sent before it (echoes of the app's own posts included) has been handled, since a
    channel's events are handled in order."""
    await sim.post_message(team, channel, user, text=text)
    return await admin.wait_for_event(room, has_body(text), timeout=15)


async def room_events(admin: MatrixTestClient, room: str, limit: int = 200
                      ) -> list[dict[str, Any]]:
    """The room's timeline, oldest first."""
    return list(reversed(await admin.messages(room, limit=limit)))


async def assert_no_echo(sim: SlackSimulator, team: Any, admin: MatrixTestClient, room: str,
                         sent_from_matrix: list[str], allowed_senders: set[str],
                         channel: str = CHANNEL) -> None:
    """Nothing the app posted came back: after a marker from Slack, the room holds each
    Matrix-sent text once (its original) and no event of a puppet other than the people
    who wrote in Slack."""
    await marker_from_slack(sim, team, admin, room, f"Ende-{len(sent_from_matrix)}", channel)
    events = await room_events(admin, room)
    for text in sent_from_matrix:
        copies = [e for e in events if e["type"] == "m.room.message"
                  and text in e["content"].get("body", "")
                  and "m.new_content" not in e["content"]]
        assert len(copies) == 1, (text, [(e["sender"], e["content"]) for e in copies])
        assert not copies[0]["sender"].startswith(PUPPET_PREFIX), copies[0]
    strangers = {e["sender"] for e in events if e["sender"].startswith(PUPPET_PREFIX)
                 and e["sender"] not in allowed_senders}
    assert not strangers, strangers
